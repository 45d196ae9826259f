"""Contexts pane: the selected feature's top-activating contexts (and the current prompt), each
token shaded by the feature's activation on it; the token-cloud's token is underlined."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from tuiwb.session.views import ContextView, FeatureDetail


def _bg(frac: float) -> Style | None:
    """Background for activation fraction ``frac`` (0: none, 1: strongest)."""
    if frac <= 0.02:
        return None
    # blend from the panel background to a warm orange
    r, g, b = 40 + int(215 * frac), 40 + int(110 * frac), 40
    return Style(bgcolor=f"rgb({r},{g},{b})", color="black" if frac > 0.55 else None)


def shade_context(ctx: ContextView, max_act: float, highlight: str | None = None, label: str = "") -> Text:
    out = Text(no_wrap=False, overflow="fold")
    if label:
        out.append(label, Style(color="#7f93a8"))
    scale = max_act if max_act > 0 else 1.0
    for tok, a in zip(ctx.tokens, ctx.acts):
        style = _bg(max(0.0, a) / scale) or Style()
        if highlight is not None and tok.strip() == highlight.strip():
            style += Style(underline=True, bold=True)
        out.append(tok if tok.startswith(" ") else f" {tok}", style)
    peak = max(ctx.acts) if ctx.acts else 0.0
    out.append(f"   max {peak:.2f}", Style(color="#5f6b7a"))
    return out


class Contexts(VerticalScroll, can_focus=True):
    """A scrolling list of shaded contexts."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.detail: FeatureDetail | None = None
        self.highlight: str | None = None

    def compose(self):
        yield Static("select a feature to see where it fires", id="contexts-body")

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
        lines = Text()
        if d.prompt is not None:
            lines.append_text(shade_context(d.prompt, d.max_act, self.highlight, "prompt │"))
            lines.append("\n\n")
        if d.contexts:
            for i, ctx in enumerate(d.contexts):
                lines.append_text(shade_context(ctx, d.max_act, self.highlight, f"{i + 1:>5} │"))
                lines.append("\n")
        elif d.note:
            lines.append(d.note, Style(dim=True))
        self.query_one("#contexts-body", Static).update(lines)
        self.border_subtitle = f"token: {self.highlight}" if self.highlight else ""
