"""The feature-stats cache next to an SAE: ``features.npz`` (no pickle) + ``features.json`` (the key).

The key is what the stats depend on — the SAE's files (size + mtime of the weights, hash of
``cfg.json``), the activation manifest (hash, and the manifest file's mtime) and the pass settings —
so retraining the SAE or re-tracing the activations invalidates it; anything else reuses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from tuiwb.errors import TuiwbError
from tuiwb.features import CACHE_VERSION, FeatureStats, StatsConfig

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
    manifest = json.dumps(store.manifest, sort_keys=True, default=str).encode()
    acts = {"manifest": hashlib.sha256(manifest).hexdigest()[:16]}
    path = getattr(store, "path", None)
    if path is not None and (Path(path) / "manifest.json").exists():
        acts["mtime_ns"] = (Path(path) / "manifest.json").stat().st_mtime_ns
    settings = {k: v for k, v in asdict(cfg).items() if k != "batch_size"}  # batch size changes no number
    return {"sae_files": files, "sae_cfg": cfg_hash, "acts": acts, "config": settings}


def load_or_compute(sae_dir: str | Path, store, loaded=None, *, sae=None, cfg: StatsConfig | None = None,
                    progress: bool = True, refresh: bool = False) -> FeatureStats:
    """Cached :func:`compute_feature_stats` for the SAE in ``sae_dir``.

    The cache is reused only when the SAE files, the activation manifest and ``cfg`` are unchanged.
    Logit effects need ``loaded``: a cache without them gets them added (cheap) when a model is given.
    An unwritable SAE directory only costs the cache, not the result.
    """
    from tuiwb.feature_logits import with_logit_effects
    from tuiwb.feature_pass import compute_feature_stats
    from tuiwb.sae import load_sae

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


def feature_stats(session, layer: int, *, sae_dir: str | Path | None = None, cfg: StatsConfig | None = None,
                  progress: bool = False, refresh: bool = False) -> FeatureStats:
    """Stats of the session's SAE at ``layer`` over its activation store (what ``Session.features`` gives).

    Cached on disk when the SAE's directory is known (``sae_dir``, or ``sae.source_dir`` when the
    loader set it), else in memory on the session for its lifetime.
    """
    sae = session.sae(layer)
    if session.acts is None:
        raise TuiwbError("feature stats need activations: open the session with an activation store (--acts)")
    sae_dir = sae_dir or getattr(sae, "source_dir", None)
    if sae_dir is not None:
        return load_or_compute(sae_dir, session.acts, session.loaded, sae=sae, cfg=cfg, progress=progress,
                               refresh=refresh)
    from tuiwb.feature_pass import compute_feature_stats

    memo = session.__dict__.setdefault("_feature_stats_memo", {})
    key = (int(layer), id(sae), cfg or StatsConfig())
    if refresh or key not in memo:
        memo[key] = compute_feature_stats(sae, session.acts, session.loaded, progress=progress, cfg=cfg)
    return memo[key]
