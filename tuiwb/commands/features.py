"""``tuiwb features``: per-feature stats of an SAE, search, and contrast search (the trigger hunt)."""

from __future__ import annotations

import argparse
import json

from tuiwb.commands._options import add_model_options, load_model_from_args

DESCRIPTION = """\
List, search and contrast the features of one SAE.

Stats (density, mean/max activation, top contexts, top tokens, logit effects) come from one pass over
the activations and are cached next to the SAE (features.npz + features.json).

  tuiwb features --sae saes/layer_1 --acts acts.parquet --sort max --top 20
  tuiwb features --sae saes/layer_1 --acts acts.parquet --search cat
  tuiwb features --sae saes/layer_1 --acts acts.parquet --contrast trigger.txt clean.txt --model M
  tuiwb features --sae saes/layer_1 --acts acts.parquet --contrast trigger.txt clean.txt --model M --target i

With --target, features are ranked by their causal effect on the token's probability on the first
prompt set and a set is confirmed by real ablation; the confirmed set is listed first.
"""


HELP = "list, search and contrast SAE features"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    from tuiwb.commands._config_args import add_config_args, set_flags
    from tuiwb.features.config import EffectConfig

    p = sub.add_parser("features", parents=parents, help=HELP,
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", required=True, help="an SAE directory (saes/layer_N)")
    p.add_argument("--acts", required=True, help="the activation directory the stats are computed on")
    p.add_argument("--top", type=int, default=20, metavar="N", help="rows to show (default 20)")
    p.add_argument("--sort", choices=("density", "max", "mean", "id"), default="density",
                   help="order of a plain listing (default density)")
    p.add_argument("--search", metavar="TOKEN", help="features that fire on (or, with --by promotes, "
                   "push up the logit of) TOKEN; #ID for a token id")
    p.add_argument("--by", choices=("fires", "promotes"), default="fires", help="what --search matches")
    p.add_argument("--density", metavar="LO..HI", help="keep features with LO <= density <= HI (LO:HI also works)")
    p.add_argument("--id", dest="ids", metavar="F,F,...", help="show these feature ids")
    p.add_argument("--contrast", nargs=2, metavar=("A.txt", "B.txt"),
                   help="rank features by how much more they fire on prompts A than B (needs --model)")
    p.add_argument("--position", choices=("final", "max"), default="final",
                   help="contrast at the final position (default) or the max over positions")
    p.add_argument("--target", metavar="TOKEN", help="with --contrast: rank by causal effect on TOKEN's "
                   "probability on A and confirm a set by ablation")
    set_flags(p, add_config_args(p, EffectConfig))
    p.add_argument("--no-cache", action="store_true", help="recompute the stats even if cached")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="compute the stats on the first N tokens only")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_model_options(p, required=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tuiwb.errors import TuiwbError
    from tuiwb.features.search import filter_density, parse_range, parse_ids, search_by_id, search_by_token
    from tuiwb.features.stats import StatsConfig
    from tuiwb.features.cache import load_or_compute
    from tuiwb.sae.compat import check_sae_fits
    from tuiwb.sae.io import load_sae
    from tuiwb.trace.store import ActivationStore

    if args.top < 1:
        raise TuiwbError("--top must be at least 1")
    if args.target and not args.contrast:
        raise TuiwbError("--target needs --contrast A.txt B.txt: it ranks features by their effect on set A")
    if args.contrast and not args.model:
        raise TuiwbError("--contrast needs --model: the prompts are run through the model")
    sae = load_sae(args.sae)  # a bad SAE fails before the model loads
    store = ActivationStore(args.acts)
    loaded = load_model_from_args(args) if args.model else None
    if loaded is not None:
        check_sae_fits(sae, loaded=loaded)
        sae.to(loaded.layer_device(sae.cfg.layer if sae.cfg.layer is not None else 0))
    if args.contrast:  # every input of the search is checked before the stats pass
        from tuiwb.commands._config_args import config_from
        from tuiwb.features.config import EffectConfig
        from tuiwb.features.search import resolve_token
        from tuiwb.trace.sources import read_lines

        a, b = (read_lines(p, "prompt file") for p in args.contrast)
        effect = config_from(EffectConfig, args)
        if args.target:
            resolve_token(args.target, loaded.tokenizer)
    cfg = StatsConfig(max_tokens=args.max_tokens)
    stats = load_or_compute(args.sae, store, loaded, sae=sae, cfg=cfg, progress=True, refresh=args.no_cache)
    if loaded is None and not stats.has_logits:
        from tuiwb.errors import warn

        # Why `top_logits` would come back empty: they are read through the model's unembedding.
        warn("no logit effects (promotes, top_logits) without the model: pass `model` to compute them")

    extra: dict = {}
    if args.contrast:
        from tuiwb.features.contrast import contrast, find_feature_set

        if args.target:
            res = find_feature_set(loaded, sae, a, args.target, b, effect, progress=not args.json)
            hits = res.hits
            extra = res.to_json()
        else:
            hits = contrast(loaded, sae, a, b, position=args.position).hits
    elif args.search:
        hits = search_by_token(stats, args.search, args.by, tokenizer=loaded.tokenizer if loaded else None,
                               sae=sae, loaded=loaded)
    elif args.ids:
        hits = search_by_id(stats, parse_ids(args.ids), key=args.sort)
    else:
        lo, hi = parse_range(args.density) if args.density else (0.0, 1.0)
        hits = filter_density(stats, lo, hi, key=args.sort)
    if args.density and (args.search or args.contrast or args.ids):
        lo, hi = parse_range(args.density)
        keep = (stats.density[hits.ids] >= lo) & (stats.density[hits.ids] <= hi)
        hits = type(hits)(hits.ids[keep], hits.scores[keep])
    rows = hits.rows(stats, args.top)
    if args.json:
        print(json.dumps({"features": [r.to_json() for r in rows], **extra}))
        return 0
    _print_table(rows, stats, args, extra)
    return 0


def _print_table(rows, stats, args, extra: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = f"layer {stats.layer}: {stats.d_sae} features, {stats.n_dead} dead, {stats.n_tokens:,} tokens"
    if extra:
        title += (f" — P({extra['target']}) {extra['p_target_before']:.3f} → {extra['p_target_after']:.3f}"
                  f" with {len(extra['confirmed'])} features ablated")
        if extra.get("clean_kl") is not None:
            title += f", clean KL {extra['clean_kl']:.4f}"
    table = Table(title=title)
    confirmed = set(extra.get("confirmed", ()))
    sides = {e["feature"]: e for e in extra.get("edits", ())}
    for col, just in (("id", "right"), ("score", "right"), ("density", "right"), ("max", "right"),
                      ("mean", "right"), ("top tokens", "left"), ("promotes", "left")):
        table.add_column(col, justify=just)
    for r in rows:
        e = sides.get(r.id)
        mark = ("*" + ("T" if e["side"] == "trigger-side" else "P") + ("g" if e["gated"] else "")
                + (f"×{e['alpha']:g}" if e["alpha"] else "") + " ") if e else ""
        table.add_row(f"{mark}{r.id}", f"{r.score:.4g}", f"{r.density:.2e}", f"{r.max_act:.3g}",
                      f"{r.mean_act:.3g}", " ".join(repr(t.token) for t in r.top_tokens[:4]),
                      " ".join(repr(t.token) for t in r.top_logits[:4]))
    console.print(table)
    if confirmed:
        from pathlib import Path

        saes = Path(args.sae).resolve().parent
        console.print("* confirmed by ablation (T trigger-side, P prediction-side, g gated on the trigger "
                      f"detectors {extra['gate']}, ×a scaled, not ablated); stopped: {extra['stopped']}",
                      highlight=False, soft_wrap=True)
        front = "  ".join(f"{p['p_target']:.3f}@{p['clean_kl']:.4f}" for p in extra["pareto"])
        console.print(f"Pareto front, P(target)@clean KL: {front}", highlight=False, soft_wrap=True)
        console.print("try it (ungated ablation of the whole set): tuiwb logits --model " f"{args.model} --saes {saes} "
                      f"--ablate {stats.layer}:{','.join(str(f) for f in extra['confirmed'])} --prompt ...",
                      highlight=False, soft_wrap=True)
