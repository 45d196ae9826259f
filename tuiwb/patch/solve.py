"""The closed-form LoRA solve in fp32, sized for 7B widths (``D = d_attn_in + d_mlp_in`` ≈ 18k).

At D = 18,432 one float64 D×D matrix is 2.7 GB, and the first version of this solve built several
plus an identity. Here the only D×D buffers are the Gram matrix itself (standardised *in place*)
and its Cholesky factor, both fp32 (1.4 GB each at 7B width); everything else is D×d or d×d.

Standardising the Gram to a unit diagonal makes it well scaled whatever the activations' magnitude,
so fp32 Cholesky with a relative ridge (added to the diagonal in place) is stable; should it still
fail (an indefinite matrix from rounding), the ridge grows ×10 and the factorisation is retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tuiwb.errors import TuiwbError

_MAX_RIDGE_TRIES = 6


@dataclass(frozen=True)
class Solution:
    """The rank-r closed form and what it cost."""

    A_full: torch.Tensor
    """``[r, D]`` float32: the fitted map is ``x ↦ B @ A_full @ x``."""
    B: torch.Tensor
    """``[d, r]`` float32, orthonormal columns."""
    r2: float
    """Share of ``‖Δ‖²`` the rank-r map explains on the recorded inputs."""
    ridge: float
    """The ridge actually used (larger than asked only when Cholesky needed it)."""
    peak_extra_bytes: int
    """Bytes of the solve's largest set of live buffers (Gram, factor, D×d matrices)."""


def solve_reduced_rank(G: torch.Tensor, C: torch.Tensor, yy: float, rank: int, ridge: float) -> Solution:
    """Ridge least squares on standardised columns + reduced-rank truncation.

    ``G`` = ``XᵀX`` ``[D, D]`` is **overwritten** (standardised in place); ``C`` = ``XᵀΔ`` ``[D, d]``.
    All the quantities the truncation and ``r2`` need are computed in the standardised space:
    with ``W = S Ws`` (``S`` the column scales), ``WᵀGW = WsᵀGsWs`` and ``⟨W, C⟩ = ⟨Ws, Cs⟩``.
    """
    G = G.float() if G.dtype != torch.float32 else G
    diag = G.diagonal().clamp_min(0)
    scale = torch.where(diag > 0, diag.rsqrt(), torch.zeros_like(diag))  # [D]
    G.mul_(scale[:, None]).mul_(scale[None, :])  # [D, D] in place: unit diagonal (0 for dead columns)
    Cs = C.float() * scale[:, None]  # [D, d]
    L, used = _cholesky_with_ridge(G, ridge)  # [D, D]
    Ws = torch.cholesky_solve(Cs, L)  # [D, d]
    peak = sum(t.numel() * t.element_size() for t in (G, L, C, Cs, Ws))
    del L
    GW = G @ Ws  # [D, d]: the ridge is off the diagonal again, so this is the real Gram
    M = Ws.T @ GW  # [d, d]: covariance of the fitted values
    M = (M + M.T) / 2  # exact symmetry for eigh (rounding leaves it a hair off)
    evals, evecs = torch.linalg.eigh(M)  # ascending
    V = evecs[:, -rank:].flip(-1)  # [d, r]
    Wr = (Ws @ V) * scale[:, None]  # [D, r]: back to raw inputs
    # resid = ‖Δ‖² − 2⟨W V Vᵀ, C⟩ + tr(Vᵀ M V), all in the standardised space
    CW, Vd = (Cs.T @ Ws).double(), V.double()  # [d, d], [d, r]: small, so summed in float64
    explained = 2 * float((CW @ Vd * Vd).sum()) - float(evals[-rank:].double().sum())
    r2 = explained / yy if yy > 0 else 0.0
    return Solution(A_full=Wr.T.contiguous(), B=V.contiguous(), r2=r2, ridge=used, peak_extra_bytes=int(peak))


def _cholesky_with_ridge(Gs: torch.Tensor, ridge: float) -> tuple[torch.Tensor, float]:
    """Cholesky factor of ``Gs + ridge·I`` (the ridge added to ``Gs``'s diagonal and removed again)."""
    diag = Gs.diagonal()
    for _ in range(_MAX_RIDGE_TRIES):
        diag.add_(ridge)
        try:
            L, info = torch.linalg.cholesky_ex(Gs)  # [D, D]
        finally:
            diag.sub_(ridge)
        if int(info) == 0:
            return L, ridge
        del L
        ridge *= 10
    raise TuiwbError(f"the LoRA fit's Gram matrix is not positive definite even with `ridge` {ridge:g}: "
                     "record more text (`fit_tokens`) or raise `ridge`")
