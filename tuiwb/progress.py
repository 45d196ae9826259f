"""Progress of long work, one protocol: a rich bar for the CLI, plain lines in a pipe, a callback for
the TUI and the server, or nothing.

Core code never prints: it takes a ``Progress`` (or the ``progress=True/False`` shorthand every
long-running function accepts, see :func:`as_progress`), opens a :class:`Task` per step and calls
``advance``; one-off status lines go through ``say``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

PIPE_EVERY_S = 10.0
"""In a pipe (``| tee log``, CI) a running task prints one plain line this often."""


@dataclass(frozen=True)
class ProgressEvent:
    """One update of a task, as the callback implementation delivers it."""

    label: str
    """What the task does, e.g. ``trace`` or ``layer 2``."""
    completed: float
    """Units done."""
    total: float | None
    """Units in all (None: unknown)."""
    unit: str
    """What a unit is (``tok``, ``step``…)."""
    rate: float
    """Units per second since the task started."""
    info: str = ""
    """Extra text of the latest update (loss, MB written…)."""
    done: bool = False
    """True on the task's last event."""
    message: str | None = None
    """A status line (``say``) instead of a task update."""


class Task(Protocol):
    def advance(self, n: float = 1, info: str | None = None) -> None: ...
    def update(self, completed: float | None = None, *, total: float | None = None,
               info: str | None = None) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Task": ...
    def __exit__(self, *exc) -> None: ...


class Progress(Protocol):
    """Where long work reports to."""

    def task(self, label: str, total: float | None = None, unit: str = "") -> Task: ...
    def say(self, message: str) -> None: ...


class _Task:
    """Counting and rate shared by every implementation; ``_show`` paints."""

    def __init__(self, owner, label: str, total: float | None, unit: str):
        self.owner, self.label, self.total, self.unit = owner, label, total, unit
        self.completed = 0.0
        self.info = ""
        self.t0 = time.perf_counter()
        self.closed = False

    @property
    def rate(self) -> float:
        return self.completed / max(time.perf_counter() - self.t0, 1e-9)

    def advance(self, n: float = 1, info: str | None = None) -> None:
        self.update(self.completed + n, info=info)

    def update(self, completed: float | None = None, *, total: float | None = None, info: str | None = None) -> None:
        if completed is not None:
            self.completed = float(completed)
        if total is not None:
            self.total = float(total)
        if info is not None:
            self.info = info
        self.owner._show(self, done=False)

    def event(self, done: bool) -> ProgressEvent:
        return ProgressEvent(self.label, self.completed, self.total, self.unit, self.rate, self.info, done)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner._show(self, done=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullProgress:
    """Reports nothing (tests, library calls with ``progress=False``)."""

    def task(self, label: str, total: float | None = None, unit: str = "") -> _Task:
        return _Task(self, label, total, unit)

    def say(self, message: str) -> None:
        pass

    def _show(self, task: _Task, done: bool) -> None:
        pass


@dataclass
class CallbackProgress:
    """Delivers :class:`ProgressEvent`s to ``fn`` (TUI workers, the server), at most ``per_s`` a second
    per task (plus every task's last event)."""

    fn: Callable[[ProgressEvent], None]
    per_s: float = 10.0
    _last: dict = field(default_factory=dict)

    def task(self, label: str, total: float | None = None, unit: str = "") -> _Task:
        return _Task(self, label, total, unit)

    def say(self, message: str) -> None:
        self.fn(ProgressEvent("", 0, None, "", 0.0, message=message))

    def _show(self, task: _Task, done: bool) -> None:
        now = time.perf_counter()
        last = self._last.get(id(task))
        if not done and last is not None and now - last < 1.0 / self.per_s:
            return  # the first and the last event of a task always go through
        self._last[id(task)] = now
        self.fn(task.event(done))


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() or abs(n) >= 10 else f"{n:.2f}"


def describe(e: ProgressEvent) -> str:
    """One plain line for an event: ``trace: 12.0k/65.5k tok (18%) · 3.1k tok/s · 40.2 MB``."""
    unit = f" {e.unit}" if e.unit else ""
    head = f"{_human(e.completed)}/{_human(e.total)}{unit} ({100 * e.completed / e.total:.0f}%)" if e.total \
        else f"{_human(e.completed)}{unit}"
    parts = [head, f"{_human(e.rate)}{unit}/s"] + ([e.info] if e.info else [])
    return f"{e.label}: " + " · ".join(parts) + (" · done" if e.done else "")


class RichProgress:
    """A rich progress bar on stderr in a terminal; plain periodic lines when stderr is not one.

    stdout stays clean for ``--json``. Tasks may nest or follow each other; each gets its own row.
    """

    def __init__(self, *, transient: bool = False, stream=None):
        from rich.console import Console

        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, soft_wrap=True)
        self.live = self.console.is_terminal
        self.transient = transient
        self._bar = None
        self._ids: dict[int, int] = {}
        self._printed: dict[int, float] = {}

    def task(self, label: str, total: float | None = None, unit: str = "") -> _Task:
        t = _Task(self, label, total, unit)
        if self.live:
            bar = self._open_bar()
            self._ids[id(t)] = bar.add_task(label, total=total, unit=unit, rate="", info="")
        else:
            self._printed[id(t)] = time.perf_counter()
        return t

    def _open_bar(self):
        if self._bar is None:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=28),
                                 TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
                                 TextColumn("[dim]{task.fields[info]}"), TimeElapsedColumn(),
                                 console=self.console, transient=self.transient)
            self._bar.start()
        return self._bar

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)

    def _show(self, task: _Task, done: bool) -> None:
        if self.live:
            bar, tid = self._bar, self._ids.get(id(task))
            if bar is None or tid is None:
                return
            unit = f" {task.unit}" if task.unit else ""
            bar.update(tid, completed=task.completed, total=task.total, info=task.info,
                       rate=f"{_human(task.rate)}{unit}/s")
            if done:
                del self._ids[id(task)]
                if self.transient:
                    bar.remove_task(tid)
                if not self._ids:
                    bar.stop()
                    self._bar = None
            return
        now = time.perf_counter()
        if done or now - self._printed.get(id(task), 0.0) >= PIPE_EVERY_S:
            self._printed[id(task)] = now
            print(describe(task.event(done)), file=self.stream, flush=True)


def as_progress(progress) -> Progress:
    """``True`` → :class:`RichProgress`, ``False``/``None`` → :class:`NullProgress`, a Progress → itself."""
    if progress is True:
        return RichProgress()
    if progress is False or progress is None:
        return NullProgress()
    return progress
