"""Crash-safe writes, one copy: a file or a directory is written under a temporary sibling name and
renamed into place, so a reader (or a kill at any moment) never sees it half-written.

Permissions follow the umask like any ``open()`` would (``mkstemp``/``mkdtemp`` would make them
private), so a colleague can read the ``saes/`` and ``lora/`` directories handed over.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from tuiwb.locks import is_held, path_lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file(path: str | Path, write: Callable, *, binary: bool = False) -> Path:
    """Call ``write(fh)`` on a temporary sibling of ``path``, then rename it onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    return write_file(path, lambda fh: fh.write(text))


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A fresh temporary sibling directory of ``out`` to fill; removed if the block fails.

    Publish it with :func:`publish_dir` inside the block. The directory is locked while the block
    runs, so the next writer of ``out`` can tell its own crashed leftovers (``kill -9``) from a live
    writer's and clean only those (:func:`clean_stale`).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        with path_lock(tmp):
            yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_stale(out: str | Path) -> None:
    """Remove what a killed writer of ``out`` left: unlocked ``.NAME.tmp-*`` directories, and
    ``.NAME.old-*`` ones (moved aside by :func:`publish_dir`) — put back first when ``out`` itself is
    missing, so a kill between the two renames of a swap loses nothing."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for pattern, restore in ((f".{out.name}.old-*", True), (f".{out.name}.tmp-*", False)):
        for p in sorted(out.parent.glob(pattern)):
            if not p.is_dir() or is_held(p):
                continue  # a live writer's
            if restore and not out.exists():
                os.replace(p, out)
            else:
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def private_tempdir(prefix: str) -> Iterator[Path]:
    """``tempfile.TemporaryDirectory`` that is locked while in use, after removing this user's
    unlocked leftovers with the same prefix (a killed run's)."""
    base = Path(tempfile.gettempdir())
    for p in base.glob(f"{prefix}*"):
        try:
            if p.is_dir() and p.stat().st_uid == os.getuid() and not is_held(p):
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            continue
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with path_lock(tmp):
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, out: str | Path) -> Path:
    """Rename the filled ``tmp`` onto ``out``, replacing an existing ``out`` whole.

    ``rename()`` cannot replace a non-empty directory, so the old one is first renamed aside and only
    deleted once the new one is in place; if the second rename fails the old one is put back.
    """
    out = Path(out)
    _umask_permissions(tmp)  # some writers (safetensors) create 0600 files: a colleague could not read them
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _umask_permissions(root: Path) -> None:
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Fail now, not after hours of work, when ``path`` cannot be created or written.

    Probes the nearest existing ancestor by creating (and removing) a temporary file in it: that
    catches missing permissions, read-only mounts and pseudo file systems (``/proc``) alike.
    """
    from tuiwb.errors import TuiwbError

    path = Path(path).expanduser()
    probe = path if path.is_dir() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise TuiwbError(f"{what} {path} cannot be created: {probe} is a file, not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".tuiwb-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise TuiwbError(f"{what} {path} is not writable ({e.strerror or e}): pick a path you can write to") from e
    return path
