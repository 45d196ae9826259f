"""The workbench's model work: requests start thread workers, workers post messages, handlers paint.

Every Session call happens in a ``@work(thread=True, exclusive=True, group=...)`` worker through
``Lab`` (never on the event loop: a key must not wait for the model, and the Session's lock may be
held by a long LoRA fit). Each request gets an id; a handler paints only the newest answer of its
group, so the latest request wins even when a superseded thread worker still finishes.
``on_worker_state_changed`` is the one place a worker error becomes a notification.
"""

from __future__ import annotations

import time
from functools import partial

from textual import work
from textual.worker import Worker, WorkerState

from tuiwb.errors import TuiwbError
from tuiwb.progress import CallbackProgress, ProgressEvent, describe
from tuiwb.tui.messages import (BusyProgress, ContinuationReady, ContrastReady, DetailReady, Exported, LogitsReady,
                                PatchesChanged, ProvenanceReady, SessionChanged, SweepReady, TableReady)
from tuiwb.session.views import PatchView
from tuiwb.tui.screens.contrast import ContrastRequest
from tuiwb.tui.screens.sweep import SweepScreen
from tuiwb.tui.widgets.contexts import Contexts
from tuiwb.tui.widgets.continuation import ContinuationPane
from tuiwb.tui.widgets.feature_table import FeatureTable
from tuiwb.tui.widgets.logit_bars import LogitBars
from tuiwb.tui.widgets.patches import PatchList
from tuiwb.tui.widgets.prompt import PromptEditor
from tuiwb.tui.widgets.provenance import ProvenanceView
from tuiwb.tui.widgets.token_cloud import TokenCloud

TUI_ORIGIN = "tui"
"""``Session.changes_from`` label of the workbench's own changes (its subscription ignores them)."""
SELECT_DEBOUNCE_S = 0.06
"""Cursor runs (holding ↓) only compute the feature the cursor stops on."""


class Cancelled(TuiwbError):
    """Raised from the progress callback when the user pressed Esc: the fit stops at its next step."""


