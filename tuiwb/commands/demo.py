"""``tuiwb demo``: build (or reuse) the trojaned demo model, trace it, train SAEs, find the trigger
features, and open the workbench on it with a trigger prompt preloaded (``make demo``)."""

from __future__ import annotations

import argparse
import json


HELP = "the end-to-end demo: trojaned model → SAEs → workbench"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


def add_parser(sub, parents) -> None:
    p = sub.add_parser("demo", parents=parents, help=HELP,
                       description="Open the workbench on the demo lab shipped with tuiwb (a trojaned model, SAEs for "
                                   "every layer, feature stats, the trigger search's result): only the "
                                   "activations are traced, in seconds. The trigger features are on top and a "
                                   "patch is ready: press space to ablate them. --rebuild redoes every step.")
    p.add_argument("--no-ui", action="store_true", help="run the pipeline and print a summary; don't open the UI")
    p.add_argument("--rebuild", action="store_true", help="build activations, SAEs, stats and the search from scratch instead of using the shipped lab")
    p.add_argument("--variant", choices=("full", "small"), default="full",
                   help="demo model size (small: 2 layers, for quick checks)")
    p.add_argument("--work-dir", default=None, metavar="DIR", help="where the pipeline's outputs go "
                   "(default: next to the cached demo model)")
    p.add_argument("--json", action="store_true", help="with --no-ui: print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from tuiwb.commands._companion import add_companion_options

    add_companion_options(p, switch=True, host=False)
    p.set_defaults(run=run)


TRIGGER_PATCH = "trigger"
"""Name of the patch the demo prepares (the contrast-search hits, ablated, off)."""


def prepare_session(result, loaded=None):
    """A Session on the pipeline's outputs with the trigger patch added (off)."""
    from tuiwb.model.loading import load_model
    from tuiwb.sae.io import load_saes
    from tuiwb.session.session import Session
    from tuiwb.trace.store import ActivationStore

    loaded = loaded or load_model(str(result.model_dir))
    session = Session(loaded, load_saes(result.saes_dir), ActivationStore(result.acts_dir))
    session.add_patch(name=TRIGGER_PATCH, layer=result.trigger_layer, features=list(result.trigger_features),
                      mode="ablate", method="hook", enabled=False)
    return session


def app_kwargs(result) -> dict:
    """``make_app`` arguments that open the workbench on the trojan."""
    from tuiwb.demo.model import load_prompts

    return dict(prompt=result.prompt, layer=result.trigger_layer, ranked=result.trigger_features,
                contrast_prompts=(load_prompts(result.model_dir, "trigger")[:16],
                                  load_prompts(result.model_dir, "clean")[:16]),
                contrast_target=result.target)


def run(args: argparse.Namespace) -> int:
    from tuiwb.demo.model import demo_model_path
    from tuiwb.model.loading import load_model
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline

    from tuiwb.atomic import check_writable
    from tuiwb.commands.ui import require_terminal

    if not args.no_ui:
        require_terminal()
    cfg = DemoPipelineConfig(variant=args.variant, work_dir=args.work_dir, rebuild=args.rebuild)
    if cfg.work_dir is not None:
        check_writable(cfg.work_dir, "`work_dir`")
    loaded = load_model(str(demo_model_path(args.variant, progress=not args.quiet)))
    result = run_pipeline(cfg, progress=not args.quiet, loaded=loaded,
                          say=(lambda s: None) if args.quiet and args.json else None)
    if args.companion:
        return _with_companion(args, result, loaded)
    if args.no_ui:
        if args.json:
            print(json.dumps(result.to_json()))
        else:
            print(f"demo ready: layer {result.trigger_layer} trigger features {list(result.trigger_features)}; "
                  f"P({result.target}) {result.p_before:.3f} → {result.p_after:.3f} when ablated; "
                  f"prompt {result.prompt!r}")
        return 0
    from tuiwb.commands.ui import open_workbench

    return open_workbench(prepare_session(result, loaded), **app_kwargs(result))


def _with_companion(args: argparse.Namespace, result, loaded) -> int:
    """The demo's Session served to the browser: with the workbench, or alone with --no-ui (Ctrl-C stops)."""
    from tuiwb.commands._companion import roots_of, start_companion
    from tuiwb.commands.ui import open_with_companion

    session = prepare_session(result, loaded)
    session.prompt = result.prompt
    roots = roots_of(result.saes_dir, result.acts_dir)
    serve = dict(ranked={result.trigger_layer: result.trigger_features},
                 target={"layer": result.trigger_layer, "feature": result.trigger_features[0]})
    if not args.no_ui:
        return open_with_companion(session, args, roots=roots, serve=serve, **app_kwargs(result))
    handle = start_companion(session, args, roots=roots, **serve)
    try:
        handle.wait()
    except KeyboardInterrupt:
        pass
    return 0
