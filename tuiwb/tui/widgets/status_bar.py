"""Status bar: model, device, layer, and the last key → repaint latency."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class StatusBar(Widget):
    """One line at the bottom. ``fixed=True`` (snapshot tests) hides the measured numbers.

    Each field is a reactive: setting one repaints the line (one line of fixed height: a repaint,
    never a layout pass).
    """

    model: reactive[str] = reactive("")
    device: reactive[str] = reactive("")
    sae_layer: reactive[int | None] = reactive(None)
    latency_ms: reactive[float | None] = reactive(None)
    """Last toggle: key press → logit pane repainted."""
    model_ms: reactive[float | None] = reactive(None)
    """The model's share of the last logits request."""
    busy: reactive[str] = reactive("")
    """The running long action and its progress ("" when none); shown first, so it is never cut."""

    def __init__(self, model: str = "", device: str = "", fixed: bool = False, **kw):
        super().__init__(**kw)
        self.fixed = fixed
        self.set_reactive(StatusBar.model, model)
        self.set_reactive(StatusBar.device, device)

    def render(self) -> Text:
        return Text(self.line(), no_wrap=True, overflow="ellipsis")

    def line(self) -> str:
        parts = [f"⏳ {self.busy}"] if self.busy else []
        parts += [f"model {self.model}", f"device {self.device}"]
        if self.sae_layer is not None:
            parts.append(f"layer {self.sae_layer}")
        if self.fixed:
            parts.append("update — ms")
        else:
            lat = "—" if self.latency_ms is None else f"{self.latency_ms:.0f}"
            mod = "" if self.model_ms is None else f" (model {self.model_ms:.0f})"
            parts.append(f"update {lat} ms{mod}")
        return " │ ".join(parts)
