"""``python -m tuiwb.demo.build_assets [full] [small] [--reuse-model]`` (``make demo-assets``): rebuild the
demo lab shipped in ``tuiwb/demo/assets/`` with the project's own model builder and pipeline."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tuiwb.atomic import publish_dir, staged_dir
from tuiwb.demo.assets import RESULT, ROOT


def build(variant: str, dest: Path = ROOT, reuse_model: bool = False) -> Path:
    """Rebuild the shipped lab of ``variant`` from scratch (model, trace, SAEs, stats, search) into
    ``dest/<variant>``; the activations are not shipped (the pipeline re-traces them in seconds).

    ``reuse_model`` takes the model from the demo-model cache (built by the same ``build_demo_model``,
    deterministic per seed) instead of training it again.
    """
    import tempfile

    from tuiwb.demo.model import DemoConfig, build_demo_model, demo_model_path
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline

    with tempfile.TemporaryDirectory(prefix="tuiwb-demo-assets-") as tmp:
        model = Path(tmp) / "model"
        if reuse_model:
            shutil.copytree(demo_model_path(variant), model)
        else:
            build_demo_model(model, variant=variant, config=DemoConfig.for_variant(variant), progress=True)
        work = Path(tmp) / "work"
        result = run_pipeline(DemoPipelineConfig(variant=variant, work_dir=work), model_dir=model, shipped=False)
        out = dest / variant
        with staged_dir(out) as stage:
            shutil.copytree(model, stage / "model")
            for layer in result.layers:
                shutil.copytree(work / "saes" / f"layer_{layer}", stage / "saes" / f"layer_{layer}")
            shutil.copy2(work / RESULT, stage / RESULT)
            publish_dir(stage, out)
    return out


def main(argv: list[str]) -> int:
    reuse = "--reuse-model" in argv
    for variant in [a for a in argv if not a.startswith("-")] or ["full", "small"]:
        out = build(variant, reuse_model=reuse)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{variant}: {out} ({size / 1e6:.1f} MB)", json.dumps(json.loads((out / RESULT).read_text())["result"]
                                                                   .get("trigger_features")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
