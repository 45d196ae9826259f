"""The TUI's only door to the Session: each method runs in a worker thread, calls the Session (and
the feature/contrast/provenance APIs around it) and returns plain, immutable view data
(``views.py``). Widgets never see tensors or the Session itself.

Keeping every Session call here also keeps the panes independent of the Session's exact return
types: when those change, this file changes, not the widgets.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from tuiwb.errors import TuiwbError
from tuiwb.session.protocol import SessionAPI
from tuiwb.session.views import ContextView, FeatureDetail, FeatureRows, LabInfo, LogitRow, LogitsView, PatchView

MODES = ("ablate", "scale=0.5", "scale=2")
"""The modes ``a`` cycles through."""
CLOUD_TOKENS = 24
"""Tokens in the token cloud."""
TABLE_TOKENS = 5
"""Top tokens listed per row of the feature table."""


def patch_name(layer: int, feature: int) -> str:
    """Name of the single-feature ablation patch ``space`` creates (a valid patch/adapter name)."""
    return f"L{layer}-f{feature}"


class Lab:
    """A thin, thread-safe adapter from the Session's API to the panes' view data."""

    def __init__(self, session: SessionAPI, *, top_k: int = 10, contexts: int = 8, lora_dir: Path | str = "lora"):
        self.session = session
        self.top_k = top_k
        self.n_contexts = contexts
        self.lora_dir = Path(lora_dir)
        self._tables: dict[tuple[int, int], FeatureRows] = {}  # (layer, id(stats)) → columns
        self._lock = threading.Lock()  # guards the table cache; the Session has its own lock for the model

    def atomic(self):
        """The Session's re-entrant lock: several Session calls as one step."""
        return self.session.atomic()

    # --- static facts ------------------------------------------------------------------------
    def info(self) -> LabInfo:
        loaded = self.session.loaded
        return LabInfo(model_id=str(loaded.model_id), device=str(loaded.device), quant=loaded.quant,
                       layers=tuple(sorted(self.session.saes)), n_layers=int(loaded.n_layers),
                       has_acts=self.session.acts is not None)

    # --- logits ------------------------------------------------------------------------------
    def logits(self, prompt: str) -> LogitsView:
        # Ask for more than we show so that each side's top-K mostly has the other side's number.
        res = self.session.logits(prompt, top=max(self.top_k * 5, 50))
        base = {t.id: t for t in res.baseline}
        patched = {t.id: t for t in res.patched}
        rank = {t.id: i + 1 for i, t in enumerate(res.patched)}

        def row(tid: int) -> LogitRow:
            b, p = base.get(tid), patched.get(tid)
            # A token outside a top-50 list has at most that list's smallest probability.
            return LogitRow(token=(b or p).token, id=tid, base=b.prob if b else _floor(res.baseline),
                            patched=p.prob if p else _floor(res.patched), patched_rank=rank.get(tid))

        return LogitsView(prompt=prompt, base_top=tuple(row(t.id) for t in res.baseline[: self.top_k]),
                          patched_top=tuple(row(t.id) for t in res.patched[: self.top_k]), kl=float(res.kl),
                          model_ms=float(res.latency_ms), n_on=len(res.active), ranks_known=len(res.patched))

    # --- feature table -----------------------------------------------------------------------
    def stats(self, layer: int):
        """The layer's ``FeatureStats`` from the Session (computed over its activation store when it has
        one; without one, the fresh cache next to the SAE or None: the table then shows ids only)."""
        return self.session.stats(layer, compute=self.session.acts is not None)

    def feature_rows(self, layer: int) -> FeatureRows:
        stats = self.stats(layer)
        key = (layer, id(stats))
        with self._lock:
            if key in self._tables:
                return self._tables[key]
        rows = rows_from_stats(layer, stats) if stats is not None else _blank_rows(layer, self.session.sae(layer))
        with self._lock:
            self._tables = {k: v for k, v in self._tables.items() if k[0] != layer}
            self._tables[key] = rows
        return rows

    def feature_detail(self, layer: int, feature: int, prompt: str | None) -> FeatureDetail:
        stats = self.stats(layer)
        f = int(feature)
        cloud: tuple = ()
        contexts: list[ContextView] = []
        note = ""
        max_act = 0.0
        if stats is not None:
            f = stats.check_feature(feature)
            cloud = tuple((t.token, float(t.value)) for t in stats.top_tokens(f, CLOUD_TOKENS))
            max_act = float(stats.max_act[f])
        if stats is not None and self.session.acts is not None:
            for c in stats.contexts(f, self.session.acts, self.session.sae(layer), n=self.n_contexts):
                contexts.append(ContextView(tokens=tuple(c.tokens), acts=tuple(float(a) for a in c.acts)))
        else:
            note = "no activation store: open with --acts to see top contexts"
        prompt_view = None
        if prompt and prompt.strip():
            # Unpatched: where the feature fires on the prompt, whatever patches are on.
            tokens, acts = self.session.feature_acts(prompt, layer, patched=False)  # acts [pos, d_sae]
            prompt_view = ContextView(tokens=tuple(tokens), acts=tuple(acts[:, f].tolist()))
            max_act = max(max_act, *prompt_view.acts) if prompt_view.acts else max_act
        return FeatureDetail(layer=layer, feature=f, cloud=cloud, contexts=tuple(contexts), prompt=prompt_view,
                             max_act=max_act, note=note)

    def provenance_text(self, layer: int, feature: int, prompt: str | None, depth: int = 2) -> str:
        """The ASCII tree, as deep as the attached SAEs allow (each level needs the SAE below it)."""
        have = 0
        while have < depth and (layer - have - 1) in self.session.saes:
            have += 1
        if have == 0:
            raise TuiwbError(f"no SAE upstream of layer {layer}: provenance attributes a feature to the "
                             f"features of the layer below (attach an SAE for layer {layer - 1})"
                             if layer else "layer 0 has no layer upstream of it: pick a later layer (l)")
        return self.session.provenance(layer, feature, prompt, depth=have).to_ascii()

    # --- patches -----------------------------------------------------------------------------
    def patches(self) -> tuple[PatchView, ...]:
        return tuple(_patch_view(p) for p in self.session.patches)

    def apply_states(self, states: dict[str, bool]) -> None:
        """Make each named patch's on/off state match ``states`` (idempotent: latest request wins)."""
        for p in self.session.patches:
            want = states.get(p.name)
            if want is not None and bool(p.enabled) != want:
                self.session.toggle(p.name, on=want)

    def ensure_patch(self, layer: int, feature: int) -> str:
        """The single-feature ablation patch of ``feature`` (created, off, if missing)."""
        name = patch_name(layer, feature)
        if not any(p.name == name for p in self.session.patches):
            self.session.add_patch(name=name, layer=layer, features=[feature], mode="ablate", method="hook",
                                   enabled=False)
        return name

    def add_group_patch(self, name: str, layer: int, features: list[int], mode: str = "ablate") -> str:
        """Add an (off) hook patch of several features, replacing one of the same name."""
        with self.atomic():
            if any(p.name == name for p in self.session.patches):
                self.session.remove_patch(name)
            self.session.add_patch(name=name, layer=layer, features=list(features), mode=mode, method="hook",
                                   enabled=False)
        return name

    def _patch(self, name: str):
        return self.session.patch(name)

    def _replace(self, name: str, *, mode: str | None = None, method: str | None = None) -> None:
        """Re-create patch ``name`` with another mode/method, keeping its place-independent state.

        The Session has no in-place ``set_mode``/``set_method`` (a LoRA is fitted for one mode), so a
        change is remove + add under the same name, then a LoRA fit when asked for.
        """
        with self.atomic():
            p = self._patch(name)
            self.session.remove_patch(name)
            self.session.add_patch(name=name, layer=p.layer, features=list(p.features), mode=mode or p.mode,
                                   method="hook", rank=p.rank or 8, enabled=False)
            if (method or p.method) == "lora":
                self.session.build_lora(name, rank=p.rank or 8)
            if p.enabled:
                self.session.toggle(name, on=True)

    def cycle_mode(self, name: str) -> str:
        p = self._patch(name)
        new = MODES[(MODES.index(p.mode) + 1) % len(MODES)] if p.mode in MODES else MODES[0]
        self._replace(name, mode=new)
        return new

    def switch_method(self, name: str) -> str:
        p = self._patch(name)
        if p.method == "hook":
            self.session.build_lora(name)  # in place: same name, same on/off state
            return "lora"
        self._replace(name, method="hook")
        return "hook"

    def build_lora(self, name: str) -> PatchView:
        p = self._patch(name)
        if p.method == "lora":
            raise TuiwbError(f"patch {name!r} already has a fitted LoRA (fidelity KL {p.fidelity:.3g})"
                             if p.fidelity is not None else f"patch {name!r} is already a LoRA patch")
        self.session.build_lora(name)
        return _patch_view(self._patch(name))

    def export(self, name: str) -> Path:
        """Write ``lora/NAME`` (manifest + PEFT adapter), fitting the LoRA first for a hook patch."""
        if self._patch(name).method == "hook":
            self.session.build_lora(name)
        return Path(self.session.save_lora(name, self.lora_dir / name, overwrite=True))

    # --- contrast search ---------------------------------------------------------------------
    def contrast(self, layer: int, positive: list[str], negative: list[str], top: int = 10,
                 target: str | None = None) -> list[tuple[int, float]]:
        """``(feature, score)`` best first: by activation difference, or by causal effect on ``target``."""
        hits = self.session.contrast(layer, positive, negative, target=target)
        return [(int(f), float(s)) for f, s in zip(hits.ids[:top], hits.scores[:top])]


