"""Patches: the exact SAE-gated feature edit, as a forward hook.

A feature f of the SAE at layer L has decoder direction ``d_f = W_dec[f]`` in the residual stream.
The *exact* edit of a set of features F with factor α at layer L's output h is

    h' = h + (α − 1) · Σ_{f∈F} a_f(h) · d_f,        a = sae.encode(h)

so it only acts where the features fire (α = 0 ablates them, α = 2 doubles them). A *gated* edit
acts only where a set of gate features G has fired at this position or any earlier one,

    h'_t = h_t + g_t · (α − 1) · Σ_{f∈F} a_f(h_t) · d_f,    g_t = 1[∃ s ≤ t, g ∈ G: a_g(h_s) > 0]

so a generic feature (one that fires on every sentence end) can be removed only after a trigger
detector fired; it is causal and still a function of the layer's output alone (exact under the hook
for a forward over the whole sequence). docs/patches.md
("The patch math") records why this, and not a weight projection, is the reference: projecting the
directions out of the weights broke the model. The fitted LoRA that imitates this edit lives in
``tuiwb.patch.lora_fit``; the Session (``tuiwb.session``) switches both kinds on and off.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from tuiwb.errors import TuiwbError
from tuiwb.model.hooks import hidden, with_hidden
from tuiwb.sae.compat import sae_layer

_SCALE_RE = re.compile(r"^scale\s*=\s*(\S+)$")


def parse_mode(mode: str) -> float:
    """``"ablate"`` → 0.0, ``"scale=ALPHA"`` → ALPHA (any finite float, e.g. ``scale=-1`` flips)."""
    text = str(mode).strip()
    if text == "ablate":
        return 0.0
    m = _SCALE_RE.match(text)
    if m:
        try:
            alpha = float(m.group(1))
        except ValueError:
            alpha = math.nan
        if math.isfinite(alpha):
            return alpha
    raise TuiwbError(f"bad patch mode {mode!r}: use 'ablate' or 'scale=ALPHA' (e.g. scale=0.5)")


def format_mode(alpha: float) -> str:
    """Inverse of ``parse_mode``: 0.0 → ``"ablate"``, 2.0 → ``"scale=2"``."""
    return "ablate" if alpha == 0.0 else f"scale={alpha:g}"


def check_features(sae, features: Iterable[int]) -> list[int]:
    """Validated, de-duplicated feature ids (order kept) of ``sae``; a clear error otherwise."""
    out: list[int] = []
    d_sae = int(sae.W_dec.shape[0])
    for f in features:
        try:
            fi = int(f)
        except (TypeError, ValueError):
            raise TuiwbError(f"feature id {f!r} is not an integer") from None
        if not 0 <= fi < d_sae:
            raise TuiwbError(f"feature {fi} does not exist: the SAE at layer {sae_layer(sae)} has "
                             f"features 0..{d_sae - 1}")
        if fi not in out:
            out.append(fi)
    if not out:
        raise TuiwbError("a patch needs at least one feature id")
    return out


@dataclass(frozen=True)
class FeatureEdit:
    """One exact SAE-gated edit: a set of features of one SAE, multiplied by ``alpha``."""

    sae: nn.Module
    """The SAE whose features are edited (its ``encode`` gates the edit)."""
    features: tuple[int, ...]
    """Feature ids, validated against the SAE."""
    alpha: float
    """0.0 ablates, 1.0 is a no-op, other values scale the features."""
    gate: tuple[int, ...] = ()
    """Gate features: when given, the edit acts only at positions where one of them fired at this
    position or earlier (see the module docstring); empty = everywhere."""
    gate_min: tuple[float, ...] = ()
    """Per gate feature, the activation it must exceed to open the gate (default 0: any firing)."""

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        """``(α − 1) · Σ_f a_f(h) · d_f`` (× the gate) in the SAE's dtype: ``[..., d_model]``."""
        w = self.sae.W_dec
        acts = self.sae.encode(h.to(device=w.device, dtype=w.dtype))  # [..., d_sae]
        return _edit_delta(acts, w, list(self.features), self.alpha - 1.0, self.gate, self.gate_min)


