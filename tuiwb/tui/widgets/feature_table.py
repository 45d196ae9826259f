"""Feature table pane: ID, density, max act, top tokens — sortable, searchable, virtual.

The rows are drawn with Textual's line API (``render_line``): only the visible lines are rendered
and the data stay numpy columns, so sorting or filtering 16k+ features is a numpy call, not 16k
widget updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, Static

from tuiwb.session.query import SORT_LABELS, SORTS, FeatureQuery, parse_query, query_mask, sorted_order
from tuiwb.session.views import FeatureRows

HEADER = f"{'':2}{'id':>6}  {'density':>8}  {'max':>6}  top tokens"


class FeatureRowsView(ScrollView, can_focus=True):
    """The scrolling body of the table; posts ``FeatureTable.Selected``."""

    COMPONENT_CLASSES = {"rows--cursor", "rows--on", "rows--off", "rows--ranked"}
    BINDINGS = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "choose", "Select", show=False),
    ]
    cursor: reactive[int] = reactive(0)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.rows: FeatureRows | None = None
        self.order = np.zeros(0, dtype=np.int64)
        self.marks: dict[int, str] = {}  # feature id → "on" | "off" (has a patch)
        self.ranked: frozenset[int] = frozenset()

    def set_order(self, rows: FeatureRows, order: np.ndarray, keep: int | None = None) -> None:
        """Show ``order``; the cursor goes to feature ``keep`` if shown, else to the first row."""
        self.rows, self.order = rows, order
        self.virtual_size = Size(self.size.width, len(order))
        pos = 0
        if keep is not None and len(order):
            hit = np.flatnonzero(rows.ids[order] == keep)
            pos = int(hit[0]) if len(hit) else 0
        self.set_reactive(FeatureRowsView.cursor, pos)
        self._scroll_cursor()
        self.refresh()

    def set_marks(self, marks: dict[int, str]) -> None:
        """Patch marks per feature id; repaints only the visible rows whose mark changed."""
        old, self.marks = self.marks, marks
        changed = {f for f in set(old) | set(marks) if old.get(f) != marks.get(f)}
        if not changed or self.rows is None:
            return
        top, h = self.scroll_offset.y, self.size.height
        visible = self.rows.ids[self.order[top: top + h]]
        for y, fid in enumerate(visible.tolist()):
            if fid in changed:
                self.refresh(Region(0, y, self.size.width, 1))

    @property
    def feature(self) -> int | None:
        if self.rows is None or not len(self.order):
            return None
        return int(self.rows.ids[self.order[min(self.cursor, len(self.order) - 1)]])

    def render_lines(self, crop):
        # Resolve the styles once per paint, not once per line (rich_style walks the DOM).
        self._styles = {
            "base": self.rich_style,
            **{c: self.get_component_rich_style(c) for c in self.COMPONENT_CLASSES},
        }
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        i = self.scroll_offset.y + y
        st = getattr(self, "_styles", None) or {"base": self.rich_style,
                                                **{c: self.get_component_rich_style(c) for c in self.COMPONENT_CLASSES}}
        if self.rows is None or i >= len(self.order):
            return Strip.blank(width, st["base"])
        r = int(self.order[i])
        fid = int(self.rows.ids[r])
        mark = {"on": "● ", "off": "○ "}.get(self.marks.get(fid, ""), "  ")
        text = (f"{mark}{fid:>6}  {self.rows.density[r]:>8.5f}  {self.rows.max_act[r]:>6.2f}  "
                f"{self.rows.top_tokens[r]}")
        style = st["base"]
        if fid in self.ranked:
            style += st["rows--ranked"]
        if self.marks.get(fid) == "on":
            style += st["rows--on"]
        if i == self.cursor:
            style += st["rows--cursor"]
            if not self.has_focus:
                style += Style(dim=True)
        text = text[:width].ljust(width)
        return Strip([Segment(text, style)], width)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.order))

    def watch_cursor(self, old: int, new: int) -> None:
        self._scroll_cursor()
        self.refresh()
        if self.feature is not None and self.rows is not None:
            self.post_message(FeatureTable.Selected(self.rows.layer, self.feature))

    def _scroll_cursor(self) -> None:
        self.scroll_to_region(Region(0, self.cursor, 1, 1), animate=False, force=True, immediate=True)

    def _clamp(self, i: int) -> int:
        return max(0, min(i, len(self.order) - 1)) if len(self.order) else 0

    def action_move(self, delta: int) -> None:
        self.cursor = self._clamp(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.cursor = self._clamp(self.cursor + direction * max(1, self.size.height - 1))

    def action_jump(self, where: int) -> None:
        self.cursor = self._clamp(where if where >= 0 else len(self.order) - 1)

    def action_choose(self) -> None:
        if self.feature is not None and self.rows is not None:
            self.post_message(FeatureTable.Selected(self.rows.layer, self.feature))

    def on_click(self, event) -> None:
        self.cursor = self._clamp(self.scroll_offset.y + event.y)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()


class FeatureTable(Vertical):
    """The pane: a search bar (hidden until ``/``), the header and the rows."""

    @dataclass
    class Selected(Message):
        """The cursor landed on a feature (or Enter chose it)."""

        layer: int
        feature: int

    @dataclass
    class Filtered(Message):
        """The user kept a filter (Enter in the search bar): open ``feature``, the one under the
        cursor (None: nothing matches)."""

        layer: int
        feature: int | None

    def __init__(self, **kw):
        super().__init__(**kw)
        self.rows: FeatureRows | None = None
        self.query_ = FeatureQuery()
        self.sort = "density-"
        self.ranked: tuple[int, ...] = ()

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search: words in top tokens, #id, d:0.01..0.1, max>2   (Esc clears)",
                    id="search")
        yield Static("", id="search-error", markup=False)
        yield Static(HEADER, id="table-header", markup=False)
        yield FeatureRowsView(id="rows")

    @property
    def body(self) -> FeatureRowsView:
        return self.query_one(FeatureRowsView)

    @property
    def search(self) -> Input:
        return self.query_one("#search", Input)

    @property
    def selected(self) -> int | None:
        return self.body.feature

    @property
    def shown(self) -> list[int]:
        """Feature ids in display order (after the filter)."""
        return [] if self.rows is None else [int(i) for i in self.rows.ids[self.body.order]]

    # --- search (the bar is this pane's: the app only asks to open it and hears Filtered) ------
    def open_search(self) -> None:
        self.add_class("-searching")
        self.search.focus()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        event.stop()
        error = self.query_one("#search-error", Static)
        try:
            self.apply_query(event.value)
            error.update("")
            error.display = False
        except ValueError as e:  # a bad term: say why under the box (wrapped), keep the last good filter
            error.update(f"✗ {e}")
            error.display = True

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.body.focus()
        if self.rows is not None:
            self.post_message(self.Filtered(self.rows.layer, self.selected))

    def on_key(self, event: events.Key) -> None:
        # Esc in the search bar clears the filter (Input.Changed applies it) and leaves the bar.
        if event.key == "escape" and self.search.has_focus:
            self.search.value = ""
            self.query_one("#search-error", Static).display = False
            self.remove_class("-searching")
            self.body.focus()

    def load(self, rows: FeatureRows, ranked: tuple[int, ...] | None = None, select: int | None = None) -> None:
        """Show ``rows``; the cursor on ``select``, or (None) on the first row: a feature id of another
        layer names an unrelated feature, so it is never carried over."""
        self.rows = rows
        if ranked is not None:
            self.ranked = tuple(ranked)
            self.sort = "rank" if ranked else ("density-" if self.sort == "rank" else self.sort)
        self.body.ranked = frozenset(self.ranked)
        self._refresh_rows(keep=select)

    def set_marks(self, marks: dict[int, str]) -> None:
        self.body.set_marks(marks)

    def next_sort(self) -> str:
        choices = [s for s in SORTS if s != "rank" or self.ranked]
        self.sort = choices[(choices.index(self.sort) + 1) % len(choices)] if self.sort in choices else choices[0]
        self._refresh_rows(select_first=True)
        return SORT_LABELS[self.sort]

    def apply_query(self, text: str) -> None:
        """Filter by ``text`` (see ``tuiwb.tui.query``); a bad term raises ``ValueError``."""
        self.query_ = parse_query(text)
        self._refresh_rows(select_first=True)

    def _refresh_rows(self, keep: int | None = None, select_first: bool = False) -> None:
        """Re-filter and re-sort; ``select_first`` (after a sort or filter): the cursor on the top row,
        scrolled into view, and the feature there selected."""
        if self.rows is None:
            return
        before = self.selected
        mask = query_mask(self.rows, self.query_)
        order = sorted_order(self.rows, mask, self.sort, self.ranked)
        self.body.set_order(self.rows, order, keep=keep)
        self.border_subtitle = f"{len(order)}/{len(self.rows)} · {SORT_LABELS[self.sort]}"
        self.border_title = f"Features · layer {self.rows.layer}"
        if select_first and self.selected is not None and self.selected != before:
            self.post_message(self.Selected(self.rows.layer, self.selected))
