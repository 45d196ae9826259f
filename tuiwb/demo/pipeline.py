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

from tuiwb.atomic import write_text
from tuiwb.errors import TuiwbError
from tuiwb.progress import RichProgress, as_progress
from tuiwb.locks import file_lock

RESULT_FILE = "demo_result.json"
PIPELINE_VERSION = 1
"""Bump when a step's settings change: the work directory's name includes it."""
SEARCH_VERSION = 3
"""Bump when the trigger search changes: only the cached search result is redone."""


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
    """Layers to trace and train SAEs for (default: every layer; the search uses those with an SAE below)."""
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

    def is_default(self) -> bool:
        """Whether every setting but the variant and work directory is the preset (the shipped lab fits)."""
        return replace(self, work_dir=None) == DemoPipelineConfig(variant=self.variant)

    def __post_init__(self):
        from tuiwb.demo.model import VARIANTS

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
    from tuiwb.demo.model import VERSION, cache_dir

    return cache_dir() / f"demo-{variant}-v{VERSION}-work-p{PIPELINE_VERSION}"


def default_layers(n_layers: int) -> tuple[int, ...]:
    """Every layer: the trigger search picks among those with an SAE below them (see
    :func:`find_trigger`), so provenance from the found features always has a layer to go to."""
    return tuple(range(n_layers))


def searchable(layers) -> list[int]:
    """The layers whose features provenance can explain (an SAE on the layer below); all if none is."""
    have = set(layers)
    return sorted(L for L in have if L - 1 in have) or sorted(have)


Say = Callable[[str], None]


def run_pipeline(cfg: DemoPipelineConfig | None = None, *, progress: bool = True, say: Say | None = None,
                 loaded=None, model_dir: Path | None = None, shipped: bool = True) -> DemoResult:
    """Run (or reuse) every step; ``say`` gets one line per step (default: print to stderr).

    With ``shipped`` (and no ``rebuild`` or custom settings) the demo lab shipped with tuiwb
    (``tuiwb.demo.assets``) supplies the model, SAEs, stats and search result: only the trace runs.
    """
    from tuiwb.demo.model import demo_model_path

    cfg = cfg or DemoPipelineConfig()
    say = say or (progress.say if hasattr(progress, "say") else RichProgress().say)  # step lines always show
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    model_dir = model_dir or demo_model_path(cfg.variant, progress=progress)
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
        use_shipped = shipped and not cfg.rebuild and cfg.is_default()
        return _run_steps(cfg, work, model_dir, seconds, progress, say, loaded, use_shipped)


def _run_steps(cfg, work: Path, model_dir: Path, seconds: dict, progress: bool, say: Say, loaded,
               use_shipped: bool = False) -> DemoResult:
    from tuiwb.demo.model import payload_first_token

    result_file = work / RESULT_FILE

    if loaded is None:
        from tuiwb.model.loading import load_model

        loaded = load_model(str(model_dir))
    layers = cfg.layers or default_layers(loaded.n_layers)
    for layer in layers:
        loaded.check_layer(layer)

    acts_dir = work / "acts.parquet"
    t = time.perf_counter()
    fresh_acts = _trace_step(cfg, loaded, model_dir, acts_dir, layers, progress)
    seconds["trace"] = time.perf_counter() - t
    say(f"[2/5] activations     {acts_dir}" + ("" if fresh_acts else "  (cached)"))

    from tuiwb.trace.store import ActivationStore

    store = ActivationStore(acts_dir)
    if use_shipped:  # the shipped SAEs, stats and result, where they fit these activations
        from tuiwb.demo.assets import install_lab

        install_lab(cfg.variant, work, layers, store.identity)
    saes_dir = work / "saes"
    t = time.perf_counter()
    trained = _train_step(cfg, store, acts_dir, saes_dir, layers, progress)
    seconds["train"] = time.perf_counter() - t
    say(f"[3/5] SAEs            {saes_dir}  layers {', '.join(map(str, layers))}"
        + (f"  (trained {', '.join(map(str, trained))})" if trained else "  (cached)"))

    from tuiwb.features.cache import load_or_compute
    from tuiwb.sae.io import load_saes

    saes = load_saes(saes_dir)
    t = time.perf_counter()
    for layer in layers:
        load_or_compute(saes_dir / f"layer_{layer}", store, loaded, sae=saes[layer], progress=progress)
    seconds["features"] = time.perf_counter() - t
    say(f"[4/5] feature stats   {len(layers)} layers")

    key = _result_key(store, saes_dir, layers, cfg)
    cached = _read_result(result_file, key, model_dir=model_dir, acts_dir=acts_dir, saes_dir=saes_dir)
    if cached is not None:
        say(f"[5/5] trigger search  layer {cached.trigger_layer}: {len(cached.trigger_features)} features  (cached)")
        return replace(cached, seconds={k: round(v, 2) for k, v in seconds.items()})
    t = time.perf_counter()
    target = payload_first_token()
    layer, found, prompt = find_trigger(loaded, saes, model_dir, target, n_prompts=cfg.contrast_prompts,
                                        progress=progress)
    seconds["contrast"] = time.perf_counter() - t
    result = DemoResult(model_dir=model_dir, acts_dir=acts_dir, saes_dir=saes_dir, layers=tuple(layers),
                        trigger_layer=layer, trigger_features=found.confirmed, p_before=found.p_before,
                        p_after=found.p_after, clean_kl=found.clean_kl, prompt=prompt, target=target,
                        seconds={k: round(v, 2) for k, v in seconds.items()})
    _write_json(result_file, {"key": key, "result": result.to_json()})
    say(f"[5/5] trigger search  layer {result.trigger_layer}: features {list(result.trigger_features)}  "
        f"P({target}) {result.p_before:.3f} → {result.p_after:.3f}")
    return result


