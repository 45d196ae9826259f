"""Reconstruction metrics, one accumulator for the trainer's held-out checks and ``tuiwb eval``.

Over the evaluated tokens: ``fvu`` = Σ‖x − x̂‖² / Σ‖x − mean(x)‖², ``mse`` = Σ‖x − x̂‖² / (n · d_in),
``l0`` = mean active latents per token, ``dead_fraction`` = latents never active. Sums are float64
tensors, so millions of tokens lose nothing and DDP ranks can all-reduce them before ``result``.
"""

from __future__ import annotations

import torch


class ReconstructionSums:
    """Running sums of one SAE's reconstruction over batches (float64, on ``device``)."""

    KEYS = ("sse", "sum", "sq", "n", "l0", "fired")

    def __init__(self, d_in: int, d_sae: int, device=None):
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        self.sse, self.sum, self.sq, self.n, self.l0 = z(()), z(d_in), z(()), z(()), z(())
        self.fired = z(d_sae)  # activation count per latent

    @torch.no_grad()
    def update(self, sae, x: torch.Tensor) -> None:
        """Reconstruct ``x [B, d_in]`` with ``sae`` and add the batch."""
        x_hat, active, counts = sae.reconstruct(x)
        xd = x.double()
        self.sse += (x - x_hat).double().pow(2).sum()
        self.sum += xd.sum(0)
        self.sq += xd.pow(2).sum()
        self.n += x.shape[0]
        self.l0 += active.sum()
        self.fired += counts.to(self.fired.device, torch.float64)

    def reduce(self, fn) -> "ReconstructionSums":
        """Apply ``fn(tensor) -> tensor`` (e.g. a DDP all-reduce) to every sum, in place."""
        for k in self.KEYS:
            setattr(self, k, fn(getattr(self, k)))
        return self

    def result(self) -> dict:
        """``{fvu, mse, l0, dead_fraction, n_tokens}`` (empty when nothing was added)."""
        n = float(self.n)
        if n == 0:
            return {}
        total_var = float(self.sq) - float(self.sum.pow(2).sum()) / n
        return {"fvu": float(self.sse) / max(total_var, 1e-30), "mse": float(self.sse) / (n * self.sum.numel()),
                "l0": float(self.l0) / n, "dead_fraction": float((self.fired == 0).double().mean()),
                "n_tokens": int(n)}
