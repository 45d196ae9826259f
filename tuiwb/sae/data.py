"""Feeding an SAE trainer from an ``ActivationStore``: streaming batches, held-out sample, init stats.

Nothing here loads a whole layer into RAM: training batches stream from the store's memory-mapped
shards (``ActivationStore.batches``) epoch after epoch until the token budget is spent; the held-out
sample and the statistics used for initialisation (norm factor, ``b_dec``) are bounded random
subsets read with ``read_rows``.

Under DDP every rank iterates the *same* shuffled stream and keeps every ``world``-th batch starting
at its rank, so ranks see disjoint data and always take the same number of steps (a collective
would hang otherwise). The store's ``batches`` has no rank/world arguments; this costs each rank
a read of batches it skips, which is cheap next to the SAE step.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from tuiwb.errors import TuiwbError


def open_store(path: str | Path):
    from tuiwb.trace.store import ActivationStore

    return ActivationStore(path)


def check_layer(store, layer: int) -> None:
    if layer not in store.layers:
        have = ", ".join(map(str, store.layers))
        raise TuiwbError(f"layer {layer} is not in {getattr(store, 'path', 'the activations')} "
                         f"(recorded layers: {have}): trace it first or pick another `layer`")


def check_finite(x: torch.Tensor, layer: int) -> None:
    if not torch.isfinite(x).all():
        raise TuiwbError(f"the activations of layer {layer} contain NaN or inf: re-trace in float32 "
                         "(`store_dtype=float32`) or drop the documents that overflow")


def sample_rows(store, layer: int, split: str, n: int, *, val_fraction: float, seed: int) -> torch.Tensor:
    """Up to ``n`` random rows of ``split`` (non-special tokens) as float32 ``[m, d]``, checked finite."""
    rows = store.row_indices(split, val_fraction=val_fraction)
    if len(rows) > n:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=n, replace=False))  # sorted: sequential reads
    x = store.read_rows(layer, rows) if len(rows) else torch.empty(0, store.d_model)
    x = torch.as_tensor(x, dtype=torch.float32)  # [m, d]
    check_finite(x, layer)
    return x


def norm_scaling_factor(x: torch.Tensor) -> float:
    """``sqrt(d) / mean ‖x‖``: multiplying by it gives the activations an average norm of ``sqrt(d)``.

    Fixed for the run (SAELens' "expected_average_only_in"), so the same hyper-parameters (LR, β)
    work across models whose residual streams differ in scale by orders of magnitude.
    """
    mean_norm = float(x.norm(dim=-1).mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise TuiwbError("the activations are all zero: nothing to train an SAE on")
    return math.sqrt(x.shape[-1]) / mean_norm


def geometric_median(x: torch.Tensor, iters: int = 64, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to the rows of ``x [n, d]``.

    A robust centre (what Gao et al. 2024 initialise ``b_dec`` with): the few huge-norm outlier
    tokens that residual streams have move it far less than they move the mean.
    """
    x = x.double()
    y = x.mean(0)  # [d]
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(eps)  # [n]
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= eps * max(1.0, float(y.norm())):
            y = y_new
            break
        y = y_new
    return y.float()


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ActivationStream(IterableDataset):
    """Exactly ``steps`` training batches ``[B, d]`` float32 for this rank, cycling over epochs."""

    def __init__(self, acts_path: str, layer: int, batch_size: int, steps: int, *, val_fraction: float,
                 seed: int):
        super().__init__()
        self.acts_path, self.layer, self.batch_size = acts_path, layer, batch_size
        self.steps, self.val_fraction, self.seed = steps, val_fraction, seed
        self._store = None

    def __len__(self) -> int:
        return self.steps

    def _split(self) -> str:
        return "train" if self.val_fraction > 0 else "all"

    def __iter__(self):
        if self._store is None:
            self._store = open_store(self.acts_path)
        rank, world = _rank_world()
        # Full batches only (so the token budget is exact), unless one epoch is less than a batch.
        n_rows = len(self._store.row_indices(self._split(), val_fraction=self.val_fraction))
        drop_last = n_rows >= self.batch_size
        produced, seen, epoch = 0, 0, 0
        while produced < self.steps:
            got_any = False
            for batch in self._store.batches(self.layer, self.batch_size, split=self._split(),
                                             val_fraction=self.val_fraction, shuffle=True,
                                             seed=self.seed + 1_000_003 * epoch, drop_last=drop_last):
                got_any = True
                seen += 1
                if (seen - 1) % world != rank:
                    continue
                x = torch.as_tensor(batch, dtype=torch.float32)  # [B, d]
                check_finite(x, self.layer)
                yield x
                produced += 1
                if produced >= self.steps:
                    return
            if not got_any:
                raise TuiwbError(f"no training rows for layer {self.layer}: the activations are empty or "
                                 "every document went to the held-out split (lower `val_fraction`)")
            epoch += 1


class ActivationDataModule(pl.LightningDataModule):
    """Train stream + a fixed held-out sample for one layer of an activation store."""

    def __init__(self, acts_path: str | Path, layer: int, *, batch_size: int, steps: int, val_fraction: float,
                 val_tokens: int, seed: int, pin_memory: bool = False):
        super().__init__()
        self.pin_memory = pin_memory  # page-locked batches: the host→GPU copy overlaps the step
        self.acts_path, self.layer = str(acts_path), layer
        self.batch_size, self.steps = batch_size, steps
        self.val_fraction, self.val_tokens, self.seed = val_fraction, val_tokens, seed
        self._val: torch.Tensor | None = None

    def heldout_sample(self) -> torch.Tensor:
        """The held-out rows used for the periodic metrics (``[n, d]``; empty without a held-out split)."""
        if self._val is None:
            store = open_store(self.acts_path)
            if self.val_fraction > 0 and self.val_tokens > 0:
                self._val = sample_rows(store, self.layer, "heldout", self.val_tokens,
                                        val_fraction=self.val_fraction, seed=self.seed + 17)
            else:
                self._val = torch.empty(0, store.d_model)
        return self._val

    def train_dataloader(self):
        ds = ActivationStream(self.acts_path, self.layer, self.batch_size, self.steps,
                              val_fraction=self.val_fraction, seed=self.seed)
        # No workers: reading a memory-mapped batch is cheap next to a step, and worker processes
        # would compete with the trainer's own threads for the cores (tuiwb/sae/threads.py).
        return DataLoader(ds, batch_size=None, num_workers=0, pin_memory=self.pin_memory)

    def val_dataloader(self):
        val = self.heldout_sample()
        rank, world = _rank_world()
        # Each rank takes its share; a held-out set smaller than the world is given to every rank
        # whole (the metrics are ratios of all-reduced sums, so the duplicates cancel), so that no
        # rank skips the validation epoch and its collective.
        mine = val[rank::world] if len(val) >= world else val
        chunks = list(mine.split(self.batch_size)) if len(mine) else []
        return DataLoader(chunks, batch_size=None, num_workers=0)
