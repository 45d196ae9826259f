"""``tuiwb logits``: headless next-token probabilities, the scripting twin of the logit pane.

With patches (``--ablate``/``--scale`` hook patches on ``--saes``, ``--lora`` patch directories) the
prompt goes through a ``Session``: ``top`` is the patched distribution and the JSON object gains
``baseline`` (the unpatched top list) and ``kl`` = KL(baseline ‖ patched).
"""

from __future__ import annotations

import argparse
import json

from tuiwb.commands._options import add_model_options, load_model_from_args
from tuiwb.commands._patch_flags import add_patch_options, open_patched_session, patch_specs


HELP = "print next-token probabilities for a prompt"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    p = sub.add_parser("logits", parents=parents, help=HELP,
                       description="Print the top next-token probabilities of a prompt, optionally with "
                                   "feature patches applied (hook patches need --saes).")
    add_model_options(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text (a BOS token is prepended)")
    src.add_argument("--prompts", metavar="FILE",
                     help="one prompt per line; with --json prints one JSON object per line (JSON lines)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="how many tokens to show (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_patch_options(p)
    p.add_argument("--token", action="append", default=[], metavar="TOKEN",
                   help="also report P(TOKEN) unpatched and patched (JSON key \"tokens\"); may repeat")
    p.add_argument("--sweep", metavar="L:F", help="dose-response of SAE feature F at layer L (needs --saes): "
                   "P(target) and KL to the unpatched model per scale factor α; a chart, or with --json "
                   '{"prompt", "layer", "feature", "rows": [{"alpha", "p", "kl", "top"}]}')
    p.add_argument("--alphas", metavar="A,B,...", help="--sweep's scale factors (default -2,-1,0,0.5,1,2,4)")
    p.add_argument("--target", metavar="TOKEN", help="--sweep's token (default: the unpatched top token)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.errors import TuiwbError
    from tuiwb.model.logits import next_token_logits, top_k
    from tuiwb.trace.sources import read_lines

    if args.top < 1:
        raise TuiwbError("--top must be at least 1")
    specs = patch_specs(args)
    prompts = [args.prompt] if args.prompts is None else read_lines(args.prompts, "prompt file")
    if args.sweep is not None or args.alphas is not None or args.target is not None:
        return _run_sweep(args, specs, prompts)
    if not specs and not args.lora:
        loaded = load_model_from_args(args)
        _check_tokens(loaded, args.token)
        for prompt in prompts:
            logits = next_token_logits(loaded, loaded.encode(prompt))
            top = top_k(loaded, logits, args.top)
            if args.json:
                obj = {"prompt": prompt, "top": [t.to_json() for t in top]}
                if args.token:
                    obj["tokens"] = _token_probs(loaded, args.token, logits, logits)
                print(json.dumps(obj))
            else:
                _print_table(prompt, top)
        return 0

    session = open_patched_session(args, specs)
    _check_tokens(session.loaded, args.token)
    patches = [p.to_json() for p in session.patches]
    for prompt in prompts:
        result = session.logits(prompt, top=args.top)
        if args.json:
            obj = {"prompt": prompt, "top": [t.to_json() for t in result.patched],
                   "baseline": [t.to_json() for t in result.baseline], "kl": result.kl, "patches": patches}
            if args.token:
                obj["tokens"] = _token_probs(session.loaded, args.token,
                                             session.next_token_logits(prompt, patched=False),
                                             session.next_token_logits(prompt, patched=True))
            print(json.dumps(obj))
        else:
            _print_table(prompt, result.patched, baseline=result.baseline, kl=result.kl)
    return 0


def _parse_sweep(args) -> tuple[int, int, tuple[float, ...]]:
    """``--sweep L:F`` and ``--alphas``, checked before any loading."""
    import re

    from tuiwb.errors import TuiwbError
    from tuiwb.patch.sweep import DEFAULT_ALPHAS, check_alphas

    if args.sweep is None:
        raise TuiwbError("--alphas and --target belong to --sweep L:F: pass --sweep too")
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", args.sweep)
    if not m:
        raise TuiwbError(f"bad --sweep {args.sweep!r}: expected LAYER:FEATURE, e.g. 1:325")
    if not args.saes:
        raise TuiwbError("--sweep scales an SAE feature: pass --saes with the saes/ directory")
    if args.alphas is None:
        return int(m.group(1)), int(m.group(2)), DEFAULT_ALPHAS
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        raise TuiwbError(f"bad --alphas {args.alphas!r}: expected numbers separated by commas, e.g. -1,0,2") from None
    return int(m.group(1)), int(m.group(2)), check_alphas(alphas)


def _run_sweep(args, specs, prompts) -> int:
    """``--sweep``: one dose-response per prompt, on the unpatched model."""
    from tuiwb.errors import TuiwbError

    layer, feature, alphas = _parse_sweep(args)
    if specs or args.lora:
        raise TuiwbError("--sweep measures one feature on the unpatched model: drop --ablate/--scale/--lora")
    session = open_patched_session(args, [])
    for prompt in prompts:
        sweep = session.sweep(prompt, layer, feature, alphas=alphas, target=args.target)
        if args.json:
            print(json.dumps(sweep.to_json()))
        else:
            _print_sweep(sweep)
    return 0


def _print_sweep(sweep) -> None:
    import shutil
    import sys

    from rich.console import Console
    from rich.table import Table

    from tuiwb.patch.sweep import legend, sweep_chart

    table = Table(title=f"L{sweep.layer} f{sweep.feature} scaled by α, after {sweep.prompt!r}")
    table.add_column("α", justify="right")
    table.add_column(f"P({sweep.target!r})", justify="right")
    table.add_column("KL nats", justify="right")
    table.add_column("top token")
    for r in sweep.rows:
        table.add_row(f"{r.alpha:g}", f"{r.p:.4f}", f"{r.kl:.4f}", repr(r.top))
    console = Console()
    console.print(table)
    if len(sweep.rows) > 1:
        width = min(100, shutil.get_terminal_size((80, 24)).columns)
        color = sys.stdout.isatty()
        print(sweep_chart([r.alpha for r in sweep.rows], [r.p for r in sweep.rows], [r.kl for r in sweep.rows],
                          width, 16, color=color))
        print(legend(sweep.target, color))


def _check_tokens(loaded, tokens: list[str]) -> None:
    """Every ``--token`` is one known token, checked before any forward pass."""
    from tuiwb.features.search import resolve_token

    for t in tokens:
        resolve_token(t, loaded.tokenizer)


def _token_probs(loaded, tokens: list[str], base, patched) -> list[dict]:
    """P(token) unpatched and patched for each ``--token`` (one token of the vocabulary)."""
    import torch

    from tuiwb.features.search import resolve_token

    pb, pp = torch.softmax(base.float(), -1), torch.softmax(patched.float(), -1)
    out = []
    for t in tokens:
        i = resolve_token(t, loaded.tokenizer)  # one known token, never a silent <unk>
        out.append({"token": t, "id": i, "baseline": float(pb[i]), "patched": float(pp[i])})
    return out


def _print_table(prompt: str, top, baseline=None, kl=None) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"next token after {prompt!r}" + (" (patched)" if baseline is not None else "")
    table = Table(title=title)
    table.add_column("token")
    table.add_column("id", justify="right")
    table.add_column("prob", justify="right")
    if baseline is not None:
        table.add_column("unpatched", justify="right")
        base = {t.id: t.prob for t in baseline}
    table.add_column("", min_width=20)
    for t in top:
        row = [repr(t.token), str(t.id), f"{t.prob:.4f}"]
        if baseline is not None:
            row.append(f"{base[t.id]:.4f}" if t.id in base else "-")
        table.add_row(*row, "█" * max(1, round(t.prob * 20)))
    console = Console()
    console.print(table)
    if kl is not None:
        console.print(f"KL(unpatched ‖ patched) = {kl:.5f} nats")
