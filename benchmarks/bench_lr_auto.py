"""Benchmark ``--lr auto`` against a small LR grid at the same budget, on two widths of demo model.

    python benchmarks/bench_lr_auto.py [--tokens 300k] [--variants small,full] [--write-docs]

For each demo model (small: d_model 64, full: d_model 128; middle layer, traced once and cached like
bench_train.py), trains TopK k=32, 8× at fixed LRs 3e-4, 1e-3, 3e-3, 1e-2 and once with
``lr="auto"``, all at the same token budget, and reports held-out FVU and auto / best-of-grid
(target ≤ 1.5). ``--write-docs`` replaces the ``## train: lr auto`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

GRID = (3e-4, 1e-3, 3e-3, 1e-2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="300k")
    ap.add_argument("--variants", default="small,full")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()

    from bench_train import traced_acts

    from tuiwb.sae.config import TrainConfig, token_count
    from tuiwb.sae.train import train_saes

    tokens = token_count(args.tokens)
    load = [round(os.getloadavg()[0], 1)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            _, acts, layer, _ = traced_acts(variant, None)
            base = dict(k=32, expansion=8, tokens=tokens, logger="none")
            grid = {lr: train_saes(acts, [layer], Path(tmp) / f"{variant}-{lr}", TrainConfig(lr=lr, **base),
                                   progress=False)[layer]["fvu"] for lr in GRID}
            auto = train_saes(acts, [layer], Path(tmp) / f"{variant}-auto", TrainConfig(lr="auto", **base),
                              progress=False)[layer]
            best = min(grid.values())
            rows.append({"model": f"demo-{variant}", "layer": layer, "grid": grid, "auto_lr": auto["lr"],
                         "auto_fvu": auto["fvu"], "ratio": round(auto["fvu"] / best, 3)})
            load.append(round(os.getloadavg()[0], 1))
    result = {"tokens": tokens, "rows": rows, "load_average": load}
    print(json.dumps(result, indent=1))
    if args.write_docs:
        write_docs(result)
    return 0


def write_docs(r: dict) -> None:
    head = " | ".join(f"lr {lr:g}" for lr in GRID)
    lines = ["## train: lr auto", "",
             f"`python benchmarks/bench_lr_auto.py --tokens {r['tokens']} --write-docs` — TopK k=32, 8×, batch 4096, "
             f"{r['tokens']:,} tokens for every run, held-out FVU; load average {' → '.join(map(str, r['load_average']))}.",
             "", f"| model | {head} | `--lr auto` (chosen) | auto / best |",
             "| --- | " + " | ".join("---:" for _ in GRID) + " | ---: | ---: |"]
    for row in r["rows"]:
        cells = " | ".join(f"{row['grid'][lr]:.4f}" for lr in GRID)
        lines.append(f"| {row['model']} L{row['layer']} | {cells} | {row['auto_fvu']:.4f} ({row['auto_lr']:.1e}) | "
                     f"**{row['ratio']:.2f}×** |")
    lines += ["", "Target: auto / best ≤ 1.5× (how the search works: docs/training.md)."]
    from bench_train import replace_docs_section

    replace_docs_section("## train: lr auto", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
