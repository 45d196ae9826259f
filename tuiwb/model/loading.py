"""Load Hugging Face causal LMs (full precision, 8-bit or 4-bit) as a ``LoadedModel``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tuiwb.choices import DEFAULT_DEVICE, DTYPE_NAMES, QUANT_CHOICES
from tuiwb.errors import TuiwbError
from tuiwb.model.arch import resolve_arch
from tuiwb.model.loaded import LoadedModel

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep == "\\" and "\\" in spec


def load_model(
    spec: str,
    *,
    quant: str | None = None,
    device: str = DEFAULT_DEVICE,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a decoder-only causal LM from a local directory or a hub id.

    ``quant`` loads the weights through bitsandbytes (8-bit or 4-bit); ``trust_remote_code`` stays off
    unless the user asks for it. Errors the user can fix become one-line ``TuiwbError``s.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if quant is not None and quant not in QUANT_CHOICES:
        raise TuiwbError(f"`quant` must be one of {', '.join(QUANT_CHOICES)}, not {quant!r}")
    if dtype is not None and dtype not in DTYPES:
        raise TuiwbError(f"`dtype` must be one of {', '.join(DTYPES)}, not {dtype!r}")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TuiwbError(f"{spec} has no config.json: point `model` at a Hugging Face checkpoint directory")
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
        raise TuiwbError(f"cannot load {spec} with `quant={quant}`: {str(e).splitlines()[0]}") from e
    if quant is None:
        model = model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TuiwbError(f"{spec} has no usable tokenizer: {str(e).splitlines()[0]}") from e
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=spec, arch=arch, quant=quant)
