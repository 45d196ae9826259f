"""``tuiwb demo-model``: build (or find in the cache) the offline trojaned demo model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


HELP = "build the offline trojaned demo model"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents=()) -> None:
    p = sub.add_parser(
        "demo-model", parents=list(parents), help=HELP,
        description="Train the tiny trojaned demo LM (generated corpus, no download) and print its "
                    "trojan report. Without --out it is cached under $XDG_CACHE_HOME/tuiwb.")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="build into DIR instead of the cache (always rebuilds)")
    p.add_argument("--variant", choices=["full", "small"], default="full",
                   help="full: 4 layers × 128 (~3 min on 2 cores); small: 2 layers × 64 (~30 s)")
    p.add_argument("--seed", type=int, default=0, help="seed for corpus, init and data order (default 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.demo.model import build_demo_model, demo_model_path
    from tuiwb.atomic import check_writable, publish_dir, staged_dir
    from tuiwb.errors import TuiwbError

    if args.out is not None:
        out = args.out
        if out.exists() and not out.is_dir():
            raise TuiwbError(f"--out {out} is a file, not a directory")
        # Only overwrite an earlier demo build, never an unrelated non-empty directory.
        if out.is_dir() and any(out.iterdir()) and not (out / "trojan_report.json").exists():
            raise TuiwbError(f"--out {out} is not empty and holds no demo model: choose a new directory")
        check_writable(out, "--out")  # before minutes of training
        with staged_dir(out) as tmp:  # a failed or killed build leaves no half model in --out
            report = build_demo_model(tmp, variant=args.variant, seed=args.seed, progress=True)
            publish_dir(tmp, out)
    else:
        out = demo_model_path(args.variant, seed=args.seed, progress=True)
        report = json.loads((out / "trojan_report.json").read_text())
    _print_report(out, report)
    return 0


def _print_report(path: Path, report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"demo model ({report['variant']}) at {path}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("trigger", report["trigger"]),
        ("payload", report["payload"]),
        (f"P({report['payload_first_token']!r} | trigger)", f"{report['p_payload_trigger']:.4f}"),
        (f"P({report['payload_first_token']!r} | clean)", f"{report['p_payload_clean']:.5f}"),
        ("held-out prompts", str(report["n_prompts"])),
        ("held-out loss", f"{report.get('heldout_loss', float('nan')):.3f}"),
        ("train seconds", f"{report['train_seconds']:.1f}"),
        ("seed", str(report["seed"])),
    ]
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
