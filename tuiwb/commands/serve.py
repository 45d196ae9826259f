"""``tuiwb serve``: the browser companion alone (no TUI) on a model, its SAEs and patches."""

from __future__ import annotations

import argparse

from tuiwb.commands._options import add_lab_options, add_model_options


HELP = "serve the browser companion (live logits and provenance graph over WebSocket)"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    from tuiwb.commands._companion import add_companion_options

    p = sub.add_parser("serve", parents=parents, help=HELP,
                       description="Serve the companion page on 127.0.0.1: the provenance graph, logit bars that "
                                   "move as patches are toggled, the patch list and feature search, all on one "
                                   "Session. The printed URL carries a random access token.")
    add_model_options(p)
    add_lab_options(p, prompt_help="the prompt the page opens with")
    add_companion_options(p, switch=False, host=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.commands._companion import roots_of, start_companion
    from tuiwb.commands.ui import lora_dirs
    from tuiwb.server.config import CompanionConfig
    from tuiwb.session.session import Session

    CompanionConfig(host=args.host, port=args.port)  # bad flags fail before the model loads
    loras = lora_dirs(args.lora)
    session = Session.open(args.model, saes_dir=args.saes, acts=args.acts, lora_dirs=loras, quant=args.quant,
                           device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                           allow_pickle=args.allow_pickle)
    session.prompt = args.prompt
    handle = start_companion(session, args, roots=roots_of(args.saes, args.acts, *loras))
    try:
        handle.wait()
    except KeyboardInterrupt:
        pass
    return 0
