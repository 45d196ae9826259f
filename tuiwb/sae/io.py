"""SAE directories on disk: tuiwb's own (= SAELens layout) and imports from SAELens and sparsify.

**Written** (``saes/layer_N/``): ``cfg.json`` + ``sae_weights.safetensors`` with SAELens names and
shapes (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``,
+ ``threshold`` for JumpReLU). ``cfg.json`` has SAELens v6 keys (``d_in``, ``d_sae``, ``architecture``
— ``"standard"`` for ReLU —, ``k``, ``apply_b_dec_to_input``, ``normalize_activations``,
``metadata.{model_name, hook_name, ...}``) and ours under ``tuiwb`` (layer, model config hash,
trace manifest hash, norm factor, training config, metrics). The weights are already in native
activation scale, so ``normalize_activations`` is ``"none"``.

**Read**: the above; other SAELens directories (v6 ``metadata``/``meta`` or pre-v6 flat keys;
``standard``, ``topk`` — also the pre-v6 ``activation_fn: topk`` spelling — and ``jumprelu`` with
``threshold`` or ``log_threshold``); EleutherAI sparsify directories (``cfg.json`` with ``d_in``, ``k``,
``num_latents``/``expansion_factor`` + ``sae.safetensors`` with ``encoder.weight [d_sae, d_in]``,
``encoder.bias``, ``W_dec [d_sae, d_in]``, ``b_dec``). Weights load through safetensors only.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from tuiwb.atomic import publish_dir, staged_dir
from tuiwb.errors import TuiwbError, render_plain
from tuiwb.model.hooks import hook_layer, hook_name
from tuiwb.sae.model import SAE, SAEConfig

CFG_FILE = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
# Written into metadata.sae_lens_version: SAELens' loader reads configs below 6.0 with the old flat
# key layout, so this marks which layout the file follows (it is not a claim that SAELens wrote it).
SAELENS_LAYOUT_VERSION = "6.0.0"
_LAYER_DIR = re.compile(r"^layer_(\d+)$")

_ARCH_TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}


# ---- writing ------------------------------------------------------------------------------------
def sae_cfg_dict(sae: SAE) -> dict:
    """The ``cfg.json`` content for ``sae`` (SAELens v6 keys + ``tuiwb``)."""
    from tuiwb import __version__

    c = sae.cfg
    return {
        "architecture": _ARCH_TO_SAELENS[c.architecture],
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "k": c.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": c.model_name,
            "hook_name": c.hook_name,
            "hook_layer": c.layer,
            "hook_head_index": None,
            "prepend_bos": True,
            "sae_lens_version": SAELENS_LAYOUT_VERSION,
            "sae_lens_training_version": None,
        },
        "tuiwb": {
            "version": __version__,
            "layer": c.layer,
            "architecture": c.architecture,
            "model_config_hash": c.model_config_hash,
            "model_fingerprint": c.model_fingerprint,
            "trace_manifest_hash": c.trace_manifest_hash,
            "weights_hash": c.weights_hash,
            "norm_scaling_factor": c.norm_scaling_factor,
            "source": c.source,
            "training": c.training,
            "metrics": c.metrics,
            "extra": c.extra,
        },
    }


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write ``sae`` to directory ``path`` (replaced whole, never left half-written)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sae.state_dict().items()}
    with staged_dir(path) as tmp:
        save_file(tensors, str(tmp / SAELENS_WEIGHTS))
        sae.cfg.weights_hash = file_sha256(tmp / SAELENS_WEIGHTS)
        (tmp / CFG_FILE).write_text(json.dumps(sae_cfg_dict(sae), indent=2, default=_json_default) + "\n")
        return publish_dir(tmp, path)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 8 MB chunks (an SAE of 131k latents at width 4096 is ~4 GB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---- reading ------------------------------------------------------------------------------------
def load_sae(path: str | Path, *, device: str | torch.device = "cpu", layer: int | None = None,
             hook_name: str | None = None) -> SAE:
    """Load an SAE directory (tuiwb/SAELens or sparsify layout); errors are one-line ``TuiwbError``s."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise TuiwbError(f"SAE directory {path} does not exist: give a saes/layer_N directory")
    cfg_path = path / CFG_FILE
    if not cfg_path.is_file():
        raise TuiwbError(f"{path} has no {CFG_FILE}: not an SAE directory")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise TuiwbError(f"{cfg_path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise TuiwbError(f"{cfg_path} is not an SAE config (expected a JSON object)")
    if (path / SAELENS_WEIGHTS).is_file():
        cfg, tensors = _from_saelens(raw, path)
    elif (path / SPARSIFY_WEIGHTS).is_file():
        cfg, tensors = _from_sparsify(raw, path)
    else:
        raise TuiwbError(f"{path} has neither {SAELENS_WEIGHTS} (SAELens/tuiwb) nor {SPARSIFY_WEIGHTS} "
                         "(sparsify): not an SAE directory")
    if hook_name is not None:
        cfg.hook_name = hook_name
    if layer is not None:
        cfg.layer = int(layer)
    elif cfg.layer is None and cfg.hook_name:
        cfg.layer = _layer_from_hook(cfg)
    sae = SAE(cfg)
    _assign(sae, tensors, path)
    sae.source_dir = path  # feature stats are cached next to the weights they describe
    return sae.to(device)


def load_saes(saes_dir: str | Path, *, device: str | torch.device = "cpu") -> dict[int, SAE]:
    """Every ``layer_N/`` SAE below ``saes_dir`` keyed by layer (or ``saes_dir`` itself if it is one)."""
    root = Path(saes_dir).expanduser()
    if not root.is_dir():
        raise TuiwbError(f"SAE directory {root} does not exist: train one with `tuiwb train`")
    if (root / CFG_FILE).is_file():
        sae = load_sae(root, device=device)
        return {_need_layer(sae, root): sae}
    found: dict[int, SAE] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and _LAYER_DIR.match(p.name)):
        dir_layer = int(_LAYER_DIR.match(sub.name).group(1))
        sae = load_sae(sub, device=device)
        if sae.cfg.layer is None:
            sae.cfg.layer = dir_layer
        elif sae.cfg.layer != dir_layer:
            raise TuiwbError(f"{sub} holds an SAE for layer {sae.cfg.layer}: rename the directory "
                             f"to layer_{sae.cfg.layer}")
        found[dir_layer] = sae
    if not found:
        raise TuiwbError(f"{root} has no layer_N/ SAE directories: train some with `tuiwb train --out {root}`")
    return dict(sorted(found.items()))


