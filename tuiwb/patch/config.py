"""``FitConfig``: how a LoRA patch is fitted to its exact edit (torch-free; ``patch build`` flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass

from tuiwb.errors import ParamError, TuiwbError

RANK_MIN, RANK_MAX = 4, 16


def check_rank(rank: int) -> int:
    if not isinstance(rank, int) or isinstance(rank, bool) or not RANK_MIN <= rank <= RANK_MAX:
        raise TuiwbError(f"LoRA rank {rank!r} is out of range: use {RANK_MIN}..{RANK_MAX} (default 8)")
    return rank


@dataclass
class FitConfig:
    """How a LoRA patch is fitted to its exact edit."""

    rank: int = 8
    """LoRA rank r (4..16): the rank of the reduced-rank regression."""
    ridge: float = 1e-4
    """Ridge penalty relative to the (unit) diagonal of the standardised Gram matrix."""
    fit_tokens: int = 16384
    """Tokens of text recorded for the closed-form fit (docs/patches.md: 8k gave the quality of 128k)."""
    refine_steps: int = 300
    """Adam steps on the real layer output after the closed form; 0 turns refinement off."""
    refine_lr: float = 2e-3
    """Adam learning rate, relative to the RMS of each factor's closed-form entries."""
    refine_skip_below: float = 0.01
    """Skip refinement when the closed form's layer-output error (‖h_lora − h_hook‖²/‖Δ‖²) is
    already below this: nothing left worth the time."""
    refine_min_gain: float = 0.01
    """Stop refining early when a 50-step window lowers the mean loss by less than this fraction."""
    refine_tokens: int = 4096
    """Tokens held in memory (inputs and targets) for the refinement."""
    batch_size: int = 16
    """Sequences per forward pass."""

    def __post_init__(self) -> None:
        check_rank(self.rank)
        if not self.ridge > 0:
            raise ParamError("ridge", f"must be positive, not {self.ridge}")
        for name, low in (("fit_tokens", 64), ("refine_tokens", 16), ("batch_size", 1), ("refine_steps", 0)):
            if int(getattr(self, name)) < low:
                raise ParamError(name, f"must be at least {low}")
        if not self.refine_lr > 0:
            raise ParamError("refine_lr", f"must be positive, not {self.refine_lr}")
        if self.refine_skip_below < 0:
            raise ParamError("refine_skip_below", f"must be >= 0, not {self.refine_skip_below}")
        if not 0 <= self.refine_min_gain < 1:
            raise ParamError("refine_min_gain", f"must be in [0, 1), not {self.refine_min_gain}")
