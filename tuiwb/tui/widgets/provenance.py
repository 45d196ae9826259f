"""Provenance pane: the ASCII attribution tree (depth 2) of the selected feature on the prompt."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static


class ProvenanceView(VerticalScroll, can_focus=True):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.text = ""

    def compose(self):
        yield Static("select a feature to trace where it comes from", id="provenance-body", markup=False)

    def show(self, text: str, title: str = "", message: bool = False) -> None:
        """A tree (scrolls sideways) or, with ``message``, a reason why there is none (wrapped to fit)."""
        self.text = text
        self.set_class(message, "-message")
        self.query_one("#provenance-body", Static).update(text)
        if title:
            self.border_subtitle = title

    def pending(self, what: str) -> None:
        self.set_class(True, "-message")
        self.query_one("#provenance-body", Static).update(f"tracing {what}…")
