"""``tuiwb logits``: headless next-token probabilities, the scripting twin of the logit pane."""

from __future__ import annotations

import argparse
import json

from tuiwb.commands._options import add_model_options, load_model_from_args


def add_parser(sub, parents) -> None:
    p = sub.add_parser("logits", parents=parents, help="print next-token probabilities for a prompt",
                       description="Print the top next-token probabilities of a prompt.")
    add_model_options(p)
    p.add_argument("--prompt", required=True, help="the prompt text (a BOS token is prepended)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="how many tokens to show (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.errors import TuiwbError
    from tuiwb.logits import next_token_logits, top_k

    if args.top < 1:
        raise TuiwbError("--top must be at least 1")
    loaded = load_model_from_args(args)
    ids = loaded.encode(args.prompt)
    top = top_k(loaded, next_token_logits(loaded, ids), args.top)
    if args.json:
        print(json.dumps({"prompt": args.prompt, "top": [t.to_json() for t in top]}))
        return 0
    _print_table(args.prompt, top)
    return 0


def _print_table(prompt: str, top) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"next token after {prompt!r}")
    table.add_column("token")
    table.add_column("id", justify="right")
    table.add_column("prob", justify="right")
    table.add_column("", min_width=20)
    for t in top:
        table.add_row(repr(t.token), str(t.id), f"{t.prob:.4f}", "█" * max(1, round(t.prob * 20)))
    Console().print(table)
