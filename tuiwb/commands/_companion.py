"""The companion flags and start-up lines shared by ``serve``, ``ui --companion`` and ``demo --companion``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_companion_options(p: argparse.ArgumentParser, *, switch: bool, host: bool) -> None:
    """``--port`` (and ``--host``) from ``CompanionConfig``; ``switch``: also ``--companion`` (ui, demo)."""
    from tuiwb.commands._config_args import add_config_args, set_flags
    from tuiwb.server.config import CompanionConfig

    if switch:
        p.add_argument("--companion", action="store_true",
                       help="also serve the browser companion on this session (prints its URL with a token)")
    set_flags(p, add_config_args(p, CompanionConfig, skip=() if host else ("host",)))


def roots_of(*paths) -> list[Path]:
    """The directories a server started with these inputs may touch: each input directory (a patch's
    parent too, so sibling lora/NAME patches can be attached)."""
    out: list[Path] = []
    for p in paths:
        if p is None:
            continue
        p = Path(p).expanduser().resolve()
        out.append(p)
        if (p / "manifest.json").is_file():
            out.append(p.parent)
    return out


def start_companion(session, args: argparse.Namespace, *, roots, target=None, ranked=None, out=None):
    """Start the server on ``session`` and print how to open it; returns the ``ServerHandle``."""
    from tuiwb.server.config import CompanionConfig
    from tuiwb.server.run import start_server

    cfg = CompanionConfig(host=getattr(args, "host", CompanionConfig.host), port=args.port)
    handle = start_server(session, host=cfg.host, port=cfg.port, roots=roots, target=target, ranked=ranked)
    out = out or sys.stdout
    print(f"companion: {handle.url}", file=out)
    print(f"over SSH, on your machine: {handle.ssh_line()}  (then open the URL above)", file=out, flush=True)
    return handle
