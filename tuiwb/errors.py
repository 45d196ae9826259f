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
