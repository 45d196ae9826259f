"""Builders shared by the tests (``tests/`` is on ``sys.path`` via pyproject): random SAEs, saved SAE
directories, tiny checkpoints and texts, traced activation directories, the patch engine's quick fit.

The pytest fixtures built from these (``ckpt``, ``data``, ``shared_tmp``, ``cli``, ``cli_error``) live
in ``tests/conftest.py``; the random checkpoints themselves in ``tests/tiny_models.py``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from tiny_models import WORDS, make_tiny_checkpoint

from tuiwb.patch.config import FitConfig
from tuiwb.sae.io import save_sae

# Enough for a faithful fit on a tiny model, cheap enough for unit tests.
FAST_FIT = FitConfig(rank=8, fit_tokens=2048, refine_steps=60, refine_tokens=1024)


# ---- SAEs ----------------------------------------------------------------------------------------

def make_sae(layer: int | None = 1, d_in: int = 32, d_sae: int = 64, arch: str = "relu", *, k: int = 4,
             seed: int = 0, **cfg):
    """A real ``tuiwb.sae.model.SAE`` with its own random init (unit-norm decoder rows, tied encoder,
    zero biases: about half its features fire on any input), in eval mode.

    It reads ``blocks.{layer}.hook_resid_post`` (no hook at all when ``layer`` is None; pass
    ``hook_name=`` for another); ``k`` applies to TopK only; other keywords go to ``SAEConfig``
    (``model_config_hash``, ``model_name``, …). Torch's global RNG is seeded with ``seed`` first, so
    the weights — and whatever the test draws next — are the same on every run.
    """
    from tuiwb.sae.model import SAE, SAEConfig

    if layer is not None:
        cfg.setdefault("hook_name", f"blocks.{layer}.hook_resid_post")
    torch.manual_seed(seed)
    return SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k if arch == "topk" else None, **cfg)).eval()


def save_saes(root: Path, saes: dict) -> Path:
    """Save ``{layer: sae}`` as ``root/layer_N/`` (the layout ``load_saes`` and ``--saes`` read) → ``root``."""
    for layer, sae in saes.items():
        save_sae(sae, root / f"layer_{layer}")
    return root


# ---- models and texts ----------------------------------------------------------------------------

def tiny_checkpoint(out: Path, n_layers: int = 3, d_model: int = 32, seed: int = 0) -> Path:
    """A random tiny llama saved to ``out`` (3 layers × 32 unless told otherwise)."""
    return make_tiny_checkpoint(out, "llama", n_layers=n_layers, d_model=d_model, seed=seed)


def texts(n: int = 240, seed: int = 0, length: int | tuple[int, int] = 16, words=WORDS) -> list[str]:
    """``n`` random documents of ``words``: ``length`` words each, or a random count in ``(lo, hi)``."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(length if isinstance(length, int) else rng.randint(*length)))
            for _ in range(n)]


def write_texts(path: Path, n: int = 240, seed: int = 0, **kw) -> Path:
    """``texts(n, seed, **kw)`` one per line into ``path`` → ``path``."""
    path.write_text("\n".join(texts(n, seed, **kw)) + "\n")
    return path


# ---- activations ---------------------------------------------------------------------------------

def make_acts(root: Path, *, n_layers: int = 2, d_model: int = 32, n_docs: int = 500, seq_len: int = 32,
              seed: int = 0) -> tuple[Path, Path]:
    """Trace every layer of a tiny random llama over random word documents → ``(model_dir, acts_dir)``."""
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    root = Path(root)
    model = tiny_checkpoint(root / "model", n_layers=n_layers, d_model=d_model, seed=seed)
    data = write_texts(root / "text.txt", n_docs, seed, length=(4, 30))
    acts = root / "acts.parquet"
    trace(TraceConfig(data=[str(data)], out=str(acts), layers=["all"], model=str(model),
                      seq_len=seq_len, batch_size=32), progress=False)
    return model, acts


def poison_rows(acts: Path, layer: int, rows: list[int], value: float = float("nan")) -> None:
    """Overwrite ``rows`` of ``layer`` in the first shard with ``value`` (same schema and row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuiwb.trace.shards import column_name, read_manifest

    man = read_manifest(acts)
    shard = acts / sorted(man["shards"], key=lambda s: s["seq_start"])[0]["file"]
    pf = pq.ParquetFile(shard)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    table = pf.read()
    col = column_name(layer)
    dtype = np.dtype(man["dtype"])
    width = man["d_model"] * dtype.itemsize
    raw = np.frombuffer(table.column(col).combine_chunks().buffers()[1], dtype=dtype,
                        count=len(table) * man["d_model"]).reshape(len(table), man["d_model"]).copy()
    raw[rows] = value
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(table), [None, pa.py_buffer(raw.tobytes())])
    table = table.set_column(table.schema.get_field_index(col), table.schema.field(col), arr)
    writer = pq.ParquetWriter(shard, table.schema, use_dictionary=False, compression="none")
    start = 0
    for n in sizes:
        writer.write_table(table.slice(start, n))
        start += n
    writer.close()


# ---- the LoRA fit's reference -------------------------------------------------------------------

def reference_closed_form(G, C, yy, rank, ridge):
    """The float64 solve with an explicit identity that tuiwb used before the fp32 Cholesky one: kept
    for the tests only, as the reference the new solve is compared with (``(A_full, B, r2)``)."""
    G, C = G.double(), C.double()
    diag = G.diagonal().clamp_min(0)
    scale = torch.where(diag > 0, diag.rsqrt(), torch.zeros_like(diag))
    Gs = G * scale[:, None] * scale[None, :]
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    W = torch.linalg.solve(Gs + ridge * eye, C * scale[:, None]) * scale[:, None]
    evals, evecs = torch.linalg.eigh(W.T @ G @ W)
    V = evecs[:, -rank:].flip(-1)
    fitted = (W @ V) @ V.T
    resid = yy - 2 * float((fitted * C).sum()) + float((fitted * (G @ fitted)).sum())
    return (W @ V).T.float(), V.float(), 1.0 - resid / yy
