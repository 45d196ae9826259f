"""``tuiwb patch``: build a fitted LoRA patch from SAE features, export patches as one PEFT adapter.

* ``build``  — the exact SAE-gated edit of ``--feature``s at the SAE's layer, fitted as a rank-r LoRA
  on the layer's residual writers; writes ``--out`` (manifest.json + PEFT adapter) with its fidelity.
* ``export`` — merge ``lora/NAME`` patches into one adapter ``PeftModel.from_pretrained`` loads.
* ``show``   — print a patch's manifest.
* ``eval``   — the scorecard of patches over two prompt sets (what it removes on A, what it costs on B).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tuiwb.commands._options import add_model_options
from tuiwb.commands._patch_flags import add_patch_options, open_patched_session, patch_specs

POOR_FIT = 0.5
"""Warn when the LoRA's relative error at the layer output stays above this."""


HELP = "build, export and inspect LoRA feature patches"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    from tuiwb.commands._config_args import add_config_args, set_flags
    from tuiwb.patch.config import FitConfig

    p = sub.add_parser("patch", parents=parents, help=HELP,
                       description="Build fitted LoRA patches from SAE features and export them for production.")
    psub = p.add_subparsers(dest="patch_command", metavar="ACTION")
    psub.required = True

    b = psub.add_parser("build", parents=parents, help="fit a LoRA patch imitating an exact feature edit",
                        description="Fit a rank-r LoRA on the residual writers of the SAE's layer that "
                                    "imitates ablating (or scaling) the given features, and save it.")
    add_model_options(b)
    b.add_argument("--sae", required=True, metavar="saes/layer_N", help="the SAE whose features are edited")
    b.add_argument("--feature", action="append", required=True, metavar="F",
                   help="feature id (may repeat, or F,G,...)")
    b.add_argument("--mode", default="ablate", help="ablate (default) or scale=ALPHA")
    b.add_argument("--out", required=True, metavar="lora/NAME", help="output directory")
    b.add_argument("--name", help="patch name (default: the --out directory's name)")
    b.add_argument("--data", metavar="FILE", help="text to fit on, one document per line (default: the "
                   "activation store given with --acts, else the model directory's train.txt)")
    b.add_argument("--acts", metavar="DIR", help="activation store whose token windows to fit on")
    set_flags(b, add_config_args(b, FitConfig))
    b.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    b.add_argument("--json", action="store_true", help="print the manifest as JSON")
    _add_prompt_sets(b, required=False)
    b.set_defaults(run=run_build)

    e = psub.add_parser("export", parents=parents, help="merge LoRA patches into one PEFT adapter",
                        description="Merge lora/NAME patches into one PEFT adapter directory that "
                                    "PeftModel.from_pretrained(base_model, DIR) loads.")
    add_model_options(e)
    e.add_argument("--lora", action="append", required=True, metavar="lora/NAME", help="patch (may repeat)")
    e.add_argument("--out", required=True, metavar="DIR", help="output directory")
    e.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    e.set_defaults(run=run_export)

    s = psub.add_parser("show", parents=parents, help="print a LoRA patch's manifest",
                        description="Print a LoRA patch's manifest.")
    s.add_argument("lora", metavar="lora/NAME")
    s.add_argument("--json", action="store_true", help="print the manifest as JSON")
    s.set_defaults(run=run_show)

    v = psub.add_parser("eval", parents=parents, help="score patches over two prompt sets",
                        description="The scorecard of the given patches (on together): on --positive prompts, "
                                    "mean P(target) before/after and the share of continuations that still "
                                    "contain it; on --negative prompts, the mean KL and the share of continuations "
                                    "that changed; for a LoRA patch, its fidelity to the hook.")
    add_model_options(v)
    add_patch_options(v)
    _add_prompt_sets(v, required=True)
    v.add_argument("--json", action="store_true", help="print the scorecard as JSON")
    v.set_defaults(run=run_eval)


def _add_prompt_sets(p, required: bool) -> None:
    when = " (required)" if required else \
        " (with --negative: score the patch and write the scorecard into manifest.json)"
    # checked by _prompt_sets (one-line errors), not by argparse
    p.add_argument("--positive", metavar="A.txt",
                   help="prompts the patch should act on, one per line" + when)
    p.add_argument("--negative", metavar="B.txt",
                   help="prompts the patch should leave alone, one per line")
    p.add_argument("--target", metavar="TOKEN",
                   help="the token to remove (default: each positive prompt's unpatched top token)")
    p.add_argument("--max-new-tokens", type=int, default=16, metavar="N",
                   help="length of the continuations compared (default 16)")


def _prompt_sets(args) -> tuple[list[str], list[str]] | None:
    """``(A, B)`` from ``--positive/--negative`` (both or neither), read before any model loads."""
    from tuiwb.errors import TuiwbError
    from tuiwb.trace.sources import read_lines

    if args.positive is None and args.negative is None:
        if args.target is not None:
            raise TuiwbError("--target belongs to the scorecard: pass --positive and --negative too")
        return None
    if args.positive is None or args.negative is None:
        raise TuiwbError("the scorecard needs both prompt sets: pass --positive A.txt and --negative B.txt")
    if args.max_new_tokens < 1:
        raise TuiwbError("--max-new-tokens must be at least 1")
    return read_lines(args.positive, "--positive prompt file"), read_lines(args.negative, "--negative prompt file")


