"""The feature-stats cache next to an SAE: ``features.npz`` (no pickle) + ``features.json`` (the key).

The key is what the stats depend on — the SAE's files (size + mtime of the weights, hash of
``cfg.json``), the activation manifest (hash, and the manifest file's mtime) and the pass settings —
so retraining the SAE or re-tracing the activations invalidates it; anything else reuses it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from tuiwb.errors import TuiwbError
from tuiwb.trace.shards import manifest_identity
from tuiwb.features.stats import CACHE_VERSION, FeatureStats, StatsConfig

SAE_WEIGHT_FILES = ("sae_weights.safetensors", "sae.safetensors")


def cache_key(sae_dir: str | Path, store, cfg: StatsConfig) -> dict:
    """What the cached stats depend on: the SAE files, the acts manifest and the pass settings."""
    sae_dir = Path(sae_dir)
    files = {}
    for name in ("cfg.json", *SAE_WEIGHT_FILES):
        p = sae_dir / name
        if p.exists():
            st = p.stat()
            files[name] = [st.st_size, st.st_mtime_ns]
    cfg_file = sae_dir / "cfg.json"
    cfg_hash = hashlib.sha256(cfg_file.read_bytes()).hexdigest()[:16] if cfg_file.exists() else None
    acts = {"identity": manifest_identity(store.manifest)}  # what was traced, not when or where
    settings = {k: v for k, v in asdict(cfg).items() if k != "batch_size"}  # batch size changes no number
    return {"sae_files": files, "sae_cfg": cfg_hash, "acts": acts, "config": settings}


def load_or_compute(sae_dir: str | Path, store, loaded=None, *, sae=None, cfg: StatsConfig | None = None,
                    progress: bool = True, refresh: bool = False, compute: bool = True) -> FeatureStats | None:
    """Cached :func:`compute_feature_stats` for the SAE in ``sae_dir``.

    The cache is reused only when the SAE files, the activation manifest and ``cfg`` are unchanged.
    Logit effects need ``loaded``: a cache without them gets them added (cheap) when a model is given.
    An unwritable SAE directory only costs the cache, not the result. ``compute=False`` returns None
    instead of running a pass when the cache is missing or stale.
    """
    from tuiwb.features.logit_effects import with_logit_effects
    from tuiwb.features.compute import compute_feature_stats
    from tuiwb.sae.io import load_sae

    cfg = cfg or StatsConfig()
    sae_dir = Path(sae_dir)
    key = cache_key(sae_dir, store, cfg)
    stats = None
    if not refresh and (sae_dir / "features.json").exists():
        try:
            cached, meta = FeatureStats.load(sae_dir)
            if meta.get("version") == CACHE_VERSION and meta.get("key") == key:
                stats = cached
        except TuiwbError:
            stats = None
    dirty = stats is None
    if stats is None and not compute:
        return None
    if sae is None:
        sae = load_sae(sae_dir)
    if stats is None:
        stats = compute_feature_stats(sae, store, loaded, progress=progress, cfg=cfg)
    elif loaded is not None and not stats.has_logits:
        stats = with_logit_effects(stats, sae, loaded, cfg.n_tokens)
        dirty = True
    if dirty:
        try:
            stats.save(sae_dir, key)
        except OSError:
            pass  # a read-only SAE directory: the stats are still correct, just not cached
    return stats


def cached_stats(sae_dir: str | Path) -> FeatureStats | None:
    """The stats cached in ``sae_dir`` if the SAE files still have the size and mtime recorded in the
    cache key (what can be checked without the activations); None if absent, unreadable or stale."""
    sae_dir = Path(sae_dir)
    if not (sae_dir / "features.json").is_file():
        return None
    try:
        stats, meta = FeatureStats.load(sae_dir)
    except TuiwbError:
        return None
    recorded = (meta.get("key") or {}).get("sae_files") or {}
    for name, size_mtime in recorded.items():
        f = sae_dir / name
        if not f.exists() or [f.stat().st_size, f.stat().st_mtime_ns] != list(size_mtime):
            return None
    return stats if recorded and meta.get("version") == CACHE_VERSION else None


def cached_stats_by_layer(saes_dir: str | Path, layers) -> dict:
    """``{layer: stats}`` of the fresh caches next to ``saes_dir/layer_N`` SAEs (provenance labels)."""
    out = {}
    for layer in layers:
        stats = cached_stats(Path(saes_dir) / f"layer_{layer}")
        if stats is not None:
            out[layer] = stats
    return out
