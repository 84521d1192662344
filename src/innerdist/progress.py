"""Progress of long jobs: a bar on a terminal, plain periodic lines in a log.

Every long loop in innerdist (training iterations, blocks of a blockwise job) reports
through :class:`Progress`. On a terminal it is a tqdm bar. When stderr is not a terminal
(a log file, a batch job, a pipe) carriage-return bars would fill the log with redrawn
lines, so it prints a plain line every ``interval`` seconds and one at the end::

    train: 120/600 iterations, 2.1 it/s, eta 3m50s, loss 0.0123

:class:`BlockProgress` is the same thing as a daisy progress observer (one per task),
passed as ``progress=`` to ``daisy.run_blockwise``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["BlockProgress", "Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``230`` -> ``'3m50s'``; ``3725`` -> ``'1h02m'``; ``7.4`` -> ``'7s'``.

    >>> format_duration(230), format_duration(3725), format_duration(7.4)
    ('3m50s', '1h02m', '7s')
    """
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False


class Progress:
    """Count ``total`` steps of a job named ``desc`` (see the module docstring).

    ``initial`` steps are done already (a resumed job): they count towards the position,
    not the rate. ``enabled=False`` shows nothing. ``stream`` defaults to ``sys.stderr``;
    ``terminal`` forces the bar (``True``) or the lines (``False``) instead of asking the
    stream. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        enabled: bool = True,
        interval: float = 10.0,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.n = int(initial)
        self.enabled = bool(enabled)
        self.interval = float(interval)
        self._stream = stream
        self._initial = self.n
        self._began = time.monotonic()
        self._last = self._began
        self._postfix: dict[str, Any] = {}
        self._bar: Any = None
        self._closed = False
        if self.enabled:
            out = self.stream
            if terminal if terminal is not None else _is_terminal(out):
                from tqdm import tqdm

                self._bar = tqdm(
                    total=self.total, initial=self.n, unit=unit, desc=desc, file=out,
                    dynamic_ncols=True,
                )

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def set_postfix(self, **values: Any) -> None:
        """Extra ``name value`` fields shown after the rate (e.g. the loss)."""
        self._postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def skip(self, n: int) -> None:
        """Count ``n`` steps as done without doing them (found done when resuming): they
        move the position, not the rate."""
        self.n += int(n)
        self._initial += int(n)
        if self._bar is not None:
            self._bar.update(n)

    def line(self, now: float | None = None) -> str:
        """The plain progress line for the current position."""
        now = time.monotonic() if now is None else now
        if self.unit.endswith("s") or self.unit == "it":
            plural = self.unit
        elif self.unit.endswith(("ch", "sh", "x")):
            plural = self.unit + "es"  # batches
        else:
            plural = self.unit + "s"
        unit = "iterations" if self.unit == "it" else plural
        text = f"{self.desc}: {self.n}/{self.total} {unit}"
        elapsed = now - self._began
        done = self.n - self._initial
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f", {rate:.3g} {self.unit}/s"
            if self.n < self.total:
                text += f", eta {format_duration((self.total - self.n) / rate)}"
            else:
                text += f", took {format_duration(elapsed)}"
        for key, value in self._postfix.items():
            text += f", {key} {value}"
        return text

    def _print(self, now: float) -> None:
        try:
            print(self.line(now), file=self.stream, flush=True)
        except ValueError:  # the stream was closed under us (a test harness)
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.n > self._initial:
            self._print(time.monotonic())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockProgress:
    """A daisy progress observer (``on_start`` / ``on_progress`` / ``on_finish``) that
    reports blocks through :class:`Progress`, one per task."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._tasks: dict[str, Progress] = {}

    def _progress(self, task_id: str, state: Any) -> Progress:
        if task_id not in self._tasks:
            self._tasks[task_id] = Progress(
                int(state.total_block_count), str(task_id), "block",
                initial=int(state.completed_count), **self._kwargs,
            )
        return self._tasks[task_id]

    def on_start(self, states: Mapping[str, Any]) -> None:
        for task_id, state in states.items():
            self._progress(task_id, state)

    def on_progress(self, states: Mapping[str, Any]) -> None:
        for task_id, state in states.items():
            progress = self._progress(task_id, state)
            delta = int(state.completed_count) - progress.n
            if delta > 0:
                progress.update(delta)

    def on_finish(self, states: Mapping[str, Any]) -> None:
        self.on_progress(states)
        for progress in self._tasks.values():
            progress.close()
