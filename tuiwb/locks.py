"""One inter-process lock for cached builds (demo model, demo pipeline, test labs).

A second process asking for the same cached artefact waits here, then finds it built and reuses it,
instead of training it again. Without ``fcntl`` (Windows) there is no lock; the builders' atomic
renames still keep every cache whole.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover — not POSIX
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
