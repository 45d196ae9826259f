"""Load Hugging Face causal LMs (full precision, 8-bit or 4-bit) as a ``LoadedModel``."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

from tuiwb.choices import DEFAULT_DEVICE, DTYPE_NAMES, QUANT_CHOICES
from tuiwb.errors import ParamError, TuiwbError
from tuiwb.model.arch import resolve_arch
from tuiwb.model.device_map import parse_device_map
from tuiwb.model.loaded import LoadedModel
from tuiwb.model.quiet_imports import no_kernel_downloads

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep == "\\" and "\\" in spec


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_device(spec: str | None) -> str:
    """A torch device that exists here: ``auto`` → cuda, then mps, then cpu; a one-line error otherwise."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ParamError("device", f"{spec!r} is not a torch device: use auto, cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamError("device", f"{spec} is not available: this torch has no usable CUDA GPU (use cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ParamError("device", f"{spec} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ParamError("device", f"{spec} is not available here (use cpu or auto)")
    return spec


def default_compute_dtype(device: str) -> torch.dtype:
    """The 4-bit compute dtype: bfloat16 on a GPU that has it (Ampere and later), float16 on older
    GPUs, float32 on the CPU (whose bfloat16 matmuls are slow on most chips)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "mps":
        return torch.float16
    return torch.float32


def _check_hub_id(spec: str) -> None:
    """Reach the hub only for a well-formed id, say so in one line, and never when offline."""
    if not _HUB_ID.match(spec):
        raise TuiwbError(f"`model` {spec!r} is neither a local checkpoint directory nor a Hugging Face hub id "
                         "(owner/name): check the path")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(spec, "config.json"), str)
    except Exception:  # noqa: BLE001 — a malformed cache only means "not cached"
        cached = False
    if cached:
        return
    if _offline():
        raise TuiwbError(f"`model` {spec!r} is not a local directory and not in the Hugging Face cache, and the "
                         "hub is offline (HF_HUB_OFFLINE): check the path, or download it first")
    print(f"tuiwb: {spec} is not a local directory: fetching it from the Hugging Face hub", file=sys.stderr)


def load_model(
    spec: str,
    *,
    quant: str | None = None,
    device: str = DEFAULT_DEVICE,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load a decoder-only causal LM from a local directory or a hub id.

    ``quant`` loads the weights through bitsandbytes (8-bit or 4-bit); ``trust_remote_code`` stays off
    unless the user asks for it, and so does ``allow_pickle``: only safetensors weights load by
    default, since unpickling a ``pytorch_model.bin`` runs whatever code the file contains.
    ``device_map`` (``auto``, ``balanced`` or ``{module prefix: device}``) splits the model over
    several devices through accelerate; ``device`` then only decides the 4-bit compute dtype. Errors the
    user can fix become one-line ``TuiwbError``s, before any weight is read where possible.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if quant is not None and quant not in QUANT_CHOICES:
        raise TuiwbError(f"`quant` must be one of {', '.join(QUANT_CHOICES)}, not {quant!r}")
    if dtype is not None and dtype not in DTYPES:
        raise TuiwbError(f"`dtype` must be one of {', '.join(DTYPES)}, not {dtype!r}")
    device = resolve_device(device)
    device_map = parse_device_map(device_map)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TuiwbError(f"{spec} has no config.json: point `model` at a Hugging Face checkpoint directory")
        spec = str(path)
        if not allow_pickle and not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
            raise TuiwbError(f"{spec} has only pickle weights (*.bin), which can run arbitrary code when loaded: "
                             "convert them to safetensors, or pass `allow_pickle=True` if you trust the file")
    elif _looks_like_path(spec):
        raise TuiwbError(f"model path {spec} does not exist: check the path or give a Hugging Face hub id")
    else:
        _check_hub_id(spec)

    try:
        config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TuiwbError(f"cannot load a model config from {spec!r}: {first}") from e
    arch = resolve_arch(config)

    kwargs: dict = {"trust_remote_code": trust_remote_code, "use_safetensors": None if allow_pickle else True}
    if dtype is not None:
        kwargs["dtype"] = DTYPES[dtype]
    if quant is not None:
        from transformers import BitsAndBytesConfig

        with no_kernel_downloads():
            import bitsandbytes  # noqa: F401 — imported here, quietly, before transformers does it

        if quant == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            compute = DTYPES[dtype] if dtype else default_compute_dtype(device)
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device}
    if device_map is not None:
        kwargs["device_map"] = device_map
        if isinstance(device_map, dict) and "disk" in device_map.values():
            import tempfile

            kwargs["offload_folder"] = tempfile.mkdtemp(prefix="tuiwb-offload-")
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise TuiwbError(f"{spec} is not a causal language model ({config.model_type}): "
                             "tuiwb needs a decoder-only *ForCausalLM checkpoint") from e
        raise
    except ImportError as e:
        raise TuiwbError(f"cannot load {spec} with `quant={quant}`: {str(e).splitlines()[0]}") from e
    except OSError as e:
        if not allow_pickle and "safetensors" in str(e):
            raise TuiwbError(f"{spec} has no safetensors weights: convert them, or pass `allow_pickle=True` "
                             "if you trust its pickle files (they can run arbitrary code)") from e
        raise
    if quant is None and device_map is None:
        model = model.to(device)
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TuiwbError(f"{spec} has no usable tokenizer: {str(e).splitlines()[0]}") from e
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=spec, arch=arch, quant=quant)
