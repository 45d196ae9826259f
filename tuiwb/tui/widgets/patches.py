"""Patches pane: every patch with its on/off state, mode, method (hook/LoRA) and fidelity.

A small line-API list rather than a ``DataTable``: a toggle repaints one row, which keeps the
toggle → repaint latency low.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tuiwb.session.views import PatchView

COLUMNS = ("on", "name", "L", "features", "mode", "method", "fidelity")


def _features(fs: tuple[int, ...]) -> str:
    s = ",".join(str(f) for f in fs[:3])
    return s + (f"…+{len(fs) - 3}" if len(fs) > 3 else "")


def _static(p: PatchView) -> tuple:
    """Everything of a patch row except its on/off state."""
    return (p.name, p.layer, p.features, p.mode, p.method, p.rank, p.fidelity)


def cells(p: PatchView, on: bool) -> tuple[str, ...]:
    """The row's text, one string per column."""
    fid = "—" if p.fidelity is None else f"KL {p.fidelity:.3g}"
    method = p.method + (f" r{p.rank}" if p.method == "lora" and p.rank else "")
    return ("●" if on else "○", p.name, str(p.layer), _features(p.features), p.mode, method, fid)


class PatchList(ScrollView, can_focus=True):
    """Header line + one line per patch; the cursor row is the patch ``a``/``m``/``b``/``e`` act on
    while the list has focus."""

    COMPONENT_CLASSES = {"patches--header", "patches--cursor", "patches--on"}
    BINDINGS = [Binding("up", "move(-1)", "Up", show=False), Binding("down", "move(1)", "Down", show=False)]
    cursor: reactive[int] = reactive(0)

    def __init__(self, **kw):
        super().__init__(**kw)
        self.patches: tuple[PatchView, ...] = ()
        self.on: dict[str, bool] = {}
        self._widths = [len(c) for c in COLUMNS]

    @property
    def row_count(self) -> int:
        return len(self.patches)

    def get_row(self, name: str) -> tuple[str, ...]:
        p = next(p for p in self.patches if p.name == name)
        return cells(p, self.on.get(name, p.enabled))

    def show(self, patches: tuple[PatchView, ...], states: dict[str, bool] | None = None) -> None:
        """Redraw; ``states`` (the app's wanted on/off) overrides a stale ``enabled``.

        When only on/off changed, just those rows are repainted.
        """
        states = states or {}
        on = {p.name: states.get(p.name, p.enabled) for p in patches}
        same = [_static(p) for p in patches] == [_static(p) for p in self.patches]
        changed = [i for i, p in enumerate(patches) if on[p.name] != self.on.get(p.name)]
        current = self.highlighted
        self.patches, self.on = patches, on
        if same:
            for i in changed:
                self.refresh(Region(0, i + 1 - self.scroll_offset.y, self.size.width, 1))
        else:
            rows = [cells(p, on[p.name]) for p in patches]
            self._widths = [max([len(COLUMNS[c])] + [len(r[c]) for r in rows]) for c in range(len(COLUMNS))]
            self.virtual_size = Size(sum(self._widths) + 2 * len(COLUMNS), len(patches) + 1)
            names = [p.name for p in patches]
            self.set_reactive(PatchList.cursor, names.index(current) if current in names else 0)
            self.refresh()
        subtitle = f"{sum(on.values())}/{len(patches)} on"
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle

    def _line(self, values) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, self._widths))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        i = y + self.scroll_offset.y
        base = self.rich_style
        if i == 0:
            text, style = self._line(COLUMNS), base + self.get_component_rich_style("patches--header")
        elif i - 1 < len(self.patches):
            p = self.patches[i - 1]
            on = self.on.get(p.name, p.enabled)
            text, style = self._line(cells(p, on)), base
            if on:
                style += self.get_component_rich_style("patches--on")
            if i - 1 == self.cursor:
                style += self.get_component_rich_style("patches--cursor")
                if not self.has_focus:
                    style += Style(dim=True)
        else:
            return Strip.blank(width, base)
        text = text[self.scroll_offset.x:][:width].ljust(width)
        return Strip([Segment(text, style)], width)

    @property
    def highlighted(self) -> str | None:
        return self.patches[self.cursor].name if 0 <= self.cursor < len(self.patches) else None

    def action_move(self, delta: int) -> None:
        if self.patches:
            self.cursor = max(0, min(len(self.patches) - 1, self.cursor + delta))

    def watch_cursor(self) -> None:
        self.refresh()

    def on_click(self, event) -> None:
        i = event.y + self.scroll_offset.y - 1
        if 0 <= i < len(self.patches):
            self.cursor = i

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