# --- helpers: Session results → columns ---------------------------------------------------------
def _floor(tops) -> float:
    return float(tops[-1].prob) if tops else 0.0


def rows_from_stats(layer: int, stats) -> FeatureRows:
    """The table's columns from ``FeatureStats`` (vectorised: 16k features in well under a second)."""
    ids = np.asarray(stats.tok_ids)[:, :TABLE_TOKENS]  # [d_sae, n]
    vocab = stats.vocab
    names = {int(t): vocab.get(int(t), f"#{int(t)}") for t in np.unique(ids) if t >= 0}
    tops = tuple(", ".join(names[int(t)] for t in row if t >= 0) for row in ids.tolist())
    n = len(stats.density)
    return FeatureRows(layer=layer, ids=np.arange(n, dtype=np.int64),
                       density=np.asarray(stats.density, dtype=np.float64),
                       max_act=np.asarray(stats.max_act, dtype=np.float64), top_tokens=tops)


def _blank_rows(layer: int, sae) -> FeatureRows:
    n = int(sae.d_sae)
    nan = np.full(n, np.nan)
    return FeatureRows(layer=layer, ids=np.arange(n, dtype=np.int64), density=nan, max_act=nan.copy(),
                       top_tokens=("",) * n)


def _patch_view(p) -> PatchView:
    return PatchView(name=p.name, layer=int(p.layer), features=tuple(int(f) for f in p.features),
                     mode=str(p.mode), method=str(p.method), enabled=bool(p.enabled),
                     rank=p.rank, fidelity=p.fidelity, has_lora=p.method == "lora")