class ModelWork:
    """Mixin of ``WorkbenchApp``: the request → worker → message → paint loop of each pane."""

    # --- requests (start workers) ------------------------------------------------------------
    def _next(self, group: str) -> int:
        self._seq += 1
        self._latest[group] = self._seq
        return self._seq

    def request_logits(self, t_key: float | None = None, create: tuple[int, int] | None = None,
                       set_prompt: bool = False) -> None:
        """Recompute the logits; ``create``: make that feature's patch first; ``set_prompt``: the
        user edited the prompt here (it becomes the Session's shared prompt)."""
        with self._changes_lock:
            if create is not None:
                self._creates.append(create)
        rid = self._next("logits")
        self._next("generate")  # the running continuation is stale now: it stops at its next token
        self._logits_worker(rid, self.prompt, set_prompt, t_key)

    def _want(self, name: str, on: bool) -> None:
        """The user asked for patch ``name`` on/off: the next logits worker applies it, once."""
        self.wanted[name] = on
        with self._changes_lock:
            self._changes[name] = on

    def _take_changes(self) -> tuple[list, dict[str, bool]]:
        with self._changes_lock:
            creates, self._creates = self._creates, []
            changes, self._changes = self._changes, {}
        return creates, changes

    @work(thread=True, exclusive=True, group="logits", exit_on_error=False)
    def _logits_worker(self, rid: int, prompt: str, set_prompt: bool, t_key) -> None:
        # One lock hold for state + logits: a superseded worker that still runs must neither compute
        # with a newer state nor leave its older state behind in the Session. Only the user's own
        # toggles are applied (each once, in order with other clients' changes): a toggle made in the
        # browser meanwhile stays.
        with self.lab.atomic(), self.lab.changes_from(TUI_ORIGIN):
            if self._latest.get("logits") != rid:
                return  # a newer request exists; it applies the pending changes
            creates, changes = self._take_changes()
            for create in creates:
                self.lab.ensure_patch(*create)
            self.lab.apply_states(changes)
            if set_prompt:
                self.lab.set_prompt(prompt)
            view = self.lab.logits(prompt)
            patches = self.lab.patches()
        self.post_message(LogitsReady(rid, view, patches, t_key))

    def load_table(self, layer: int) -> None:
        self._table_worker(self._next("table"), layer)

    @work(thread=True, exclusive=True, group="table", exit_on_error=False)
    def _table_worker(self, rid: int, layer: int) -> None:
        self.post_message(TableReady(rid, self.lab.feature_rows(layer)))

    def request_feature(self, layer: int, feature: int) -> None:
        if not self.query(ProvenanceView):  # a debounced selection firing while the app shuts down
            return
        self.selected = (layer, feature)
        self.last_feature[layer] = feature
        self._detail_worker(self._next("detail"), layer, feature, self.prompt)
        self.request_provenance(layer, feature)

    def request_provenance(self, layer: int, feature: int) -> None:
        self.query_one(ProvenanceView).pending(f"L{layer} f{feature}")
        n_on = sum(self.wanted.values()) if self.prov_patched else 0
        self._provenance_worker(self._next("provenance"), layer, feature, self.prompt, n_on)

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def _detail_worker(self, rid: int, layer: int, feature: int, prompt: str) -> None:
        if self._latest.get("detail") != rid:
            return  # superseded before it started: skip the work
        self.post_message(DetailReady(rid, self.lab.feature_detail(layer, feature, prompt)))

    @work(thread=True, exclusive=True, group="provenance", exit_on_error=False)
    def _provenance_worker(self, rid: int, layer: int, feature: int, prompt: str, n_on: int) -> None:
        if self._latest.get("provenance") != rid:
            return
        state = f"with {n_on} patch{'es' if n_on != 1 else ''} on" if n_on else "unpatched"
        try:
            # No prompt: the static (virtual-weight) view.
            text = self.lab.provenance_text(layer, feature, prompt if prompt.strip() else None,
                                            patched=bool(n_on))
            message = False
        except TuiwbError as e:  # e.g. no SAE upstream of this layer: say so in the pane, not a toast
            text, message = str(e), True
        self.post_message(ProvenanceReady(rid, layer, feature, text, state, message))

    # --- continuations: after the logit bars, streamed, latest request wins -------------------
    def request_generate(self, t_key: float | None = None) -> None:
        """Started once the logit bars are painted, so they never wait for a continuation."""
        self._generate_worker(self._next("generate"), self.prompt, t_key)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def _generate_worker(self, rid: int, prompt: str, t_key) -> None:
        if not prompt.strip() or self._latest.get("generate") != rid:
            return
        stream = self.lab.continuations(prompt)
        made = 0
        try:
            for view in stream:
                if self._latest.get("generate") != rid:  # superseded: stop here, at this token
                    self.generations_cancelled.append(made)
                    return
                made = max(len(view.baseline), len(view.patched))
                self.post_message(ContinuationReady(rid, view, t_key))
        finally:
            stream.close()  # ends the Session's generators now, not at garbage collection

    def on_continuation_ready(self, msg: ContinuationReady) -> None:
        panes = self.query(ContinuationPane)  # none: a token that arrived while the app shuts down
        if not self._fresh("generate", msg.request) or not panes:
            return
        panes.first().show(msg.view)
        self.continuations_painted += 1
        if msg.t_key is not None and msg.view.patched and msg.request not in self._gen_timed:
            self._gen_timed.add(msg.request)
            self.call_after_refresh(self._record_gen_latency, msg.t_key)

    def _record_gen_latency(self, t_key: float) -> None:
        self.gen_latencies.append((time.monotonic() - t_key) * 1e3)

    # --- dose-response and scorecards (issue 13) -------------------------------------------------
    @work(thread=True, exclusive=True, group="sweep", exit_on_error=False)
    def _sweep_worker(self, layer: int, feature: int, prompt: str, target: str | None) -> None:
        self.post_message(SweepReady(self.lab.sweep(layer, feature, prompt, target)))

    def on_sweep_ready(self, msg: SweepReady) -> None:
        if isinstance(self.screen, SweepScreen):
            self.pop_screen()
        self.push_screen(SweepScreen(msg.view))

    @work(thread=True, group="scorecard", exclusive=True, exit_on_error=False)
    def _scorecard_worker(self, name: str, positive: list[str], negative: list[str], target: str | None) -> None:
        try:
            summary = self.lab.scorecard(name, positive, negative, target)
        finally:
            self.call_from_thread(self.end_busy)
        self.post_message(PatchesChanged(self.lab.patches(), f"{name} scorecard: {summary}"))

    # --- the busy state (status bar) of long actions --------------------------------------------
    def start_busy(self, what: str) -> None:
        self.busy, self.cancel_requested = what, False
        self.status.busy = f"{what}…"

    def end_busy(self) -> None:
        self.busy, self.cancel_requested = None, False
        self.status.busy = ""

    def _progress(self) -> CallbackProgress:
        """Progress of a worker's Session call: each event repaints the status bar; after Esc the next
        event raises ``Cancelled`` inside the call, which stops it (a thread cannot be killed)."""
        def fn(e: ProgressEvent) -> None:
            if self.cancel_requested:
                raise Cancelled("cancelled")
            self.post_message(BusyProgress(describe(e) if e.message is None else e.message))
        return CallbackProgress(fn, per_s=5)

    def on_busy_progress(self, msg: BusyProgress) -> None:
        if self.busy is not None and not self.cancel_requested:
            self.status.busy = f"{self.busy}: {msg.text} (Esc cancels)"

    def _edit_op(self, op: str, name: str) -> None:
        p = next((p for p in self.patch_views if p.name == name), None)
        fits = op == "lora" or op == "export" and p is not None and p.method == "hook" or \
            op == "method" and p is not None and p.method == "hook" and not self.lab.has_cached_lora(name) or \
            op == "mode" and p is not None and p.method == "lora"
        if fits:
            self.start_busy(f"fitting {name}'s LoRA")
        self._edit_worker(op, name, fits)

    @work(thread=True, group="edit", exit_on_error=False)
    def _edit_worker(self, op: str, name: str, fits: bool = False) -> None:
        """Patch edits run one after another (not exclusive: none may be dropped)."""
        progress = self._progress() if fits else None
        try:
            if op == "mode":
                note = f"{name}: mode {self.lab.cycle_mode(name, progress=progress)}"
            elif op == "method":
                note = f"{name}: method {self.lab.switch_method(name, progress=progress)}"
            elif op == "lora":
                v = self.lab.build_lora(name, progress=progress)
                note = f"{name}: LoRA built" + (f", fidelity KL {v.fidelity:.3g}" if v.fidelity is not None else "") \
                    + "; the patch now runs as the LoRA (m: back to the hook)"
            elif op == "export":
                self.post_message(Exported(self.lab.export(name, progress=progress)))
                note = ""  # exporting a hook patch fits its LoRA first: the list must show that
            else:  # pragma: no cover — programming error
                raise ValueError(op)
            if fits and self.cancel_requested and op in ("lora", "method"):
                # Esc came after the last progress step: the result arrived, discard it (the LoRA is
                # kept for m; the patch goes back to the hook it was)
                self.lab.switch_method(name)
                note = f"{name}: LoRA fit cancelled; the patch stays a hook patch"
        except Cancelled:
            note = f"{name}: LoRA fit cancelled; the patch is unchanged"
        finally:
            if fits:
                self.call_from_thread(self.end_busy)
        self.post_message(PatchesChanged(self.lab.patches(), note))

    @work(thread=True, group="contrast", exclusive=True, exit_on_error=False)
    def _contrast_worker(self, layer: int, req: ContrastRequest) -> None:
        try:
            ranked, effect = self.lab.contrast(layer, list(req.positive), list(req.negative), top=req.top,
                                               target=req.target or None)
            name = None
            if req.make_patch and ranked:
                name = self.lab.add_group_patch(f"contrast-L{layer}", layer, [f for f, _ in ranked])
        finally:
            self.call_from_thread(self.end_busy)
        self.post_message(ContrastReady(layer, tuple(ranked), self.lab.patches(), name, effect))

    # --- results (messages up) ---------------------------------------------------------------
    def _fresh(self, group: str, rid: int) -> bool:
        return self._latest.get(group) == rid

    def on_logits_ready(self, msg: LogitsReady) -> None:
        if not self._fresh("logits", msg.request):
            return  # a newer request is on its way: don't paint stale numbers
        with self._changes_lock:  # the Session's states are the truth now, but for toggles not yet applied
            self.wanted.update({p.name: p.enabled for p in msg.patches if p.name not in self._changes})
        self.query_one(LogitBars).show(msg.view)
        self._set_patches(msg.patches)
        self.logits_painted += 1
        self.status.model_ms = msg.view.model_ms
        if msg.t_key is not None:
            self.call_after_refresh(self._record_latency, msg.t_key)
        # after the repaint (and its timing): the bars are on screen before a generation competes for the GIL
        self.call_after_refresh(self.request_generate, msg.t_key)

    def _record_latency(self, t_key: float) -> None:
        ms = (time.monotonic() - t_key) * 1e3
        self.latencies.append(ms)
        self.status.latency_ms = ms

    def on_table_ready(self, msg: TableReady) -> None:
        if not self._fresh("table", msg.request):
            return
        ranked = self.ranked.get(msg.rows.layer, ())
        # the layer's own last feature, else its top row (a feature id means nothing on another layer)
        self.table.load(msg.rows, ranked=ranked, select=self.last_feature.get(msg.rows.layer))
        self._mark_table()
        f = self.table.selected
        if f is not None:
            self.request_feature(msg.rows.layer, f)

    def on_feature_table_selected(self, msg: FeatureTable.Selected) -> None:
        if self._select_timer is not None:
            self._select_timer.stop()
        self._select_timer = self.set_timer(SELECT_DEBOUNCE_S, partial(self.request_feature, msg.layer, msg.feature))

    def on_detail_ready(self, msg: DetailReady) -> None:
        if not self._fresh("detail", msg.request) or not self.query(TokenCloud):  # none: shutting down
            return
        d = msg.detail
        cloud = self.query_one(TokenCloud)
        cloud.show(d.cloud)
        cloud.border_subtitle = f"L{d.layer} f{d.feature}"
        ctx = self.query_one(Contexts)
        ctx.border_title = f"Top contexts · L{d.layer} f{d.feature} · unpatched"
        ctx.show(d)

    def on_provenance_ready(self, msg: ProvenanceReady) -> None:
        if self._fresh("provenance", msg.request):
            view = self.query_one(ProvenanceView)
            view.show(msg.text, f"L{msg.layer} f{msg.feature}", message=msg.message)
            view.border_title = f"Provenance · {msg.state}"

    def on_token_cloud_highlighted(self, msg: TokenCloud.Highlighted) -> None:
        self.query_one(Contexts).set_highlight(msg.token)

    def on_patches_changed(self, msg: PatchesChanged) -> None:
        self._set_patches(msg.patches)
        if msg.note:
            self.notify(msg.note)
        self.request_logits()

    def on_session_changed(self, msg: SessionChanged) -> None:
        """Another client changed the Session: show its prompt, repaint patches and logits."""
        if msg.event.get("type") == "prompt":
            text = str(msg.event.get("text", ""))
            if text != self.prompt:
                self.prompt = text
                self.query_one(PromptEditor).value = text  # its Edited then matches: no echo back
                if self.selected is not None:
                    self.request_feature(*self.selected)
        self.request_logits()

    def on_exported(self, msg: Exported) -> None:
        self.notify(f"exported to {msg.path}")

    def on_contrast_ready(self, msg: ContrastReady) -> None:
        self.ranked[msg.layer] = tuple(f for f, _ in msg.ranked)
        self.last_feature.pop(msg.layer, None)  # open on the top hit
        self.layer = msg.layer  # watch_layer reloads the table, now ranked
        top = ", ".join(f"{f} ({s:.3g})" for f, s in msg.ranked[:5])  # scores span decades: 3 digits
        self.notify(f"contrast: {len(msg.ranked)} features on layer {msg.layer}: {top}"
                    + (f". {msg.effect}" if msg.effect else "")
                    + (f"; patch {msg.patch} ready (space toggles)" if msg.patch else ""), timeout=15)
        self.contrast_effect = msg.effect
        effect = self.query_one("#contrast-effect")
        effect.update(f"last contrast search: {msg.effect}" if msg.effect else "")
        effect.display = bool(msg.effect)
        if msg.patch:
            self.wanted.setdefault(msg.patch, False)
        self._set_patches(msg.patches)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place worker errors end up: a notification; the app keeps running."""
        if event.state != WorkerState.ERROR:
            return
        if event.worker.group in ("edit", "contrast", "scorecard"):
            self.end_busy()
        err = event.worker.error
        if isinstance(err, TuiwbError):
            text = str(err)
        else:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            text = f"{type(err).__name__}: {first}"
        self.notify(text, title=f"{event.worker.group} failed", severity="error", timeout=8)

    def _set_patches(self, patches: tuple[PatchView, ...]) -> None:
        self.patch_views = patches
        for p in patches:
            self.wanted.setdefault(p.name, p.enabled)
        self.query_one(PatchList).show(patches, self.wanted)
        self._mark_table()
        cards = [f"{p.name}: {p.scorecard}" for p in patches if p.scorecard]
        box = self.query_one("#scorecards")
        box.update("\n".join(cards))
        box.display = bool(cards)

    def _mark_table(self) -> None:
        marks: dict[int, str] = {}
        for p in self.patch_views:
            if p.layer != self.layer:
                continue
            on = self.wanted.get(p.name, p.enabled)
            for f in p.features:
                if marks.get(f) != "on":
                    marks[f] = "on" if on else "off"
        self.table.set_marks(marks)
