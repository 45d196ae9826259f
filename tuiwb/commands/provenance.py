"""``tuiwb provenance``: where a feature comes from — an upstream attribution tree (or JSON graph)."""

from __future__ import annotations

import argparse

from tuiwb.commands._options import add_model_options, load_model_from_args


HELP = "trace a feature's upstream causes through earlier SAEs"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    p = sub.add_parser(
        "provenance", parents=parents, help=HELP,
        description="Attribute an SAE feature to the SAE features (and SAE error) of the layers before it, "
                    "breadth first, --depth levels deep; below layer 0 come the token embeddings. With "
                    "--prompt: activation × gradient (or Integrated Gradients) on that prompt, with the norms' "
                    "denominators frozen; without: static virtual weights W_enc·W_dec between adjacent SAEs.")
    add_model_options(p, required=False)
    p.add_argument("--saes", metavar="DIR", help="directory of layer_N/ SAEs (required unless --show)")
    p.add_argument("--layer", type=int, help="layer of the target feature's SAE (required unless --show)")
    p.add_argument("--feature", type=int, help="the target feature id (required unless --show)")
    p.add_argument("--prompt", default=None, help="prompt text (a BOS token is prepended); omit for the static view")
    p.add_argument("--pos", type=int, default=None, metavar="P",
                   help="token position of the target (0 = BOS, negative from the end; default: last)")
    p.add_argument("--depth", type=int, default=2, help="levels upstream (default 2)")
    p.add_argument("--top", type=int, default=5, help="children kept per node (default 5)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="keep children with |attribution| above this (default 0)")
    p.add_argument("--method", choices=("grad", "ig"), default="grad",
                   help="grad = activation × gradient (default); ig = Integrated Gradients")
    p.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps (default 32)")
    p.add_argument("--live-norms", action="store_true",
                   help="differentiate through the norms' live denominators (then contributions from other "
                        "positions cancel out; see tuiwb.provenance_attr)")
    p.add_argument("--json", action="store_true", help='print one JSON object {"nodes": [...], "edges": [...]}')
    p.add_argument("--format", choices=("tuiwb", "circuit-tracer"), default="tuiwb",
                   help="JSON layout with --json: tuiwb's own, or circuit-tracer's graph schema (a superset of it, "
                        "readable by its viewers)")
    p.add_argument("--show", metavar="FILE", default=None,
                   help="draw a saved graph (a --json file of either format, or one circuit-tracer wrote) as a tree; "
                        "no model needed")
    p.set_defaults(run=run)


def _emit(graph, args, model: str = "") -> int:
    if args.json:
        import json

        from tuiwb.provenance.circuit_tracer import to_circuit_tracer

        data = to_circuit_tracer(graph, model=model) if args.format == "circuit-tracer" else graph.to_json()
        print(json.dumps(data))
        return 0
    from rich.console import Console

    from tuiwb.provenance.render import render_tree

    Console().print(render_tree(graph))
    return 0


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuiwb.errors import TuiwbError
    from tuiwb.features.cache import cached_stats_by_layer
    from tuiwb.provenance.graph import build_graph, check_request
    from tuiwb.sae.compat import check_sae_fits
    from tuiwb.sae.io import load_saes

    if args.show is not None:
        from tuiwb.provenance.circuit_tracer import load_graph

        return _emit(load_graph(args.show), args)
    missing = [f"--{name}" for name in ("model", "saes", "layer", "feature") if getattr(args, name) is None]
    if missing:
        raise TuiwbError(f"missing {', '.join(missing)}: give them, or --show FILE to draw a saved graph")
    if not Path(args.saes).is_dir():
        raise TuiwbError(f"SAE directory {args.saes} does not exist: point --saes at a saes/ directory")
    loaded = load_model_from_args(args)
    saes = load_saes(args.saes, device=loaded.device)
    for sae in saes.values():
        check_sae_fits(sae, loaded=loaded)
    # Validate before reading stats or running anything, so mistakes fail fast.
    check_request(loaded.n_layers, saes, args.layer, args.feature, args.depth, args.top, args.threshold,
                  args.method, args.steps)
    stats = cached_stats_by_layer(args.saes, range(args.layer - args.depth, args.layer + 1))
    graph = build_graph(loaded, saes, args.layer, args.feature, args.prompt, pos=args.pos, depth=args.depth,
                        top=args.top, threshold=args.threshold, method=args.method, steps=args.steps,
                        stats=stats, freeze_norms=not args.live_norms)
    return _emit(graph, args, model=str(args.model))
