"""Inter-process locks, one module: ``flock`` on a lock file or on a directory.

* :func:`file_lock` guards cached builds (demo model, demo pipeline, test labs): a second process
  asking for the same artefact waits, then finds it built and reuses it instead of training again.
* :func:`path_lock` locks an existing path itself (the trace manifest's directory), leaving no file.

Without ``fcntl`` (Windows) there is no lock; the writers' atomic renames still keep every file whole.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block."""
    with open(path, "w") as fh, _flock(fh.fileno()):
        yield


@contextlib.contextmanager
def path_lock(path: Path):
    """Hold an exclusive ``flock`` on the existing file or directory ``path`` for the ``with`` block."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with _flock(fd):
            yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(fd: int):
    try:
        import fcntl
    except ImportError:  # pragma: no cover — not POSIX
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
