"""Continuation pane: the prompt's continuation unpatched and patched, side by side, streamed.

Tokens arrive one by one (each ``ContinuationView`` holds both sides so far). The first token where
the two part is marked in both columns, and the patched side's text after it is coloured: that is
where the patch changed what the model writes (the demo: the payload sentence is gone).
"""

from __future__ import annotations

from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual.widget import Widget

from tuiwb.session.views import ContinuationView


class ContinuationPane(Widget, can_focus=True):
    """Renders a ``ContinuationView``; ``None`` shows a placeholder. Focusable (it takes no keys), so
    its page has a pane to hold the focus."""

    COMPONENT_CLASSES = {"continuation--muted", "continuation--diverge", "continuation--changed",
                         "continuation--head"}

    def __init__(self, **kw):
        super().__init__(**kw)
        self.view: ContinuationView | None = None

    def show(self, view: ContinuationView) -> None:
        self.view = view
        self.refresh()

    def texts(self) -> tuple[str, str]:
        """(baseline, patched) as plain text — what the tests read."""
        v = self.view
        return ("", "") if v is None else ("".join(v.baseline), "".join(v.patched))

    def render(self):
        v = self.view
        if v is None:
            return Text("generating…", style="dim")
        c = {n.split("--")[1]: self.get_component_rich_style(n) for n in self.COMPONENT_CLASSES}
        c = {k: Style(color=s.color, bgcolor=s.bgcolor, bold=s.bold, reverse=s.reverse) for k, s in c.items()}
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        on = f"patched ({v.n_on} on)" if v.n_on else "patched (none on)"
        grid.add_row(Text("baseline", c["head"]), Text(on, c["head"]))
        grid.add_row(self._side(v.baseline, v.diverge, c, changed=False),
                     self._side(v.patched, v.diverge, c, changed=bool(v.n_on)))
        out = Table.grid(expand=True)
        out.add_row(grid)
        out.add_row(Text(self._status(v), c["muted"]))
        return out

    @staticmethod
    def _side(spans, diverge, c, changed: bool) -> Text:
        t = Text(overflow="fold")
        for i, s in enumerate(spans):
            if diverge is not None and i == diverge:
                word = s.lstrip() or s  # mark the word, not the space before it
                t.append(s[: len(s) - len(word)])
                t.append(word, c["diverge"])
            elif changed and diverge is not None and i > diverge:
                t.append(s, c["changed"])
            else:
                t.append(s)
        return t

    @staticmethod
    def _status(v: ContinuationView) -> str:
        n = max(len(v.baseline), len(v.patched))
        more = "" if v.done else " …"
        if not v.n_on:
            return f"{n} tokens{more} · no patch on: both sides are the model itself"
        if v.diverge is None:
            return f"{n} tokens{more} · the same so far"
        a = v.baseline[v.diverge].strip() if v.diverge < len(v.baseline) else "(end)"
        b = v.patched[v.diverge].strip() if v.diverge < len(v.patched) else "(end)"
        return f"{n} tokens{more} · first divergence at token {v.diverge + 1}: '{a}' → '{b}'"
