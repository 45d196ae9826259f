"""The dose–response pane (``d``): P(token) and KL to the unpatched model as the selected feature is
scaled by α, charted with plotext (``tuiwb.patch.sweep.sweep_chart``), the numbers beneath."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Static

from tuiwb.patch.sweep import legend, sweep_chart
from tuiwb.session.views import SweepView, quote


class SweepChart(Widget):
    """The curve, redrawn to the widget's size (plotext's ANSI colours turned into rich styles)."""

    DEFAULT_CSS = "SweepChart { height: 1fr; min-height: 8; }"

    def __init__(self, view: SweepView, **kw):
        super().__init__(**kw)
        self.view = view
        self._cache: tuple[tuple[int, int], Text] | None = None

    def render(self) -> Text:
        size = (max(30, self.size.width), max(8, self.size.height))
        if self._cache is None or self._cache[0] != size:
            v = self.view
            self._cache = (size, Text.from_ansi(sweep_chart(v.alphas, v.p, v.kl, *size, color=True),
                                                no_wrap=True, overflow="crop"))
        return self._cache[1]


def rows_text(v: SweepView) -> str:
    """One line per α: ``α=2  P=0.987  KL=0.0014  top 'i'``."""
    return "\n".join(f"α={a:<5g} P={p:.3f}  KL={kl:.4f}  top {quote(t)}"
                     for a, p, kl, t in zip(v.alphas, v.p, v.kl, v.top))


class SweepScreen(ModalScreen[None]):
    """The chart over the workbench; ``d``, ``q`` or Esc closes it."""

    BINDINGS = [Binding("escape,q,d", "close", "Close", show=True)]
    DEFAULT_CSS = """
    SweepScreen { align: center middle; }
    SweepScreen > Vertical {
        width: 100; max-width: 96%; height: 40; max-height: 94%;
        border: round $accent; background: $panel; padding: 0 1;
    }
    SweepScreen #sweep-caption { height: auto; color: $text-muted; }
    SweepScreen #sweep-rows { height: auto; max-height: 8; overflow-y: auto; }
    """

    def __init__(self, view: SweepView):
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        v = self.view
        with Vertical() as box:
            box.border_title = f"Dose–response · L{v.layer} f{v.feature} scaled by α"
            box.border_subtitle = "d / Esc closes"
            yield SweepChart(v, id="sweep-chart")
            yield Static(f"{legend(v.target)} · on the prompt {v.prompt!r}", id="sweep-caption", markup=False)
            yield Static(rows_text(v), id="sweep-rows", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
