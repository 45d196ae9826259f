"""``lr="auto"``: pick the learning rate by short training runs scored on held-out FVU.

Lightning's ``Tuner.lr_find`` sweeps the LR up over a few dozen steps and suggests the point of
steepest loss descent. For SAEs that point is early and noisy and lands far too low (2.9e-4 on a
run where 4e-3 trained 20× better): steepest descent at step 30 says nothing about where the loss
ends up. What we care about is the *final* held-out FVU, so that is what the search measures:

1. candidates on a factor-2 grid, ``LR_GRID`` (2.5e-4 … 3.2e-2);
2. each probe trains a copy of the initialised SAE for ``lr_find_steps`` steps (capped at the real
   run's steps) on the same first training batches, with the real run's schedule shape (warm-up,
   flat, linear decay to 0) compressed to the probe, then scores it on the held-out sample;
3. the walk starts at the default LR and its two neighbours, then steps towards the better side
   until the FVU gets worse (FVU over log-LR is unimodal in practice), so 3–5 probes run;
4. among the probes within ``TOLERANCE`` of the best FVU, the *lowest* LR wins: a short probe
   favours large steps (its noise has no time to hurt), the long run does not.

The chosen LR and every probe's FVU are printed and saved in the SAE's ``cfg.json``
(``training.lr_search``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from tuiwb.sae.metrics import ReconstructionSums
from tuiwb.sae.model import SAE
from tuiwb.sae.layer_trainer import LayerTrainer

LR_GRID = tuple(2.5e-4 * 2 ** i for i in range(8))
"""Candidate learning rates: 2.5e-4, 5e-4, 1e-3, … 1.6e-2, 3.2e-2."""
TOLERANCE = 0.03
"""Probes within 3% of the best held-out FVU count as tied; the lowest LR among them is taken."""


def probe(sae: SAE, batches: Iterable[torch.Tensor], val: torch.Tensor, cfg, steps: int, lr: float,
          scale: float) -> float:
    """Train a copy of ``sae`` for ``steps`` batches at peak ``lr``; its FVU on ``val [n, d]``
    (both in the native scale; multiplied by ``scale`` as in training)."""
    trainer = LayerTrainer(sae.copy(), cfg, steps=steps, lr=lr, scale=scale)
    for batch in batches:
        if trainer.done:
            break
        trainer.step(batch)
    sae = trainer.sae
    sums = ReconstructionSums(sae.d_in, sae.d_sae, sae.W_enc.device)
    for chunk in val.split(4096):
        sums.update(sae, chunk.to(sae.W_enc.device) * scale)
    fvu = sums.result().get("fvu", math.inf)
    return fvu if math.isfinite(fvu) else math.inf


def search_lr(sae: SAE, make_batches: Callable[[], Iterable[torch.Tensor]], val: torch.Tensor, cfg, steps: int,
              scale: float, start: float) -> tuple[float, dict[float, float]]:
    """``(chosen lr, {lr: probe FVU})`` by the walk described in the module docstring.

    ``make_batches()`` must yield the same training batches each time it is called.
    """
    grid = list(LR_GRID)
    i0 = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / start)))
    fvus: dict[float, float] = {}

    def score(i: int) -> float:
        if grid[i] not in fvus:
            fvus[grid[i]] = probe(sae, make_batches(), val, cfg, steps, grid[i], scale)
        return fvus[grid[i]]

    for i in (i0 - 1, i0, i0 + 1):
        if 0 <= i < len(grid):
            score(i)
    best = min(fvus, key=fvus.get)
    direction = 1 if best > grid[i0] else -1 if best < grid[i0] else 0
    i = grid.index(best)
    while direction and 0 <= i + direction < len(grid):
        if score(i + direction) >= fvus[grid[i]]:
            break
        i += direction
    best_fvu = min(fvus.values())
    if not math.isfinite(best_fvu):
        from tuiwb.errors import TuiwbError

        raise TuiwbError("`lr` auto: every probe diverged (non-finite FVU): pass `lr` with a number, e.g. `lr=1e-3`")
    chosen = min(lr for lr, f in fvus.items() if f <= best_fvu * (1 + TOLERANCE))
    return chosen, dict(sorted(fvus.items()))


def describe(chosen: float, fvus: dict[float, float], steps: int, batch_size: int) -> str:
    """One line for the user: what was tried and why this LR."""
    tried = ", ".join(f"{lr:.1e}→{f:.4f}" for lr, f in fvus.items())
    best = min(fvus.values())
    why = "lowest held-out FVU" if fvus[chosen] == best else f"lowest LR within {TOLERANCE:.0%} of the best FVU"
    return (f"lr auto: chose {chosen:.1e} ({why}); probes of {steps} steps × {batch_size} tokens, "
            f"LR→held-out FVU: {tried}")
