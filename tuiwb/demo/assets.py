"""The demo lab shipped as package data, so a first ``tuiwb demo`` trains nothing.

``tuiwb/demo/assets/<variant>/`` holds what the pipeline would otherwise build for minutes: the
trained demo model (``model/``: checkpoint, tokenizer, its texts and prompt sets, trojan report),
the SAEs of the pipeline's layers with their feature-stats sidecars (``saes/layer_N/``) and the
trigger search's result (``demo_result.json``). All of it is made by the project's own pipeline:
``make demo-assets`` (``python -m tuiwb.demo.assets``) rebuilds it from scratch.

Installing copies them where the pipeline looks: the model into the demo-model cache, the SAEs and
the result into the work directory. The pipeline then only traces (seconds); its own checks decide
that the SAEs, the stats and the search result fit those activations: the identity of a trace
(``trace.shards.manifest_identity``) is the same wherever the same model and text are traced.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tuiwb.atomic import publish_dir, staged_dir

ROOT = Path(__file__).with_name("assets")
RESULT = "demo_result.json"


def shipped(variant: str) -> Path | None:
    """The shipped lab of ``variant``, or None when this install has none."""
    d = ROOT / variant
    return d if (d / RESULT).is_file() and (d / "model" / "trojan_report.json").is_file() else None


def install_model(variant: str, target: Path) -> bool:
    """Copy the shipped model of ``variant`` to ``target`` (whole, or not at all); False if none."""
    src = shipped(variant)
    if src is None:
        return False
    with staged_dir(target) as tmp:
        shutil.copytree(src / "model", tmp, dirs_exist_ok=True)
        publish_dir(tmp, target)
    return True


def install_lab(variant: str, work: Path, layers, identity: str) -> bool:
    """Put the shipped SAEs of ``layers`` (with their stats) and the search result into ``work``, where
    they were made from activations of this ``identity`` (``ActivationStore.identity``) and the local
    ones were not: a missing or stale local SAE is replaced, a current one (retrained) is kept."""
    src = shipped(variant)
    if src is None or not all(_trained_on(src / "saes" / f"layer_{L}") == identity for L in layers):
        return False
    installed = False
    for layer in layers:
        dst = work / "saes" / f"layer_{layer}"
        if _trained_on(dst) != identity:
            with staged_dir(dst) as tmp:
                shutil.copytree(src / "saes" / f"layer_{layer}", tmp, dirs_exist_ok=True)  # keeps mtimes
                publish_dir(tmp, dst)
            installed = True
    if installed or not (work / RESULT).exists():
        shutil.copy2(src / RESULT, work / RESULT)
    return True


def _trained_on(sae_dir: Path) -> str | None:
    """The trace identity an SAE directory records (None when absent or unreadable)."""
    try:
        return json.loads((sae_dir / "cfg.json").read_text())["tuiwb"]["trace_manifest_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
