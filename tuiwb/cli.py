"""The ``tuiwb`` command line.

Each subcommand lives in ``tuiwb/commands/<name>.py`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. This file only wires them together and turns errors into one-line messages:
a ``TuiwbError`` → its message on stderr (parameters rendered as the flags that set them), exit 2; anything else → a one-line internal error, exit 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from tuiwb import __version__
from tuiwb.errors import (MEMORY_FLAGS, TuiwbError, TuiwbWarning, is_out_of_memory, oom_message, render_for_cli,
                          user_message)

# Order here is the order in `tuiwb --help`.
COMMANDS = [
    "demo",
    "demo_model",
    "trace",
    "train",
    "eval",
    "features",
    "logits",
    "generate",
    "patch",
    "provenance",
    "ui",
    "serve",
    "env",
]


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks instead of one-line errors")
    return p


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given ``argv``, only the command it names gets its flags built.

    Flags come from the config dataclasses (their docstrings are read for ``--help``), so building
    all of them costs time ``tuiwb --help`` and every other command need not pay: the rest are
    registered by name and one-line help only.
    """
    parser = argparse.ArgumentParser(
        prog="tuiwb", description="tuiwb — the Interpretability Workbench", parents=[_common()])
    parser.add_argument("--version", action="version", version=f"tuiwb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = _common()
    wanted = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"tuiwb.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"tuiwb.commands.{name}":
                continue  # command not built into this install
            raise
        cli_name = name.replace("_", "-")
        if wanted is None or wanted == cli_name:
            mod.add_parser(sub, parents=[common])
        else:
            sub.add_parser(cli_name, help=mod.HELP, parents=[common])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    # Our own rich progress bars report long work; the libraries' tqdm bars and info logs are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.showwarning = _show_warning
    if "transformers" in sys.modules:  # already imported (in-process callers): env vars came too late
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    args = None
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args.run(args) or 0)
    except TuiwbError as e:
        if debug:
            raise
        # library messages name parameters (`seq_len`); the user typed flags (--seq-len)
        print(f"tuiwb: error: {_line(str(e), e, args)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"tuiwb: {_line('interrupted', e, args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tuiwb features ... | head -1`: the reader left; stop quietly like cat does
        _silence_stdout()
        return 0
    except Exception as e:  # noqa: BLE001 — the last line of defence for a CLI
        if debug:
            raise
        fixable = _oom_line(e, argv) if is_out_of_memory(e) else user_message(e)
        if fixable is not None:
            print(f"tuiwb: error: {_line(fixable, e, args)}", file=sys.stderr)
            return TuiwbError.exit_code
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"tuiwb: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _line(message: str, e: BaseException, args) -> str:
    """One line: the message and what the library added about the aftermath (``add_note``), as flags."""
    notes = "".join(f"; {n}" for n in getattr(e, "__notes__", ()))
    return render_for_cli(message + notes, getattr(args, "_flags", None))


def _oom_line(e: BaseException, argv: list[str]) -> str:
    """The stage (the command words typed, e.g. ``patch build``) and the flag that lowers its memory."""
    words: list[str] = []
    for a in argv:
        if a.startswith("-"):
            if words:
                break
            continue  # a leading --debug
        words.append(a)
    return oom_message(e, " ".join(words) or None, MEMORY_FLAGS.get(words[0]) if words else None)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """``tuiwb: warning: …`` for our warnings; everything else as Python shows it."""
    if issubclass(category, TuiwbWarning):
        print(f"tuiwb: warning: {render_for_cli(str(message))}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


if __name__ == "__main__":
    sys.exit(main())
