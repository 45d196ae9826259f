"""Path confinement: no endpoint reads or writes outside the directories the server was started with."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tuiwb.errors import TuiwbError


def confined(root: Path, rel: str) -> Path | None:
    """``root/rel`` resolved, if it stays inside ``root`` and names no dot-file; else None."""
    if not rel or "\\" in rel or "\x00" in rel or rel.startswith("/"):
        return None
    parts = Path(rel).parts
    if any(p.startswith(".") for p in parts):  # "..", ".git", ".env"
        return None
    base = root.resolve()
    p = (base / rel).resolve()
    return p if p.is_relative_to(base) else None


def inside_roots(path: str, roots: Sequence[Path], what: str) -> Path:
    """``path`` (relative to the working directory or absolute) resolved, if it lies under one of
    ``roots``; a one-line refusal naming ``what`` otherwise."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise TuiwbError(f"`{what}` must be a path")
    p = Path(path).expanduser().resolve()
    for root in roots:
        if p.is_relative_to(Path(root).resolve()):
            return p
    have = ", ".join(str(r) for r in roots) or "none"
    raise TuiwbError(f"`{what}` {path!r} is outside the directories this server was started with ({have})")
