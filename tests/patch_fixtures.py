"""Small models, SAEs and texts for the patch engine's tests (no demo model needed)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tiny_models import WORDS, make_tiny_checkpoint

from tuiwb.sae.io import save_sae
from tuiwb.patch.config import FitConfig

# Enough for a faithful fit on a tiny model, cheap enough for unit tests.
FAST_FIT = FitConfig(rank=8, fit_tokens=2048, refine_steps=60, refine_tokens=1024)


def texts(n: int = 240, seed: int = 0, length: int = 16) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in range(n)]


def write_texts(path: Path, n: int = 240, seed: int = 0) -> Path:
    path.write_text("\n".join(texts(n, seed)) + "\n")
    return path


def make_sae(layer: int, d_in: int, d_sae: int = 64, seed: int = 0, architecture: str = "relu",
             config_hash: str | None = None):
    """A real ``tuiwb.sae.SAE`` with random tied weights (about half its features fire on any input)."""
    from tuiwb.sae.model import SAE, SAEConfig

    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture, k=8 if architecture == "topk" else None,
                    hook_name=f"blocks.{layer}.hook_resid_post", model_config_hash=config_hash)
    sae = SAE(cfg)
    sae.reset_parameters(torch.Generator().manual_seed(seed))
    return sae.eval()


def tiny_checkpoint(tmp: Path, n_layers: int = 3, d_model: int = 32, seed: int = 0) -> Path:
    return make_tiny_checkpoint(tmp, "llama", n_layers=n_layers, d_model=d_model, seed=seed)


def save_saes(root: Path, saes: dict) -> Path:
    for layer, sae in saes.items():
        save_sae(sae, root / f"layer_{layer}")
    return root
