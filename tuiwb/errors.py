"""User-facing errors.

A ``TuiwbError`` is a mistake the user can fix (a bad path, a layer out of range, a malformed
setting). The CLI prints its message as one line on stderr and exits with code 2, without a
traceback unless ``--debug`` is given. Anything else escaping a command is a bug in tuiwb.

Library messages speak of parameters, not CLI flags: a parameter is written in backticks, as
```seq_len``` or ```resume=True```. Each client renders them its own way: the CLI as the flag
(``--seq-len``, ``--resume``; :func:`render_for_cli`), the TUI and the server as plain text.
"""

from __future__ import annotations

import re

_PARAM = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


class TuiwbError(Exception):
    """A one-line, actionable message for the user: say what is wrong and what to do."""

    exit_code = 2


class ParamError(TuiwbError):
    """A bad value of one named parameter (a config field or a function argument)."""

    def __init__(self, param: str, problem: str):
        self.param, self.problem = param, problem
        super().__init__(f"`{param}` {problem}")


def render_for_cli(message: str, flags: dict[str, str] | None = None) -> str:
    """Backticked parameters as CLI flags: ```resume=True``` → ``--resume``, ```k=8``` → ``--k 8``.

    ``flags`` maps a parameter to its flag where the name differs (``logger`` → ``--log``).
    """
    flags = flags or {}

    def sub(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        flag = flags.get(name) or "--" + name.replace("_", "-")
        if value is None or value == "True":
            return flag
        return f"{flag} {value}"

    return _PARAM.sub(sub, message)


def render_plain(message: str) -> str:
    """Backticked parameters as their Python spelling (TUI notifications, server ``detail``)."""
    return _PARAM.sub(lambda m: m.group(0)[1:-1], message)


class TuiwbWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints one line)."""


def warn(message: str) -> None:
    """Issue a :class:`TuiwbWarning` (the CLI shows ``tuiwb: warning: …``; tests can catch it)."""
    import warnings

    warnings.warn(message, TuiwbWarning, stacklevel=2)


MEMORY_FLAGS = {
    "trace": "batch_size", "train": "batch_size", "eval": "batch_size", "features": "batch_size",
    "logits": "quant=4bit", "patch": "batch_size", "provenance": "quant=4bit", "ui": "quant=4bit", "serve": "quant=4bit",
}
"""Per command, the parameter that lowers its peak memory (what an out-of-memory error suggests)."""

_ALLOC = re.compile(r"[Tt]ried to allocate ([0-9.]+ ?[KMGT]i?B)|allocate (\d+) bytes")


def is_out_of_memory(e: BaseException) -> bool:
    """A CUDA/MPS/CPU allocator failure (``torch.OutOfMemoryError``, ``MemoryError`` or their messages)."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    first = (str(e).strip().splitlines() or [""])[0]
    return isinstance(e, RuntimeError) and ("out of memory" in first.lower()
                                            or "DefaultCPUAllocator" in first and "allocate" in first)


def oom_message(e: BaseException, stage: str | None, flag: str | None) -> str:
    """One line: the stage, how much it tried to allocate (when the allocator says), the parameter
    that lowers it, e.g. ``out of memory in trace (tried to allocate 2.00 GiB on the GPU): lower `batch_size```."""
    text = str(e)
    m = _ALLOC.search(text)
    size = None
    if m:
        size = m.group(1) or _human_bytes(int(m.group(2)))
    where = "the GPU" if ("CUDA" in text or "GPU" in text) else "MPS" if "MPS" in text else "the host"
    tried = f"tried to allocate {size} on {where}" if size else f"on {where}"
    fix = f"lower `{flag}`" if flag and "=" not in flag else f"pass `{flag}`" if flag else "use smaller inputs"
    if flag and "=" not in flag:
        fix += ", or load the model with `quant=4bit`"
    return f"out of memory in {stage or 'this command'} ({tried}): {fix}, then rerun"


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.2f} GiB"


def user_message(e: BaseException) -> str | None:
    """A one-line, actionable message for a library exception whose cause the user can fix: a full
    disk, a path that cannot be written, a corrupt file, a device that does not exist. None for bugs.

    The CLI's error boundary asks this once, so no command needs its own try/except per cause.
    """
    import errno

    first = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, OSError) and e.errno is not None:
        where = f" {e.filename}" if e.filename else ""
        fixes = {
            errno.ENOSPC: f"no space left on the device{where}: free some space or write elsewhere, then rerun",
            errno.EDQUOT: f"disk quota exceeded{where}: free some space or write elsewhere, then rerun",
            errno.EACCES: f"permission denied{where}: pick a path you can write to (or fix its permissions)",
            errno.EPERM: f"operation not permitted{where}: pick a path you own",
            errno.EROFS: f"read-only file system{where}: pick a writable output path",
            errno.ENOENT: f"no such file or directory{where}: check the path",
            errno.ENOTDIR: f"not a directory{where}: a parent of the path is a file; pick another path",
            errno.EISDIR: f"is a directory{where}: give a file path",
            errno.ENAMETOOLONG: f"file name too long{where}: pick a shorter path",
        }
        if e.errno in fixes:
            return fixes[e.errno]
    if type(e).__name__ in ("ArrowInvalid", "ArrowIOError", "ArrowException", "SafetensorError"):
        return f"a data file is corrupt or truncated ({first}): re-create it (re-trace, or retrain the SAE)"
    if isinstance(e, RuntimeError) and ("CUDA" in first or "device" in first.lower()) and (
            "not compiled" in first or "Expected one of" in first or "no CUDA GPUs" in first
            or "Invalid device" in first or "invalid device" in first):
        return f"the torch device is not available here ({first}): pass another `device`, e.g. cpu"
    return None
