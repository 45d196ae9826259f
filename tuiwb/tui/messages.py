"""Messages the model workers post to the app ("attributes down, messages up").

Workers run in threads and post these to the app (``post_message`` is thread-safe); each carries
the request id it answers, so the app can drop a stale answer when a newer request superseded it.
The panes' own messages are nested in their widgets (``FeatureTable.Selected``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message

from tuiwb.session.views import ContinuationView, FeatureDetail, FeatureRows, LogitsView, PatchView, SweepView


@dataclass
class LogitsReady(Message):
    """New baseline/patched logits for the prompt."""

    request: int
    """Request id (monotonic per app)."""
    view: LogitsView
    patches: tuple[PatchView, ...]
    """The patch list as it was when the logits were computed."""
    t_key: float | None
    """``time.monotonic()`` of the key press that asked for it (None: not a toggle)."""


@dataclass
class TableReady(Message):
    """A layer's feature table is loaded."""

    request: int
    rows: FeatureRows


@dataclass
class DetailReady(Message):
    """Token cloud and contexts of the selected feature."""

    request: int
    detail: FeatureDetail


@dataclass
class ProvenanceReady(Message):
    """The ASCII provenance tree of the selected feature."""

    request: int
    layer: int
    feature: int
    text: str
    state: str = "unpatched"
    """The model state the tree reflects ("unpatched" / "with 1 patch on")."""
    message: bool = False
    """``text`` is a one-line reason (wrapped), not a tree."""


@dataclass
class PatchesChanged(Message):
    """The Session's patch list changed (mode, method, a new LoRA, ...)."""

    patches: tuple[PatchView, ...]
    note: str = ""
    """A line to show as a notification."""


@dataclass
class ContrastReady(Message):
    """Contrast search results: ``(feature, score)`` best first."""

    layer: int
    ranked: tuple[tuple[int, float], ...]
    patches: tuple[PatchView, ...]
    """The patch list after the search (it may have added one)."""
    patch: str | None = None
    """Name of the patch made from the top features, if one was made."""
    effect: str | None = None
    """What the found set does (causal search): P(target) on A before → after, clean KL on B."""


@dataclass
class BusyProgress(Message):
    """A progress line of the running long action (for the status bar)."""

    text: str


@dataclass
class Exported(Message):
    """A patch was written as ``lora/NAME`` (manifest + PEFT adapter)."""

    path: Path


@dataclass
class SessionChanged(Message):
    """Another client of the Session (the browser companion, a notebook) changed the patches or the
    prompt: ``event`` is the Session's event (``{"type": "patches"}`` / ``{"type": "prompt", "text"}``)."""

    event: dict


@dataclass
class ContinuationReady(Message):
    """The continuations so far (one message per new token)."""

    request: int
    view: ContinuationView
    t_key: float | None
    """``time.monotonic()`` of the key press behind it (None: not a toggle)."""


@dataclass
class SweepReady(Message):
    """A dose–response curve to chart."""

    view: SweepView
