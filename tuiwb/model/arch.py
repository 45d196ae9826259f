"""Where each architecture keeps its residual-stream anatomy, and a model's identity hash.

Architectures differ only in attribute paths, so one small table (``ARCHITECTURES``) maps
``config.model_type`` to those paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tuiwb.errors import TuiwbError
from tuiwb.hashing import stable_hash


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths (dotted, from the top ``*ForCausalLM`` module) of one architecture."""

    blocks: str
    """The ``nn.ModuleList`` of decoder layers."""
    embed: str
    """Token embedding (writes the first residual stream)."""
    attn_out: str
    """Attention out-projection, relative to a block."""
    mlp_out: str
    """MLP down-projection, relative to a block."""
    final_norm: str
    """Norm applied before the unembedding."""


_LLAMA_LIKE = ArchSpec(
    blocks="model.layers",
    embed="model.embed_tokens",
    attn_out="self_attn.o_proj",
    mlp_out="mlp.down_proj",
    final_norm="model.norm",
)
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    # Gemma2 norms each sub-block's output before adding it (post_*_layernorm), so o_proj/down_proj
    # write into the residual through an RMSNorm; a fitted LoRA still works, a projection would not.
    "gemma2": _LLAMA_LIKE,
    "gpt2": ArchSpec(
        blocks="transformer.h",
        embed="transformer.wte",
        attn_out="attn.c_proj",
        mlp_out="mlp.c_proj",
        final_norm="transformer.ln_f",
    ),
    "gpt_neox": ArchSpec(
        blocks="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        attn_out="attention.dense",
        mlp_out="mlp.dense_4h_to_h",
        final_norm="gpt_neox.final_layer_norm",
    ),
}


def resolve_arch(config) -> ArchSpec:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise TuiwbError(f"architecture {model_type!r} is not supported yet; supported: {supported}")
    return ARCHITECTURES[model_type]


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    mod = root
    for part in dotted.split("."):
        mod = getattr(mod, part)
    return mod


_VOLATILE = {"_name_or_path", "torch_dtype", "dtype", "transformers_version", "quantization_config",
             "use_cache", "_attn_implementation", "_attn_implementation_autoset", "architectures",
             "output_hidden_states", "output_attentions", "return_dict"}


def weights_fingerprint(model) -> list[float]:
    """Eight numbers that tell two checkpoints of one config apart: sums of spread-out rows of the
    token embedding (never quantized by bitsandbytes, so 4/8-bit loads agree with fp ones).

    Same config, other weights (a fine-tune, another seed) gives other numbers; the same weights in
    another dtype give nearly the same ones, hence :func:`fingerprints_match`'s tolerance.
    """
    import torch

    w = model.get_input_embeddings().weight
    rows = torch.linspace(0, w.shape[0] - 1, 8).long().to(w.device)
    with torch.no_grad():
        sums = w[rows].double().sum(-1).cpu().tolist()
    return [float(f"{s:.6g}") for s in sums]


def fingerprints_match(a, b) -> bool:
    """Whether two fingerprints come from the same weights (None — an older file — always matches)."""
    if not a or not b:
        return True
    if len(a) != len(b):
        return False
    scale = sum(abs(x) for x in a) / len(a) + 1e-6
    return all(abs(x - y) <= 0.02 * max(abs(x), abs(y)) + 0.02 * scale for x, y in zip(a, b))


def config_hash(config) -> str:
    """Short stable hash of the parts of a model config that define its weights' shapes and wiring.

    Used to refuse SAEs, activations or patches made for a different base model.
    """
    return stable_hash({k: v for k, v in config.to_dict().items() if k not in _VOLATILE})
