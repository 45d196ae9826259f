"""Dose–response of one feature: the next-token distribution as its activation is scaled by α.

``scale=α`` is the exact SAE-gated edit of ``tuiwb.patch.edit`` (α = 0 ablates, 1 is the model
itself, α > 1 amplifies: steering). For each α the sweep reports the probability of one token — the
given target, else the unpatched model's top token — and the KL to the unpatched distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from tuiwb.errors import ParamError
from tuiwb.model.logits import kl_divergence, next_token_logits
from tuiwb.patch.edit import gated_edit

DEFAULT_ALPHAS = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0)
"""α values of a sweep unless told otherwise (negative flips the feature, 0 ablates it)."""


@dataclass(frozen=True)
class SweepRow:
    """One α of a sweep."""

    alpha: float
    """The feature's scale factor."""
    p: float
    """P(target) with the feature scaled by ``alpha``."""
    kl: float
    """KL(unpatched ‖ scaled) in nats over the whole vocabulary."""
    top: str
    """The most likely next token with the feature scaled."""

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "p": self.p, "kl": self.kl, "top": self.top}


@dataclass(frozen=True)
class Sweep:
    """A dose–response curve of one feature on one prompt."""

    prompt: str
    layer: int
    feature: int
    target: str
    """The token whose probability ``p`` is (the given one, else the unpatched top token)."""
    target_id: int
    rows: tuple[SweepRow, ...]

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "layer": self.layer, "feature": self.feature,
                "rows": [r.to_json() for r in self.rows]}


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    """Finite α values, in the order given; at least one."""
    out = []
    for a in alphas:
        try:
            value = float(a)
        except (TypeError, ValueError):
            raise ParamError("alphas", f"must be numbers, not {a!r}") from None
        if not math.isfinite(value):
            raise ParamError("alphas", f"must be finite numbers, not {a!r}")
        out.append(value)
    if not out:
        raise ParamError("alphas", "needs at least one value")
    return tuple(out)


def dose_response(loaded, sae, ids: list[int], feature: int, alphas: Sequence[float], base: torch.Tensor,
                  target_id: int | None = None) -> tuple[int, tuple[SweepRow, ...]]:
    """``(target id, rows)``: one row per α of the edit ``scale=α`` on ``feature``, against the
    unpatched logits ``base [vocab]``. Run it on the unpatched model (no other patch on)."""
    tid = int(base.argmax()) if target_id is None else int(target_id)
    rows = []
    for alpha in check_alphas(alphas):
        with gated_edit(loaded, sae, [feature], alpha):
            logits = next_token_logits(loaded, ids)  # [vocab]
        probs = torch.softmax(logits.float(), dim=-1)  # [vocab]
        rows.append(SweepRow(alpha=alpha, p=float(probs[tid]), kl=max(kl_divergence(base, logits), 0.0),
                             top=loaded.token_str(int(logits.argmax()))))
    return tid, tuple(rows)


_PLOT_LOCK = __import__("threading").Lock()  # plotext draws on one global figure
P_COLOR, KL_COLOR = "cyan", "magenta"
"""The colours of the two lines (callers name them in their captions)."""
P_CHAR, KL_CHAR = "•", "x"
"""Their characters without colour."""


def legend(target: str, color: bool = True) -> str:
    """The caption naming the two lines."""
    p, kl = (P_COLOR, KL_COLOR) if color else (f"'{P_CHAR}'", f"'{KL_CHAR}'")
    return f"{p}: P('{target}'), left axis · {kl}: KL to the unpatched model in nats, right axis"


def sweep_chart(alphas: Sequence[float], p: Sequence[float], kl: Sequence[float], width: int, height: int,
                color: bool = True) -> str:
    """The curve as text (plotext 6): P(target) on the left axis (``P_COLOR``), KL on the right one
    (``KL_COLOR``), α along the bottom.

    Torch-free, for the CLI and the TUI's chart pane alike. With ``color`` the text carries ANSI
    colours (the canvas stays the terminal's own background); without, plain characters.
    """
    import plotext as plt

    xs = [float(a) for a in alphas]
    with _PLOT_LOCK:
        fig = plt.figure
        fig.clear.all()
        fig.plot_size(max(30, int(width)), max(8, int(height)))
        fig.theme("colorless")  # the terminal's own colours; only the two lines are coloured
        for ys, side, tint, char in ((p, "left", P_COLOR, P_CHAR), (kl, "right", KL_COLOR, KL_CHAR)):
            mark = plt.marker("braille", pixel=plt.pixel(foreground=tint)) if color else char
            sig = fig.signal(xs, [float(v) for v in ys], marker=mark, yside=side)
            sig.lines()
            fig.draw(sig)
        fig.legend(active=False)  # its box hides the curve at small sizes: callers caption the two lines
        fig.label("α (scale)", axis="x")
        fig.ruler("x").ticks(xs)
        text = fig.build().string(colorless=not color)
        fig.clear.all()
    return text
