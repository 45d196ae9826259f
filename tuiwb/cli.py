"""The ``tuiwb`` command line.

Each subcommand lives in ``tuiwb/commands/<name>.py`` and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. This file only wires them together and turns errors into one-line messages:
a ``TuiwbError`` → its message on stderr, exit 2; anything else → a one-line internal error, exit 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tuiwb import __version__
from tuiwb.errors import TuiwbError

# Order here is the order in `tuiwb --help`.
COMMANDS = [
    "demo",
    "demo_model",
    "trace",
    "train",
    "eval",
    "features",
    "logits",
    "patch",
    "provenance",
    "ui",
    "serve",
]


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show full tracebacks instead of one-line errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuiwb", description="tuiwb — the Interpretability Workbench", parents=[_common()])
    parser.add_argument("--version", action="version", version=f"tuiwb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = _common()
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"tuiwb.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"tuiwb.commands.{name}":
                continue  # command not built into this install
            raise
        mod.add_parser(sub, parents=[common])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    # Our own rich progress bars report long work; the libraries' tqdm bars and info logs are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if "transformers" in sys.modules:  # already imported (in-process callers): env vars came too late
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    try:
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except TuiwbError as e:
        if debug:
            raise
        print(f"tuiwb: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tuiwb: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — the last line of defence for a CLI
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"tuiwb: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