def _need_layer(sae: SAE, path: Path) -> int:
    if sae.cfg.layer is None:
        raise TuiwbError(f"{path}: cannot tell which layer this SAE belongs to; put it in a layer_N directory")
    return sae.cfg.layer


def _layer_from_hook(cfg: SAEConfig) -> int | None:
    """Layer whose *output* the hook reads. ``blocks.L.hook_resid_pre`` is the same tensor as
    ``blocks.{L-1}.hook_resid_post``, so it is renamed (the original name is kept in ``extra``)."""
    m = re.match(r"^blocks\.(\d+)\.hook_resid_pre$", cfg.hook_name)
    if not m:
        return hook_layer(cfg.hook_name)
    layer = int(m.group(1))
    if layer == 0:
        return None  # the embedding output: no decoder layer writes it
    cfg.extra["hook_name_original"] = cfg.hook_name
    cfg.hook_name = hook_name(layer - 1)
    return layer - 1


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return {k: v.to(torch.float32) for k, v in load_file(str(file)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise TuiwbError(f"cannot read SAE weights {file}: {str(e).splitlines()[0] if str(e) else e}") from e


def _int(raw: dict, key: str, path: Path) -> int:
    v = raw.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v <= 0:
        raise TuiwbError(f"{path / CFG_FILE} is not an SAE config: {key!r} must be a positive integer, got {v!r}")
    return int(v)


def _from_saelens(raw: dict, path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    if "d_in" not in raw or "d_sae" not in raw:
        raise TuiwbError(f"{path / CFG_FILE} is not an SAE config: it has no d_in/d_sae")
    d_in, d_sae = _int(raw, "d_in", path), _int(raw, "d_sae", path)
    meta = raw.get("metadata") or raw.get("meta") or {}
    ours = raw.get("tuiwb") if isinstance(raw.get("tuiwb"), dict) else None
    arch_raw = str(raw.get("architecture", "standard"))
    act_fn = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
    k = raw.get("k")
    if arch_raw == "standard" and act_fn == "topk":  # SAELens < 6 spelling of a TopK SAE
        arch_raw, k = "topk", (raw.get("activation_fn_kwargs") or {}).get("k")
    arch = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(arch_raw)
    if arch is None:
        raise TuiwbError(f"{path}: SAE architecture {arch_raw!r} is not supported; tuiwb loads "
                         "standard (ReLU), topk and jumprelu SAEs")
    if arch == "topk" and raw.get("rescale_acts_by_decoder_norm"):
        raise TuiwbError(f"{path}: topk SAEs with rescale_acts_by_decoder_norm are not supported")
    norm = raw.get("normalize_activations", "none")
    if norm not in (None, False, "none"):
        raise TuiwbError(f"{path}: normalize_activations={norm!r} is not supported; tuiwb needs weights in "
                         "the model's activation scale (fold the normalisation into the weights first)")
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture=arch, k=k if arch == "topk" else None,
        hook_name=meta.get("hook_name") or raw.get("hook_name") or raw.get("hook_point"),
        model_name=meta.get("model_name") or raw.get("model_name"),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        source="saelens",
    ) if ours is None else _cfg_from_ours(raw, ours, d_in, d_sae, arch, k, meta, path)
    if ours is None:
        cfg.extra["saelens_metadata"] = {k_: v for k_, v in meta.items() if _jsonable(v)}
    tensors = _read_tensors(path / SAELENS_WEIGHTS)
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    scale = tensors.pop("scaling_factor", tensors.pop("finetuning_scaling_factor", None))
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        if "W_dec" not in tensors or scale.shape != (d_sae,):
            raise TuiwbError(f"{path}: scaling_factor has shape {tuple(scale.shape)}, expected ({d_sae},)")
        tensors["W_dec"] = tensors["W_dec"] * scale[:, None]  # SAELens scales latents before decoding
    if ours is None and arch in ("relu", "jumprelu"):
        _fold_decoder_norms(tensors, arch, cfg)
    return cfg, tensors


def _cfg_from_ours(raw, ours, d_in, d_sae, arch, k, meta, path) -> SAEConfig:
    try:
        return SAEConfig(
            d_in=d_in, d_sae=d_sae, architecture=ours.get("architecture", arch),
            k=k if arch == "topk" else None,
            hook_name=meta.get("hook_name"), layer=ours.get("layer"), model_name=meta.get("model_name"),
            model_config_hash=ours.get("model_config_hash"), model_fingerprint=ours.get("model_fingerprint"),
            apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
            norm_scaling_factor=float(ours.get("norm_scaling_factor", 1.0)),
            trace_manifest_hash=ours.get("trace_manifest_hash"), weights_hash=ours.get("weights_hash"),
            training=ours.get("training"),
            metrics=ours.get("metrics"), source=ours.get("source", "tuiwb"), extra=dict(ours.get("extra") or {}),
        )
    except (TypeError, ValueError, TuiwbError) as e:
        raise TuiwbError(f"{path / CFG_FILE} is not a valid SAE config: {render_plain(str(e))}") from e


def _from_sparsify(raw: dict, path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    if "d_in" not in raw:
        raise TuiwbError(f"{path / CFG_FILE} is not a sparsify SAE config: it has no d_in")
    if raw.get("transcode") or raw.get("skip_connection"):
        raise TuiwbError(f"{path}: sparsify transcoders / skip connections are not supported, only SAEs")
    if raw.get("activation", "topk") != "topk":
        raise TuiwbError(f"{path}: sparsify activation {raw.get('activation')!r} is not supported (only topk)")
    d_in = _int(raw, "d_in", path)
    t = _read_tensors(path / SPARSIFY_WEIGHTS)
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(t)
    if missing:
        raise TuiwbError(f"{path / SPARSIFY_WEIGHTS} lacks {', '.join(sorted(missing))}: not a sparsify SAE")
    d_sae = raw.get("num_latents") or d_in * int(raw.get("expansion_factor", 0) or 0) or t["encoder.weight"].shape[0]
    hook = _sparsify_hook(path.name)
    try:
        cfg = SAEConfig(d_in=d_in, d_sae=int(d_sae), architecture="topk", k=raw.get("k"), hook_name=hook,
                        apply_b_dec_to_input=True, source="sparsify",
                        extra={"sparsify_cfg": {k: v for k, v in raw.items() if _jsonable(v)},
                               "sparsify_hookpoint": path.name})
    except (ValueError, TuiwbError) as e:
        raise TuiwbError(f"{path / CFG_FILE} is not a valid sparsify SAE config: {render_plain(str(e))}") from e
    tensors = {"W_enc": t["encoder.weight"].t().contiguous(), "b_enc": t["encoder.bias"],
               "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    return cfg, tensors


def _sparsify_hook(dirname: str) -> str | None:
    """sparsify names a directory after its hookpoint module: ``layers.6`` is decoder layer 6's output."""
    m = re.match(r"^(?:.*\.)?(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?$", dirname)
    if not m:
        return None
    kind = {None: "resid_post", "mlp": "mlp_out", "self_attn": "attn_out", "attn": "attn_out"}[m.group(2)]
    return f"blocks.{m.group(1)}.hook_{kind}"


def _fold_decoder_norms(t: dict[str, torch.Tensor], arch: str, cfg: SAEConfig) -> None:
    """Make decoder rows unit-norm without changing x̂: latent i is multiplied by ‖W_dec[i]‖.

    Exact for ReLU/JumpReLU (positively homogeneous per latent); not for TopK, whose selection would
    change, so TopK imports keep their decoder as published.
    """
    if "W_dec" not in t or "W_enc" not in t or "b_enc" not in t:
        return
    n = t["W_dec"].norm(dim=-1)  # [d_sae]
    if torch.allclose(n, torch.ones_like(n), atol=1e-5) or (n <= 0).any():
        return
    t["W_dec"] = t["W_dec"] / n[:, None]
    t["W_enc"] = t["W_enc"] * n[None, :]
    t["b_enc"] = t["b_enc"] * n
    if arch == "jumprelu" and "threshold" in t:
        t["threshold"] = t["threshold"] * n
    cfg.extra["decoder_norms_folded"] = True


def _assign(sae: SAE, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise TuiwbError(f"{path}: SAE weights lack {', '.join(missing)}")
    for name, shape in expected.items():
        got = tuple(tensors[name].shape)
        if got != shape:
            raise TuiwbError(f"{path}: {name} has shape {list(got)} but the config says {list(shape)}")
        if not torch.isfinite(tensors[name]).all():
            raise TuiwbError(f"{path}: {name} contains NaN or inf")
    sae.load_state_dict({k: tensors[k] for k in expected})


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return not (isinstance(v, float) and not math.isfinite(v))
    except (TypeError, ValueError):
        return False
