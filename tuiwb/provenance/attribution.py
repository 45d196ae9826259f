"""Attribution of SAE features to the SAE features (and SAE error) of an upstream layer.

For a *target* — feature f of the SAE at layer L, at position p — and an *upstream* layer U < L
with its own SAE, write the real residual at U's output as its SAE decomposition

    h_U[q] = b_dec + Σ_g a_g[q] · W_dec[g] + e[q]          (e = the SAE's reconstruction error)

and splice it back into the real model (the forward output is unchanged). The target is
``t = sae_L.encode(h_L)[p, f]`` with h_L computed by the real blocks U+1..L from the spliced h_U.

* ``grad``: attribution of upstream (q, g) = a_g[q] · ∂t/∂a_g[q] (activation × gradient); of the
  error at q = e[q] · ∂t/∂e[q].
* ``ig`` (Integrated Gradients): the same, with the gradient averaged over the straight path from
  the baseline a = 0, e = 0 (i.e. h_U = b_dec at every spliced position) to the real values, by the
  midpoint rule in ``steps`` steps. Completeness: Σ attributions ≈ t(real) − t(baseline).

``decode`` is affine, so ∂t/∂a_g[q] = W_dec[g] · ∂t/∂h_U[q] and ∂t/∂e[q] = ∂t/∂h_U[q]: we take one
gradient at the spliced residual and project it on the decoder rows, which is exactly the gradient
with ``acts``/``error`` as leaves but avoids a ``[rows, pos, d_sae]`` leaf per interpolation step.
Several targets at the same layer are attributed in **one** forward/backward: the prompt is
repeated along the batch (one row per target and interpolation step), each row's residual is its
own leaf, and the sum of the per-row targets is differentiated (rows do not interact).

**The embedding level** (``upstream = EMBED = -1``): the token embeddings, the input of block 0,
with one "feature" per position (its token, activation ‖embedding‖) and no error term; IG's
baseline is a zero embedding. This is where information that block 0's attention moves between
positions comes from, which no SAE level can show.

**Frozen normalisation** (``freeze_norms=True``, the default): every RMSNorm/LayerNorm keeps the
denominator it had on the real prompt, as in attribution graphs (Ameisen et al., 2025). Why: a
block reads every *other* position only through a norm, and a norm is scale-invariant, so with live
denominators h·∂t/∂h at a position q ≠ p is exactly 0 (Euler) — linear attribution could never leave
the target's position. Frozen, the forward on the real prompt is unchanged and attention-mediated
contributions become visible. IG then integrates this frozen-norm model (its ``baseline`` value is
that model's, with the baseline spliced in), so completeness still holds exactly in the limit. (With
live norms, IG from a zero *embedding* is dominated by the norm's ε near the baseline and needs
many more steps than 32 to be complete; the SAE levels are fine either way.)

**TopK and JumpReLU targets.** Their selection (top-k membership, the threshold) is a step that
gradients cannot see, so along an IG path the activation could jump and completeness would fail. The
target is the feature's value with its selection *held at the real prompt's*:
``relu(pre_f(h)) · [f active on the real prompt]`` — equal to the activation on the real prompt, with
the same gradient there, continuous along the path. A ReLU SAE's target is just ``relu(pre_f(h))``.

Positions in ``fixed`` (by default the BOS position) are *not* spliced: they keep their real value on
every row, so they get no attribution and IG's baseline keeps them too. The BOS residual is the same
for every prompt (causal attention), carries no information about the prompt, and SAEs are trained
without it, so its SAE code would be noise.

The model runs as it is, including any hooks or adapters a Session has switched on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from tuiwb.errors import ParamError, TuiwbError
from tuiwb.model.hooks import hidden, with_hidden
from tuiwb.model.loaded import EMBED

METHODS = ("grad", "ig")
"""Attribution methods: activation × gradient, or Integrated Gradients."""
MAX_ROWS = 256
"""Most prompt copies in one forward/backward (bounds memory for deep graphs with IG)."""


@dataclass(frozen=True)
class Target:
    """A feature at a position: what an attribution explains."""

    feature: int
    """Feature id in the SAE of the target layer."""
    pos: int
    """Token position (0 = BOS)."""


@dataclass(frozen=True, eq=False)
class Attribution:
    """How one target's activation splits over the upstream layer's features and SAE error."""

    target: Target
    """What is explained."""
    value: float
    """The target's activation on the real prompt."""
    baseline: float | None
    """IG only: the target's value with the baseline spliced in (None for ``grad``)."""
    features: torch.Tensor
    """``[pos, d_sae_U]`` attribution of each upstream (position, feature); ``[pos, 1]`` (one per
    token) at the embedding level; 0 after the target."""
    error: torch.Tensor
    """``[pos]`` attribution of the upstream SAE error at each position (0 at the embedding level)."""

    @property
    def total(self) -> float:
        """Σ of every attribution (features and error): ≈ value − baseline for IG."""
        return float(self.features.sum() + self.error.sum())


