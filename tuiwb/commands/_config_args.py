"""CLI flags generated from a config dataclass: names, types, choices, defaults and help, once.

Each field becomes a flag: ``--`` + its name in kebab case (or its ``flag(name=...)``), typed from
its annotation (``Literal[...]`` → choices, ``bool`` → a switch, ``int | None`` → optional int), with
the field's docstring as help and the dataclass default as default. ``add_config_args`` returns the
field → flag map that :func:`tuiwb.errors.render_for_cli` uses to turn ``ParamError``s into flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import sys
import typing
from pathlib import Path

_SKIP = object()


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each field of ``cls`` (sparsify's convention)."""
    source = Path(sys.modules[cls.__module__].__file__).read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            docs, body = {}, node.body
            for stmt, nxt in zip(body, body[1:]):
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                        and isinstance(nxt.value.value, str)):
                    docs[stmt.target.id] = " ".join(nxt.value.value.split())
            return docs
    return {}


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _unwrap(tp):
    """``(base type, optional)`` of an annotation: ``int | None`` → ``(int, True)``."""
    args = typing.get_args(tp)
    if type(tp).__name__ in ("UnionType", "_UnionGenericAlias") or typing.get_origin(tp) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), len(rest) < len(args)
    return tp, False


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _fmt_default(value) -> str:
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}/{value[1]}"  # a slice I/N
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000 and value % 1024 == 0:
        return f"{value:,}"
    return str(value)


def add_config_args(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (),
                    overrides: dict[str, dict] | None = None) -> dict[str, str]:
    """Add a flag per field of ``cls`` (except ``skip`` and fields with ``flag(cli=False)``).

    ``overrides`` may change argparse keywords per field (e.g. a command that makes a field optional).
    Returns ``{field: flag}``. Values land on ``args.<field>``; read them back with :func:`config_from`.
    """
    docs = field_docs(cls)
    hints = _hints(cls)
    flags: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("tuiwb_flag", {})
        if f.name in skip or meta.get("cli") is False:
            continue
        name = meta.get("name") or "--" + f.name.replace("_", "-")
        flags[f.name] = name
        tp, optional = _unwrap(hints[f.name])
        default = _default(f)
        kw: dict = {"dest": f.name, "default": default, "help": docs.get(f.name, "")}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if tp is bool:
            kw.update(action="store_true" if not default else "store_false")
            kw.pop("metavar", None)
        elif meta.get("repeat"):
            kw.update(action="append", default=None, type=meta.get("parse") or str)
            kw["help"] += " (repeatable, or comma-separated)"
        else:
            if typing.get_origin(tp) is typing.Literal:
                kw["choices"] = list(typing.get_args(tp))
            parse = meta.get("parse")
            if parse is None and tp in (int, float):
                parse = tp
            if parse is not None:
                kw["type"] = _argtype(parse)
        if meta.get("required"):
            kw["required"] = True
        elif default not in (None, False, "", ()) and not meta.get("repeat"):
            kw["help"] += f" (default: {_fmt_default(default)})"
        kw.update((overrides or {}).get(f.name, {}))
        parser.add_argument(name, **kw)
        for alias in meta.get("aliases", ()):  # old spellings: accepted, not shown
            parser.add_argument(alias, **{**kw, "help": argparse.SUPPRESS, "required": False,
                                          "default": argparse.SUPPRESS})
    return flags


def _argtype(parse):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def config_from(cls, args: argparse.Namespace, **extra):
    """``cls(**fields found on args, **extra)``; repeatable flags' comma lists are split."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.metadata.get("tuiwb_flag", {}).get("repeat"):
            if value is None:
                continue  # not given: the field's own default
            value = [x.strip() for v in value for x in str(v).split(",") if x.strip()]
        kwargs[f.name] = value
    kwargs.update(extra)
    return cls(**kwargs)


def set_flags(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """Record the field → flag map on the parsed args (``args._flags``) for error messages."""
    merged = dict(parser.get_default("_flags") or {})
    merged.update(flags)
    parser.set_defaults(_flags=merged)
