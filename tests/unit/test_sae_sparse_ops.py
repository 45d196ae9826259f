"""The sparse TopK autograd (tuiwb.sae.sparse_ops) gives the gradients of the plain dense formulas."""

import torch
from factories import make_sae

from tuiwb.sae.objective import topk_loss


def dense_topk_loss(sae, x, dead, aux_k, aux_coef=1 / 32):
    """The TopK + AuxK loss with ordinary dense autograd: the reference."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # [B, d_sae]
    vals, idx = pre.topk(sae.cfg.k, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))  # [B, d_sae]
    x_hat = acts @ sae.W_dec + sae.b_dec
    err = x - x_hat
    total_var = (x - x.mean(0)).pow(2).sum()
    fvu = err.pow(2).sum() / total_var
    n_dead = int(dead.sum())
    k_aux = min(aux_k, n_dead)
    a_vals, a_idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
    a = torch.zeros_like(pre).scatter(-1, a_idx, a_vals)
    aux = min(n_dead / aux_k, 1.0) * ((a @ sae.W_dec) - err.detach()).pow(2).sum() / total_var
    return fvu + aux_coef * aux


def test_sparse_gradients_match_dense_autograd():
    torch.manual_seed(0)
    sae = make_sae(None, 16, 96, "topk", k=5, seed=0).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(64, 16, dtype=torch.float64)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[::7] = True
    topk_loss(sae, x, dead, aux_k=8).loss.backward()
    sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    dense_topk_loss(sae, x, dead, aux_k=8).backward()
    for n, p in sae.named_parameters():
        torch.testing.assert_close(sparse[n], p.grad, msg=n)
    assert sparse["W_enc"].abs().sum() > 0 and sparse["b_dec"].abs().sum() > 0
