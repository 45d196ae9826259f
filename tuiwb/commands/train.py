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
    p.add_argument("--acts", required=True, help="activation directory from `tuiwb trace` (e.g. acts.parquet)")
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
    cfg = config_from(TrainConfig, args)
    layers = [x.strip() for v in args.layer for x in v.split(",") if x.strip()]
    results = train_saes(args.acts, layers, args.out, cfg, progress=not args.no_progress, overwrite=args.overwrite)
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
