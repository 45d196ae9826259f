"""What this machine offers tuiwb: library versions, devices with free memory, working quant modes.

``tuiwb env`` prints it. Each quant mode is *tried* (a tiny bitsandbytes layer quantized and run on
the device ``--device auto`` picks), since an installed bitsandbytes without kernels for this GPU or
CPU only fails at the first forward.
"""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from tuiwb.choices import QUANT_CHOICES
from tuiwb.model.loading import default_compute_dtype, resolve_device
from tuiwb.model.quiet_imports import no_kernel_downloads


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict]:
    """Each CUDA device: index, name, total and free memory (GiB), bfloat16 support."""
    out = []
    if not torch.cuda.is_available():
        return out
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append({"index": i, "name": torch.cuda.get_device_name(i), "free_gib": round(free / 2**30, 2),
                    "total_gib": round(total / 2**30, 2),
                    "bf16": bool(torch.cuda.get_device_capability(i) >= (8, 0))})
    return out


def probe_quant(mode: str, device: str) -> str | None:
    """None when ``mode`` quantizes and runs a forward on ``device``; else the first line of why not."""
    try:
        with no_kernel_downloads():
            import bitsandbytes as bnb
        if mode == "4bit":
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=default_compute_dtype(device))
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        layer = layer.to(device)
        x = torch.randn(2, 64, device=device, dtype=default_compute_dtype(device))
        with torch.no_grad():
            y = layer(x)
        if not torch.isfinite(y.float()).all():
            return "the forward gave non-finite values"
        return None
    except Exception as e:  # noqa: BLE001 — any failure means "this mode does not work here"
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def report() -> dict:
    """Everything ``tuiwb env`` shows, as one JSON-able dict."""
    device = resolve_device("auto")
    mps = getattr(torch.backends, "mps", None)
    quant = {mode: probe_quant(mode, device) for mode in QUANT_CHOICES}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in
                     ("torch", "transformers", "accelerate", "bitsandbytes", "peft", "tuiwb")},
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": gpus(),
        "mps": bool(mps is not None and mps.is_available()),
        "auto_device": device,
        "compute_dtype_4bit": str(default_compute_dtype(device)).replace("torch.", ""),
        "quant": {mode: ("ok" if why is None else why) for mode, why in quant.items()},
    }
