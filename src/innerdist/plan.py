"""A plan before a long run: ``innerdist predict --dry-run``, ``innerdist segment --dry-run``.

The plan says how many blocks the job has, what one block costs (time and memory,
*measured* by running one sample block from the middle of the region, not guessed), how
much disk the output needs, and an estimated wall time for N workers::

    blocks               512 of (64, 64, 64) voxels
    per block            1.84 s, 412 MiB host memory (measured on one sample block)
    output on disk       <= 512 MiB (float32, 1 channel(s), uncompressed)
    estimated wall time  4 min 8 s with 4 worker(s) (worker start-up 3.2 s)

The estimate is ``start-up + ceil(blocks / N) * per block``; the start-up of a worker is
measured too (a fresh Python importing what a worker imports) when there is more than one
worker or they are started through a worker command.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.geometry import Roi

__all__ = ["Plan", "measure_block", "output_bytes", "worker_startup_seconds"]


@dataclass(frozen=True)
class Plan:
    """What a blockwise job will cost; ``str(plan)`` is the text ``--dry-run`` prints."""

    job: str
    blocks: int
    block_shape: tuple[int, ...]  # voxels
    workers: int
    block_seconds: float
    block_memory_bytes: int | None  # host memory one block adds (None: not measurable)
    device_memory_bytes: int | None  # peak GPU memory of one block (None: on the CPU)
    output_bytes: int
    output_description: str
    worker_startup_seconds: float
    note: str | None = None  # what the estimate leaves out

    @property
    def estimated_seconds(self) -> float:
        rounds = math.ceil(self.blocks / self.workers)
        return self.worker_startup_seconds + rounds * self.block_seconds

    def __str__(self) -> str:
        memory = (
            "host memory not measurable here"
            if self.block_memory_bytes is None
            else f"{_size(self.block_memory_bytes)} host memory"
        )
        if self.device_memory_bytes is not None:
            memory += f", {_size(self.device_memory_bytes)} GPU memory"
        lines = [
            f"{self.job}: plan (nothing was written)",
            f"  blocks               {self.blocks} of {self.block_shape} voxels",
            f"  per block            {self.block_seconds:.3g} s, {memory} (measured on one "
            "sample block)",
            f"  output on disk       <= {_size(self.output_bytes)} ({self.output_description})",
            f"  estimated wall time  {_duration(self.estimated_seconds)} with {self.workers} "
            f"worker(s) (worker start-up {self.worker_startup_seconds:.2g} s)",
        ]
        if self.note:
            lines.append(f"  note                 {self.note}")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError  # unreachable


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def output_bytes(shape: Sequence[int], channels: int, dtype: str | np.dtype) -> int:
    """Uncompressed bytes of a ``(channels, *shape)`` output (an upper bound on disk)."""
    return int(np.prod(shape, dtype=np.int64)) * channels * np.dtype(dtype).itemsize


def _rss_and_peak() -> tuple[int, int] | None:
    """Resident and peak resident memory of this process (Linux), bytes."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def measure_block(
    process: Callable[[Roi, Roi], None], read_roi: Roi, write_roi: Roi, *, device: str = "cpu"
) -> tuple[float, int | None, int | None]:
    """Run one block twice (the first run warms up caches, kernels and the device); returns
    the second run's seconds, the host memory the block added at its peak, and the peak GPU
    memory (None on the CPU)."""
    import torch

    cuda = device.startswith("cuda")
    process(read_roi, write_roi)
    before = _rss_and_peak()
    measurable = before is not None and _reset_peak()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    process(read_roi, write_roi)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    after = _rss_and_peak()
    host = after[1] - before[0] if measurable and before and after else None
    gpu = int(torch.cuda.max_memory_allocated()) if cuda else None
    return seconds, host, gpu


def worker_startup_seconds(modules: Sequence[str]) -> float:
    """Seconds a fresh Python takes to import ``modules`` (what a worker does first)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import " + ", ".join(modules)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start
