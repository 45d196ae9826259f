"""Choosing torch's CPU thread count for training by timing steps, again and again.

Why not just "all cores": a TopK step is a handful of kernels of a few milliseconds each, and every
multi-threaded kernel ends in a barrier. When another busy process holds one of the cores, one of
our threads is descheduled for a scheduler slice at nearly every barrier, and the whole step waits
for it — on a 2-core box that turned 2 threads into a 10× collapse, while 1 thread lost only the
core it never had. Which count is fastest depends on the load *now*, so :class:`ThreadPicker` times
a few steps with each candidate at the start and re-checks every ``recheck_every`` steps, keeping
the fastest. Its overhead is a few steps at a slower count per check (~2% at the defaults).

OpenMP's wait policy matters for the same reason: threads that spin between kernels steal the core
a busy neighbour needs. ``tuiwb train`` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads unless
the user set it (:func:`passive_omp_default`).
"""

from __future__ import annotations

import os
import time

import pytorch_lightning as pl
import torch


def passive_omp_default() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless set; only effective before torch (OpenMP) is loaded."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_candidates(cores: int | None = None) -> list[int]:
    """``[1, cores/2, cores]`` (deduplicated): the counts worth timing."""
    n = max(1, cores or usable_cores())
    return sorted({1, max(1, n // 2), n})


class ThreadPicker(pl.Callback):
    """Times ``probe_steps`` training steps per candidate thread count (after one settling step),
    uses the fastest for ``recheck_every`` steps, then probes again."""

    def __init__(self, candidates: list[int], probe_steps: int = 3, recheck_every: int = 200):
        self.candidates, self.probe_steps, self.recheck_every = list(candidates), probe_steps, recheck_every
        self.chosen = torch.get_num_threads()
        self.history: list[tuple[int, int, dict[int, float]]] = []
        """``(step, chosen, {threads: median step seconds})`` per probe."""
        self._plan: list[tuple[int, bool]] = []  # (thread count, timed?) per upcoming probe step
        self._times: dict[int, list[float]] = {}
        self._next_probe = 0
        self._t0 = 0.0

    def _start_probe(self) -> None:
        # the first step at each count is not timed: it settles the thread pool
        self._plan = [(c, i > 0) for c in self.candidates for i in range(self.probe_steps + 1)]
        self._times = {c: [] for c in self.candidates}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if len(self.candidates) < 2:
            return
        if not self._plan and trainer.global_step >= self._next_probe:
            self._start_probe()
        if self._plan:
            torch.set_num_threads(self._plan[0][0])
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._plan:
            return
        dt = time.perf_counter() - self._t0
        c, timed = self._plan.pop(0)
        if timed:
            self._times[c].append(dt)
        if not self._plan:
            med = {t: sorted(v)[len(v) // 2] for t, v in self._times.items() if v}
            self.chosen = min(med, key=med.get)
            torch.set_num_threads(self.chosen)
            self.history.append((trainer.global_step, self.chosen, med))
            self._next_probe = trainer.global_step + self.recheck_every
