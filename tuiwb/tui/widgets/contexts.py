"""Contexts pane: the selected feature's top-activating contexts (and the current prompt), each
token shaded by the feature's activation on it; the token-cloud's token is underlined."""

from __future__ import annotations

from dataclasses import dataclass

from rich.color import Color, blend_rgb
from rich.style import Style
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from tuiwb.session.views import ContextView, FeatureDetail


@dataclass(frozen=True)
class Shading:
    """The colours a context is drawn with (from the pane's component classes)."""

    cold: Color
    """Background of a token the feature does not fire on (the pane's)."""
    hot: Color
    """Background of the strongest activation."""
    on_hot: Color
    """Text on a strongly shaded token (readable on ``hot``)."""
    muted: Style
    """Line labels and the ``max`` note."""

    def bg(self, frac: float) -> Style | None:
        """Style for activation fraction ``frac`` (0: none, 1: strongest)."""
        if frac <= 0.02:
            return None
        rgb = blend_rgb(self.cold.get_truecolor(foreground=False), self.hot.get_truecolor(foreground=False),
                        min(1.0, frac))
        return Style(bgcolor=Color.from_triplet(rgb), color=self.on_hot if frac > 0.55 else None)


def shade_context(ctx: ContextView, max_act: float, shading: Shading, highlight: str | None = None,
                  label: str = "") -> Text:
    """The window as decoded text, each token's span shaded by the feature's activation on it (a
    character made of several byte tokens takes the strongest of them); ``highlight`` underlines the
    spans of that token."""
    out = Text(no_wrap=False, overflow="fold")
    if label:
        out.append(label, shading.muted)
    scale = max_act if max_act > 0 else 1.0
    # Without spans (older views): the tokens, spaced apart.
    spans = ctx.spans or tuple(t if t.startswith(" ") else f" {t}" for t in ctx.tokens)
    if ctx.spans and label:
        out.append(" ")
    run, hit = 0.0, False
    for tok, a, span in zip(ctx.tokens, ctx.acts, spans):
        run = max(run, a)
        hit = hit or (highlight is not None and tok.strip() == highlight.strip())
        if not span:
            continue  # a character's bytes still incomplete: its text comes with a later token
        style = shading.bg(max(0.0, run) / scale) or Style()
        if hit:
            style += Style(underline=True, bold=True)
        out.append(span, style)
        run, hit = 0.0, False
    peak = max(ctx.acts) if ctx.acts else 0.0
    out.append(f"   max {peak:.2f}", shading.muted)
    return out


class Contexts(VerticalScroll, can_focus=True):
    """A scrolling list of shaded contexts."""

    COMPONENT_CLASSES = {"contexts--hot", "contexts--muted"}

    def __init__(self, **kw):
        super().__init__(**kw)
        self.detail: FeatureDetail | None = None
        self.highlight: str | None = None

    def compose(self):
        yield Static("select a feature to see where it fires", id="contexts-body")

    def on_mount(self) -> None:
        # The shading is baked into the body's Text: paint it again in the new theme's colours.
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._paint())

    def _shading(self) -> Shading:
        hot = self.get_component_rich_style("contexts--hot")
        return Shading(cold=self.rich_style.bgcolor, hot=hot.bgcolor, on_hot=hot.color,
                       muted=Style(color=self.get_component_rich_style("contexts--muted").color))

    def show(self, detail: FeatureDetail) -> None:
        self.detail = detail
        self._paint()

    def set_highlight(self, token: str | None) -> None:
        if token != self.highlight:
            self.highlight = token
            self._paint()

    def _paint(self) -> None:
        d = self.detail
        if d is None:
            return
        lines, shading = Text(), self._shading()
        if d.prompt is not None:
            lines.append_text(shade_context(d.prompt, d.max_act, shading, self.highlight, "prompt │"))
            lines.append("\n\n")
        if d.contexts:
            for i, ctx in enumerate(d.contexts):
                lines.append_text(shade_context(ctx, d.max_act, shading, self.highlight, f"{i + 1:>5} │"))
                lines.append("\n")
        elif d.note:
            lines.append(d.note, Style(dim=True))
        self.query_one("#contexts-body", Static).update(lines)
        self.border_subtitle = f"token: {self.highlight}" if self.highlight else ""
