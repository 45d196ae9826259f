"""``tuiwb eval``: reconstruction metrics of an SAE, and with --model its CE-loss score in the model."""

from __future__ import annotations

import argparse

from tuiwb.commands._options import add_model_options


HELP = "evaluate an SAE: FVU, L0, dead latents; CE-loss score with --model"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "eval", parents=parents, help=HELP,
        description="Evaluate an SAE on recorded activations: FVU, MSE, L0, dead fraction. With --model the "
                    "SAE is spliced into the model at its layer on the evaluated windows: CE clean / with the "
                    "SAE / with the layer ablated, CE-loss score and KL.")
    p.add_argument("--acts", required=True, help="activation directory from `tuiwb trace`")
    p.add_argument("--sae", required=True, help="SAE directory (saes/layer_N, SAELens or sparsify layout)")
    p.add_argument("--split", choices=("heldout", "train", "all"), default="heldout",
                   help="heldout (default: the documents held out in training), train, or all rows "
                        "(for a separately traced held-out set)")
    p.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="held-out fraction defining the split (default: the one the SAE was trained with)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="evaluate a random subset of N tokens (default: all of the split)")
    p.add_argument("--ablation", choices=("zero", "mean"), default="zero",
                   help="baseline for ce_zero: zero (default, SAELens' convention) or mean activation")
    add_model_options(p, required=False)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.commands._options import load_model_from_args
    from tuiwb.errors import TuiwbError
    from tuiwb.sae.eval import evaluate
    from tuiwb.sae.io import load_sae
    from tuiwb.trace.store import ActivationStore

    if args.max_tokens is not None and args.max_tokens < 1:
        raise TuiwbError("--max-tokens must be at least 1")
    store = ActivationStore(args.acts)
    sae = load_sae(args.sae)
    loaded = load_model_from_args(args) if args.model else None
    res = evaluate(store, sae, split=args.split, loaded=loaded, val_fraction=args.val_fraction,
                   max_tokens=args.max_tokens, ablation=args.ablation)
    if args.json:
        print(res.dumps())
    else:
        _print(res, args.sae)
    return 0


def _print(res, sae_path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{sae_path}: layer {res.layer}, {res.split} split, {res.n_tokens:,} tokens")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("fvu", f"{res.fvu:.4f}"), ("mse", f"{res.mse:.4g}"), ("l0", f"{res.l0:.2f}"),
            ("dead_fraction", f"{100 * res.dead_fraction:.1f}%")]
    if res.ce_clean is not None:
        rows += [("ce_clean", f"{res.ce_clean:.4f}"), ("ce_sae", f"{res.ce_sae:.4f}"),
                 (f"ce_zero ({res.ablation}-ablated)", f"{res.ce_zero:.4f}"),
                 ("ce_loss_score", f"{res.ce_loss_score:.4f}"), ("kl", f"{res.kl:.4g}")]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
