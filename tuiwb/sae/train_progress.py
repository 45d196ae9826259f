"""The trainer's progress: one task per layer (tokens done, tokens/s) with the latest metrics as its
info (train FVU of the last batch, the periodic held-out FVU / L0 / dead fraction)."""

from __future__ import annotations

import time

import pytorch_lightning as pl

from tuiwb.progress import Progress


class TrainProgress(pl.Callback):
    """Reports ``SAETrainModule``'s progress to a :class:`~tuiwb.progress.Progress` (global rank 0
    only; at most every ``refresh_s``, since reading the metrics syncs the device)."""

    def __init__(self, layer: int, tokens_per_step: int, steps: int, progress: Progress, refresh_s: float = 0.25):
        self.layer, self.tokens_per_step, self.steps, self.refresh_s = layer, tokens_per_step, steps, refresh_s
        self.progress = progress
        self.total = steps * tokens_per_step
        self._task = None
        self._last = 0.0
        self._done = 0

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self._task is None:
            self._task = self.progress.task(f"layer {self.layer}", self.total, "tok")
        self._done = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._task is None:
            return
        self._done = min(self._done + self.tokens_per_step, self.total)
        now = time.perf_counter()
        if now - self._last < self.refresh_s and self._done < self.total:
            return
        self._last = now
        self._task.update(self._done, info=_fmt(pl_module.stats))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._task is not None:
            self._task.update(info=_fmt(pl_module.stats))

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None


def _fmt(stats: dict) -> str:
    parts = []
    if "fvu" in stats:
        parts.append(f"train fvu {float(stats['fvu']):.3f}")
    if "val_fvu" in stats:
        parts.append(f"held-out fvu {stats['val_fvu']:.3f}  L0 {stats['val_l0']:.1f}  "
                     f"dead {100 * stats['val_dead']:.1f}%")
    return "  │  ".join(parts)
