"""How a config field describes its CLI flag: ``field(..., metadata=flag(...))``.

Configs are torch-free ``@dataclass``es whose field docstrings become ``--help`` (EleutherAI
sparsify's ``config.py`` is the example); :mod:`tuiwb.commands._config_args` generates the flags.
The metadata only says what the field alone cannot: another flag name, hidden aliases, a metavar,
that a list flag repeats, or that the field is not a flag at all.
"""

from __future__ import annotations


def flag(*, name: str | None = None, aliases: tuple[str, ...] = (), metavar: str | None = None,
         repeat: bool = False, parse=None, cli: bool = True, required: bool = False) -> dict:
    """Metadata for ``dataclasses.field``.

    ``name``: the flag (default ``--`` + the field name in kebab case); ``aliases``: old spellings,
    accepted but hidden from ``--help``; ``repeat``: a list flag given several times or
    comma-separated; ``parse``: a ``str -> value`` converter (argparse ``type``); ``cli=False``: not
    a flag (set by the command itself); ``required``: the flag must be given.
    """
    return {"tuiwb_flag": {"name": name, "aliases": tuple(aliases), "metavar": metavar, "repeat": repeat,
                           "parse": parse, "cli": cli, "required": required}}
