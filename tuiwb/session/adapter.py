"""The TUI's only door to the Session: each method runs in a worker thread, calls the Session (and
the feature/contrast/provenance APIs around it) and returns plain, immutable view data
(``views.py``). Widgets never see tensors or the Session itself.

Keeping every Session call here also keeps the panes independent of the Session's exact return
types: when those change, this file changes, not the widgets.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from pathlib import Path

import numpy as np

from tuiwb.errors import TuiwbError
from tuiwb.session.protocol import SessionAPI
from tuiwb.session.views import (ContextView, ContinuationView, FeatureDetail, FeatureRows, LabInfo, LogitRow,
                                 LogitsView, PatchView, SweepView, display_token, join_tokens)

MODES = ("ablate", "scale=0.5", "scale=2")
"""The modes ``a`` cycles through."""
CLOUD_TOKENS = 24
"""Tokens in the token cloud."""
TABLE_TOKENS = 5
"""Top tokens listed per row of the feature table."""
GEN_TOKENS = 24
"""Tokens of each continuation in the continuation pane."""


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
        self._tokens: TokenText | None = None
        self._lora_cache: dict[str, tuple] = {}  # name → (layer, features, mode) of the LoRA saved for m
        self._cache_dir: tempfile.TemporaryDirectory | None = None

    @property
    def tokens(self) -> TokenText:
        if self._tokens is None:
            self._tokens = TokenText(self.session.loaded.tokenizer)
        return self._tokens

    def atomic(self):
        """The Session's re-entrant lock: several Session calls as one step."""
        return self.session.atomic()

    # --- shared state: every client of the Session sees the same patches and prompt ------------
    def subscribe(self, callback):
        """``Session.subscribe``: ``callback(event)`` on every patch/prompt change; returns ``unsubscribe()``."""
        return self.session.subscribe(callback)

    def changes_from(self, origin: str):
        """``Session.changes_from``: label this thread's changes (a client ignores its own events)."""
        return self.session.changes_from(origin)

    @property
    def prompt(self) -> str:
        return self.session.prompt

    def set_prompt(self, text: str) -> None:
        self.session.prompt = text

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
            return LogitRow(token=self.tokens.show(tid), id=tid, base=b.prob if b else _floor(res.baseline),
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
        rows = rows_from_stats(layer, stats, self.tokens.show) if stats is not None else _blank_rows(layer, self.session.sae(layer))
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
            cloud = tuple((self.tokens.show(t.id) if t.id >= 0 else t.token, float(t.value))
                          for t in stats.top_tokens(f, CLOUD_TOKENS))
            max_act = float(stats.max_act[f])
        if stats is not None and self.session.acts is not None:
            store = self.session.acts
            for c in stats.contexts(f, store, self.session.sae(layer), n=self.n_contexts):
                # the window's ids again (Context keeps their text only): decode the sequence, not tokens
                ids = [t for t, _ in store.context(c.row)]
                contexts.append(self.tokens.context(ids, c.acts) if len(ids) == len(c.acts) else
                                ContextView(tokens=tuple(c.tokens), acts=tuple(float(a) for a in c.acts)))
        else:
            note = "no activation store: open with --acts to see top contexts"
        prompt_view = None
        if prompt and prompt.strip():
            # Unpatched: where the feature fires on the prompt, whatever patches are on.
            tokens, acts = self.session.feature_acts(prompt, layer, patched=False)  # acts [pos, d_sae]
            ids = self.session.loaded.encode(prompt)
            prompt_view = self.tokens.context(ids, acts[:, f].tolist()) if len(ids) == len(tokens) else \
                ContextView(tokens=tuple(tokens), acts=tuple(acts[:, f].tolist()))
            max_act = max(max_act, *prompt_view.acts) if prompt_view.acts else max_act
        return FeatureDetail(layer=layer, feature=f, cloud=cloud, contexts=tuple(contexts), prompt=prompt_view,
                             max_act=max_act, note=note)

    def provenance_text(self, layer: int, feature: int, prompt: str | None, depth: int = 2,
                        patched: bool = False) -> str:
        """The ASCII tree of ``provenance_graph``."""
        return self.provenance_graph(layer, feature, prompt, depth, patched).to_ascii()

    def provenance_graph(self, layer: int, feature: int, prompt: str | None, depth: int = 2,
                         patched: bool = False, **kwargs):
        """The ``ProvenanceGraph``, as deep as the attached SAEs allow (each level needs the SAE below it;
        with a prompt, below layer 0 are the token embeddings). ``patched``: on the model as patched now;
        else on the unpatched one, the model the top contexts come from."""
        have = 0
        while have < depth and ((layer - have - 1) in self.session.saes or prompt and layer - have - 1 == -1):
            have += 1
        if have == 0:
            raise TuiwbError(f"no SAE upstream of layer {layer}: provenance attributes a feature to the "
                             f"features of the layer below (attach an SAE for layer {layer - 1})"
                             if layer else "layer 0: type a prompt to attribute it to the token embeddings")
        ctx = contextlib.nullcontext() if patched else self.session.unpatched()
        with self.atomic(), ctx:
            return self.session.provenance(layer, feature, prompt, depth=have, **kwargs)

    # --- patches -----------------------------------------------------------------------------
    def patches(self) -> tuple[PatchView, ...]:
        return tuple(_patch_view(p, self.session.scorecard(p.name)) for p in self.session.patches)

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

    def _replace(self, name: str, *, mode: str | None = None, method: str | None = None, progress=None) -> None:
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
                self.session.build_lora(name, rank=p.rank or 8, progress=progress or False)
            if p.enabled:
                self.session.toggle(name, on=True)

    def cycle_mode(self, name: str, progress=None) -> str:
        p = self._patch(name)
        new = MODES[(MODES.index(p.mode) + 1) % len(MODES)] if p.mode in MODES else MODES[0]
        self._replace(name, mode=new, progress=progress)
        return new

    # A fitted LoRA outlives a switch back to the hook (saved to a temporary lora/NAME), so m toggles
    # instantly once both exist; a mode change makes it another patch, so the saved one no longer fits.
    @staticmethod
    def _key(p) -> tuple:
        return int(p.layer), tuple(int(f) for f in p.features), str(p.mode)

    def has_cached_lora(self, name: str) -> bool:
        with contextlib.suppress(TuiwbError):
            return self._lora_cache.get(name) == self._key(self._patch(name))
        return False

    def _cached(self, name: str) -> Path:
        if self._cache_dir is None:
            self._cache_dir = tempfile.TemporaryDirectory(prefix="tuiwb-lora-")
        return Path(self._cache_dir.name) / name

    def switch_method(self, name: str, progress=None) -> str:
        with self.atomic():
            p = self._patch(name)
            if p.method == "hook":
                if self.has_cached_lora(name):
                    self.session.remove_patch(name)
                    self.session.attach_lora(self._cached(name), enabled=p.enabled, name=name)
                else:
                    self.session.build_lora(name, progress=progress or False)  # in place: same name and state
                return "lora"
            self.session.save_lora(name, self._cached(name), overwrite=True)
            self._lora_cache[name] = self._key(p)
            self._replace(name, method="hook")
            return "hook"

    def build_lora(self, name: str, progress=None) -> PatchView:
        p = self._patch(name)
        if p.method == "lora":
            raise TuiwbError(f"patch {name!r} already has a fitted LoRA (fidelity KL {p.fidelity:.3g})"
                             if p.fidelity is not None else f"patch {name!r} is already a LoRA patch")
        self.session.build_lora(name, progress=progress or False)
        return _patch_view(self._patch(name))

    def export(self, name: str, progress=None) -> Path:
        """Write ``lora/NAME`` (manifest + PEFT adapter), fitting the LoRA first for a hook patch."""
        if self._patch(name).method == "hook":
            self.switch_method(name, progress=progress)
        return Path(self.session.save_lora(name, self.lora_dir / name, overwrite=True))

    # --- continuations, dose-response, scorecards (issue 13) ------------------------------------
    gen_tokens: int = GEN_TOKENS
    """Length of each continuation (tests lengthen it to catch a generation mid-way)."""
    gen_ignore_eos: bool = False

    def continuations(self, prompt: str):
        """Yield a ``ContinuationView`` after each new token: the unpatched and the patched
        continuation grow together, one token each per step. Closing this stops both at once."""
        kw = dict(max_new_tokens=self.gen_tokens, ignore_eos=self.gen_ignore_eos)
        with self.atomic():  # the patch set the patched run uses, and the count the pane shows, alike
            n_on = sum(bool(p.enabled) for p in self.session.patches)
            streams = [self.session.generate(prompt, patched=False, **kw)]
            if n_on:
                streams.append(self.session.generate(prompt, patched=True, **kw))
            context = self.session.loaded.encode(prompt)[-1:]  # spans read as the text continues
        ids: list[list[int]] = [[] for _ in streams]
        live = [True] * len(streams)
        while any(live):
            for i, it in enumerate(streams):
                if live[i]:
                    try:
                        ids[i].append(next(it))
                    except StopIteration:
                        live[i] = False
            if any(live) or not any(ids):
                yield self._continuation_view(prompt, context, ids, n_on, done=not any(live))
        yield self._continuation_view(prompt, context, ids, n_on, done=True)

    def _continuation_view(self, prompt, context, ids, n_on, done) -> ContinuationView:
        base = ids[0]
        patched = ids[1] if n_on else base
        diverge = next((i for i, (a, b) in enumerate(zip(base, patched)) if a != b), None)
        if diverge is None and done and len(base) != len(patched):
            diverge = min(len(base), len(patched))  # one ended (EOS) where the other went on

        def spans(seq):
            return tuple(self.tokens.spans(context + seq)[len(context):]) if seq else ()

        sb = spans(base)
        return ContinuationView(prompt=prompt, baseline=sb, patched=spans(patched) if n_on else sb, diverge=diverge,
                                n_on=n_on, done=done, max_new_tokens=self.gen_tokens)

    def sweep(self, layer: int, feature: int, prompt: str, target: str | None = None) -> SweepView:
        s = self.session.sweep(prompt, layer, feature, target=target or None)
        return SweepView(layer=s.layer, feature=s.feature, prompt=prompt, target=self.tokens.show(s.target_id),
                         alphas=tuple(r.alpha for r in s.rows), p=tuple(r.p for r in s.rows),
                         kl=tuple(r.kl for r in s.rows), top=tuple(display_token(r.top) for r in s.rows))

    def scorecard(self, name: str, positive: list[str], negative: list[str], target: str | None = None) -> str:
        """Score patch ``name`` alone on the prompt sets; its one-line summary (also in ``patches()``)."""
        return self.session.evaluate_patch([name], positive, negative, target=target or None).summary()

    # --- contrast search ---------------------------------------------------------------------
    def contrast(self, layer: int, positive: list[str], negative: list[str], top: int = 10,
                 target: str | None = None) -> tuple[list[tuple[int, float]], str | None]:
        """``(feature, score)`` best first — by activation difference, or by causal effect on ``target`` —
        and, for a causal search, one line on what its confirmed set does."""
        if not target:
            hits = self.session.contrast(layer, positive, negative)
            return [(int(f), float(s)) for f, s in zip(hits.ids[:top], hits.scores[:top])], None
        from tuiwb.features.contrast import find_feature_set

        # The search itself, not Session.contrast: its result also holds P(target) before/after and the
        # clean KL, which the Session's Hits drop. Same lock and unpatched model as Session.contrast.
        with self.atomic(), self.session.unpatched():
            res = find_feature_set(self.session.loaded, self.session.sae(layer), list(positive), target,
                                   list(negative) or None)
        hits = res.hits
        effect = contrast_effect_line(res, target)
        return [(int(f), float(s)) for f, s in zip(hits.ids[:top], hits.scores[:top])], effect


def contrast_effect_line(res, target: str) -> str:
    """What a causal search found, in one line: P(target) and clean KL, each feature's side and edit,
    and the Pareto front of P(target) against clean KL over the sets it tried."""
    if not res.confirmed:
        return "no feature set confirmed"
    feats = " ".join(f"{s.feature}{'T' if s.side == 'trigger-side' else 'P'}{'g' if s.gated else ''}"
                     + (f"×{s.alpha:g}" if s.alpha else "") for s in res.steps)
    front = " ".join(f"{p.p_target:.3g}@{p.clean_kl:.2g}" for p in res.pareto[-6:])
    return (f"editing the {len(res.confirmed)} found: P('{target}') on A {res.p_before:.3g} → {res.p_after:.3g}"
            + (f", clean KL on B {res.clean_kl:.3g} nats" if res.clean_kl is not None else "")
            + f" ({res.stopped}) · {feats} (T trigger-side, P prediction-side, g gated on {list(res.gate)})"
            + (f" · Pareto P@KL: {front}" if front else ""))


# --- tokens: ids → what the panes draw ---------------------------------------------------------
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte ↔ printable-character table, inverted (byte-level BPE vocabularies spell bytes so)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()
_HEX = __import__("re").compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenText:
    """A tokenizer's tokens as the panes draw them: each token's own bytes when the vocabulary spells
    bytes (byte-level BPE, byte fallback), so a partial UTF-8 token reads ``<0xE2>``, not ``�``."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        dec = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = type(dec).__name__ == "ByteLevel"
        self.special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        self._cache: dict[int, str | bytes] = {}

    def piece(self, tid: int) -> str | bytes:
        """Token ``tid``'s bytes (byte vocabularies) or its decoded text."""
        tid = int(tid)
        if tid in self._cache:
            return self._cache[tid]
        out: str | bytes = self.tok.decode([tid])
        if tid not in self.special:
            raw = self.tok.convert_ids_to_tokens(tid)
            if isinstance(raw, str) and (m := _HEX.match(raw)):
                out = bytes([int(m.group(1), 16)])
            elif isinstance(raw, str) and self.byte_level and all(c in _BYTE_DECODER for c in raw):
                out = bytes(_BYTE_DECODER[c] for c in raw)
        self._cache[tid] = out
        return out

    def show(self, tid: int) -> str:
        return display_token(self.piece(tid))

    def context(self, ids, acts) -> ContextView:
        """A window decoded as text with each token's span (see ``ContextView.spans``)."""
        ids = [int(t) for t in ids]
        return ContextView(tokens=tuple(self.show(t) for t in ids), acts=tuple(float(a) for a in acts),
                           spans=self.spans(ids))

    def spans(self, ids: list[int]) -> tuple[str, ...]:
        if self.byte_level or all(isinstance(self.piece(t), bytes) for t in ids):
            return _byte_spans([self.piece(t) for t in ids])
        # Other tokenizers (word-level, SentencePiece) add spaces when decoding a sequence: cut the
        # decoded prefixes at token boundaries (a few dozen tokens: quadratic is fine).
        out, prev = [], ""
        for i in range(len(ids)):
            cur = self.tok.decode(ids[: i + 1])
            out.append(cur[len(prev):] if cur.startswith(prev) else display_token(self.piece(ids[i])))
            prev = cur
        return tuple(_visible_breaks(s) for s in out)


def _byte_spans(pieces: list) -> tuple[str, ...]:
    """Decode byte pieces as one text, giving each character to the token that completes it; bytes that
    never form a character (a window cut mid-character) read ``<0xE2>``."""
    out: list[str] = []
    pending = b""
    for i, p in enumerate(pieces):
        if isinstance(p, str):
            out.append(p)
            continue
        pending += p
        try:
            out.append(_visible_breaks(pending.decode("utf-8")))
            pending = b""
        except UnicodeDecodeError:
            nxt = pieces[i + 1] if i + 1 < len(pieces) else None
            if len(pending) >= 4 or not isinstance(nxt, bytes) or not nxt or (nxt[0] & 0xC0) != 0x80:
                out.append(display_token(pending))  # cannot complete: show the bytes
                pending = b""
            else:
                out.append("")
    return tuple(out)


def _visible_breaks(s: str) -> str:
    return s.replace("\n", "↵").replace("\t", "⇥")


# --- helpers: Session results → columns ---------------------------------------------------------
def _floor(tops) -> float:
    return float(tops[-1].prob) if tops else 0.0


def rows_from_stats(layer: int, stats, show=None) -> FeatureRows:
    """The table's columns from ``FeatureStats`` (vectorised: 16k features in well under a second);
    ``show`` draws a token id (``TokenText.show``), else the stats' own vocabulary."""
    ids = np.asarray(stats.tok_ids)[:, :TABLE_TOKENS]  # [d_sae, n]
    vocab = stats.vocab
    names = {int(t): show(int(t)) if show else display_token(vocab.get(int(t), f"#{int(t)}"))
             for t in np.unique(ids) if t >= 0}
    tops = tuple(join_tokens(names[int(t)] for t in row if t >= 0) for row in ids.tolist())
    n = len(stats.density)
    return FeatureRows(layer=layer, ids=np.arange(n, dtype=np.int64),
                       density=np.asarray(stats.density, dtype=np.float64),
                       max_act=np.asarray(stats.max_act, dtype=np.float64), top_tokens=tops)


def _blank_rows(layer: int, sae) -> FeatureRows:
    n = int(sae.d_sae)
    nan = np.full(n, np.nan)
    return FeatureRows(layer=layer, ids=np.arange(n, dtype=np.int64), density=nan, max_act=nan.copy(),
                       top_tokens=("",) * n)


def _patch_view(p, card=None) -> PatchView:
    return PatchView(name=p.name, layer=int(p.layer), features=tuple(int(f) for f in p.features),
                     mode=str(p.mode), method=str(p.method), enabled=bool(p.enabled),
                     rank=p.rank, fidelity=p.fidelity, has_lora=p.method == "lora",
                     scorecard=card.summary() if card is not None else None)
