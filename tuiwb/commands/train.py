"""``tuiwb train``: train one SAE per layer on recorded activations (SAELens-layout output)."""

from __future__ import annotations

import argparse
import json
import os


HELP = "train sparse autoencoders on recorded activations"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    from tuiwb.commands._config_args import add_config_args, set_flags
    from tuiwb.sae.config import TrainConfig

    p = sub.add_parser(
        "train", parents=parents, help=HELP,
        description="Train one SAE per layer (one layer at a time) on an activation directory from "
                    "`tuiwb trace`; writes OUT/layer_N/cfg.json + sae_weights.safetensors (SAELens layout).")
    p.add_argument("--acts", help="activation directory from `tuiwb trace` (e.g. acts.parquet)")
    live = p.add_argument_group("live training (no disk cache: instead of --acts)")
    live.add_argument("--model", help="train from this model's forward passes (checkpoint dir or hub id)")
    live.add_argument("--data", action="append", metavar="FILE",
                      help="text for the forward passes (.txt, .jsonl, .parquet; repeatable)")
    live.add_argument("--seq-len", type=int, default=128, help="tokens per window, BOS included (default 128)")
    live.add_argument("--forward-batch", type=int, default=32, metavar="W", help="windows per forward (default 32)")
    p.add_argument("--layer", action="append", required=True, metavar="N",
                   help="layer to train (repeatable or comma-separated; 'all' = every recorded layer)")
    p.add_argument("--out", required=True, help="output root; each layer goes to OUT/layer_N/")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing OUT/layer_N SAEs (patches built on them warn)")
    set_flags(p, add_config_args(p, TrainConfig))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Before torch (OpenMP) loads: idle threads sleep instead of spinning on a core a busy
    # neighbour needs (tuiwb/sae/threads.py); a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from tuiwb.commands._config_args import config_from
    from tuiwb.errors import TuiwbError
    from tuiwb.sae.config import TrainConfig
    from tuiwb.sae.train import train_saes

    if args.d_sae is not None and args.expansion != TrainConfig.expansion:
        raise TuiwbError("--expansion and --d-sae both set the number of latents: pass one")
    if bool(args.acts) == bool(args.model):
        raise TuiwbError("pass --acts (recorded activations) or --model with --data (live training), not both")
    if args.model and not args.data:
        raise TuiwbError("--model trains live from forward passes over --data FILE: pass --data")
    cfg = config_from(TrainConfig, args)
    layers = [x.strip() for v in args.layer for x in v.split(",") if x.strip()]
    if args.model:
        from tuiwb.sae.live import LiveSource, train_live

        src = LiveSource(model=args.model, data=args.data, seq_len=args.seq_len, forward_batch=args.forward_batch)
        results = train_live(src, layers, args.out, cfg, progress=not args.no_progress, overwrite=args.overwrite)
    else:
        results = train_saes(args.acts, layers, args.out, cfg, progress=not args.no_progress,
                             overwrite=args.overwrite)
    if int(os.environ.get("LOCAL_RANK", "0") or 0) != 0 or not results:
        return 0  # a DDP worker: rank 0 reports
    if args.json:
        print(json.dumps({str(k): v for k, v in results.items()}))
    else:
        _print_table(results, args.out)
    return 0


def _print_table(results: dict[int, dict], out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"SAEs written to {out}/layer_N (held-out metrics)")
    for col in ("layer", "fvu", "L0", "dead", "tokens", "tok/s", "lr"):
        table.add_column(col, justify="right")
    for layer, m in results.items():
        table.add_row(str(layer), f"{m['fvu']:.4f}", f"{m['l0']:.1f}", f"{100 * m['dead_fraction']:.1f}%",
                      f"{m['train_tokens']:,}", f"{m['tokens_per_s']:,.0f}", f"{m['lr']:.2g}")
    Console().print(table)
