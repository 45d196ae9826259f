"""Prompt editor: one line of text; every edit (after a short pause) or Enter recomputes the logits."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input

DEBOUNCE_S = 0.25
"""Pause after the last keystroke before recomputing (Enter recomputes at once)."""


class PromptEditor(Input):
    BINDINGS = [Binding("escape", "leave", "Leave prompt", show=False)]

    @dataclass
    class Edited(Message):
        """The prompt settled on ``text``."""

        text: str

    class Left(Message):
        """Esc: the app moves the focus to the current page's main pane (never a hidden one)."""

    def __init__(self, value: str = "", **kw):
        super().__init__(value=value, placeholder="type a prompt; Enter recomputes", **kw)
        self._timer = None

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(DEBOUNCE_S, lambda: self.post_message(self.Edited(self.value)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self._timer is not None:
            self._timer.stop()
        self.post_message(self.Edited(self.value))

    def action_leave(self) -> None:
        # Not focus_next: on a narrow page whose pane had nothing focusable that came back here,
        # a keyboard trap (issue 18). The app knows the page; it picks the pane.
        self.post_message(self.Left())
