"""The model stage: loading (fp / 8-bit / 4-bit), the architecture table, hook points, logits.

Lazy: ``import tuiwb.model`` costs nothing until a name is used, so ``tuiwb --help`` imports no torch.
"""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "LoadedModel": "loaded", "EMBED": "loaded", "load_model": "loading", "DTYPES": "loading",
    "ARCHITECTURES": "arch", "ArchSpec": "arch", "config_hash": "arch", "hook_name": "hooks",
    "parse_hook_name": "hooks", "next_token_logits": "logits", "top_k": "logits", "kl_divergence": "logits",
    "TokenProb": "logits", "LogitsResult": "logits",
})
