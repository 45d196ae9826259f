"""Load Hugging Face causal LMs and find their residual-stream anatomy.

Every other module talks to a model through a ``LoadedModel``: the decoder blocks (whose outputs are
the hook points ``blocks.{L}.hook_resid_post``), the modules that *write* into the residual stream
(embedding, each block's attention out-projection and MLP down-projection — what a LoRA patch edits),
the final norm and the unembedding. Architectures differ only in attribute paths, so one small table
(``ARCHITECTURES``) maps ``config.model_type`` to those paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from tuiwb.choices import DTYPE_NAMES, QUANT_CHOICES
from tuiwb.errors import TuiwbError

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


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

HOOK_KINDS = ("resid_post", "attn_out", "mlp_out")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|attn_out|mlp_out)$")


def hook_name(layer: int, kind: str = "resid_post") -> str:
    """TransformerLens-style hook point name, e.g. ``blocks.3.hook_resid_post``."""
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r}; expected one of {HOOK_KINDS}")
    return f"blocks.{layer}.hook_{kind}"


def parse_hook_name(name: str) -> tuple[int, str]:
    """``"blocks.3.hook_resid_post"`` → ``(3, "resid_post")``."""
    m = _HOOK_RE.match(name)
    if not m:
        raise TuiwbError(f"bad hook name {name!r}: expected blocks.<layer>.hook_resid_post|attn_out|mlp_out")
    return int(m.group(1)), m.group(2)


def config_hash(config) -> str:
    """Short stable hash of the parts of a model config that define its weights' shapes and wiring.

    Used to refuse SAEs, activations or patches made for a different base model.
    """
    d = config.to_dict()
    volatile = {"_name_or_path", "torch_dtype", "dtype", "transformers_version", "quantization_config",
                "use_cache", "_attn_implementation", "_attn_implementation_autoset", "architectures",
                "output_hidden_states", "output_attentions", "return_dict"}
    keep = {k: v for k, v in sorted(d.items()) if k not in volatile}
    blob = json.dumps(keep, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    mod = root
    for part in dotted.split("."):
        mod = getattr(mod, part)
    return mod


@dataclass
class LoadedModel:
    """A causal LM plus its tokenizer and residual-stream anatomy."""

    model: nn.Module
    """The ``*ForCausalLM`` module, in eval mode."""
    tokenizer: object
    """The matching ``PreTrainedTokenizer(Fast)``."""
    model_id: str
    """What the user passed: a local path or a hub id."""
    arch: ArchSpec
    """Attribute paths for this architecture."""
    quant: str | None = None
    """``"8bit"``, ``"4bit"`` or None."""

    @property
    def config(self):
        return self.model.config

    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.model.config)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int | None:
        c = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if getattr(c, key, None):
                return int(getattr(c, key))
        return None

    @cached_property
    def blocks(self) -> nn.ModuleList:
        return get_module(self.model, self.arch.blocks)

    def block(self, layer: int) -> nn.Module:
        self.check_layer(layer)
        return self.blocks[layer]

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise TuiwbError(f"layer {layer} is out of range: this model has layers 0..{self.n_layers - 1}")

    @property
    def embed(self) -> nn.Module:
        return get_module(self.model, self.arch.embed)

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.model, self.arch.final_norm)

    @property
    def unembed(self) -> nn.Module:
        """The logits projection (``lm_head``, whatever the architecture calls it)."""
        return self.model.get_output_embeddings()

    def writer_names(self, layer: int) -> dict[str, str]:
        """Full dotted names of the modules of block ``layer`` that write into the residual stream."""
        self.check_layer(layer)
        prefix = f"{self.arch.blocks}.{layer}"
        return {"attn_out": f"{prefix}.{self.arch.attn_out}", "mlp_out": f"{prefix}.{self.arch.mlp_out}"}

    def writers(self, layer: int) -> dict[str, nn.Module]:
        """``{"attn_out": module, "mlp_out": module}`` for block ``layer``."""
        return {k: get_module(self.model, n) for k, n in self.writer_names(layer).items()}

    def hook_module(self, name: str) -> nn.Module:
        """The module whose forward output *is* the named hook point."""
        layer, kind = parse_hook_name(name)
        self.check_layer(layer)
        if kind == "resid_post":
            return self.blocks[layer]
        return self.writers(layer)[kind]

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, BOS-prefixed, checked against the context length."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None:
            ids = [bos] + ids
        limit = self.max_positions
        if limit is not None and len(ids) > limit:
            raise TuiwbError(f"prompt is {len(ids)} tokens but the model's context is {limit}: shorten the prompt")
        if not ids:
            raise TuiwbError("prompt is empty: give some text with --prompt")
        return ids

    def token_str(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep == "\\" and "\\" in spec


def resolve_arch(config) -> ArchSpec:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise TuiwbError(f"architecture {model_type!r} is not supported yet; supported: {supported}")
    return ARCHITECTURES[model_type]


def load_model(
    spec: str,
    *,
    quant: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a decoder-only causal LM from a local directory or a hub id.

    ``quant`` loads the weights through bitsandbytes (8-bit or 4-bit); ``trust_remote_code`` stays off
    unless the user asks for it. Errors the user can fix become one-line ``TuiwbError``s.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if quant is not None and quant not in QUANT_CHOICES:
        raise TuiwbError(f"--quant must be one of {', '.join(QUANT_CHOICES)}, not {quant!r}")
    if dtype is not None and dtype not in DTYPES:
        raise TuiwbError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TuiwbError(f"{spec} has no config.json: point --model at a Hugging Face checkpoint directory")
        spec = str(path)
    elif _looks_like_path(spec):
        raise TuiwbError(f"model path {spec} does not exist: check the path or give a Hugging Face hub id")

    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TuiwbError(f"cannot load a model config from {spec!r}: {first}") from e
    arch = resolve_arch(config)

    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = DTYPES[dtype]
    if quant is not None:
        from transformers import BitsAndBytesConfig

        if quant == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            compute = DTYPES[dtype] if dtype else torch.float32
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise TuiwbError(f"{spec} is not a causal language model ({config.model_type}): "
                             "tuiwb needs a decoder-only *ForCausalLM checkpoint") from e
        raise
    except ImportError as e:
        raise TuiwbError(f"cannot load {spec} with --quant {quant}: {str(e).splitlines()[0]}") from e
    if quant is None:
        model = model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TuiwbError(f"{spec} has no usable tokenizer: {str(e).splitlines()[0]}") from e
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=spec, arch=arch, quant=quant)


def from_pretrained_objects(model: nn.Module, tokenizer, model_id: str = "<in-memory>") -> LoadedModel:
    """Wrap an already-loaded model (notebooks, tests)."""
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, arch=resolve_arch(model.config))
