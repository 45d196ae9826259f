"""``tuiwb generate``: a prompt's continuation unpatched and patched, the scripting twin of the
workbench's continuation pane.

Both continuations are decoded the same way (greedy, or sampled with the same ``--seed``), so where
they part is the patch's doing. ``--json`` prints
``{"prompt", "baseline", "patched", "baseline_ids", "patched_ids"}``.
"""

from __future__ import annotations

import argparse
import json
import sys

from tuiwb.commands._options import add_model_options
from tuiwb.commands._patch_flags import add_patch_options, open_patched_session, patch_specs

HELP = "continue a prompt, unpatched and with feature patches"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    from tuiwb.commands._config_args import add_config_args, set_flags
    from tuiwb.model.config import GenerateConfig

    p = sub.add_parser("generate", parents=parents, help=HELP,
                       description="Generate the continuation of a prompt with the KV cache, once unpatched and "
                                   "once with the patches given (hook patches need --saes).")
    add_model_options(p)
    p.add_argument("--prompt", required=True, help="the prompt text (a BOS token is prepended)")
    set_flags(p, add_config_args(p, GenerateConfig))
    add_patch_options(p)
    p.add_argument("--json", action="store_true",
                   help='print {"prompt", "baseline", "patched", "baseline_ids", "patched_ids"}')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.commands._config_args import config_from
    from tuiwb.model.config import GenerateConfig

    cfg = config_from(GenerateConfig, args)  # checked before the model loads
    specs = patch_specs(args)
    session = open_patched_session(args, specs)
    kw = dict(max_new_tokens=cfg.max_new_tokens, greedy=not cfg.sample, seed=cfg.seed,
              temperature=cfg.temperature, ignore_eos=cfg.ignore_eos)
    decode = session.loaded.tokenizer.decode
    patched_on = bool(session.active)
    if args.json:
        base = list(session.generate(args.prompt, patched=False, **kw))
        patched = list(session.generate(args.prompt, patched=True, **kw)) if patched_on else base
        print(json.dumps({"prompt": args.prompt, "baseline": decode(base), "patched": decode(patched),
                          "baseline_ids": base, "patched_ids": patched}))
        return 0
    sides = [("baseline", False)] + ([("patched", True)] if patched_on else [])
    for label, on in sides:
        print(f"{label:>8}: {args.prompt}", end="", flush=True)
        done: list[int] = []
        for tid in session.generate(args.prompt, patched=on, **kw):  # stream: each token as it comes
            text = decode(done + [tid])
            print(text[len(decode(done)):] if done else " " + text.lstrip(), end="", flush=True)
            done.append(tid)
        print()
    if not patched_on:
        print("(no patch given: --ablate/--scale with --saes, or --lora)", file=sys.stderr)
    return 0
