"""The footer: the key map's shown keys on one line, least important dropped first.

Textual's ``Footer`` crops its right end at 80 and 120 columns, which hid ``?`` and ``q``; this one
picks entries by ``keymap.FOOTER_ORDER`` until the line is full, then shows them in key-map order.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from tuiwb.tui.keymap import FOOTER_ORDER, KEYS, key_label

_GROUP_LABELS = {"panes": ("1-5", "Pages")}


def entries() -> list[tuple[str, str, str]]:
    """``(id, key, label)`` per footer entry, in key-map order (a group is one entry)."""
    out, seen = [], set()
    for k in KEYS:
        if not k.show:
            continue
        if k.group:
            if k.group in seen:
                continue
            seen.add(k.group)
            out.append((k.id, *_GROUP_LABELS[k.group]))
        else:
            out.append((k.id, _short_key(key_label(k)), k.short or k.title))
    return out


def _short_key(key: str) -> str:
    return key.replace("ctrl+", "^")


def fit(width: int) -> list[tuple[str, str, str]]:
    """The entries that fit ``width`` cells (always ``?`` and ``q``), in key-map order."""
    all_ = entries()
    by_id = {e[0]: e for e in all_}
    rank = {i: n for n, i in enumerate(FOOTER_ORDER)}
    keep: set[str] = set()
    used = 0
    for e in sorted(all_, key=lambda e: rank.get(e[0], len(rank))):
        w = len(e[1]) + 1 + len(e[2]) + 2
        if used + w > width and e[0] not in ("help", "quit"):
            continue
        keep.add(e[0])
        used += w
    return [by_id[i] for i in by_id if i in keep]


class KeyBar(Widget):
    COMPONENT_CLASSES = {"keybar--key"}
    DEFAULT_CSS = """
    KeyBar { height: 1; dock: bottom; background: $panel; color: $text-muted; }
    KeyBar > .keybar--key { color: $accent; text-style: bold; }
    """

    def render(self) -> Text:
        key = self.get_component_rich_style("keybar--key")
        out = Text(no_wrap=True, overflow="crop")
        for n, (_, k, label) in enumerate(fit(self.size.width - 1)):
            out.append(("  " if n else " ") + k, Style(color=key.color, bold=True))
            out.append(" " + label)
        return out

    def on_resize(self) -> None:
        self.refresh()
