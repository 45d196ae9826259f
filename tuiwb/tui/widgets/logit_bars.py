"""Logit pane: the prompt's top-K next tokens, baseline ranking beside the patched ranking, with
each patched token's change in probability and the KL between the two distributions."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from tuiwb.session.views import LogitRow, LogitsView

_BLOCKS = " ▏▎▍▌▋▊▉█"
FELL_OUT = 3
"""Baseline top tokens that the patches pushed out of the top K are listed below (at most this many)."""
MIN_FELL_OUT = 0.01
"""... if their baseline probability was at least this."""


def bar(frac: float, width: int) -> str:
    """A horizontal bar ``width`` cells wide filled to ``frac`` with 1/8-cell resolution."""
    frac = min(1.0, max(0.0, frac))
    eighths = round(frac * width * 8)
    full, part = divmod(eighths, 8)
    s = "█" * full + (_BLOCKS[part] if part else "")
    return s.ljust(width)


def _tok(t: str, w: int) -> str:
    """A token (already drawn visibly: ``␣``, ``<0xE2>``) in a ``w``-cell column; cut only past the cap."""
    return (t[: w - 1] + "…" if len(t) > w else t).ljust(w)


def column_widths(width: int, longest: int, num_w: int = 6, delta_w: int = 7) -> tuple[int, int]:
    """``(token, bar)`` cell widths: one bar width for both columns (one scale), the token column as
    wide as the longest token shown; the bars shrink first (to one cell) before a token is cut."""
    fixed = 3 + 3 + 2 * (1 + num_w + 1) + delta_w  # rank, divider, per side: gaps + number; the Δ
    tok_w = max(4, min(longest, (width - fixed - 2) // 2))
    return tok_w, max(1, (width - fixed - 2 * tok_w) // 2)


class LogitBars(Widget, can_focus=True):
    """Renders a ``LogitsView``; ``None`` shows a placeholder. Colours are component classes.

    Focusable (it takes no keys): page 3 must have a pane to hold the focus, or Tab and Esc from the
    prompt had nowhere to go on that page."""

    COMPONENT_CLASSES = {"logits--muted", "logits--base", "logits--patched", "logits--up", "logits--down",
                         "logits--kl"}

    def __init__(self, top_k: int = 10, **kw):
        super().__init__(**kw)
        self.view: LogitsView | None = None
        # Fixed height (header + K rows + KL line + "fell out" lines): a new result repaints this
        # widget only, with no layout pass over the screen — most of the toggle → repaint budget.
        self.styles.height = top_k + 2 + FELL_OUT

    def show(self, view: LogitsView) -> None:
        self.view = view
        self.refresh()

    def render(self) -> Text:
        v = self.view
        if v is None:
            return Text("computing…", style="dim")
        width = max(40, self.size.width)
        num_w, delta_w = 6, 7
        rows = [r for r in (*v.base_top, *v.patched_top)]
        tok_w, bar_w = column_widths(width, max((len(r.token) for r in rows), default=4), num_w, delta_w)
        side = tok_w + bar_w + num_w + 2
        # Only each component's colour: the segments carry no background of their own (the pane's
        # shows through, whatever it is) and boldness stays with the layout below.
        c = {name.split("--")[1]: Style(color=self.get_component_rich_style(name).color)
             for name in self.COMPONENT_CLASSES}
        out = Text(no_wrap=True, overflow="crop")
        head_l = f"{'#':>2} {'baseline':<{side}}"
        out.append(head_l[:side + 3].ljust(side + 3), Style(bold=True))
        out.append(" │ ", c["muted"])
        on = f"patched ({v.n_on} on)" if v.n_on else "patched (none on)"
        out.append(on[:side], Style(bold=True))
        out.append("\n")
        for i in range(max(len(v.base_top), len(v.patched_top))):
            b = v.base_top[i] if i < len(v.base_top) else None
            p = v.patched_top[i] if i < len(v.patched_top) else None
            out.append(f"{i + 1:>2} ", c["muted"])
            self._cell(out, b, b.base if b else 0.0, tok_w, bar_w, num_w, c["base"])
            out.append(" │ ", c["muted"])
            self._cell(out, p, p.patched if p else 0.0, tok_w, bar_w, num_w, c["patched"])
            if p is not None:
                d = p.delta
                tone = c["up"] if d > 5e-4 else c["down"] if d < -5e-4 else c["muted"]
                out.append(f" {d:+.3f}".rjust(delta_w), tone)
            out.append("\n")
        out.append(f"KL(base‖patched) = {v.kl:.4f} nats", c["kl"])
        shown = {r.id for r in v.patched_top}
        for r in [r for r in v.base_top[:FELL_OUT] if r.id not in shown and r.base >= MIN_FELL_OUT]:
            now = f"{r.patched:.3f}, rank {r.patched_rank}" if r.patched_rank else \
                f"≤{r.patched:.3f}, rank > {v.ranks_known}"
            out.append("\n")
            out.append(f"↓ '{r.token}'  {r.base:.3f} → {now} patched", c["down"])
        return out

    @staticmethod
    def _cell(out: Text, row: LogitRow | None, prob: float, tok_w: int, bar_w: int, num_w: int, colour: Style):
        if row is None:
            out.append(" " * (tok_w + bar_w + num_w + 2))
            return
        out.append(_tok(row.token, tok_w) + " ")
        out.append(bar(prob, bar_w), colour)
        out.append(f" {prob:.3f}".rjust(num_w + 1))

    def rows_text(self) -> list[tuple[str, float, float]]:
        """(token, baseline, patched) of the baseline ranking — what the tests read."""
        return [] if self.view is None else [(r.token, r.base, r.patched) for r in self.view.base_top]
