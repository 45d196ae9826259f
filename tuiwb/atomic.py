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

    Publish it with :func:`publish_dir` inside the block.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, out: str | Path) -> Path:
    """Rename the filled ``tmp`` onto ``out``, replacing an existing ``out`` whole.

    ``rename()`` cannot replace a non-empty directory, so the old one is first renamed aside and only
    deleted once the new one is in place; if the second rename fails the old one is put back.
    """
    out = Path(out)
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
