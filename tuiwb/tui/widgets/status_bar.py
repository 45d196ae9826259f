"""Status bar: model, device, layer, and the last key → repaint latency."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class StatusBar(Widget):
    """One line at the bottom. ``fixed=True`` (snapshot tests) hides the measured numbers."""

    def __init__(self, fixed: bool = False, **kw):
        super().__init__(**kw)
        self.fixed = fixed
        self.fields: dict = {"model": "", "device": "", "sae_layer": None, "latency_ms": None,
                             "model_ms": None, "busy": ""}

    def set(self, **kw) -> None:
        unknown = set(kw) - set(self.fields)
        if unknown:
            raise KeyError(f"unknown status fields {sorted(unknown)}")
        self.fields.update(kw)
        self.refresh()  # one line of fixed height: a repaint, never a layout pass

    def render(self) -> Text:
        return Text(self.line(), no_wrap=True, overflow="ellipsis")

    def line(self) -> str:
        f = self.fields
        parts = [f"model {f['model']}", f"device {f['device']}"]
        if f["sae_layer"] is not None:
            parts.append(f"layer {f['sae_layer']}")
        if self.fixed:
            parts.append("update — ms")
        else:
            lat = "—" if f["latency_ms"] is None else f"{f['latency_ms']:.0f}"
            mod = "" if f["model_ms"] is None else f" (model {f['model_ms']:.0f})"
            parts.append(f"update {lat} ms{mod}")
        if f["busy"]:
            parts.append(f["busy"])
        return " │ ".join(parts)
