"""The workbench app: panes around one Session; layout, key map and actions live here, the model
work (thread workers and their messages) in ``workers.py``.

"Attributes down, messages up": an action records what the user wants (e.g. which patches are on)
and asks ``ModelWork`` for a recomputation; a worker posts a dataclass message; its handler sets the
panes' data. Toggles are timed from the key event to the repaint of the logit pane.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import Iterable

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Container, Vertical
from textual.markup import escape
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Static, Tab, Tabs

from tuiwb.errors import TuiwbError
from tuiwb.tui import keymap
from tuiwb.session.adapter import Lab, patch_name
from tuiwb.session.views import PatchView
from tuiwb.tui.screens.contrast import ContrastDialog, ContrastRequest
from tuiwb.tui.screens.help import HelpScreen
from tuiwb.tui.widgets.contexts import Contexts
from tuiwb.tui.widgets.continuation import ContinuationPane
from tuiwb.tui.widgets.feature_table import FeatureRowsView, FeatureTable
from tuiwb.tui.widgets.key_bar import KeyBar
from tuiwb.tui.widgets.logit_bars import LogitBars
from tuiwb.tui.widgets.patches import PatchList
from tuiwb.tui.widgets.prompt import PromptEditor
from tuiwb.tui.widgets.provenance import ProvenanceView
from tuiwb.tui.widgets.status_bar import StatusBar
from tuiwb.tui.widgets.token_cloud import TokenCloud
from tuiwb.tui.messages import SessionChanged
from tuiwb.tui.workers import TUI_ORIGIN, ModelWork

PAGES = {1: "features-pane", 2: "detail-pane", 3: "logits-pane", 4: "patches-pane", 5: "continuation-pane"}
"""Narrow terminals show one of these at a time (keys 1..5); wide ones show all."""
SCORING = "scoring"
"""The busy state of a scorecard run (``r``)."""
PAGE_FOCUS = {1: FeatureRowsView, 2: TokenCloud, 3: LogitBars, 4: PatchList, 5: ContinuationPane}


class WorkbenchApp(ModelWork, App):
    """``make_app`` builds it; tests drive it with ``run_test``."""

    CSS_PATH = "app.tcss"
    TITLE = "tuiwb"
    BINDINGS = keymap.bindings()
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (130, "-wide")]
    """At 130+ columns every pane shows at once; below, one page at a time (keys 1..4)."""

    layer: var[int] = var(0, init=False, always_update=True)
    """The SAE layer the feature table shows (a ``var``: the panes repaint themselves). Every
    assignment runs ``watch_layer``, a same-layer one too: choosing a layer (``l`` with one layer, a
    contrast search's) reloads its table."""

    def __init__(self, lab: Lab, *, prompt: str = "", layer: int | None = None,
                 ranked: Iterable[int] = (), fixed_status: bool = False,
                 contrast_prompts: tuple[list[str], list[str]] | None = None, contrast_target: str = "",
                 screenshot_dir: str | Path = ".", companion_url: str | None = None):
        super().__init__()
        self.lab = lab
        self.info = lab.info()
        if not self.info.layers:
            raise TuiwbError("the session has no SAEs attached: pass --saes DIR (train them with `tuiwb train`)")
        layer = layer if layer is not None else self.info.layers[0]
        if layer not in self.info.layers:
            raise TuiwbError(f"no SAE for layer {layer}: SAEs are attached for layers "
                             f"{', '.join(map(str, self.info.layers))}")
        self.set_reactive(WorkbenchApp.layer, layer)  # no watcher yet: the panes don't exist
        self.prompt = prompt or lab.prompt  # the Session's shared prompt when none is given here
        self.companion_url = companion_url
        """The browser companion's URL when one serves this Session (shown on start)."""
        self._changes_lock = threading.Lock()
        self._changes: dict[str, bool] = {}  # the user's toggles the next logits worker applies
        self._creates: list[tuple[int, int]] = []  # (layer, feature) patches it creates first
        self._unsubscribe = None
        self.ranked = {layer: tuple(int(f) for f in ranked)} if ranked else {}
        self.fixed_status = fixed_status
        self.contrast_prompts = contrast_prompts
        self.contrast_target = contrast_target
        self.screenshot_dir = Path(screenshot_dir)
        self.page = 1
        self.wanted: dict[str, bool] = {}
        """Patch on/off as the user last asked for it; workers make the Session match it."""
        self.patch_views: tuple[PatchView, ...] = lab.patches()
        for p in self.patch_views:
            self.wanted[p.name] = p.enabled
        self.selected: tuple[int, int] | None = None
        self.latencies: list[float] = []
        """Key press → logit pane repainted, ms, one per toggle (newest last)."""
        self.logits_painted = 0
        """Count of logit results painted (tests and the benchmark wait on it)."""
        self._seq = 0
        self._latest: dict[str, int] = {}
        self._key_time: float | None = None
        self._select_timer = None
        self.last_feature: dict[int, int] = {}
        """The feature last selected on each layer (``l`` comes back to it)."""
        self.prov_patched = False
        """Provenance on the patched model (``v``); by default on the unpatched one, like the contexts."""
        self.busy: str | None = None
        """The running long action's name (the status bar shows it; Esc cancels it)."""
        self.cancel_requested = False
        self.contrast_effect: str | None = None
        self.continuations_painted = 0
        """Count of continuation updates painted (one per streamed token; tests wait on it)."""
        self.generations_cancelled: list[int] = []
        """Tokens each superseded generation had made when it stopped (latest request wins)."""
        self.gen_latencies: list[float] = []
        """Key press → first patched continuation token painted, ms, one per toggle."""
        self._gen_timed: set[int] = set()

    # --- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield PromptEditor(self.prompt, id="prompt")
        yield Tabs(*(Tab(f"{n} {t}", id=f"tab-{n}") for n, t in
                     ((1, "Features"), (2, "Feature"), (3, "Logits"), (4, "Patches"), (5, "Continue"))), id="pages")
        with Container(id="main"):
            yield FeatureTable(id="features-pane", classes="page")
            with Vertical(id="detail-pane", classes="page"):
                yield TokenCloud(id="cloud")
                yield Contexts(id="contexts")
                yield ProvenanceView(id="provenance")
            with Vertical(id="logits-pane", classes="page"):
                yield LogitBars(top_k=self.lab.top_k, id="logits")
            with Vertical(id="continuation-pane", classes="page"):
                yield ContinuationPane(id="continuation")
            with Vertical(id="patches-pane", classes="page"):
                yield PatchList(id="patches")
                yield Static("", id="scorecards", markup=False)
                yield Static("", id="contrast-effect", markup=False)
        device = self.info.device + (f" {self.info.quant}" if self.info.quant else "")
        yield StatusBar(model=_short_model_id(self.info.model_id), device=device, fixed=self.fixed_status,
                        id="status")
        yield KeyBar(id="keys")

    def on_mount(self) -> None:
        self.query_one("#pages", Tabs).can_focus = False
        for pid, title in (("cloud", "Token cloud"), ("contexts", "Top contexts"),
                           ("provenance", "Provenance"), ("logits-pane", "Next token"),
                           ("patches-pane", "Patches"), ("prompt", "Prompt"),
                           ("continuation-pane", "Continuation")):
            self.query_one(f"#{pid}").border_title = title
        self._set_page(1)
        self.query_one(PatchList).show(self.patch_views, self.wanted)
        self._mark_table()
        self.mutate_reactive(WorkbenchApp.layer)  # watch_layer for the first layer, now the panes exist
        self._unsubscribe = self.lab.subscribe(self._on_session_event)
        self.request_logits(set_prompt=bool(self.prompt))
        self.query_one(FeatureRowsView).focus()
        if self.companion_url:
            self.notify(f"companion: {self.companion_url}", title="browser companion", timeout=30)

    def on_unmount(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_session_event(self, event: dict) -> None:
        """Any thread, Session lock held: another client's change becomes a message (ours are ignored)."""
        if event.get("origin") != TUI_ORIGIN:
            self.post_message(SessionChanged(event))

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def table(self) -> FeatureTable:
        return self.query_one(FeatureTable)

    def on_resize(self, event: events.Resize) -> None:
        # Wide screens give the logit pane the room: longer bars, whole tokens (58 columns up to 180).
        w = event.size.width
        col = 58 if w < 180 else min(96, int(w * 0.4))
        for main in self.query("#main"):  # none yet before compose
            main.styles.grid_columns = f"1fr 1fr {col}"

    def _set_page(self, n: int) -> None:
        self.page = n
        for k, pid in PAGES.items():
            self.query_one(f"#{pid}").set_class(k == n, "-active")
        self.query_one("#pages", Tabs).active = f"tab-{n}"

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tab is not None and event.tab.id:
            n = int(event.tab.id.split("-")[1])
            if n != self.page:
                self._set_page(n)

    # --- key timing --------------------------------------------------------------------------
    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._key_time = event.time  # monotonic, stamped when the key was read
        await super().on_event(event)

    def _take_key_time(self) -> float:
        t, self._key_time = self._key_time, None
        now = time.monotonic()
        return t if t is not None and now - t < 5.0 else now

    # --- prompt ------------------------------------------------------------------------------
    def on_prompt_editor_left(self, msg: PromptEditor.Left) -> None:
        self._focus_page(self.page)

    def on_prompt_editor_edited(self, msg: PromptEditor.Edited) -> None:
        if msg.text == self.prompt:
            return
        self.prompt = msg.text
        self.request_logits(set_prompt=True)
        if self.selected is not None:
            self.request_feature(*self.selected)

    # --- layer and search --------------------------------------------------------------------
    def watch_layer(self, layer: int) -> None:
        self.status.sae_layer = layer
        self.load_table(layer)

    def on_feature_table_filtered(self, msg: FeatureTable.Filtered) -> None:
        if msg.feature is not None:
            self.request_feature(msg.layer, msg.feature)

    # --- actions (the key map) ---------------------------------------------------------------
    def _selected_patch(self, create: bool = False) -> tuple[str | None, tuple[int, int] | None]:
        """``(name, create)``: the patch list's cursor patch when it has focus, else the patch of the
        selected feature; ``create`` is the (layer, feature) to make a new ablation patch for."""
        if isinstance(self.focused, PatchList) and self.focused.highlighted:
            return self.focused.highlighted, None
        f = self.table.selected
        if f is None:
            return None, None
        for p in self.patch_views:
            if p.layer == self.layer and f in p.features:
                return p.name, None
        if not create:
            return None, None
        return patch_name(self.layer, f), (self.layer, f)

    def action_toggle_patch(self) -> None:
        t_key = self._take_key_time()
        name, create = self._selected_patch(create=True)
        if name is None:
            self.notify("select a feature (or a patch) first", severity="warning")
            return
        self._want(name, not self.wanted.get(name, False))
        # No optimistic repaint here: the answer arrives in milliseconds and one paint (of the logits,
        # the patch row and the table marks together) keeps the main thread free for it.
        self.request_logits(t_key=t_key, create=create)

    def _patch_op(self, op: str) -> None:
        name, _ = self._selected_patch()
        if name is None:
            self.notify("no patch for the selected feature: press space to make one", severity="warning")
            return
        self._edit_op(op, name)

    def action_cycle_mode(self) -> None:
        self._patch_op("mode")

    def action_switch_method(self) -> None:
        self._patch_op("method")

    def action_build_lora(self) -> None:
        name, _ = self._selected_patch()
        p = next((p for p in self.patch_views if p.name == name), None)
        if p is not None and p.method == "lora":  # say so now, not "fitting…" and then an error
            fid = f" (fidelity KL {p.fidelity:.3g})" if p.fidelity is not None else ""
            self.notify(f"{name} already runs as its LoRA{fid}: m switches it back to the hook",
                        severity="warning")
            return
        self._patch_op("lora")

    def action_cancel_busy(self) -> None:
        if self.busy is None:
            return
        if self.busy.startswith(SCORING):  # no progress steps to stop at: it ends in seconds
            self.notify("the scorecard finishes in a few seconds; it cannot be cancelled", timeout=3)
            return
        self.cancel_requested = True
        self.status.busy = f"cancelling {self.busy}…"

    def action_provenance_patched(self) -> None:
        self.prov_patched = not self.prov_patched
        self.notify("provenance on the " + ("patched" if self.prov_patched else "unpatched") + " model", timeout=2)
        if self.selected is not None:
            self.request_provenance(*self.selected)

    def action_export_patch(self) -> None:
        self._patch_op("export")

    def action_search(self) -> None:
        if self.page != 1 and self.screen.has_class("-narrow"):
            self._set_page(1)
        self.table.open_search()

    def action_contrast(self) -> None:
        pos, neg = self.contrast_prompts or ([], [])
        self.push_screen(ContrastDialog(pos, neg, target=self.contrast_target), self._contrast_chosen)

    def _contrast_chosen(self, req: ContrastRequest | None) -> None:
        if req is not None:
            self.contrast_prompts = (list(req.positive), list(req.negative))
            self.contrast_target = req.target
            self.start_busy(f"contrast search on layer {self.layer}" + (" (causal)" if req.target else ""))
            self._contrast_worker(self.layer, req)

    def action_sweep(self) -> None:
        """The dose-response chart of the selected feature on the prompt (its top token, or the contrast target)."""
        f = self.table.selected
        if f is None:
            self.notify("select a feature first", severity="warning")
            return
        if not self.prompt.strip():
            self.notify("type a prompt first (p): the sweep charts its next token", severity="warning")
            return
        self._sweep_worker(self.layer, f, self.prompt, None)

    def action_scorecard(self) -> None:
        name, _ = self._selected_patch()
        if name is None:
            self.notify("no patch for the selected feature: press space to make one", severity="warning")
            return
        if not self.contrast_prompts or not self.contrast_prompts[0]:
            self.notify("no prompt sets yet: run a contrast search (c) first; its sets score the patch",
                        severity="warning")
            return
        pos, neg = self.contrast_prompts
        self.start_busy(f"{SCORING} {name} on {len(pos)} + {len(neg)} prompts")
        self._scorecard_worker(name, list(pos), list(neg), self.contrast_target or None)

    def action_sort(self) -> None:
        label = self.table.next_sort()
        self.notify(f"sorted by {label}", timeout=2)

    def action_next_layer(self) -> None:
        layers = self.info.layers
        self.layer = layers[(layers.index(self.layer) + 1) % len(layers)]

    def action_focus_prompt(self) -> None:
        self.query_one(PromptEditor).focus()

    def action_page(self, n: int) -> None:
        if self.screen.has_class("-narrow"):
            self._set_page(n)
        else:
            self.page = n  # Esc in the prompt comes back to this pane
        self._focus_page(n)

    def _focus_page(self, n: int) -> None:
        widget = self.query_one(PAGE_FOCUS[n])
        widget.focus()
        widget.scroll_visible()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_screenshot(self) -> None:
        self.screenshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_screenshot(path=str(self.screenshot_dir))
        self.notify(f"screenshot saved to {path}")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every key-map action is in the command palette too (ctrl+p)."""
        for k in keymap.KEYS:
            # the palette reads help as markup: escape it ("[/]" would be a closing tag)
            yield SystemCommand(k.title, escape(f"{k.help}  (key: {keymap.key_label(k)})"),
                                partial(self.run_action, k.action))
        ours = {k.title for k in keymap.KEYS}
        yield from (c for c in super().get_system_commands(screen) if c.title not in ours)  # theme, keys, ...


def _short_model_id(model_id: str) -> str:
    """A local checkpoint by its directory name (the full path rarely fits); a hub id as it is."""
    p = Path(model_id)
    return p.name if p.is_absolute() or model_id.startswith(".") else model_id


def make_app(session, prompt: str | None = None, *, layer: int | None = None, ranked: Iterable[int] = (),
             fixed_status: bool = False, contrast_prompts: tuple[list[str], list[str]] | None = None,
             contrast_target: str = "", top_k: int = 10, lora_dir: str | Path = "lora",
             screenshot_dir: str | Path = ".", companion_url: str | None = None) -> WorkbenchApp:
    """The one factory the CLI (``tuiwb ui``/``tuiwb demo``), the tests and the benchmark use.

    ``ranked`` pins features (e.g. contrast-search hits) to the top of ``layer``'s table;
    ``fixed_status`` replaces measured numbers in the status bar with placeholders (snapshots).
    """
    lab = Lab(session, top_k=top_k, lora_dir=lora_dir)
    return WorkbenchApp(lab, prompt=prompt or "", layer=layer, ranked=ranked, fixed_status=fixed_status,
                        contrast_prompts=contrast_prompts, contrast_target=contrast_target,
                        screenshot_dir=screenshot_dir, companion_url=companion_url)
