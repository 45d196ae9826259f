"""The features stage: per-feature statistics (streamed pass, cache), logit effects, search, and the
contrast / causal trigger search. Lazy, torch-free until a name is used."""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "FeatureStats": "stats", "StatsConfig": "stats", "compute_feature_stats": "compute",
    "load_or_compute": "cache", "cached_stats": "cache", "logit_effects": "logit_effects",
    "search_by_token": "search", "filter_density": "search", "Hits": "search",
    "contrast": "contrast", "find_feature_set": "contrast", "EffectConfig": "config",
})
