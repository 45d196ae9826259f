"""``--device-map``: split one model over several devices through accelerate.

``auto`` / ``balanced`` let accelerate place the blocks by free memory (``balanced`` spreads them
evenly over the GPUs, which is what 2×24 GB cards want); a JSON object names the device of each
module prefix, e.g. ``{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, ...}``.
Hooks, patches and SAEs then run wherever their block lives (:func:`module_device`).
"""

from __future__ import annotations

import json

import torch
from torch import nn

from tuiwb.errors import ParamError

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's placement strategies ``--device-map`` accepts by name."""


def parse_device_map(spec: str | dict | None) -> str | dict[str, int | str] | None:
    """``None``, a strategy name, or ``{module prefix: device}`` (a GPU index, ``cpu``, ``cuda:1``, ``disk``)."""
    if spec is None or isinstance(spec, dict):
        return _check_map(spec) if isinstance(spec, dict) else None
    spec = str(spec).strip()
    if not spec:
        return None
    if spec in DEVICE_MAP_STRATEGIES:
        return spec
    if not spec.startswith("{"):
        raise ParamError("device_map", f"{spec!r} is neither {', '.join(DEVICE_MAP_STRATEGIES)} nor a JSON "
                                       'object like {"model.layers.0": 0, "model.layers.1": 1}')
    try:
        mapping = json.loads(spec)
    except json.JSONDecodeError as e:
        raise ParamError("device_map", f"is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(mapping, dict):
        raise ParamError("device_map", "must be a JSON object of module prefix → device")
    return _check_map(mapping)


def _check_map(mapping: dict) -> dict[str, int | str]:
    if not mapping:
        raise ParamError("device_map", "is an empty object: name at least one module")
    out: dict[str, int | str] = {}
    for name, dev in mapping.items():
        if isinstance(dev, bool) or not isinstance(dev, (int, str)):
            raise ParamError("device_map", f"device of {name!r} must be a GPU index or a device name, not {dev!r}")
        if isinstance(dev, str) and dev != "disk":
            try:
                torch.device(dev)
            except (RuntimeError, ValueError):
                raise ParamError("device_map", f"{dev!r} (for {name!r}) is not a torch device") from None
        out[str(name)] = dev
    return out


def _as_device(dev: int | str) -> torch.device | None:
    if isinstance(dev, int):
        return torch.device("cuda", dev)
    if dev == "disk":
        return None
    return torch.device(dev)


def module_device(model: nn.Module, name: str, module: nn.Module | None = None) -> torch.device:
    """The device module ``name`` computes on: its entry in ``model.hf_device_map`` (longest prefix),
    else the device of its first real (non-meta) parameter, else the model's input device.

    Offloaded modules (``cpu``/``disk`` entries under accelerate hooks) compute on the main device.
    """
    dmap = getattr(model, "hf_device_map", None) or {}
    best = None
    for prefix, dev in dmap.items():
        if prefix == "" or name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, dev)
    if best is not None:
        dev = _as_device(best[1])
        if dev is not None:
            return dev
    if module is not None:
        for p in module.parameters():
            if p.device.type != "meta":
                return p.device
    return input_device(model)


def input_device(model: nn.Module) -> torch.device:
    """Where token ids go: the device of the input embedding."""
    w = model.get_input_embeddings().weight
    if w.device.type != "meta":
        return w.device
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
