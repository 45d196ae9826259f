"""The ``tuiwb demo`` pipeline: demo model → trace → SAEs → feature stats → trigger search.

Each step writes into a per-variant work directory next to the demo model's cache and is skipped
when its output is already there and valid, so a second ``tuiwb demo`` reaches the workbench in
seconds. The result (:class:`DemoResult`) names everything the workbench needs: the model, the SAEs,
the activations, the trigger features found by contrast search and a prompt that shows the trojan.

Core module: no textual import (the CLI opens the app from ``tuiwb/commands/demo.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from tuiwb.errors import TuiwbError
from tuiwb.locks import file_lock

RESULT_FILE = "demo_result.json"
PIPELINE_VERSION = 1
"""Bump when a step's settings change: the work directory's name includes it."""


PRESETS = {
    "full": {"trace_tokens": 262_144, "sae_tokens": 2_000_000},
    "small": {"trace_tokens": 65_536, "sae_tokens": 400_000},
}
"""Per-variant budgets: ``small`` is what the UI tests run (about a minute on 2 idle cores)."""


@dataclass
class DemoPipelineConfig:
    """Settings of the demo pipeline (the defaults are what ``make demo`` runs)."""

    variant: str = "full"
    """Demo model variant: ``full`` (4 layers × 128) or ``small`` (2 × 64, for tests)."""
    layers: tuple[int, ...] | None = None
    """Layers to trace and train SAEs for (default: every layer but the first, at least three)."""
    work_dir: Path | None = None
    """Where acts, SAEs and the result go (default: ``<cache>/demo-<variant>-v<V>-work``)."""
    trace_tokens: int | None = None
    """Tokens of ``train.txt`` to trace (default per variant, see ``PRESETS``)."""
    seq_len: int = 128
    """Trace window length."""
    sae_k: int = 16
    """TopK SAE: active latents per token."""
    sae_expansion: int = 8
    """``d_sae = expansion × d_model``."""
    sae_tokens: int | None = None
    """SAE training budget in tokens per layer (default per variant)."""
    contrast_prompts: int = 32
    """Trigger and clean prompts used by the trigger search."""
    rebuild: bool = False
    """Redo every step after the demo model (the model itself stays cached)."""

    def __post_init__(self):
        from tuiwb.demo import VARIANTS

        if self.variant not in VARIANTS:
            raise TuiwbError(f"unknown demo variant {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        for name, value in PRESETS[self.variant].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("trace_tokens", "seq_len", "sae_k", "sae_expansion", "sae_tokens", "contrast_prompts"):
            if int(getattr(self, name)) < 1:
                raise TuiwbError(f"{name} must be at least 1")
        if self.trace_tokens < self.seq_len:
            raise TuiwbError(f"trace_tokens {self.trace_tokens} is less than one window ({self.seq_len})")
        if self.layers is not None:
            self.layers = tuple(sorted({int(x) for x in self.layers}))
        if self.work_dir is not None:
            self.work_dir = Path(self.work_dir).expanduser()


@dataclass(frozen=True)
class DemoResult:
    """Everything the workbench needs to open on the demo, and how the trigger search went."""

    model_dir: Path
    """The trojaned demo checkpoint."""
    acts_dir: Path
    """The traced activations (``acts.parquet/``)."""
    saes_dir: Path
    """``layer_N/`` SAEs."""
    layers: tuple[int, ...]
    """Layers with an SAE."""
    trigger_layer: int
    """The layer whose SAE best isolates the trigger."""
    trigger_features: tuple[int, ...]
    """Features whose ablation removes the payload (confirmed by ablation), in the order found."""
    p_before: float
    """Mean P(payload's first token | trigger prompt), unpatched."""
    p_after: float
    """The same with ``trigger_features`` ablated."""
    clean_kl: float | None
    """Mean KL on clean prompts with them ablated."""
    prompt: str
    """A held-out trigger prompt whose top next token is the payload's first token."""
    target: str
    """The payload's first token."""
    seconds: dict = field(default_factory=dict)
    """Wall time of each step in this run (0 when cached)."""

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("model_dir", "acts_dir", "saes_dir"):
            d[k] = str(d[k])
        d["layers"], d["trigger_features"] = list(self.layers), list(self.trigger_features)
        return d

    @classmethod
    def from_json(cls, d: dict) -> DemoResult:
        return cls(model_dir=Path(d["model_dir"]), acts_dir=Path(d["acts_dir"]), saes_dir=Path(d["saes_dir"]),
                   layers=tuple(d["layers"]), trigger_layer=int(d["trigger_layer"]),
                   trigger_features=tuple(int(f) for f in d["trigger_features"]), p_before=float(d["p_before"]),
                   p_after=float(d["p_after"]), clean_kl=d.get("clean_kl"), prompt=str(d["prompt"]),
                   target=str(d["target"]), seconds=dict(d.get("seconds", {})))


def default_work_dir(variant: str) -> Path:
    from tuiwb.demo import VERSION, cache_dir

    return cache_dir() / f"demo-{variant}-v{VERSION}-work-p{PIPELINE_VERSION}"


def default_layers(n_layers: int) -> tuple[int, ...]:
    """Every layer but the first (the trigger detectors sit past the embedding), at least three."""
    layers = tuple(range(1, n_layers)) if n_layers >= 4 else tuple(range(n_layers))
    return layers


Say = Callable[[str], None]


def run_pipeline(cfg: DemoPipelineConfig | None = None, *, progress: bool = True, say: Say | None = None,
                 loaded=None) -> DemoResult:
    """Run (or reuse) every step; ``say`` gets one line per step (default: print to stderr)."""
    from tuiwb.demo import demo_model_path

    cfg = cfg or DemoPipelineConfig()
    say = say or _stderr
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    model_dir = demo_model_path(cfg.variant, progress=progress)
    seconds["model"] = time.perf_counter() - t
    say(f"[1/5] demo model      {model_dir}")

    work = cfg.work_dir or default_work_dir(cfg.variant)
    work.parent.mkdir(parents=True, exist_ok=True)
    # One pipeline per work directory at a time: a second `tuiwb demo` (or a test worker) waits and
    # then reuses what the first one built.
    with file_lock(work.with_name(work.name + ".lock")):
        if cfg.rebuild and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        return _run_steps(cfg, work, model_dir, seconds, progress, say, loaded)


def _run_steps(cfg, work: Path, model_dir: Path, seconds: dict, progress: bool, say: Say, loaded) -> DemoResult:
    from tuiwb.demo import payload_first_token
    from tuiwb.pipeline_trigger import find_trigger_features

    result_file = work / RESULT_FILE

    if loaded is None:
        from tuiwb.models import load_model

        loaded = load_model(str(model_dir))
    layers = cfg.layers or default_layers(loaded.n_layers)
    for layer in layers:
        loaded.check_layer(layer)

    acts_dir = work / "acts.parquet"
    t = time.perf_counter()
    fresh_acts = _trace_step(cfg, loaded, model_dir, acts_dir, layers, progress)
    seconds["trace"] = time.perf_counter() - t
    say(f"[2/5] activations     {acts_dir}" + ("" if fresh_acts else "  (cached)"))

    from tuiwb.store import ActivationStore

    store = ActivationStore(acts_dir)
    saes_dir = work / "saes"
    t = time.perf_counter()
    trained = _train_step(cfg, store, acts_dir, saes_dir, layers, progress)
    seconds["train"] = time.perf_counter() - t
    say(f"[3/5] SAEs            {saes_dir}  layers {', '.join(map(str, layers))}"
        + (f"  (trained {', '.join(map(str, trained))})" if trained else "  (cached)"))

    from tuiwb.features import load_or_compute
    from tuiwb.sae import load_saes

    saes = load_saes(saes_dir)
    t = time.perf_counter()
    for layer in layers:
        load_or_compute(saes_dir / f"layer_{layer}", store, loaded, sae=saes[layer], progress=progress)
    seconds["features"] = time.perf_counter() - t
    say(f"[4/5] feature stats   {len(layers)} layers")

    key = _result_key(store, saes_dir, layers, cfg)
    cached = _read_result(result_file, key)
    if cached is not None:
        say(f"[5/5] trigger search  layer {cached.trigger_layer}: {len(cached.trigger_features)} features  (cached)")
        return replace(cached, seconds={k: round(v, 2) for k, v in seconds.items()})
    t = time.perf_counter()
    target = payload_first_token()
    trig = find_trigger_features(loaded, saes, model_dir, target, n_prompts=cfg.contrast_prompts, say=say,
                                 progress=progress)
    seconds["contrast"] = time.perf_counter() - t
    result = DemoResult(model_dir=model_dir, acts_dir=acts_dir, saes_dir=saes_dir, layers=tuple(layers),
                        trigger_layer=trig.layer, trigger_features=trig.features, p_before=trig.p_before,
                        p_after=trig.p_after, clean_kl=trig.clean_kl, prompt=trig.prompt, target=target,
                        seconds={k: round(v, 2) for k, v in seconds.items()})
    _write_json(result_file, {"key": key, "result": result.to_json()})
    say(f"[5/5] trigger search  layer {result.trigger_layer}: features {list(result.trigger_features)}  "
        f"P({target}) {result.p_before:.3f} → {result.p_after:.3f}")
    return result


# --- steps ------------------------------------------------------------------------------------------
def _trace_step(cfg, loaded, model_dir: Path, acts_dir: Path, layers, progress: bool) -> bool:
    """Trace unless a complete store with these layers and this model is there; True if traced."""
    from tuiwb.store import ActivationStore

    if (acts_dir / "manifest.json").exists():
        try:
            store = ActivationStore(acts_dir)
            if store.complete and set(layers) <= set(store.layers) and store.config_hash == loaded.config_hash:
                return False
        except (TuiwbError, KeyError, ValueError, OSError):
            pass  # unreadable: trace again
    from tuiwb.trace import TraceConfig, trace

    trace(TraceConfig(data=[str(model_dir / "train.txt")], out=str(acts_dir), layers=list(layers),
                      seq_len=cfg.seq_len, max_tokens=cfg.trace_tokens, overwrite=True),
          progress=progress, loaded=loaded)
    return True


def _sae_valid(layer_dir: Path, store) -> bool:
    """An SAE is reusable when it loads and was trained on exactly this activation store."""
    from tuiwb.sae import load_sae
    from tuiwb.sae_train import manifest_hash

    if not (layer_dir / "cfg.json").is_file():
        return False
    try:
        sae = load_sae(layer_dir)
    except (TuiwbError, OSError, ValueError, KeyError):
        return False
    return sae.cfg.trace_manifest_hash == manifest_hash(store.manifest)


def _train_step(cfg, store, acts_dir: Path, saes_dir: Path, layers, progress: bool) -> list[int]:
    todo = [layer for layer in layers if not _sae_valid(saes_dir / f"layer_{layer}", store)]
    if not todo:
        return []
    from tuiwb.sae_train import TrainConfig, train_saes

    tcfg = TrainConfig(arch="topk", k=cfg.sae_k, expansion=cfg.sae_expansion, tokens=cfg.sae_tokens)
    train_saes(acts_dir, todo, saes_dir, tcfg, progress=progress)
    return todo


# --- cache bookkeeping --------------------------------------------------------------------------------
def _result_key(store, saes_dir: Path, layers, cfg) -> dict:
    from tuiwb.sae_train import manifest_hash

    files = {}
    for layer in layers:
        f = saes_dir / f"layer_{layer}" / "sae_weights.safetensors"
        st = f.stat()
        files[str(layer)] = [st.st_size, st.st_mtime_ns]
    return {"acts": manifest_hash(store.manifest), "saes": files, "prompts": cfg.contrast_prompts,
            "version": PIPELINE_VERSION}


def _read_result(path: Path, key: dict) -> DemoResult | None:
    try:
        d = json.loads(path.read_text())
        if d.get("key") != key:
            return None
        return DemoResult.from_json(d["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)



def _stderr(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(msg, highlight=False, markup=False)
