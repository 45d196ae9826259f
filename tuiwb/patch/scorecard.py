"""A patch's scorecard: what it removes on one prompt set and what it costs on another.

On the prompts it should act on (A, e.g. triggered ones): mean P(target) before and after, and the
share of greedy continuations that contain the target token before and after. On the prompts it
should leave alone (B, clean ones): the mean next-token KL and the share of continuations that
changed at all. For a LoRA patch, also its fidelity to the exact hook edit on these prompts. Ben
reads this before shipping a safe LoRA; ``patch build --positive/--negative`` writes it into the
patch's manifest.

The measurements come in as callables, so this module holds the metrics only: the Session puts the
model in the baseline or patched state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from tuiwb.model.logits import kl_divergence


@dataclass(frozen=True)
class Scorecard:
    """What a set of patches does on two prompt sets."""

    names: tuple[str, ...]
    """The patches that were on together."""
    target: str | None
    """The target token (None: each A prompt's own unpatched top token)."""
    n_positive: int
    """Prompts in A (where the patch should act)."""
    n_negative: int
    """Prompts in B (where it should not)."""
    p_before: float
    """Mean P(target) on A, unpatched."""
    p_after: float
    """Mean P(target) on A, patched."""
    contains_before: float
    """Share of A's unpatched continuations containing the target."""
    contains_after: float
    """Share of A's patched continuations still containing the target."""
    kl_negative: float | None
    """Mean KL(unpatched ‖ patched) of the next token on B (None without B)."""
    changed_negative: float | None
    """Share of B's continuations the patch changed (None without B)."""
    max_new_tokens: int
    """Length of the greedy continuations compared."""
    fidelity: dict[str, float] = field(default_factory=dict)
    """LoRA patch → mean KL(hook ‖ LoRA) over every position of A and B."""

    def to_json(self) -> dict:
        return {"names": list(self.names), "target": self.target, "n_positive": self.n_positive,
                "n_negative": self.n_negative, "p_before": self.p_before, "p_after": self.p_after,
                "contains_before": self.contains_before, "contains_after": self.contains_after,
                "kl_negative": self.kl_negative, "changed_negative": self.changed_negative,
                "max_new_tokens": self.max_new_tokens, "fidelity": dict(self.fidelity)}

    def summary(self) -> str:
        """One line: ``A(16): P('i') 0.99→0.004, in 100%→0% of continuations · B(16): KL 0.0006, 6% changed``."""
        what = f"P('{self.target}')" if self.target else "P(top)"
        line = (f"A({self.n_positive}): {what} {self.p_before:.3g}→{self.p_after:.3g}, in "
                f"{self.contains_before:.0%}→{self.contains_after:.0%} of continuations")
        if self.kl_negative is not None:
            line += f" · B({self.n_negative}): KL {self.kl_negative:.2g}, {self.changed_negative:.0%} changed"
        if self.fidelity:
            line += " · fidelity KL " + ", ".join(f"{v:.2g}" for v in self.fidelity.values())
        return line


def score(names: Sequence[str], target: str | None, positive: Sequence[list[int]], negative: Sequence[list[int]],
          logits: Callable[[list[int], bool], torch.Tensor], continuation: Callable[[list[int], bool], list[int]],
          max_new_tokens: int, target_id: int | None = None,
          fidelity: Callable[[], dict[str, float]] = dict) -> Scorecard:
    """The scorecard from ``logits(ids, patched) -> [vocab]`` and ``continuation(ids, patched) -> ids``."""
    p_before, p_after, has_before, has_after = [], [], [], []
    for ids in positive:
        base, patched = logits(ids, False), logits(ids, True)  # [vocab] each
        tid = int(base.argmax()) if target_id is None else int(target_id)
        p_before.append(float(torch.softmax(base.float(), -1)[tid]))
        p_after.append(float(torch.softmax(patched.float(), -1)[tid]))
        has_before.append(tid in continuation(ids, False))
        has_after.append(tid in continuation(ids, True))
    kls, changed = [], []
    for ids in negative:
        kls.append(max(kl_divergence(logits(ids, False), logits(ids, True)), 0.0))
        changed.append(continuation(ids, False) != continuation(ids, True))

    def mean(xs) -> float:
        return float(sum(xs) / len(xs)) if xs else 0.0

    return Scorecard(names=tuple(names), target=target, n_positive=len(positive), n_negative=len(negative),
                     p_before=mean(p_before), p_after=mean(p_after), contains_before=mean(has_before),
                     contains_after=mean(has_after), kl_negative=mean(kls) if negative else None,
                     changed_negative=mean(changed) if negative else None, max_new_tokens=int(max_new_tokens),
                     fidelity=fidelity())
