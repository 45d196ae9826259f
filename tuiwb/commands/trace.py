"""``tuiwb trace``: record residual-stream activations of text into a Parquet shard directory."""

from __future__ import annotations

import argparse
import json



HELP = "record activations of text files into Parquet shards"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    from tuiwb.commands._config_args import add_config_args, set_flags
    from tuiwb.trace.config import TraceConfig

    p = sub.add_parser(
        "trace", parents=parents, help=HELP,
        description="Record the residual stream (blocks.L.hook_resid_post) of a model over text files "
                    "into OUT/ (Parquet shards + manifest.json). One row per token; every position of "
                    "every window, BOS included.")
    set_flags(p, add_config_args(p, TraceConfig))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON at the end")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tuiwb.commands._config_args import config_from
    from tuiwb.errors import TuiwbError
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    if args.resume and args.overwrite:
        raise TuiwbError("--resume and --overwrite contradict each other: pass one")
    cfg = config_from(TraceConfig, args)
    # `kill` (SIGTERM) gets the same clean stop as Ctrl-C: whole shards kept, the partial one removed.
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        man = trace(cfg, progress=not args.no_progress)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if args.json:
        print(json.dumps(man, indent=1))
    else:
        mb = sum(s.get("bytes", 0) for s in man["shards"]) / 1e6
        state = "complete" if man["complete"] else f"{man['n_windows']}/{man['total_windows']} windows so far"
        print(f"traced {man['n_tokens']:,} tokens × layers {man['layers']} (d_model {man['d_model']}, "
              f"{man['dtype']}) into {args.out}: {len(man['shards'])} shards, {mb:,.1f} MB, {state}")
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
