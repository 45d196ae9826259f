"""User-facing errors.

A ``TuiwbError`` is a mistake the user can fix (a bad path, a layer out of range, a malformed flag).
The CLI prints its message as one line on stderr and exits with code 2, without a traceback unless
``--debug`` is given. Anything else escaping a command is a bug in tuiwb.
"""


class TuiwbError(Exception):
    """A one-line, actionable message for the user: say what is wrong and what to do."""

    exit_code = 2
