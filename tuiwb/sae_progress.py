"""The training progress bar: one rich bar per layer with tokens/s, and a metrics line under it."""

from __future__ import annotations

import time

import pytorch_lightning as pl


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


class TrainProgress(pl.Callback):
    """Rich progress bar for ``SAETrainModule`` (global rank 0 only; refreshed ~4×/s).

    Row 1: layer, bar, tokens done/total, tokens/s, time left. Row 2: train FVU of the last batch and
    the latest periodic held-out FVU / L0 / dead fraction.
    """

    def __init__(self, layer: int, tokens_per_step: int, steps: int, refresh_s: float = 0.25):
        self.layer, self.tokens_per_step, self.steps, self.refresh_s = layer, tokens_per_step, steps, refresh_s
        self.total = steps * tokens_per_step
        self._progress = None
        self._task = None
        self._last = 0.0
        self._t0 = 0.0
        self._done = 0

    def _start(self, trainer) -> None:
        if not trainer.is_global_zero or self._progress is not None:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class _TwoLine(Progress):
            metrics = ""

            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                if self.metrics:
                    yield Text("  " + self.metrics, style="dim")

        from rich.console import Console

        self._progress = _TwoLine(
            TextColumn("[bold]layer {task.fields[layer]}"), BarColumn(bar_width=24),
            TextColumn("{task.fields[done]}/{task.fields[total_h]} tok"), TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(compact=True), transient=False,
            console=Console(stderr=True),  # stdout stays clean for --json
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.total, layer=self.layer, done="0",
                                             total_h=_human(self.total), rate="")

    def on_train_start(self, trainer, pl_module) -> None:
        self._start(trainer)
        self._t0 = time.perf_counter()
        self._done = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._progress is None:
            return
        self._done = min(self._done + self.tokens_per_step, self.total)
        now = time.perf_counter()
        if now - self._last < self.refresh_s and self._done < self.total:
            return
        self._last = now
        rate = self._done / max(now - self._t0, 1e-9)
        self._progress.metrics = _fmt(pl_module.stats)
        self._progress.update(self._task, completed=self._done, done=_human(self._done),
                              rate=f"{_human(rate)} tok/s")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._progress is not None:
            self._progress.metrics = _fmt(pl_module.stats)
            self._progress.refresh()

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fmt(stats: dict) -> str:
    parts = []
    if "fvu" in stats:
        parts.append(f"train fvu {float(stats['fvu']):.3f}")
    if "val_fvu" in stats:
        parts.append(f"held-out fvu {stats['val_fvu']:.3f}  L0 {stats['val_l0']:.1f}  "
                     f"dead {100 * stats['val_dead']:.1f}%")
    return "  │  ".join(parts)