# --- steps ------------------------------------------------------------------------------------------
def find_trigger(loaded, saes: dict, model_dir: Path, target: str, *, n_prompts: int = 32, progress=False):
    """``(layer, EffectResult, opening prompt)``: the one trigger search (``find_feature_set``) on every
    layer with an SAE below it (so the workbench's provenance of the found features reaches further
    down), keeping the layer whose confirmed set removes the payload (P ≤ 10% of before) with the
    fewest features, then the lowest P."""
    from tuiwb.demo.model import load_prompts
    from tuiwb.features.contrast import find_feature_set

    trig = load_prompts(model_dir, "trigger")[:n_prompts]
    clean = load_prompts(model_dir, "clean")[:n_prompts]
    report = as_progress(progress)
    best = None
    for layer in searchable(saes):
        sae = saes[layer]
        found = find_feature_set(loaded, sae, trig, target, clean)
        if not found.confirmed:
            report.say(f"      layer {layer}: no feature set lowers P({target})")
            continue
        report.say(f"      layer {layer}: {len(found.confirmed)} features: P({target}) {found.p_before:.3f} → "
                   f"{found.p_after:.3f}, clean KL {found.clean_kl:.4f}")
        rank = (found.p_after <= 0.1 * found.p_before, -len(found.confirmed), -found.p_after)
        if best is None or rank > best[0]:
            best = (rank, layer, found)
    if best is None:
        raise TuiwbError("the trigger search found no feature set whose ablation lowers the payload: "
                         "rebuild the demo lab (the SAEs may be undertrained)")
    _, layer, found = best
    return layer, found, opening_prompt(loaded, saes[layer], found.confirmed, trig, found.target_id)


def opening_prompt(loaded, sae, features, prompts: list[str], target_id: int) -> str:
    """The shortest prompt whose top next token is the target, and which ablating ``features`` pushes
    out of the top ten (else merely off the top), so flipping the patch visibly moves it."""
    from tuiwb.model.logits import next_token_logits
    from tuiwb.patch.edit import gated_edit

    fallback = None
    for text in sorted(prompts, key=len):
        ids = loaded.encode(text)
        if int(next_token_logits(loaded, ids).argmax()) != target_id:
            continue
        with gated_edit(loaded, sae, list(features), 0.0):
            patched = next_token_logits(loaded, ids)  # [vocab]
        rank = int((patched > patched[target_id]).sum())  # 0 = still on top
        if rank >= 10:
            return text
        if rank > 0 and fallback is None:
            fallback = text
    return fallback if fallback is not None else min(prompts, key=len)



def _trace_step(cfg, loaded, model_dir: Path, acts_dir: Path, layers, progress: bool) -> bool:
    """Trace unless a complete store with these layers and this model is there; True if traced."""
    from tuiwb.trace.store import ActivationStore

    if (acts_dir / "manifest.json").exists():
        try:
            store = ActivationStore(acts_dir)
            if store.complete and set(layers) <= set(store.layers) and store.config_hash == loaded.config_hash:
                return False
        except (TuiwbError, KeyError, ValueError, OSError):
            pass  # unreadable: trace again
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    trace(TraceConfig(data=[str(model_dir / "train.txt")], out=str(acts_dir), layers=list(layers),
                      seq_len=cfg.seq_len, max_tokens=cfg.trace_tokens, overwrite=True),
          progress=progress, loaded=loaded)
    return True


def _sae_valid(layer_dir: Path, store) -> bool:
    """An SAE is reusable when it loads and was trained on exactly this activation store."""
    from tuiwb.sae.io import load_sae
    
    if not (layer_dir / "cfg.json").is_file():
        return False
    try:
        sae = load_sae(layer_dir)
    except (TuiwbError, OSError, ValueError, KeyError):
        return False
    return sae.cfg.trace_manifest_hash == store.identity


def _train_step(cfg, store, acts_dir: Path, saes_dir: Path, layers, progress: bool) -> list[int]:
    todo = [layer for layer in layers if not _sae_valid(saes_dir / f"layer_{layer}", store)]
    if not todo:
        return []
    from tuiwb.sae.config import TrainConfig
    from tuiwb.sae.train import train_saes

    tcfg = TrainConfig(arch="topk", k=cfg.sae_k, expansion=cfg.sae_expansion, tokens=cfg.sae_tokens)
    train_saes(acts_dir, todo, saes_dir, tcfg, progress=progress, overwrite=True)  # only stale ones
    return todo


# --- cache bookkeeping --------------------------------------------------------------------------------
def _result_key(store, saes_dir: Path, layers, cfg) -> dict:
    
    from tuiwb.sae.io import load_sae

    saes = {str(layer): load_sae(saes_dir / f"layer_{layer}").cfg.weights_hash for layer in layers}
    return {"acts": store.identity, "saes": saes, "prompts": cfg.contrast_prompts,
            "version": PIPELINE_VERSION, "search": SEARCH_VERSION}


def _read_result(path: Path, key: dict, **paths) -> DemoResult | None:
    """The cached search result if its key matches, with this machine's ``paths`` (it may have been
    made elsewhere: the shipped demo lab's was)."""
    try:
        d = json.loads(path.read_text())
        if d.get("key") != key:
            return None
        return replace(DemoResult.from_json(d["result"]), **paths)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")
