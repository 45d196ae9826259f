"""The SAE training objectives, in plain PyTorch (the Lightning trainer and the benchmark share them).

* ``topk``: normalised MSE ``Σ‖x − x̂‖² / Σ‖x − mean(x)‖²`` (the batch FVU) plus the AuxK loss of
  Gao et al. 2024: the ``k_aux`` largest pre-activations among *dead* latents reconstruct the
  residual ``x − x̂`` of the live ones, scaled by ``aux_coef`` — it gives dead latents a gradient
  towards directions the live ones miss, which is what revives them.
* ``relu``: the β-sparsity loss ``mean‖x − x̂‖² + β · mean Σ_f a_f ‖W_dec[f]‖`` (Anthropic's April
  2024 update; rows are unit-norm here so the norm factor is 1). Inputs are normalised to an average
  norm of ``sqrt(d_in)``, so β has the same meaning across models.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tuiwb.sae.model import SAE
from tuiwb.sae.sparse_ops import sparse_decode, topk_encode


class StepOut(NamedTuple):
    """One training step's loss and detached diagnostics."""

    loss: torch.Tensor
    """Scalar to back-propagate."""
    fvu: torch.Tensor
    """Batch fraction of variance unexplained (detached)."""
    aux: torch.Tensor
    """AuxK loss (topk) or the sparsity term (relu), detached."""
    l0: torch.Tensor
    """Mean active latents per token (detached)."""
    fired: torch.Tensor
    """``[d_sae]`` bool: latents active on at least one token of the batch."""


def topk_loss(sae: SAE, x: torch.Tensor, dead: torch.Tensor | None, *, aux_k: int | None = None,
              aux_coef: float = 1 / 32) -> StepOut:
    """TopK reconstruction + AuxK on ``x [B, d_in]``; ``dead [d_sae]`` bool marks dead latents."""
    k = sae.cfg.k
    dead_idx = dead.nonzero().squeeze(1) if dead is not None and aux_coef > 0 else None  # [n_dead]
    n_dead = int(dead_idx.numel()) if dead_idx is not None else 0
    k_aux = min(aux_k or x.shape[-1] // 2, n_dead)
    b_dec = sae.b_dec if sae.cfg.apply_b_dec_to_input else torch.zeros_like(sae.b_dec)
    # Sparse autograd (tuiwb.sae.sparse_ops): the dense [B, d_sae] pre-activations never reach the
    # backward; only the k (+ k_aux) selected latents of each token get gradients, as with dense ops.
    vals, idx, a_vals, a_idx = topk_encode(x, b_dec, sae.W_enc, sae.b_enc, k,
                                           dead_idx if k_aux else None, k_aux)  # [B, k], [B, k_aux]
    vals = torch.relu(vals)
    x_hat = sparse_decode(vals, idx, sae.W_dec) + sae.b_dec  # [B, d_in]
    err = x - x_hat  # [B, d_in]
    total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    fvu = err.pow(2).sum() / total_var
    aux = fvu.new_zeros(())
    if k_aux > 0:
        scale = min(n_dead / (aux_k or x.shape[-1] // 2), 1.0)  # fewer dead latents → weaker pull (Gao et al. App. B.1)
        # Raw pre-activations, no ReLU (as SAELens): a dead latent is dead *because* its pre-activation
        # stays below the others', often below 0, and a ReLU here would give it no gradient at all.
        e_hat = sparse_decode(a_vals, a_idx, sae.W_dec)  # [B, d_in], no b_dec: it models err
        aux = scale * (e_hat - err.detach()).pow(2).sum() / total_var
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
    fired[idx[vals > 0]] = True
    l0 = (vals > 0).sum(-1).float().mean()
    return StepOut(fvu + aux_coef * aux, fvu.detach(), aux.detach(), l0.detach(), fired)


def relu_loss(sae: SAE, x: torch.Tensor, l1: float) -> StepOut:
    """ReLU reconstruction + β·L1 (decoder-norm weighted) on ``x [B, d_in]``."""
    acts = torch.relu(sae.pre_acts(x))  # [B, d_sae]
    x_hat = sae.decode(acts)  # [B, d_in]
    err = x - x_hat
    mse = err.pow(2).sum(-1).mean()
    sparsity = (acts * sae.W_dec.norm(dim=-1)).sum(-1).mean()
    total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    fvu = err.detach().pow(2).sum() / total_var
    active = acts.detach() > 0  # [B, d_sae]
    return StepOut(mse + l1 * sparsity, fvu, sparsity.detach(), active.sum(-1).float().mean(), active.any(0))


def step_loss(sae: SAE, x: torch.Tensor, *, dead: torch.Tensor | None = None, l1: float = 0.0,
              aux_k: int | None = None, aux_coef: float = 1 / 32) -> StepOut:
    """The training loss of ``sae``'s architecture on ``x [B, d_in]`` (already normalised)."""
    if sae.cfg.architecture == "topk":
        return topk_loss(sae, x, dead, aux_k=aux_k, aux_coef=aux_coef)
    if sae.cfg.architecture == "relu":
        return relu_loss(sae, x, l1)
    raise ValueError(f"tuiwb trains relu and topk SAEs, not {sae.cfg.architecture}")


def lr_lambda(step: int, total: int, warmup: int, decay_start: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, flat, linear decay to 0 from ``decay_start``."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_start:
        return max(0.0, (total - step) / max(1, total - decay_start))
    return 1.0
