"""``tuiwb train``: train one SAE per layer on recorded activations (SAELens-layout output)."""

from __future__ import annotations

import argparse
import json
import os
import re


def count(text: str) -> int:
    """``4000000``, ``4e6``, ``4M``, ``500k`` → an int (for --tokens)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgG]?)\s*", text.replace("_", ""))
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (e.g. 4000000, 4e6, 4M, 500k)")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


# Kept equal to TrainConfig's defaults (a test checks); literals here so `tuiwb --help` imports no torch.
DEFAULT_LR = 4e-3
DEFAULT_L1 = 0.25


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "train", parents=parents, help="train sparse autoencoders on recorded activations",
        description="Train one SAE per layer (one layer at a time) on an activation directory from "
                    "`tuiwb trace`; writes OUT/layer_N/cfg.json + sae_weights.safetensors (SAELens layout).")
    p.add_argument("--acts", required=True, help="activation directory from `tuiwb trace` (e.g. acts.parquet)")
    p.add_argument("--layer", action="append", required=True, metavar="N",
                   help="layer to train (repeatable or comma-separated; 'all' = every recorded layer)")
    p.add_argument("--out", required=True, help="output root; each layer goes to OUT/layer_N/")
    p.add_argument("--arch", choices=("topk", "relu"), default="topk",
                   help="topk (TopK + AuxK, default) or relu (ReLU + β-sparsity loss)")
    p.add_argument("--k", type=int, default=32, help="active latents per token for topk (default 32)")
    p.add_argument("--l1", type=float, default=DEFAULT_L1, metavar="BETA",
                   help=f"β, the sparsity coefficient of relu (default {DEFAULT_L1})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--expansion", type=int, default=8, help="d_sae = EXPANSION × d_model (default 8)")
    size.add_argument("--d-sae", type=int, default=None, metavar="N", help="number of latents")
    p.add_argument("--lr", default=str(DEFAULT_LR), metavar="auto|FLOAT",
                   help=f"peak learning rate, or 'auto' for Lightning's LR finder (default {DEFAULT_LR})")
    p.add_argument("--tokens", type=count, default=2_000_000, metavar="N",
                   help="training budget in tokens, e.g. 500k, 2M (default 2M)")
    p.add_argument("--batch-size", type=int, default=4096, metavar="B", help="tokens per step and device (default 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of documents held out for metrics (default 0.1; 0 = none)")
    p.add_argument("--devices", type=int, default=1, metavar="N", help="devices/processes (default 1)")
    p.add_argument("--strategy", choices=("auto", "ddp", "ddp_spawn"), default="auto",
                   help="ddp: data-parallel over --devices processes (gloo on CPU, NCCL on GPU)")
    p.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default="cpu", help="default cpu")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch CPU threads (default: torch's; 1 is faster on a busy shared CPU)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--log", choices=("csv", "tensorboard", "none"), default="csv",
                   help="local metrics log under OUT/logs (default csv)")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (needs wandb installed)")
    p.add_argument("--wandb-project", default="tuiwb", help="W&B project (default tuiwb)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.sae_train import TrainConfig, train_saes

    cfg = TrainConfig(
        arch=args.arch, k=args.k, l1=args.l1, expansion=args.expansion, d_sae=args.d_sae, lr=args.lr,
        tokens=args.tokens, batch_size=args.batch_size, val_fraction=args.val_fraction, devices=args.devices,
        strategy=args.strategy, accelerator=args.accelerator, threads=args.threads, seed=args.seed,
        logger=args.log, wandb=args.wandb, wandb_project=args.wandb_project)
    layers = [x.strip() for v in args.layer for x in v.split(",") if x.strip()]
    results = train_saes(args.acts, layers, args.out, cfg, progress=not args.no_progress)
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