@dataclass(frozen=True)
class EditSet:
    """Several edits of one SAE acting as one (a trigger search's mix of whole, partial and gated
    edits): what a LoRA fit imitates. Same surface as ``FeatureEdit`` (``sae``, ``features``, ``delta``)."""

    edits: tuple[FeatureEdit, ...]
    """The edits; all of one SAE."""

    @property
    def sae(self):
        return self.edits[0].sae

    @property
    def features(self) -> tuple[int, ...]:
        return tuple(f for e in self.edits for f in e.features)

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        """The summed deltas, gated on the same ``h``: ``[..., d_model]``."""
        return layer_delta(self.edits, h)


def gate_mask(acts: torch.Tensor, gate, gate_min=()) -> torch.Tensor:
    """``[..., pos, 1]``: 1 where a gate feature exceeded its ``gate_min`` (default 0) at this position
    or an earlier one (``acts [..., pos, d_sae]``)."""
    low = torch.tensor(list(gate_min) or [0.0] * len(gate), device=acts.device, dtype=acts.dtype)  # [n_gate]
    on = (acts[..., list(gate)] > low).any(-1).to(acts.dtype)  # [..., pos]
    if on.dim() == 0:  # a single position
        return on.reshape(1)
    return on.cummax(-1).values.unsqueeze(-1)  # [..., pos, 1]: causal, so right padding cannot leak in


def _edit_delta(acts: torch.Tensor, w: torch.Tensor, idx, coef, gate=(), gate_min=()) -> torch.Tensor:
    """``coef · Σ a_f d_f`` over ``idx`` (coef a scalar or ``[n]``), gated when ``gate``: ``[..., d_model]``."""
    d = (acts[..., idx] * coef) @ w[idx]  # [..., d_model]
    return d * gate_mask(acts, gate, gate_min) if gate else d


def make_edit(sae, features: Iterable[int], alpha: float, gate: Iterable[int] = (),
              gate_min: Iterable[float] = ()) -> FeatureEdit:
    gate = tuple(int(g) for g in gate)
    gate_min = tuple(float(x) for x in gate_min)
    if gate:
        check_features(sae, gate)
    if gate_min and len(gate_min) != len(gate):
        raise TuiwbError(f"`gate_min` has {len(gate_min)} values for {len(gate)} gate features")
    return FeatureEdit(sae=sae, features=tuple(check_features(sae, features)), alpha=float(alpha), gate=gate,
                       gate_min=gate_min)


def edit_hook(edits_fn):
    """A forward hook adding the deltas of every edit ``edits_fn()`` returns, at call time.

    Reading the edit list at call time lets one persistent hook serve a changing set of patches.
    Returning ``None`` when nothing is on leaves the block's output object untouched (bit-exact).
    """

    def hook(module, args, output):
        edits = edits_fn()
        if not edits:
            return None
        h = hidden(output)  # [batch, pos, d_model]
        return with_hidden(output, h + layer_delta(edits, h).to(device=h.device, dtype=h.dtype))

    return hook


@contextmanager
def gated_edit(loaded, sae, features: Iterable[int], alpha: float = 0.0, gate: Iterable[int] = ()
               ) -> Iterator[FeatureEdit]:
    """Install the exact edit of ``features`` (×``alpha``, gated on ``gate`` if given) at ``sae``'s
    layer for the ``with`` block.

    For one-off interventions (contrast-search confirmation, eval, tests). Nested uses stack: each
    hook sees the output of the ones registered before it. The hook is removed on exit, even on error.
    """
    edit = make_edit(sae, features, alpha, gate)
    with loaded.hooks([(sae_layer(sae), edit_hook(lambda: (edit,)))]):
        yield edit


