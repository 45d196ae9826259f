"""``tuiwb ui``: open the Textual workbench on a model, its SAEs and (optionally) activations/patches."""

from __future__ import annotations

import argparse
from pathlib import Path

from tuiwb.commands._options import add_lab_options, add_model_options


HELP = "open the interactive workbench (TUI)"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    p = sub.add_parser("ui", parents=parents, help=HELP,
                       description="Open the keyboard-driven workbench: feature table, token cloud, contexts, "
                                   "live logits with patches on/off, provenance. Press ? inside for the keys.")
    add_model_options(p)
    add_lab_options(p, prompt_help="text preloaded in the prompt editor")
    p.add_argument("--layer", type=int, default=None, help="SAE layer shown first (default: the lowest)")
    p.add_argument("--top", type=int, default=10, metavar="K", help="tokens in the logit pane (default 10)")
    p.add_argument("--lora-out", default="lora", metavar="DIR", help="where `e` exports patches (default lora/)")
    from tuiwb.commands._companion import add_companion_options

    add_companion_options(p, switch=True, host=False)
    p.set_defaults(run=run)


def lora_dirs(paths: list[str]) -> list[Path]:
    """Each path is a patch (has manifest.json) or a directory of patches."""
    from tuiwb.errors import TuiwbError

    out: list[Path] = []
    for s in paths:
        p = Path(s).expanduser()
        if (p / "manifest.json").is_file():
            out.append(p)
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if (d / "manifest.json").is_file())
            if not subs:
                raise TuiwbError(f"{p} holds no LoRA patches (no */manifest.json): export one with `e` in the UI")
            out.extend(subs)
        else:
            raise TuiwbError(f"LoRA patch {p} does not exist")
    return out


def run(args: argparse.Namespace) -> int:
    from tuiwb.errors import TuiwbError
    from tuiwb.session.session import Session

    if args.top < 1:
        raise TuiwbError("--top must be at least 1")
    require_terminal()
    loras = lora_dirs(args.lora)
    session = Session.open(args.model, saes_dir=args.saes, acts=args.acts, lora_dirs=loras,
                           quant=args.quant, device=args.device, dtype=args.dtype,
                           trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    kw = dict(prompt=args.prompt, layer=args.layer, top_k=args.top, lora_dir=args.lora_out)
    if not args.companion:
        return open_workbench(session, **kw)
    from tuiwb.commands._companion import roots_of

    session.prompt = args.prompt
    return open_with_companion(session, args, roots=roots_of(args.saes, args.acts, *loras, args.lora_out), **kw)


def require_terminal() -> None:
    """The workbench draws on a terminal: with stdin or stdout piped it would write escape codes into
    the pipe and wait for keys that never come. Checked before anything loads."""
    import sys

    from tuiwb.errors import TuiwbError

    if not (sys.stdin.isatty() and sys.stdout.isatty() and sys.stderr.isatty()):  # textual draws on stderr
        raise TuiwbError("the workbench needs a terminal, and stdin, stdout or stderr is not one: run it in a terminal "
                         "(over SSH: ssh -t), or use the scripting commands (tuiwb logits, demo --no-ui)")


def open_with_companion(session, args, *, roots, serve: dict | None = None, **kw) -> int:
    """The workbench (``kw``: ``make_app``'s) and the browser companion (``serve``: ``start_companion``'s
    ``target``/``ranked``) on one Session: toggles cross both ways."""
    from tuiwb.commands._companion import start_companion

    handle = start_companion(session, args, roots=roots, **(serve or {}))
    try:
        return open_workbench(session, companion_url=handle.url, **kw)
    finally:
        handle.stop()
        print(f"companion stopped (it was {handle.url})")


def open_workbench(session, **kw) -> int:
    """Run the app in this terminal until the user quits."""
    from tuiwb.tui import make_app

    make_app(session, **kw).run()
    return 0
