"""``tuiwb logits``: headless next-token probabilities, the scripting twin of the logit pane.

With patches (``--ablate``/``--scale`` hook patches on ``--saes``, ``--lora`` patch directories) the
prompt goes through a ``Session``: ``top`` is the patched distribution and the JSON object gains
``baseline`` (the unpatched top list) and ``kl`` = KL(baseline ‖ patched).
"""

from __future__ import annotations

import argparse
import json

from tuiwb.commands._options import add_model_options, load_model_from_args


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
    p.add_argument("--saes", metavar="DIR", help="saes/ directory (layer_N/ below) for --ablate/--scale")
    p.add_argument("--ablate", action="append", default=[], metavar="L:F[,F...]",
                   help="ablate SAE features F at layer L (exact hook patch); may repeat")
    p.add_argument("--scale", action="append", default=[], metavar="L:F[,F...]=ALPHA",
                   help="multiply SAE features F at layer L by ALPHA (exact hook patch); may repeat")
    p.add_argument("--lora", action="append", default=[], metavar="lora/NAME",
                   help="apply a LoRA patch made by `tuiwb patch build`; may repeat")
    p.add_argument("--token", action="append", default=[], metavar="TOKEN",
                   help="also report P(TOKEN) unpatched and patched (JSON key \"tokens\"); may repeat")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.errors import TuiwbError
    from tuiwb.model.logits import next_token_logits, top_k
    from tuiwb.trace.sources import read_lines

    if args.top < 1:
        raise TuiwbError("--top must be at least 1")
    specs = _parse_patch_flags(args)
    prompts = [args.prompt] if args.prompts is None else read_lines(args.prompts, "prompt file")
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

    session = _open_session(args, specs)
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


def _parse_patch_flags(args) -> list[tuple[int, list[int], str]]:
    """``--ablate``/``--scale`` → ``[(layer, features, mode)]``, syntax checked before any loading."""
    from tuiwb.errors import TuiwbError
    from tuiwb.commands._patch_flags import parse_ablate, parse_scale
    from tuiwb.patch.edit import format_mode

    specs = [(*parse_ablate(s), "ablate") for s in args.ablate]
    for s in args.scale:
        layer, feats, alpha = parse_scale(s)
        specs.append((layer, feats, format_mode(alpha)))
    if specs and not args.saes:
        raise TuiwbError("--ablate/--scale edit SAE features: pass --saes with the saes/ directory")
    return specs


def _open_session(args, specs):
    from tuiwb.session.session import Session

    session = Session.open(args.model, saes_dir=args.saes, lora_dirs=args.lora, quant=args.quant,
                           device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                           allow_pickle=args.allow_pickle, device_map=args.device_map)
    for i, (layer, feats, mode) in enumerate(specs):
        session.add_patch(name=f"cli{i}", layer=layer, features=feats, mode=mode, method="hook")
    return session


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
