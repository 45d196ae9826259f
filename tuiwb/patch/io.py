"""LoRA patches on disk: ``lora/NAME/`` = ``manifest.json`` + a standard PEFT adapter.

``adapter_config.json`` and ``adapter_model.safetensors`` are exactly what
``PeftModel.from_pretrained(base_model, "lora/NAME")`` loads, so a patch (or a merged export of
several) goes to production without tuiwb. ``manifest.json`` adds what tuiwb needs to attach it
safely elsewhere: the base model's id and config hash (a mismatch is refused), the layer, features,
mode, rank, target modules and the measured fidelity.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tuiwb import __version__
from tuiwb.atomic import check_writable, publish_dir, staged_dir
from tuiwb.errors import TuiwbError
from tuiwb.model.arch import fingerprints_match
from tuiwb.model.quiet_imports import import_peft
from tuiwb.patch.lora_fit import LoraFactors

MANIFEST = "manifest.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT = "tuiwb-lora-patch"
EXPORT_FORMAT = "tuiwb-lora-export"
FORMAT_VERSION = 1
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class StoredPatch:
    """A LoRA patch read back from ``lora/NAME``."""

    path: Path
    """The directory it was read from."""
    manifest: dict
    """``manifest.json`` as a dict."""
    factors: LoraFactors
    """Effective factors (PEFT's ``lora_alpha / r`` scaling folded into A)."""


BASE_KEYS = ("base_model", "config_hash", "model_type", "d_model", "n_layers", "weights_fingerprint")
IDENTITY_KEYS = ("format", "format_version", *BASE_KEYS, "target_modules", "created", "tuiwb_version")
"""Manifest keys every patch and export gets from the writer (the rest describe the patch itself)."""


def base_identity(loaded) -> dict:
    """What a patch records about its base model (``BASE_KEYS``), and what attaching it checks."""
    values = (loaded.model_id, loaded.config_hash, loaded.config.model_type, loaded.d_model, loaded.n_layers,
              loaded.fingerprint)
    return dict(zip(BASE_KEYS, values))


def check_base(manifest: dict, loaded, where: str) -> None:
    """Refuse a patch made for another base model (config hash, d_model, layer count)."""
    mine = base_identity(loaded)
    diffs = [f"{key} {manifest.get(key)!r} ≠ {mine[key]!r}" for key in ("config_hash", "d_model", "n_layers")
             if manifest.get(key) != mine[key]]
    if not diffs and not fingerprints_match(manifest.get("weights_fingerprint"), mine["weights_fingerprint"]):
        diffs = ["same config, other weights"]
    if diffs:
        raise TuiwbError(f"{where} was built for a different base model ({manifest.get('base_model')!r}; "
                         f"{', '.join(diffs)}): load it with that model, or rebuild the patch for this one")


def _write_adapter(dir_: Path, loaded, modules: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors``; returns the config dict.

    Modules may have different ranks (a merged export): PEFT's ``rank_pattern``/``alpha_pattern``
    carry them, and ``lora_alpha = r`` per module keeps the scaling at 1 so A is stored as is.
    """
    LoraConfig = import_peft().LoraConfig
    from safetensors.torch import save_file

    ranks = {name: int(A.shape[0]) for name, (A, _) in modules.items()}
    r = max(ranks.values())
    pattern = {name: rk for name, rk in ranks.items() if rk != r}
    from tuiwb.patch.rack import fan_in_fan_out

    config = LoraConfig(r=r, lora_alpha=r, target_modules=sorted(modules), lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM", rank_pattern=pattern, alpha_pattern=dict(pattern),
                        base_model_name_or_path=loaded.model_id,
                        fan_in_fan_out=fan_in_fan_out(loaded.model, modules))
    config.save_pretrained(str(dir_))
    tensors = {}
    for name, (A, B) in modules.items():
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = A.detach().float().contiguous().cpu()  # [r, d_in]
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = B.detach().float().contiguous().cpu()  # [d_out, r]
    save_file(tensors, str(dir_ / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return json.loads((dir_ / ADAPTER_CONFIG).read_text())


def save_patch(out: str | Path, loaded, factors: LoraFactors, meta: dict, *, overwrite: bool = False) -> Path:
    """Write ``out/`` = manifest + PEFT adapter, atomically. ``meta`` holds the patch's own fields."""
    return _write_dir(out, loaded, factors.modules, overwrite,
                      lambda config: {"format": FORMAT, **meta, "rank": factors.rank})


def read_patch(path: str | Path) -> StoredPatch:
    """Read ``lora/NAME``: manifest + adapter, as effective factors. Errors name the broken file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise TuiwbError(f"LoRA patch {p} does not exist: point `lora` at a lora/NAME directory")
    for f in (MANIFEST, ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (p / f).is_file():
            raise TuiwbError(f"{p} has no {f}: is it a tuiwb LoRA patch (made by `tuiwb patch build`)?")
    try:
        manifest = json.loads((p / MANIFEST).read_text())
        config = json.loads((p / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise TuiwbError(f"{p}: broken JSON ({e})") from e
    if manifest.get("format") == EXPORT_FORMAT:
        raise TuiwbError(f"{p} is a merged export: attach the individual lora/NAME patches it was made from")
    if manifest.get("format") != FORMAT:
        raise TuiwbError(f"{p}/{MANIFEST} is not a tuiwb LoRA patch manifest")
    if config.get("use_dora") or config.get("use_rslora"):
        raise TuiwbError(f"{p}: DoRA / rsLoRA adapters are not supported")
    try:
        tensors = load_file(str(p / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise TuiwbError(f"{p}/{ADAPTER_WEIGHTS} cannot be read: {e}") from e
    modules = {}
    for name in manifest.get("target_modules", []):
        try:
            A = tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"].float()  # [r, d_in]
            B = tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"].float()  # [d_out, r]
        except KeyError:
            raise TuiwbError(f"{p}/{ADAPTER_WEIGHTS} has no weights for {name}") from None
        r = int(A.shape[0])
        alpha = float(config.get("alpha_pattern", {}).get(name, config.get("lora_alpha", r)))
        modules[name] = (A * (alpha / r), B)
    if not modules:
        raise TuiwbError(f"{p}/{MANIFEST} lists no target modules")
    ranks = {int(A.shape[0]) for A, _ in modules.values()}
    return StoredPatch(path=p, manifest=manifest, factors=LoraFactors(modules=modules, rank=max(ranks)))


def check_modules(stored: StoredPatch, loaded) -> None:
    """Refuse a patch whose target modules or shapes this model does not have."""
    modules = dict(loaded.model.named_modules())
    for name, (A, B) in stored.factors.modules.items():
        if name not in modules:
            raise TuiwbError(f"{stored.path} targets {name}, which this model does not have")
        mod = modules[name]
        base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
        d_in, d_out = getattr(base, "in_features", None), getattr(base, "out_features", None)
        if d_in is not None and d_out is not None and (A.shape[1] != d_in or B.shape[0] != d_out):
            raise TuiwbError(f"{stored.path}: LoRA for {name} is {B.shape[0]}×{A.shape[1]} but the module is "
                             f"{d_out}×{d_in}: the patch was made for another model")


def export_merged(out: str | Path, loaded, patches: list[tuple[dict, LoraFactors]], *,
                  overwrite: bool = False) -> Path:
    """Merge several LoRA patches into one PEFT adapter at ``out`` (their updates add up).

    Patches on the same module are concatenated along the rank (A stacked, B side by side), which
    is exactly the sum PEFT computes when both adapters are active.
    """
    if not patches:
        raise TuiwbError("nothing to export: give at least one `lora` patch")
    merged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for _meta, factors in patches:
        for name, (A, B) in factors.modules.items():
            if name in merged:
                A0, B0 = merged[name]
                merged[name] = (torch.cat([A0, A], 0), torch.cat([B0, B], 1))  # [r0+r, d_in], [d_out, r0+r]
            else:
                merged[name] = (A.clone(), B.clone())
    return _write_dir(out, loaded, merged, overwrite,
                      lambda config: {"format": EXPORT_FORMAT, "patches": [meta for meta, _ in patches],
                                      "rank": config["r"], "rank_pattern": config.get("rank_pattern") or {}})


def check_output(out: str | Path, overwrite: bool) -> Path:
    """``out`` may be written: it does not exist, or ``overwrite`` is set and it is a tuiwb patch or
    export (recognised by its manifest) or empty. Anything else is never replaced."""
    out = Path(out)
    if not out.exists():
        return check_writable(out, "the output directory")
    if not overwrite:
        raise TuiwbError(f"{out} already exists: choose another output directory, or pass `force=True`")
    if not out.is_dir():
        raise TuiwbError(f"{out} exists and is not a directory: choose another output directory")
    if any(out.iterdir()):
        try:
            fmt_ = json.loads((out / MANIFEST).read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            fmt_ = None
        if fmt_ not in (FORMAT, EXPORT_FORMAT):
            raise TuiwbError(f"{out} exists and is not a tuiwb patch or export (no tuiwb {MANIFEST}): "
                             "replacing it could destroy other files; choose another output directory")
    return check_writable(out, "the output directory")


def _write_dir(out: str | Path, loaded, modules: dict, overwrite: bool, fields) -> Path:
    """Write ``out/`` = PEFT adapter for ``modules`` + ``manifest.json``, atomically. ``fields(config)``
    gives the manifest's kind-specific fields from the written adapter config; the base model's
    identity, target modules, creation time and versions are common to patches and exports."""
    out = check_output(out, overwrite)
    with staged_dir(out) as tmp:
        config = _write_adapter(tmp, loaded, modules)
        manifest = {"format_version": FORMAT_VERSION, **fields(config), **base_identity(loaded),
                    "target_modules": sorted(modules),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tuiwb_version": __version__}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return publish_dir(tmp, out)


def lora_manifest_fields(p, edit, report, fidelity: float, src: str, held_src: str) -> dict:
    """The patch-specific manifest fields of a freshly fitted LoRA patch."""
    sae = edit.sae
    cfg = getattr(sae, "cfg", None)
    return {
        "name": p.name, "layer": p.layer, "features": list(p.features), "mode": p.mode, "alpha": edit.alpha,
        "method": "lora", "fidelity": fidelity,
        "fidelity_data": held_src,
        "sae": {"hook_name": getattr(sae, "hook_name", None), "d_sae": int(sae.W_dec.shape[0]),
                "architecture": getattr(cfg, "architecture", None),
                "weights_hash": getattr(cfg, "weights_hash", None)},
        "fit": {"data": src, "n_tokens": report.n_tokens, "r2_closed_form": report.r2_closed,
                "layer_rel_err_closed_form": report.rel_err_closed,
                "layer_rel_err_refined": report.rel_err_refined, "refined": report.refined,
                "refine_steps": report.refine_steps,
                "seconds": round(report.seconds, 3),
                "solve_seconds": round(report.solve_seconds, 3), "refine_seconds": round(report.refine_seconds, 3),
                "peak_extra_mb": round(report.peak_extra_bytes / 2**20, 1),
                "peak_extra_measured": "cuda" if report.peak_measured else "solve buffers"},
    }
