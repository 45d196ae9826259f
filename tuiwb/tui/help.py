"""The ``?`` help screen, generated from the key map so every action has its line."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tuiwb.tui.keymap import KEYS, PANE_KEYS, key_label


def help_table() -> Table:
    t = Table(box=None, show_header=False, padding=(0, 1, 0, 0), expand=True)
    t.add_column(style="bold #3fbfff", max_width=12, overflow="fold")
    t.add_column(style="bold", no_wrap=True)
    t.add_column(ratio=1)
    for k in KEYS:
        t.add_row(key_label(k), k.title, k.help)
    for pane, keys in PANE_KEYS.items():
        t.add_row("", "", "")
        t.add_row("", Text(pane, style="italic #9fc0d8"), "")
        for key, what in keys:
            t.add_row(key, "", what)
    return t


class HelpScreen(ModalScreen[None]):
    """Key map; any of ``? q escape`` closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss_help", "Close", show=True)]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 100; max-width: 95%; height: auto; max-height: 90%;
        border: round $accent; background: $panel; padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll() as v:
            v.border_title = "tuiwb · keys"
            v.border_subtitle = "? / Esc closes · ctrl+p finds any action by name"
            yield Static(help_table())

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
