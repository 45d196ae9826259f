"""Sparse TopK autograd: only the k (+ k_aux) selected latents of each token cost anything backwards.

A TopK SAE's step has one unavoidable dense product, the encoder's ``x @ W_enc`` ``[B, d_sae]``,
and one dense selection over it (``topk``). Everything else touches only the selected latents:

* :func:`topk_encode` returns the top-k pre-activations *and* the top-``k_aux`` among the dead
  latents (AuxK), picked from a gather of the dead columns only (no ``[B, d_sae]`` masked copy).
  Its backward never builds the dense ``[B, d_sae]`` gradient: ``∂W_enc`` is a sparse ``[d_sae, B]``
  × ``x [B, d_in]`` product over the ``B·(k + k_aux)`` selected entries, ``∂b_enc`` an index-add and
  ``∂b_dec`` (the encoder sees ``x − b_dec``) ``−W_enc @ ∂b_enc``.
* :func:`sparse_decode` is ``Σ_j vals[b, j] · W_dec[idx[b, j]]`` (``embedding_bag``) whose backward
  gives ``∂W_dec`` by the same sparse product (``∂vals`` is embedding_bag's own).

At d_in 4096 and 32k latents this is what keeps the step linear in ``k`` rather than in ``d_sae``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

def _sparse_rows_product(idx: torch.Tensor, weights: torch.Tensor, dense: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``Σ_b Σ_j weights[b, j] · dense[b]`` added into row ``idx[b, j]``: ``[n_rows, d]``.

    ``idx, weights [B, j]``, ``dense [B, d]``. Done as a sparse ``[n_rows, B]`` @ ``[B, d]`` product,
    which on CPU is several times faster than an ``index_add_`` of the ``[B·j, d]`` outer products
    and never materialises them.
    """
    b, j = idx.shape
    tokens = torch.arange(b, device=idx.device).repeat_interleave(j)  # [B·j]
    s = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), tokens]), weights.reshape(-1).to(dense.dtype),
                                (n_rows, b), check_invariants=False)
    return torch.sparse.mm(s, dense)  # [n_rows, d]


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b_dec, w_enc, b_enc, k: int, dead_idx, k_aux: int):
        xc = x - b_dec  # [B, d_in]
        pre = torch.addmm(b_enc, xc, w_enc)  # [B, d_sae]
        vals, idx = pre.topk(k, dim=-1, sorted=False)  # [B, k]
        if dead_idx is not None and k_aux > 0:
            a_vals, pos = pre.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)  # [B, k_aux]
            a_idx = dead_idx[pos]  # [B, k_aux]: latent ids
        else:
            a_vals, a_idx = pre.new_empty(x.shape[0], 0), idx.new_empty(x.shape[0], 0)
        ctx.save_for_backward(xc, w_enc, idx, a_idx)
        ctx.mark_non_differentiable(idx, a_idx)
        return vals, idx, a_vals, a_idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx, g_aux, _g_aux_idx):
        xc, w_enc, idx, a_idx = ctx.saved_tensors
        d_sae = w_enc.shape[1]
        g_vals = torch.zeros_like(idx, dtype=xc.dtype) if g_vals is None else g_vals
        if a_idx.shape[1] and g_aux is not None:
            sel, g = torch.cat([idx, a_idx], 1), torch.cat([g_vals, g_aux], 1)  # [B, k + k_aux]
        else:
            sel, g = idx, g_vals
        g_b_enc = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, sel.reshape(-1), g.reshape(-1))
        g_w_enc = _sparse_rows_product(sel, g, xc, d_sae).t() if ctx.needs_input_grad[2] else None  # [d_in, d_sae]
        g_b_dec = -(w_enc @ g_b_enc) if ctx.needs_input_grad[1] else None  # [d_in]: Σ_b ∂xc[b], negated
        g_x = None
        if ctx.needs_input_grad[0]:
            g_x = F.embedding_bag(sel, w_enc.t().contiguous(), per_sample_weights=g, mode="sum")  # [B, d_in]
        return g_x, g_b_dec, g_w_enc, g_b_enc, None, None, None


def topk_encode(x: torch.Tensor, b_dec: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
                dead_idx: torch.Tensor | None = None, k_aux: int = 0):
    """``(vals, idx, aux_vals, aux_idx)``: the top-k pre-activations of ``(x − b_dec) @ W_enc + b_enc``
    (``[B, k]``, before the ReLU) and the top-``k_aux`` among the latents ``dead_idx`` (``[B, k_aux]``,
    empty when none), with the sparse backward described in the module docstring."""
    k_aux = min(int(k_aux), int(dead_idx.numel())) if dead_idx is not None else 0
    return _TopKEncode.apply(x, b_dec, w_enc, b_enc, int(k), dead_idx, k_aux)


class _WithDecoderGrad(torch.autograd.Function):
    """Identity on ``out`` whose backward also gives ``∂W_dec`` by the sparse product: the decode itself
    runs with ``W_dec`` detached, so autograd's own ``∂vals`` (a native per-sample-weights kernel) is
    kept and its dense, sort-based ``∂W_dec`` is never computed."""

    @staticmethod
    def forward(ctx, out, w_dec, vals, idx):
        ctx.save_for_backward(vals, idx)
        ctx.n_rows = w_dec.shape[0]
        return out.view_as(out)

    @staticmethod
    def backward(ctx, g_out):
        vals, idx = ctx.saved_tensors
        g_w = _sparse_rows_product(idx, vals, g_out.contiguous(), ctx.n_rows) if ctx.needs_input_grad[1] else None
        return g_out, g_w, None, None


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """``Σ_j vals[b, j] · W_dec[idx[b, j]]`` ``[B, d_in]`` (no bias), backward sparse in the latents."""
    vals = vals.to(w_dec.dtype)
    out = F.embedding_bag(idx, w_dec.detach(), per_sample_weights=vals, mode="sum")  # [B, d_in]
    return _WithDecoderGrad.apply(out, w_dec, vals.detach(), idx)