@contextmanager
def edits_applied(loaded, edits: Iterable[FeatureEdit]) -> Iterator[None]:
    """Several edits of one layer at once, all gated on the same unedited output (as the Session does)."""
    edits = tuple(edits)
    if not edits:
        yield
        return
    with loaded.hooks([(sae_layer(edits[0].sae), edit_hook(lambda: edits))]):
        yield


# ------------------------------------------------------------------------------------ patch specs

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
METHODS = ("hook", "lora")


def check_name(name: str) -> str:
    """Patch names become directory and PEFT adapter names: letters, digits, ``_`` and ``-`` only."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TuiwbError(f"bad patch name {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


def default_name(layer: int, features: Iterable[int], mode: str) -> str:
    feats = list(features)
    head = "+".join(str(f) for f in feats[:3]) + (f"+{len(feats) - 3}more" if len(feats) > 3 else "")
    tail = "ablate" if parse_mode(mode) == 0.0 else "x" + f"{parse_mode(mode):g}".replace(".", "p").replace("-", "m")
    return check_name(f"L{layer}-f{head.replace('+', '_')}-{tail}"[:64])


@dataclass(frozen=True)
class Patch:
    """One feature edit the Session can switch on and off."""

    name: str
    """Unique name (also the LoRA adapter's and ``lora/NAME``'s name)."""
    layer: int
    """Decoder layer whose output is edited."""
    features: list[int]
    """SAE feature ids at ``layer``."""
    mode: str = "ablate"
    """``"ablate"`` or ``"scale=ALPHA"``."""
    method: str = "hook"
    """``"hook"`` (exact SAE-gated edit) or ``"lora"`` (fitted rank-r LoRA)."""
    enabled: bool = True
    """Whether the patch currently acts on the model."""
    rank: int | None = None
    """LoRA rank (``lora`` only)."""
    fidelity: float | None = None
    """Mean KL(hook-patched ‖ LoRA-patched) on held-out text (``lora`` only; None if unknown)."""
    source: str | None = None
    """The ``lora/NAME`` directory a LoRA patch was read from or saved to, if any."""

    def __post_init__(self):
        check_name(self.name)
        parse_mode(self.mode)
        if self.method not in METHODS:
            raise TuiwbError(f"bad patch method {self.method!r}: use 'hook' or 'lora'")

    @property
    def alpha(self) -> float:
        return parse_mode(self.mode)

    def to_json(self) -> dict:
        return {"name": self.name, "layer": self.layer, "features": list(self.features), "mode": self.mode,
                "method": self.method, "enabled": self.enabled, "rank": self.rank, "fidelity": self.fidelity,
                "source": self.source}


def layer_delta(edits: Iterable[FeatureEdit], h: torch.Tensor) -> torch.Tensor:
    """Sum of several edits' deltas, all gated on the same (unedited) ``h``: ``[..., d_model]``.

    Gating every patch of a layer on the original ``h`` makes them commute (toggle order cannot
    matter) and matches LoRA patches, whose updates simply add. Edits sharing an SAE encode once.
    """
    by_sae: dict[int, list[FeatureEdit]] = {}
    for e in edits:
        by_sae.setdefault(id(e.sae), []).append(e)
    total = None
    for group in by_sae.values():
        sae = group[0].sae
        w = sae.W_dec
        x = h.to(device=w.device, dtype=w.dtype)  # [..., d_model]
        acts = sae.encode(x)  # [..., d_sae]
        by_gate: dict[tuple, torch.Tensor] = {}  # edits with one gate share one mask
        for e in group:
            coef = by_gate.setdefault((e.gate, e.gate_min),
                                      torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))  # [d_sae]
            coef[list(e.features)] += e.alpha - 1.0
        for (gate, gate_min), coef in by_gate.items():
            idx = coef.nonzero().squeeze(-1)  # [n]
            d = _edit_delta(acts, w, idx, coef[idx], gate, gate_min)  # [..., d_model]
            total = d if total is None else total + d
    return total
