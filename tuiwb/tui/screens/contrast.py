"""Contrast-search dialog: two prompt lists in, a ranked set of features out."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, TextArea


@dataclass(frozen=True)
class ContrastRequest:
    """What the dialog returns."""

    positive: tuple[str, ...]
    """Prompts the features should fire on."""
    negative: tuple[str, ...]
    """Prompts they should not fire on."""
    top: int
    """How many features to keep."""
    make_patch: bool
    """Also make (off) an ablation patch of the hits."""
    target: str = ""
    """Optional target token: rank by causal effect on it (ablation-confirmed) instead of activation."""


class ContrastDialog(ModalScreen[ContrastRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+r", "run", "Run search")]
    # Fits 80×24 (two 6-row lists, one row of fields, one of options); scrolls if a terminal is smaller.
    DEFAULT_CSS = """
    ContrastDialog { align: center middle; }
    ContrastDialog > VerticalScroll { width: 110; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $panel; padding: 0 1; }
    ContrastDialog TextArea { height: 6; }
    ContrastDialog Horizontal { height: auto; }
    ContrastDialog #contrast-top { width: 9; }
    ContrastDialog #contrast-target { width: 1fr; min-width: 12; }
    ContrastDialog Horizontal Label { padding: 1 1 0 0; }
    ContrastDialog Checkbox { width: 1fr; }
    ContrastDialog Button { min-width: 9; }
    """

    def __init__(self, positive: list[str] | None = None, negative: list[str] | None = None, top: int = 10,
                 target: str = ""):
        super().__init__()
        self._target = target
        self._pos = "\n".join(positive or [])
        self._neg = "\n".join(negative or [])
        self._top = top

    def compose(self) -> ComposeResult:
        with VerticalScroll() as v:
            v.border_title = "Contrast search"
            v.border_subtitle = "ctrl+r runs · Esc cancels"
            yield Label("Prompts the features should fire on (one per line):")
            yield TextArea(self._pos, id="contrast-pos")
            yield Label("Prompts they should not fire on (one per line):")
            yield TextArea(self._neg, id="contrast-neg")
            with Horizontal():
                yield Label("target token (optional: causal search)")
                yield Input(self._target, id="contrast-target")
                yield Label("keep top")
                yield Input(str(self._top), id="contrast-top", type="integer")
            with Horizontal():
                yield Checkbox("make an ablation patch of the hits", True, id="contrast-patch")
                yield Button("Run", id="contrast-run", variant="primary")

    def _lines(self, wid: str) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.query_one(wid, TextArea).text.splitlines() if s.strip())

    def action_run(self) -> None:
        pos, neg = self._lines("#contrast-pos"), self._lines("#contrast-neg")
        if not pos or not neg:
            self.notify("give at least one prompt in each list", severity="warning")
            return
        try:
            top = max(1, int(self.query_one("#contrast-top", Input).value or 10))
        except ValueError:
            top = 10
        self.dismiss(ContrastRequest(pos, neg, top, self.query_one("#contrast-patch", Checkbox).value,
                                     self.query_one("#contrast-target", Input).value.strip()))

    @on(Button.Pressed, "#contrast-run")
    def _run_pressed(self) -> None:
        self.action_run()

    def action_cancel(self) -> None:
        self.dismiss(None)
