"""The demo lab shipped as package data, so a first ``tuiwb demo`` trains nothing.

``tuiwb/demo/assets/<variant>/`` holds what the pipeline would otherwise build for minutes: the
trained demo model (``model/``: checkpoint, tokenizer, its texts and prompt sets, trojan report),
the SAEs of the pipeline's layers with their feature-stats sidecars (``saes/layer_N/``) and the
trigger search's result (``demo_result.json``). All of it is made by the project's own pipeline:
``make demo-assets`` (``python -m tuiwb.demo.build_assets``) rebuilds it from scratch.

Installing copies them where the pipeline looks: the model into the demo-model cache, the SAEs and
the result into the work directory. The pipeline then only traces (seconds); its own checks decide
that the SAEs, the stats and the search result fit those activations: the identity of a trace
(``trace.shards.manifest_identity``) is the same wherever the same model and text are traced.
"""

from __future__ import annotations

import json
import shutil
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
