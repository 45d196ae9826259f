"""The demo labs the tests share (see ``demo_saes`` / ``demo_small_saes`` in conftest).

* :func:`shipped_lab`: the demo pipeline on the lab shipped with tuiwb (only the trace runs; the SAEs
  of every layer, their stats and the search result are the shipped ones).
* :func:`build_demo_lab`: every layer traced (100k tokens) with a TopK SAE per layer trained here on a
  small budget (150k tokens, k=16, 8x) — what the provenance and trigger-hunt tests were calibrated
  on: measured on the full demo model, held-out FVU ≈ 0.008 and a 3–7 feature trigger set at every
  layer, in ~1 min on 2 idle cores. (With the shipped lab's 2M-token SAEs, IG completeness at a
  layer-0 feature of the full model is off by 5.3%, past the 5% that test holds it to.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuiwb.locks import file_lock

TRACE_TOKENS = 100_000
TRAIN_TOKENS = 150_000
SAE_K = 16
SAE_EXPANSION = 8


@dataclass(frozen=True)
class DemoLab:
    """Paths of one lab."""

    model: Path
    """The demo model checkpoint (also holds trigger_prompts.txt / clean_prompts.txt)."""
    acts: Path
    """The activation directory (every layer traced)."""
    saes: Path
    """``saes/`` with one ``layer_N/`` TopK SAE per layer."""
    layers: tuple[int, ...]
    """Layers that have an SAE."""
    result: object = None
    """The pipeline's ``DemoResult`` (trigger layer, features, prompt), for a shipped lab."""

    def sae_dir(self, layer: int) -> Path:
        return self.saes / f"layer_{layer}"

    def prompts(self, kind: str) -> Path:
        """``trigger`` or ``clean`` prompt file (one prompt per line)."""
        return self.model / f"{kind}_prompts.txt"


def shipped_lab(variant: str, work: Path) -> DemoLab:
    """Run the demo pipeline of ``variant`` into ``work`` on the shipped lab (a lock makes pytest-xdist
    workers share one run)."""
    import torch

    from tuiwb.demo.assets import shipped
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline

    assert shipped(variant) is not None, "tuiwb/demo/assets is missing: run `make demo-assets`"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: one thread per process is much faster here
    try:
        result = run_pipeline(DemoPipelineConfig(variant=variant, work_dir=work), progress=False, say=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return DemoLab(model=result.model_dir, acts=result.acts_dir, saes=result.saes_dir, layers=result.layers,
                   result=result)


def build_demo_lab(model_dir: Path, out: Path, trace_tokens: int = TRACE_TOKENS,
                   train_tokens: int = TRAIN_TOKENS) -> DemoLab:
    """Trace every layer of ``model_dir`` and train a TopK SAE per layer into ``out`` (reused if done)."""
    import torch

    from tuiwb.sae.config import TrainConfig
    from tuiwb.sae.train import train_saes
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    out = Path(out)
    done = out / "lab.json"
    if done.is_file():
        return _lab(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.with_name(out.name + ".lock")):
        if done.is_file():  # another worker built it while we waited
            return _lab(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # shared cores: one thread per process is much faster here
        try:
            trace(TraceConfig(data=[str(Path(model_dir) / "train.txt")], out=str(tmp / "acts.parquet"),
                              model=str(model_dir), layers="all", seq_len=128, batch_size=32,
                              max_tokens=trace_tokens), progress=False)
            results = train_saes(tmp / "acts.parquet", "all", tmp / "saes", TrainConfig(
                k=SAE_K, expansion=SAE_EXPANSION, tokens=train_tokens, batch_size=2048, threads=1,
                dead_tokens=50_000, val_tokens=8192, eval_tokens=16_384), progress=False)
            info = {"model": str(Path(model_dir).resolve()), "layers": sorted(results),
                    "metrics": {str(k): v for k, v in results.items()}}
            (tmp / "lab.json").write_text(json.dumps(info, indent=2, default=str))
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            torch.set_num_threads(threads)
            shutil.rmtree(tmp, ignore_errors=True)
    return _lab(out)


def _lab(out: Path) -> DemoLab:
    info = json.loads((out / "lab.json").read_text())
    return DemoLab(model=Path(info["model"]), acts=out / "acts.parquet", saes=out / "saes",
                   layers=tuple(info["layers"]))