def _print_scorecard(card) -> None:
    print(f"scorecard of {', '.join(card.names)}: {card.summary()}")


def _features(values: list[str]) -> list[int]:
    from tuiwb.errors import TuiwbError

    out = []
    for v in values:
        for part in str(v).split(","):
            if not re.fullmatch(r"\s*\d+\s*", part):
                raise TuiwbError(f"bad --feature {v!r}: expected a feature id (an integer) or F,G,...")
            out.append(int(part))
    return out


def run_build(args: argparse.Namespace) -> int:
    from tuiwb.commands._config_args import config_from
    from tuiwb.commands._options import load_model_from_args
    from tuiwb.errors import TuiwbError
    from tuiwb.patch.config import FitConfig
    from tuiwb.patch.edit import check_name, parse_mode
    from tuiwb.patch.io import check_output
    from tuiwb.sae.compat import sae_layer
    from tuiwb.session.session import Session

    feats = _features(args.feature)
    parse_mode(args.mode)
    prompt_sets = _prompt_sets(args)
    fit = config_from(FitConfig, args)  # checks the rank and every fit setting before loading anything
    out = Path(args.out)
    name = check_name(args.name or out.name)
    check_output(out, args.force)  # before any work: a --force target must be a tuiwb patch
    if not Path(args.sae).is_dir():
        raise TuiwbError(f"SAE directory {args.sae} does not exist: point --sae at a saes/layer_N directory")

    from tuiwb.sae.io import load_sae

    loaded = load_model_from_args(args)
    sae = load_sae(args.sae)
    sae.to(loaded.layer_device(sae.cfg.layer if sae.cfg.layer is not None else 0))  # its block's device
    acts = None
    if args.acts:
        from tuiwb.trace.store import ActivationStore

        acts = ActivationStore(args.acts)
    session = Session(loaded, {sae_layer(sae): sae}, acts, fit=fit, data=args.data)
    session.add_patch(name=name, layer=sae_layer(sae), features=feats, mode=args.mode, rank=args.rank,
                      enabled=False)
    import sys

    fidelity = session.build_lora(name, progress=sys.stderr.isatty())
    card = None
    if prompt_sets is not None:  # before saving: save_lora writes the scorecard into manifest.json
        card = session.evaluate_patch([name], *prompt_sets, target=args.target, max_new_tokens=args.max_new_tokens)
    path = session.save_lora(name, out, overwrite=args.force)
    manifest = json.loads((path / "manifest.json").read_text())
    fit_info = manifest["fit"]
    err = fit_info["layer_rel_err_refined"] if fit_info["refined"] else fit_info["layer_rel_err_closed_form"]
    if args.json:
        print(json.dumps(manifest))
    else:
        print(f"wrote {path}: layer {manifest['layer']}, {len(feats)} feature(s), {manifest['mode']}, "
              f"rank {manifest['rank']}; fidelity KL {fidelity:.5f} nats, layer-output error {err:.3f} "
              f"({'refined' if fit_info['refined'] else 'closed form'}, {fit_info['n_tokens']} tokens, "
              f"{fit_info['seconds']:.1f} s)")
    if card is not None and not args.json:
        _print_scorecard(card)
    if err > POOR_FIT:
        print(f"tuiwb: warning: the LoRA reproduces only {max(0.0, 1 - err):.0%} of the edit at layer "
              f"{manifest['layer']}'s output (these features depend on more than the layer's writers see); "
              "the hook patch is exact — prefer it for this edit", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from tuiwb.errors import TuiwbError

    specs = patch_specs(args)
    if not specs and not args.lora:
        raise TuiwbError("nothing to score: give patches with --lora lora/NAME or --saes DIR --ablate L:F,...")
    sets = _prompt_sets(args)
    if sets is None:
        raise TuiwbError("the scorecard needs both prompt sets: pass --positive A.txt and --negative B.txt")
    positive, negative = sets
    session = open_patched_session(args, specs)
    card = session.evaluate_patch([p.name for p in session.patches], positive, negative, target=args.target,
                                  max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(card.to_json()))
    else:
        _print_scorecard(card)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from tuiwb.errors import TuiwbError
    from tuiwb.patch.io import check_output
    from tuiwb.session.session import Session

    out = Path(args.out)
    check_output(out, args.force)
    session = Session.open(args.model, lora_dirs=args.lora, quant=args.quant, device=args.device,
                           dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                           allow_pickle=args.allow_pickle, device_map=args.device_map)
    names = [p.name for p in session.patches]
    path = session.export(names, out, overwrite=args.force)
    print(f"wrote {path}: {len(names)} patch(es) merged into one PEFT adapter ({', '.join(names)})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from tuiwb.patch.io import read_patch

    m = read_patch(args.lora).manifest
    if args.json:
        print(json.dumps(m))
        return 0
    fid = m.get("fidelity")
    print(f"{m.get('name')}: layer {m.get('layer')}, features {m.get('features')}, {m.get('mode')}, "
          f"rank {m.get('rank')}, fidelity KL {fid if fid is None else f'{fid:.5f}'}")
    print(f"  base model {m.get('base_model')} (config hash {m.get('config_hash')}), "
          f"modules {', '.join(m.get('target_modules', []))}")
    print(f"  created {m.get('created')} by tuiwb {m.get('tuiwb_version')}")
    return 0
