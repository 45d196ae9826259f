"""The ``?`` help screen, generated from the key map so every action has its line."""

from __future__ import annotations

from rich.style import StyleType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget

from tuiwb.tui.keymap import KEYS, PANE_KEYS, key_label


def help_table(key_style: StyleType = "bold", pane_style: StyleType = "italic") -> Table:
    t = Table(box=None, show_header=False, padding=(0, 1, 0, 0), expand=True)
    t.add_column(style=key_style, max_width=12, overflow="fold")
    t.add_column(style="bold", no_wrap=True)
    t.add_column(ratio=1)
    for k in KEYS:
        t.add_row(key_label(k), k.title, k.help)
    for pane, keys in PANE_KEYS.items():
        t.add_row("", "", "")
        t.add_row("", Text(pane, style=pane_style), "")
        for key, what in keys:
            t.add_row(key, "", what)
    return t


class KeyTable(Widget):
    """``help_table`` in the theme's colours (rendered on each paint, so a theme switch applies)."""

    COMPONENT_CLASSES = {"keys--key", "keys--pane"}
    DEFAULT_CSS = """
    KeyTable { height: auto; }
    KeyTable > .keys--key { color: $text-primary; text-style: bold; }
    KeyTable > .keys--pane { color: $text-muted; text-style: italic; }
    """

    def render(self) -> Table:
        return help_table(self.get_component_rich_style("keys--key"), self.get_component_rich_style("keys--pane"))


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
            yield KeyTable()

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
