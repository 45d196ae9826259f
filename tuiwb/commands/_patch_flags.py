"""The ``--ablate L:F[,F...]`` and ``--scale L:F[,F...]=ALPHA`` flag syntax (``logits`` and friends)."""

from __future__ import annotations

import math
import re

from tuiwb.errors import TuiwbError

_ABLATE_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)\s*$")
_SCALE_SPEC_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)\s*=\s*(\S+)\s*$")


def parse_ablate(spec: str) -> tuple[int, list[int]]:
    """``"L:F[,F...]"`` → ``(L, [F, ...])`` (the ``--ablate`` flag)."""
    m = _ABLATE_RE.match(spec or "")
    if not m:
        raise TuiwbError(f"bad --ablate {spec!r}: expected LAYER:FEATURE[,FEATURE...], e.g. 2:17,40")
    return int(m.group(1)), [int(f) for f in m.group(2).split(",")]


def parse_scale(spec: str) -> tuple[int, list[int], float]:
    """``"L:F[,F...]=ALPHA"`` → ``(L, [F, ...], ALPHA)`` (the ``--scale`` flag)."""
    m = _SCALE_SPEC_RE.match(spec or "")
    if not m:
        raise TuiwbError(f"bad --scale {spec!r}: expected LAYER:FEATURE[,FEATURE...]=ALPHA, e.g. 2:17=0.5")
    try:
        alpha = float(m.group(3))
    except ValueError:
        alpha = float("nan")
    if not math.isfinite(alpha):
        raise TuiwbError(f"bad --scale {spec!r}: ALPHA {m.group(3)!r} is not a number; expected "
                         "LAYER:FEATURE[,FEATURE...]=ALPHA, e.g. 2:17=0.5")
    return int(m.group(1)), [int(f) for f in m.group(2).split(",")], alpha
