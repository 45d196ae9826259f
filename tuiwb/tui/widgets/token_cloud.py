"""Token cloud pane: the selected feature's top tokens, weighted by activation (each token's share
of the feature's total activation over the traced text).

A terminal has one font size, so weight is drawn as colour intensity and boldness: six steps from
the ``cloud--weak`` colour to the ``cloud--strong`` one (component classes, so themes apply).
``←``/``→`` (or the mouse) put a cursor on a token; the contexts pane highlights that token.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.color import Color, blend_rgb
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Leave, MouseMove
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

STEPS = 6
"""Shades from weak to strong; the last two are bold too."""


def shades(weak: Color, strong: Color) -> tuple[Style, ...]:
    """``STEPS`` styles blending ``weak`` into ``strong``."""
    w, s = weak.get_truecolor(), strong.get_truecolor()
    return tuple(Style(color=Color.from_triplet(blend_rgb(w, s, k / (STEPS - 1))), bold=k >= STEPS - 2)
                 for k in range(STEPS))


def shade_index(weight: float) -> int:
    """The shade of a token whose weight is ``weight`` in [0, 1]."""
    return min(STEPS - 1, max(0, int(weight * STEPS)))


def _share(w: float) -> str:
    """A token's share of the feature's activation, as a short percentage."""
    return f"{w * 100:.0f}%" if w >= 0.01 else "<1%"


class TokenCloud(Widget, can_focus=True):
    """Tokens flow left to right and wrap; the strongest come first."""

    BINDINGS = [
        Binding("left", "move(-1)", "Prev token", show=False),
        Binding("right", "move(1)", "Next token", show=False),
        Binding("escape", "clear", "Clear", show=False),
    ]
    COMPONENT_CLASSES = {"cloud--weak", "cloud--strong", "cloud--share"}
    cursor: reactive[int | None] = reactive(None)

    @dataclass
    class Highlighted(Message):
        """The cursor (or the mouse) is on ``token`` (None: nothing highlighted)."""

        token: str | None

    def __init__(self, **kw):
        super().__init__(**kw)
        self.tokens: tuple[tuple[str, float], ...] = ()
        self.title = ""

    def show(self, tokens: tuple[tuple[str, float], ...], title: str = "") -> None:
        self.tokens = tokens
        self.title = title
        self.set_reactive(TokenCloud.cursor, None)
        self.post_message(self.Highlighted(None))
        self.refresh(layout=True)

    def render(self) -> Text:
        if not self.tokens:
            return Text("select a feature", style="dim")
        top = max(w for _, w in self.tokens) or 1.0
        steps = shades(self.get_component_rich_style("cloud--weak").color,
                       self.get_component_rich_style("cloud--strong").color)
        share = Style(color=self.get_component_rich_style("cloud--share").color)
        out = Text(no_wrap=False, overflow="fold")
        for i, (tok, w) in enumerate(self.tokens):
            style = steps[shade_index(w / top)] + Style(meta={"token_index": i})
            if i == self.cursor:
                style += Style(reverse=True)
            out.append(f" {tok or '∅'} ", style)
            out.append(_share(w), share + Style(meta={"token_index": i}))
            out.append("  ")
        return out

    def watch_cursor(self, old, new) -> None:
        self.refresh()
        tok = self.tokens[new][0] if new is not None and new < len(self.tokens) else None
        self.post_message(self.Highlighted(tok))

    def action_move(self, delta: int) -> None:
        if not self.tokens:
            return
        self.cursor = (0 if delta > 0 else len(self.tokens) - 1) if self.cursor is None else \
            (self.cursor + delta) % len(self.tokens)

    def action_clear(self) -> None:
        self.cursor = None

    def on_mouse_move(self, event: MouseMove) -> None:
        i = event.style.meta.get("token_index") if event.style else None
        if i is not None and i != self.cursor:
            self.cursor = int(i)

    def on_leave(self, event: Leave) -> None:
        if not self.has_focus:
            self.cursor = None

    @property
    def highlighted(self) -> str | None:
        return self.tokens[self.cursor][0] if self.cursor is not None and self.cursor < len(self.tokens) else None
