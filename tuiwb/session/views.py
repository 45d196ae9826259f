"""Plain data the panes render ("attributes down"): built in worker threads from Session results,
immutable, with no torch tensors inside, so widgets never touch the model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPACE = "␣"
"""A space inside a token, drawn visibly (a byte-level BPE token's leading space is otherwise invisible)."""
_VISIBLE = {" ": SPACE, "\n": "↵", "\t": "⇥", "\r": "␍"}


def display_token(piece: str | bytes) -> str:
    """How a token is drawn in a column or a list: spaces as ``␣``, line breaks as ``↵``, bytes that are
    not (yet) UTF-8 — a byte-level BPE token holding part of a character — as ``<0xE2>``."""
    if isinstance(piece, bytes):
        piece = piece.decode("utf-8", errors="backslashreplace")
        piece = _hex_escapes(piece)
    if not piece:
        return "∅"
    return "".join(_VISIBLE.get(c, f"<0x{ord(c):02X}>" if ord(c) < 32 else c) for c in piece)


def _hex_escapes(s: str) -> str:
    import re

    return re.sub(r"\\x([0-9a-f]{2})", lambda m: f"<0x{m.group(1).upper()}>", s)


def quote(token: str) -> str:
    """A displayed token inside a list: quoted, so ``','`` and ``'␣'`` read as tokens."""
    return f"'{token}'"


def join_tokens(tokens) -> str:
    """A list of displayed tokens: ``'␣the', ',', '<0xE2>'``."""
    return ", ".join(quote(t) for t in tokens)


@dataclass(frozen=True)
class LogitRow:
    """One token of the logit pane."""

    token: str
    """Decoded token text."""
    id: int
    """Token id."""
    base: float
    """Probability without patches."""
    patched: float
    """Probability with the enabled patches."""
    patched_rank: int | None = None
    """1-based rank with the patches (None: below the ranks the Session was asked for)."""

    @property
    def delta(self) -> float:
        return self.patched - self.base


@dataclass(frozen=True)
class LogitsView:
    """Baseline vs patched next-token distributions for one prompt."""

    prompt: str
    """The prompt these numbers belong to."""
    base_top: tuple[LogitRow, ...]
    """Top-K tokens by baseline probability (with their patched probability)."""
    patched_top: tuple[LogitRow, ...]
    """Top-K tokens by patched probability (with their baseline probability)."""
    kl: float
    """KL(baseline ‖ patched) in nats at the last position."""
    model_ms: float
    """Time the Session spent computing the logits."""
    n_on: int
    """How many patches were on."""
    ranks_known: int = 0
    """How deep each side's ranking was fetched: a token below it has at most the last known probability."""


@dataclass(frozen=True)
class FeatureRows:
    """The whole feature table of one layer, as columns (16k+ rows stay cheap)."""

    layer: int
    """SAE layer."""
    ids: np.ndarray
    """Feature ids ``[n]`` int64."""
    density: np.ndarray
    """Fraction of tokens the feature fires on ``[n]`` float64."""
    max_act: np.ndarray
    """Largest activation seen ``[n]`` float64."""
    top_tokens: tuple[str, ...]
    """Comma-joined top tokens per feature (length n)."""
    top_lower: tuple[str, ...] = field(default=(), repr=False)
    """Lower-cased ``top_tokens`` for search."""

    def __post_init__(self):
        n = len(self.ids)
        if not (len(self.density) == len(self.max_act) == len(self.top_tokens) == n):
            raise ValueError("feature table columns differ in length")
        if not self.top_lower:
            object.__setattr__(self, "top_lower", tuple(t.lower() for t in self.top_tokens))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ContextView:
    """One top-activating context of a feature."""

    tokens: tuple[str, ...]
    """Each token as ``display_token`` draws it (what the token cloud's cursor matches)."""
    acts: tuple[float, ...]
    """The feature's activation on each token."""
    spans: tuple[str, ...] = ()
    """The window decoded as text, cut at token boundaries: ``spans[i]`` is the text token i completes
    ("" while a character's bytes are still incomplete; its text then carries the run's activation).
    Empty: join ``tokens`` with spaces."""


@dataclass(frozen=True)
class FeatureDetail:
    """What the cloud and contexts panes show for the selected feature."""

    layer: int
    feature: int
    cloud: tuple[tuple[str, float], ...]
    """Top tokens and their weight (max/mean activation), strongest first."""
    contexts: tuple[ContextView, ...]
    """Top-activating contexts from the activation store (empty without one)."""
    prompt: ContextView | None
    """The feature's activation on the current prompt's tokens."""
    max_act: float
    """Scale for the shading (the feature's max activation)."""
    note: str = ""
    """Why something is missing (e.g. no activation store)."""


@dataclass(frozen=True)
class PatchView:
    """One row of the patch list."""

    name: str
    layer: int
    features: tuple[int, ...]
    mode: str
    method: str
    enabled: bool
    rank: int | None
    fidelity: float | None
    has_lora: bool
    scorecard: str | None = None
    """The patch's last scorecard, one line (``Scorecard.summary``); None: never scored."""


@dataclass(frozen=True)
class LabInfo:
    """What the status bar and the layer switcher need."""

    model_id: str
    device: str
    quant: str | None
    layers: tuple[int, ...]
    """Layers with an SAE attached."""
    n_layers: int
    has_acts: bool


@dataclass(frozen=True)
class ContinuationView:
    """The prompt's continuations so far, unpatched and patched (streamed: one per new token)."""

    prompt: str
    baseline: tuple[str, ...]
    """Each generated token's text span (``TokenText.spans``), unpatched."""
    patched: tuple[str, ...]
    """The same with the patches on (equal to ``baseline`` when none is on)."""
    diverge: int | None
    """Index of the first token where the two differ (None: the same so far)."""
    n_on: int
    """How many patches were on."""
    done: bool
    """Both continuations are complete."""
    max_new_tokens: int = 0
    """How long each continuation may grow."""


@dataclass(frozen=True)
class SweepView:
    """A dose–response curve of one feature, as the chart pane draws it."""

    layer: int
    feature: int
    prompt: str
    target: str
    """The token whose probability is charted (as ``display_token`` draws it)."""
    alphas: tuple[float, ...]
    p: tuple[float, ...]
    kl: tuple[float, ...]
    top: tuple[str, ...]
    """The most likely next token at each α (drawn visibly)."""
