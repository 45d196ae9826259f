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
    add_model_options(p)
    p.add_argument("--saes", required=True, metavar="DIR", help="directory of layer_N/ SAEs")
    p.add_argument("--layer", type=int, required=True, help="layer of the target feature's SAE")
    p.add_argument("--feature", type=int, required=True, help="the target feature id")
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tuiwb.errors import TuiwbError
    from tuiwb.features.cache import cached_stats_by_layer
    from tuiwb.provenance.graph import build_graph, check_request
    from tuiwb.provenance.render import render_tree
    from tuiwb.sae.compat import check_sae_fits
    from tuiwb.sae.io import load_saes

    if not Path(args.saes).is_dir():
        raise TuiwbError(f"SAE directory {args.saes} does not exist: point --saes at a saes/ directory")
    loaded = load_model_from_args(args)
    saes = load_saes(args.saes)
    for layer, sae in saes.items():
        check_sae_fits(sae, loaded=loaded)
        sae.to(loaded.layer_device(layer))  # its block's device, also under a device map
    # Validate before reading stats or running anything, so mistakes fail fast.
    check_request(loaded.n_layers, saes, args.layer, args.feature, args.depth, args.top, args.threshold,
                  args.method, args.steps)
    stats = cached_stats_by_layer(args.saes, range(args.layer - args.depth, args.layer + 1))
    graph = build_graph(loaded, saes, args.layer, args.feature, args.prompt, pos=args.pos, depth=args.depth,
                        top=args.top, threshold=args.threshold, method=args.method, steps=args.steps,
                        stats=stats, freeze_norms=not args.live_norms)
    if args.json:
        print(graph.dumps())
        return 0
    from rich.console import Console

    Console().print(render_tree(graph))
    return 0