@dataclass(eq=False)
class RealRun:
    """What one forward of the real prompt recorded: residuals and the norms' denominators."""

    resid: dict[int, torch.Tensor]
    """``{layer: [pos, d]}`` block outputs (``EMBED``: the token embeddings)."""
    norms: dict[nn.Module, list[torch.Tensor]] = field(default_factory=dict)
    """Per norm module, per call: its frozen factor (see :func:`_norm_kind`)."""


def _normal_mode(fn):
    """Run ``fn`` outside inference mode, so callers inside ``torch.inference_mode()`` (UI workers)
    get tensors autograd can use."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False):
            return fn(*args, **kwargs)
    return wrapper


# ---- frozen norms ------------------------------------------------------------------------------
def _norm_kind(module: nn.Module) -> str | None:
    """``"ln"`` for LayerNorm (frozen factor: 1/σ), ``"rms"`` for any RMSNorm (frozen factor: the
    elementwise ratio out/x = gain/rms, whatever the gain's parametrisation), else None."""
    if isinstance(module, nn.LayerNorm):
        return "ln"
    if type(module).__name__.endswith("RMSNorm"):
        return "rms"
    return None


def _norm_modules(loaded) -> list[tuple[nn.Module, str]]:
    return [(m, k) for m in loaded.blocks.modules() if (k := _norm_kind(m)) is not None]


def _record_hook(kind: str, store: list):
    def hook(module, args, output):
        x = args[0].detach()
        out = hidden(output).detach()
        if kind == "ln":
            var = x.float().var(-1, unbiased=False, keepdim=True)  # [1, T, 1]
            store.append(torch.rsqrt(var + module.eps).to(x.dtype))
        else:
            safe = torch.where(x == 0, torch.ones_like(x), x)
            store.append(torch.where(x == 0, torch.zeros_like(out), out / safe))  # [1, T, ...]
    return hook


def _frozen_hook(kind: str, records: list):
    calls = [0]

    def hook(module, args, output):
        i = calls[0]
        calls[0] += 1
        if i >= len(records):
            return None
        x = args[0]
        if kind == "ln":
            out = (x - x.mean(-1, keepdim=True)) * records[i]  # [R, T, d]
            if module.weight is not None:
                out = out * module.weight
            if module.bias is not None:
                out = out + module.bias
        else:
            out = x * records[i]  # [R, T, ...] — broadcast over the batch rows
        return with_hidden(output, out.to(hidden(output).dtype))
    return hook


def _frozen_pairs(loaded, run: RealRun | None) -> list:
    """Fresh hooks (call counters at 0) freezing every recorded norm, for one forward pass."""
    if run is None or not run.norms:
        return []
    return [(m, _frozen_hook(k, run.norms[m])) for m, k in _norm_modules(loaded) if m in run.norms]


# ---- the real run --------------------------------------------------------------------------------
@_normal_mode
def real_run(loaded, ids: Sequence[int], layers: Sequence[int], freeze_norms: bool = True) -> RealRun:
    """One forward of the real prompt to the last of ``layers``: their residuals (float32) and, with
    ``freeze_norms``, every norm's denominator."""
    layers = sorted(set(int(x) for x in layers))
    run = RealRun(resid={})

    def grab(layer):
        def hook(module, args, output):
            run.resid[layer] = hidden(output)[0].detach().float()  # [T, d]
        return hook

    pairs = [(L, grab(L)) for L in layers]
    if freeze_norms:
        for m, kind in _norm_modules(loaded):
            run.norms[m] = []
            pairs.append((m, _record_hook(kind, run.norms[m])))
    x = torch.tensor([list(ids)], device=loaded.device)  # [1, T]
    with torch.no_grad():
        loaded.run_to(x, layers[-1], hooks=pairs)
    run.norms = {m: v for m, v in run.norms.items() if v}
    return run


@_normal_mode
def sae_code(sae, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(acts [pos, d_sae], error [pos, d])`` of residual ``h [pos, d]``: h = decode(acts) + error."""
    with torch.no_grad():
        h = h.to(sae.W_enc.dtype)
        acts = sae.encode(h)  # [pos, d_sae]
        return acts, h - sae.decode(acts)


def alphas(method: str, steps: int) -> torch.Tensor:
    """Interpolation points of the path from baseline (0) to the input (1): ``[1]`` or ``[steps]``."""
    if method not in METHODS:
        raise ParamError("method", f"must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "grad":
        return torch.ones(1)
    return (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoint rule


# ---- attribution ---------------------------------------------------------------------------------
@_normal_mode
def attribute(loaded, saes, ids: Sequence[int], layer: int, targets: Sequence[Target], upstream: int, *,
              method: str = "grad", steps: int = 32, fixed: Sequence[int] = (0,), freeze_norms: bool = True,
              run: RealRun | None = None) -> list[Attribution]:
    """Attribute each target (a feature of ``saes[layer]`` at a position) to ``saes[upstream]`` (or to
    the token embeddings when ``upstream == EMBED``).

    ``run`` may pass a :func:`real_run` already made (holding ``upstream`` and ``layer``, and the
    norms when ``freeze_norms``). See the module docstring for the maths; inputs are assumed
    validated by the caller.
    """
    if not targets:
        return []
    if not upstream < layer:
        raise TuiwbError(f"upstream layer {upstream} must come before layer {layer}")
    if run is None or upstream not in run.resid or layer not in run.resid or (freeze_norms and not run.norms):
        run = real_run(loaded, ids, [upstream, layer], freeze_norms)
    frozen = run if freeze_norms else None  # hooks are made per forward (they count norm calls)
    sae_t = saes[layer]
    T = len(ids)
    if upstream == EMBED:
        h_real = run.resid[EMBED]  # [T, d]
        base = torch.zeros_like(h_real)  # [T, d]
    else:
        sae_u = saes[upstream]
        h_real = run.resid[upstream].to(sae_u.W_dec.dtype)  # [T, d]
        acts, err = sae_code(sae_u, h_real)  # [T, d_sae], [T, d]
        base = sae_u.b_dec.detach().expand_as(h_real)  # [T, d] — decode(0) + 0
    keep = torch.ones(T, 1, dtype=torch.bool, device=h_real.device)  # [T, 1] spliced positions
    for q in fixed:
        if 0 <= q < T:
            keep[q] = False
    a = alphas(method, steps).to(h_real.device)  # [S]
    S = len(a)
    value, gate = _target_values(sae_t, run.resid[layer], targets)  # [K], [K]

    # Rows of the batched pass: (target k, step s) → alpha a[s]; chunked to bound memory.
    rows = [(k, s) for k in range(len(targets)) for s in range(S)]
    grad_sum = torch.zeros(len(targets), T, h_real.shape[-1], device=h_real.device)  # [K, T, d]
    for start in range(0, len(rows), MAX_ROWS):
        chunk = rows[start:start + MAX_ROWS]
        ks = [k for k, _ in chunk]
        al = a[[s for _, s in chunk]].view(-1, 1, 1)  # [R, 1, 1]
        grads = _grad_chunk(loaded, sae_t, ids, layer, upstream, targets, ks, gate[ks], al, base, h_real, keep,
                            frozen)
        for r, (k, _) in enumerate(chunk):
            grad_sum[k] += grads[r]
    grad_mean = grad_sum / S * keep  # [K, T, d]; fixed positions carry no attribution

    baseline = [None] * len(targets)
    if method == "ig":
        baseline = _baseline_values(loaded, sae_t, ids, layer, upstream, targets, gate, base, h_real, keep, frozen)

    out = []
    for k, tgt in enumerate(targets):
        g = grad_mean[k]  # [T, d]
        if upstream == EMBED:
            feat = ((h_real - base) * g).sum(-1, keepdim=True)  # [T, 1]
            e = torch.zeros(T, device=g.device)  # [T]
        else:
            feat = acts * (g @ sae_u.W_dec.detach().t())  # [T, d_sae]
            e = (err * g).sum(-1)  # [T]
        feat[tgt.pos + 1:] = 0.0  # causal: exactly zero anyway, but keep float noise out
        e[tgt.pos + 1:] = 0.0
        out.append(Attribution(target=tgt, value=value[k], baseline=baseline[k],
                               features=feat.float().cpu(), error=e.float().cpu()))
    return out


def _splice_hook(h_in: torch.Tensor, keep: torch.Tensor):
    """Forward hook replacing a module's output with ``h_in`` at the kept positions."""
    def hook(module, args, output):
        h = hidden(output)  # [R, T, d]
        new = torch.where(keep, h_in.to(h.dtype), h)  # [R, T, d]
        return with_hidden(output, new)
    return hook


def _gated(sae_t, h_at: torch.Tensor, feat: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Target values ``[R]`` of features ``feat [R]`` at residuals ``h_at [R, d]``, selection held by ``gate``."""
    pre = sae_t.pre_acts(h_at)  # [R, d_sae]
    rows = torch.arange(len(feat), device=pre.device)
    return torch.relu(pre[rows, feat]) * gate.to(pre.dtype)  # [R]


def _grad_chunk(loaded, sae_t, ids, layer, upstream, targets, ks, gate, al, base, h_real, keep, frozen):
    """One batched forward/backward: per-row gradient ``[R, T, d]`` of its target at the spliced input."""
    R = len(ks)
    dev = h_real.device
    with torch.enable_grad():
        x = torch.tensor([list(ids)], device=loaded.device).expand(R, -1)  # [R, T]
        h_in = (base + al * (h_real - base)).detach().requires_grad_(True)  # [R, T, d]
        pairs = [*_frozen_pairs(loaded, frozen), (upstream, _splice_hook(h_in, keep))]
        h_L = loaded.run_to(x, layer, hooks=pairs)  # [R, T, d]
        pos = torch.tensor([targets[k].pos for k in ks], device=h_L.device)  # [R]
        feat = torch.tensor([targets[k].feature for k in ks], device=h_L.device)  # [R]
        h_at = h_L[torch.arange(R, device=h_L.device), pos]  # [R, d]
        vals = _gated(sae_t, h_at.to(sae_t.W_enc.dtype), feat, gate.to(h_L.device))  # [R]
        (grad,) = torch.autograd.grad(vals.sum(), h_in)  # [R, T, d]; rows are independent
    return grad.detach().to(dev)


def _is_gated(sae) -> bool:
    """TopK/JumpReLU: a discrete selection on top of the ReLU (see the module docstring)."""
    return getattr(getattr(sae, "cfg", None), "architecture", "relu") != "relu"


def _target_values(sae_t, h_layer, targets) -> tuple[list[float], torch.Tensor]:
    """Each target's activation on the real prompt, and its selection gate ``[K]`` (1 = held open)."""
    with torch.no_grad():
        acts = sae_t.encode(h_layer.to(sae_t.W_enc.dtype))  # [T, d_sae]
    values = [float(acts[t.pos, t.feature]) for t in targets]
    gate = [1.0 if (v > 0 or not _is_gated(sae_t)) else 0.0 for v in values]
    return values, torch.tensor(gate)


def _baseline_values(loaded, sae_t, ids, layer, upstream, targets, gate, base, h_real, keep, frozen) -> list[float]:
    """Each target's value with IG's baseline spliced in (under the same frozen norms)."""
    x = torch.tensor([list(ids)], device=loaded.device)  # [1, T]
    with torch.no_grad():
        pairs = [*_frozen_pairs(loaded, frozen), (upstream, _splice_hook(base.unsqueeze(0), keep))]
        h_L = loaded.run_to(x, layer, hooks=pairs)  # [1, T, d]
        pos = [t.pos for t in targets]
        feat = torch.tensor([t.feature for t in targets], device=h_L.device)  # [K]
        vals = _gated(sae_t, h_L[0, pos].to(sae_t.W_enc.dtype), feat, gate.to(h_L.device))  # [K]
    return [float(v) for v in vals]
