"""``EffectConfig``: how the causal trigger search looks for a feature set and when it stops (torch-free)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tuiwb.configs import flag
from tuiwb.errors import ParamError


@dataclass
class EffectConfig:
    """How :func:`tuiwb.features.contrast.find_feature_set` searches and when it stops."""

    max_features: int = 24
    """Largest confirmed set (the BPE GPT-2/Llama trojans of tests/bpe_trojan.py need 13-21 at layer 2)."""
    n_try: int = 4
    """Candidates (by fresh attribution) whose real ablation is measured at each greedy step."""
    p_floor: float = 0.01
    """Per-prompt success level: the greedy objective is the mean log-odds of the target clamped
    below at logit(p_floor), so prompts already pushed under it stop steering the search."""
    min_drop: float = 0.05
    """Stop when the best candidate lowers that objective by less than this (nats of log-odds)."""
    max_eval_prompts: int = 48
    """Prompts of each set used inside the greedy loop (the final numbers use all of them)."""
    max_clean_kl: float | None = 0.01
    """With a B set: the clean-KL budget — never add an edit that takes the mean KL on B above this
    (None: no guard)."""
    target_p: float = 0.01
    """Stop once the mean P(target) on A is at or below this (the payload is gone)."""
    partial: bool = field(default=True, metadata=flag(name="--no-partial"))
    """Also try scaling a candidate by 0.5 instead of ablating it (a generic feature only as far as needed); ``--no-partial`` turns it off."""
    gated: bool = field(default=True, metadata=flag(name="--no-gated"))
    """With a B set, also try ablating a candidate only after a trigger detector (a feature that fires
    on A and not on B) fired earlier in the prompt; ``--no-gated`` turns it off."""
    batch_size: int = 32
    """Prompts per forward pass."""

    def __post_init__(self):
        for name in ("max_features", "n_try", "max_eval_prompts", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ParamError(name, "must be at least 1")
        if not 0 < self.p_floor < 1:
            raise ParamError("p_floor", f"must be in (0, 1), not {self.p_floor}")
        if self.min_drop < 0:
            raise ParamError("min_drop", f"must be >= 0, not {self.min_drop}")
        if not 0 <= self.target_p < 1:
            raise ParamError("target_p", f"must be in [0, 1), not {self.target_p}")
        if self.max_clean_kl is not None and not self.max_clean_kl > 0:
            raise ParamError("max_clean_kl", f"must be positive, not {self.max_clean_kl}")

    @property
    def logodds_floor(self) -> float:
        return math.log(self.p_floor / (1 - self.p_floor))
