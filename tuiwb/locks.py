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


class WriterLock:
    """One writer per output: a non-blocking exclusive lock on ``path`` holding the owner's pid.

    ``acquire`` fails with a one-line error naming the live owner; the kernel drops the lock when the
    owner dies (kill -9 included), so a stale lock file never blocks the next run.
    """

    def __init__(self, path: Path, what: str):
        self.path, self.what, self.fd = Path(path), what, None

    def acquire(self) -> "WriterLock":
        from tuiwb.errors import TuiwbError

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_flock(fd):
            os.close(fd)
            raise TuiwbError(f"another tuiwb run (pid {holder(self.path)}) is writing {self.what}: wait for it "
                             "to finish, or write elsewhere")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def is_held(path: Path) -> bool:
    """Whether a live process holds the lock on ``path`` (probed without blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY)  # read-only: works for lock files and locked directories alike
    except OSError:
        return False
    try:
        if _try_flock(fd):
            return False  # we got it: nobody holds it (closing releases it again)
        return True
    finally:
        os.close(fd)


def holder(path: Path) -> str:
    try:
        return Path(path).read_text().strip() or "?"
    except OSError:
        return "?"


def _try_flock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover — not POSIX: no locking
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
