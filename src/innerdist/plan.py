"""A plan before a long run: ``innerdist predict --dry-run``, ``innerdist segment --dry-run``.

The plan says how many blocks the job has, what one block costs (time and memory,
*measured* by running one sample block from the middle of the region, not guessed), how
much disk the output needs, and an estimated wall time for N workers::

    blocks               512 of (64, 64, 64) voxels
    per block            1.84 s, 412 MiB host memory (measured on one sample block)
    output on disk       <= 512 MiB (float32, 1 channel(s), uncompressed)
    estimated wall time  4 min 8 s with 4 worker(s) (worker start-up 3.2 s)

The estimate is ``set-up + start-up + warm-up + ceil(blocks / N) * per block``: the set-up
(reading the inputs and the network, as the dry run did), the warm-up (what the sample
block's first run cost more than its second) and the start-up of a worker (a fresh Python
importing what a worker imports; only with more than one worker or a worker command) are
measured too. A job of several steps (``segment``: passes, merge, grow, pyramid) runs all
of them on a sample of a few blocks and gives ``Plan.steps``, each step's time scaled to
the whole job with its start-ups; the estimate is then the set-up plus their sum.

This module also *plans* a job before it runs (every job, not only dry runs):

- :func:`choose_block_shape` picks the write blocks of ``predict`` (and, with the
  prediction's chunks as the tile, of ``segment``) when the user gives none:
  whole multiples of the network's forward-pass tile, as large as the memory budget
  (:func:`memory_budget`) and the volume allow, but cut into enough blocks that every
  worker has several. A block is then many tiles that share one read of raw and one
  write, instead of one tile per block whose context is read, normalised and tracked
  every time::

      tile t, margin m             block = 3 x 3 tiles: read once with its margin
      +--+------+--+               +--+------------------+--+
      |m |  t   |m |  per tile     |m |  t  |  t  |  t  |m |
      +--+------+--+               +--+------------------+--+

- :func:`choose_workers` runs a job in this process when worker start-up would eat what
  more workers save, and never starts more workers than there are blocks.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.geometry import Roi

__all__ = [
    "STARTUP_ENV",
    "WORKER_STARTUP_SECONDS",
    "Plan",
    "TrainingPlan",
    "assumed_startup_seconds",
    "choose_block_shape",
    "choose_tile",
    "choose_workers",
    "chunk_shape_for",
    "measure_block",
    "memory_budget",
    "output_bytes",
    "parse_bytes",
    "worker_startup_seconds",
]

#: What starting one local worker costs (a fresh Python importing torch, zarr, innerdist),
#: seconds; ``bench/scale.py`` measures it (2.5-9 s on a 2-core machine, by load). An
#: assumption for :func:`choose_workers`, which must decide without spending it;
#: ``$INNERDIST_WORKER_STARTUP_SECONDS`` replaces it (0: always use the workers asked for).
WORKER_STARTUP_SECONDS = 5.0
STARTUP_ENV = "INNERDIST_WORKER_STARTUP_SECONDS"
#: Share of the machine's RAM that the blocks of all local workers may hold at once.
RAM_FRACTION = 0.25
#: Largest planned block, voxels (256^3, 4096^2): a killed job loses at most one block per
#: worker, and progress moves.
MAX_BLOCK_VOXELS = 2**24
#: Largest forward-pass tile the planner grows on a GPU, output voxels (256^3).
MAX_TILE_VOXELS = 2**24
#: Share of a GPU's free memory that one forward pass (a batch of tiles) may take when the
#: planner grows the tile; the rest is for the allocator's slack and other processes.
GPU_MEMORY_FRACTION = 0.5
#: Largest planned output chunk, voxels (128^3).
MAX_CHUNK_VOXELS = 2**21
#: Blocks per worker the planner aims for with several workers (the last round idles less).
BLOCKS_PER_WORKER = 4
#: More workers only when, scaling perfectly, they would finish in this share of the
#: in-process time, start-up included.
PARALLEL_GAIN = 0.8


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
    setup_seconds: float = 0.0  # measured: reading the inputs and the network before blocks
    warmup_seconds: float = 0.0  # measured: what a worker's first block costs more
    # Estimated seconds of each step of the whole job, start-ups included; when given, the
    # estimate is the set-up plus their sum (a job of several steps, like segment).
    steps: tuple[tuple[str, float], ...] = ()
    sample: str = "one sample block"  # what the per-block figures were measured on

    @property
    def estimated_seconds(self) -> float:
        if self.steps:
            return self.setup_seconds + sum(seconds for _, seconds in self.steps)
        rounds = math.ceil(self.blocks / self.workers)
        return (self.setup_seconds + self.worker_startup_seconds + self.warmup_seconds
                + rounds * self.block_seconds)

    def __str__(self) -> str:
        memory = _memory_text(self.block_memory_bytes, self.device_memory_bytes)
        lines = [
            f"{self.job}: plan (nothing was written)",
            f"  blocks               {self.blocks} of {self.block_shape} voxels",
            f"  per block            {self.block_seconds:.3g} s, {memory} (measured on "
            f"{self.sample})",
            f"  output on disk       <= {_size(self.output_bytes)} ({self.output_description})",
            f"  estimated wall time  {_duration(self.estimated_seconds)} with {self.workers} "
            f"worker(s) (worker start-up {self.worker_startup_seconds:.2g} s"
            + (f", set-up {self.setup_seconds:.2g} s, first block +{self.warmup_seconds:.2g} s"
               if self.setup_seconds or self.warmup_seconds else "") + ")",
        ]
        if self.steps:
            lines.append("  steps                " + ", ".join(
                f"{name} {_duration(seconds)}" for name, seconds in self.steps))
        if self.note:
            lines.append(f"  note                 {self.note}")
        return "\n".join(lines)


@dataclass(frozen=True)
class TrainingPlan:
    """What ``innerdist train`` will do; ``str(plan)`` is what ``train --dry-run`` prints."""

    input_shape: tuple[int, ...]  # voxels
    output_shape: tuple[int, ...]
    batch_size: int
    output_step: tuple[int, ...]
    context: tuple[int, ...]
    parameters: int
    device: str
    iteration_seconds: float  # measured
    data_seconds: float  # of which waiting for the crops (this process, no loader workers)
    timed_iterations: int
    host_memory_bytes: int | None
    device_memory_bytes: int | None
    start: int  # the iteration a run would resume from
    iterations: int  # training.iterations
    budget_seconds: float | None
    checkpoint_bytes: int
    checkpoints_kept: int  # keep_last iteration checkpoints + one best file per criterion

    @property
    def iterations_to_run(self) -> int:
        """Iterations this call would run: the rest, or what fits the time budget."""
        rest = max(0, self.iterations - self.start)
        if self.budget_seconds is None or self.iteration_seconds <= 0:
            return rest
        return min(rest, int(self.budget_seconds / self.iteration_seconds))

    @property
    def estimated_seconds(self) -> float:
        return self.iterations_to_run * self.iteration_seconds

    def __str__(self) -> str:
        memory = _memory_text(self.host_memory_bytes, self.device_memory_bytes)
        rest = max(0, self.iterations - self.start)
        if self.budget_seconds is None:
            when = (f"{rest} iteration(s) to go take about "
                    f"{_duration(self.estimated_seconds)}")
        else:
            when = (f"{self.iterations_to_run} of the {rest} iteration(s) to go fit the "
                    f"time budget of {_duration(self.budget_seconds)}")
        resumed = f" (resuming at iteration {self.start})" if self.start else ""
        return "\n".join([
            "train: plan (nothing was written)",
            f"  crops                input {self.input_shape}, output {self.output_shape} "
            f"voxels, batch {self.batch_size}",
            f"  network              {self.parameters:,} parameters, output step "
            f"{self.output_step}, context {self.context} voxels",
            f"  per iteration        {self.iteration_seconds:.3g} s on {self.device} (crops "
            f"{self.data_seconds:.2g} s), {memory} (measured on {self.timed_iterations} "
            "iterations after a warm-up)",
            f"  iterations           {when}{resumed}",
            f"  checkpoints on disk  <= {_size(self.checkpoint_bytes * self.checkpoints_kept)}"
            f" ({self.checkpoints_kept} x {_size(self.checkpoint_bytes)})",
            "  note                 validation and loader workers are not in the estimate",
        ])


def _memory_text(host: int | None, device: int | None) -> str:
    """The measured memory as the plans print it."""
    text = "host memory not measurable here" if host is None else f"{_size(host)} host memory"
    if device is not None:
        text += f", {_size(device)} GPU memory"
    return text


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
    process: Callable[[Roi, Roi], None], read_roi: Roi, write_roi: Roi, *, device: str = "cpu",
    first: list[float] | None = None,
) -> tuple[float, int | None, int | None]:
    """Run one block twice (the first run warms up caches, kernels and the device); returns
    the second run's seconds, the host memory the block added at its peak, and the peak GPU
    memory (None on the CPU). The first run's seconds are appended to ``first`` if given."""
    import torch

    cuda = device.startswith("cuda")
    began = time.perf_counter()
    process(read_roi, write_roi)
    if cuda:
        torch.cuda.synchronize()
    if first is not None:
        first.append(time.perf_counter() - began)
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



# --- planning ----------------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"4G"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (K/M/G/T are powers of 1024).

    >>> parse_bytes("4G"), parse_bytes("512MiB"), parse_bytes("1000")
    (4294967296, 536870912, 1000)
    """
    if not isinstance(text, str):
        raise TypeError(f"a memory size must be text like '4G', got {text!r}")
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in units else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        number = -1.0
    if not math.isfinite(number) or number <= 0:
        raise ValueError(
            f"memory size must be a positive number with an optional unit K, M, G or T "
            f"(e.g. '4G'), got {text!r}"
        )
    return int(number * units[unit])


def _total_ram() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 8 * 2**30  # not POSIX: assume a small machine


def memory_budget(workers: int, override: int | None = None) -> int:
    """Bytes one block may hold: ``override`` (``--memory-budget``, per worker) or
    :data:`RAM_FRACTION` of the machine's RAM shared by ``workers`` local workers.

    Blocks live in host memory on CPU and GPU alike (the GPU sees one forward-pass tile at
    a time, whose size the model's eval shape fixes). Total RAM, not free RAM: the same
    machine plans the same blocks, so an interrupted job resumes as the same job.
    """
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 1:
            raise ValueError(f"memory budget must be a positive number of bytes, got {override!r}")
        return override
    return max(1, int(_total_ram() * RAM_FRACTION) // max(1, workers))


def choose_block_shape(
    volume_shape: Sequence[int],
    *,
    tile: Sequence[int],
    margin: Sequence[int],
    in_bytes_per_voxel: int,
    out_bytes_per_voxel: int,
    budget_bytes: int,
    workers: int = 1,
    max_block_voxels: int = MAX_BLOCK_VOXELS,
    fallback_tile: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Write block shape (voxels) for a volume processed in tiles of ``tile`` voxels
    (``predict``: the network's forward pass; ``segment``: the prediction's stored chunks)
    that each need ``margin`` voxels of input on every side.

    The block is a whole number of tiles per axis, so it costs the forward passes of the
    same region in memory, and the blocks split each axis evenly (as few blocks per axis as
    allowed, each rounded up to whole tiles). Blocks grow along their shortest axis while

    - their input with margins (``in_bytes_per_voxel``) plus their output
      (``out_bytes_per_voxel``) fits ``budget_bytes``,
    - they have at most ``max_block_voxels`` voxels, and
    - with several workers, the volume still has :data:`BLOCKS_PER_WORKER` blocks per worker.

    An axis that one block covers gets the volume's extent (the tiles then split it as
    evenly as in memory).

    A tile cannot be cut (a forward pass), so one tile per block is the smallest plan even
    when it breaks these limits. Where tiles *can* be cut at a cost (chunks: a block that
    cuts one reads all of it), ``fallback_tile`` is the finer step planned with when one
    ``tile`` per block is too large for the budget or the voxel cap, or too few blocks for
    the workers.

    >>> choose_block_shape((2048, 2048), tile=(120, 120), margin=(20, 20),
    ...                    in_bytes_per_voxel=4, out_bytes_per_voxel=8, budget_bytes=2**30)
    (2048, 2048)
    >>> choose_block_shape((512, 512, 512), tile=(64, 64, 64), margin=(8, 8, 8),
    ...                    in_bytes_per_voxel=4, out_bytes_per_voxel=8, budget_bytes=2**30,
    ...                    workers=4)
    (192, 192, 256)

    Whole chunks of (256, 256) when they make >= 8 blocks for 2 workers (3 x 3 here), else
    steps of 8:

    >>> choose_block_shape((2048, 2048), tile=(256, 256), margin=(0, 0), in_bytes_per_voxel=64,
    ...                    out_bytes_per_voxel=0, budget_bytes=2**30, workers=2,
    ...                    fallback_tile=(8, 8))
    (768, 768)
    >>> choose_block_shape((2048, 2048), tile=(2048, 2048), margin=(0, 0),
    ...                    in_bytes_per_voxel=64, out_bytes_per_voxel=0, budget_bytes=2**30,
    ...                    workers=2, fallback_tile=(8, 8))
    (688, 688)
    """
    dims = len(volume_shape)
    if not (len(tile) == len(margin) == dims) or min(tile) < 1 or min(margin) < 0 \
            or min(volume_shape) < 1:
        raise ValueError(
            f"volume shape {tuple(volume_shape)}, tile {tuple(tile)} and margin "
            f"{tuple(margin)} must have one entry per axis (positive; margin non-negative)"
        )
    min_blocks = 1 if workers <= 1 else BLOCKS_PER_WORKER * workers

    def extent(axis: int, count: int) -> int:
        """Block extent when ``count`` blocks split the axis."""
        if count == 1:
            return int(volume_shape[axis])
        return math.ceil(math.ceil(volume_shape[axis] / count) / tile[axis]) * tile[axis]

    def fits(block: list[int]) -> bool:
        read = math.prod(b + 2 * m for b, m in zip(block, margin, strict=True))
        memory = read * in_bytes_per_voxel + math.prod(block) * out_bytes_per_voxel
        blocks = math.prod(math.ceil(v / b) for v, b in zip(volume_shape, block, strict=True))
        return memory <= budget_bytes and math.prod(block) <= max_block_voxels \
            and blocks >= min_blocks

    counts = [math.ceil(v / t) for v, t in zip(volume_shape, tile, strict=True)]
    block = [extent(a, c) for a, c in enumerate(counts)]
    if fallback_tile is not None and not fits(block):
        return choose_block_shape(
            volume_shape, tile=fallback_tile, margin=margin,
            in_bytes_per_voxel=in_bytes_per_voxel, out_bytes_per_voxel=out_bytes_per_voxel,
            budget_bytes=budget_bytes, workers=workers, max_block_voxels=max_block_voxels,
        )
    while True:
        # Shortest axis first (the last axis wins ties: it is the contiguous one).
        for axis in sorted(range(dims), key=lambda a: (block[a], -a)):
            count = counts[axis]
            while count > 1 and extent(axis, count) == block[axis]:
                count -= 1  # fewer blocks that round up to the same extent
            grown = list(block)
            grown[axis] = extent(axis, count)
            if grown[axis] > block[axis] and fits(grown):
                counts[axis], block = count, grown
                break
        else:
            return tuple(block)


def choose_tile(
    base: Sequence[int],
    *,
    step: Sequence[int],
    margin: Sequence[int],
    extent: Sequence[int],
    bytes_per_input_voxel: float,
    budget_bytes: int,
    max_voxels: int = MAX_TILE_VOXELS,
) -> tuple[int, ...]:
    """The forward-pass tile (output voxels) for a device with ``budget_bytes`` to give a
    pass whose input (tile plus ``margin`` on each side) costs ``bytes_per_input_voxel``
    (measured on the ``base`` tile, the model's eval shape).

    A larger tile recomputes less context (the margins of neighbouring tiles overlap) and
    keeps a GPU busier; predictions do not depend on it. Starting from ``base``, the
    shortest axis grows by one ``step`` while the input fits the budget, the tile has at
    most ``max_voxels`` voxels, and it does not pass ``extent`` (rounded up to the step).
    Never smaller than ``base``.

    >>> choose_tile((64, 64, 64), step=(8, 8, 8), margin=(16, 16, 16), extent=(512,) * 3,
    ...             bytes_per_input_voxel=1000.0, budget_bytes=2 * 10**9)
    (88, 96, 96)
    >>> choose_tile((64, 64, 64), step=(8, 8, 8), margin=(16, 16, 16), extent=(48, 512, 512),
    ...             bytes_per_input_voxel=1000.0, budget_bytes=2 * 10**9)
    (64, 112, 112)
    >>> choose_tile((120, 120), step=(4, 4), margin=(20, 20), extent=(2048, 2048),
    ...             bytes_per_input_voxel=1000.0, budget_bytes=10**6)   # too little: base
    (120, 120)
    """
    tile = [int(b) for b in base]
    limit = [max(b, math.ceil(e / s) * s) for b, e, s in zip(tile, extent, step, strict=True)]

    def fits(candidate: list[int]) -> bool:
        inputs = math.prod(c + 2 * m for c, m in zip(candidate, margin, strict=True))
        return inputs * bytes_per_input_voxel <= budget_bytes \
            and math.prod(candidate) <= max_voxels

    while True:
        for axis in sorted(range(len(tile)), key=lambda a: (tile[a], -a)):
            grown = list(tile)
            grown[axis] += step[axis]
            if grown[axis] <= limit[axis] and fits(grown):
                tile = grown
                break
        else:
            return tuple(tile)


def chunk_shape_for(block: Sequence[int], tile: Sequence[int],
                    max_voxels: int = MAX_CHUNK_VOXELS) -> tuple[int, ...]:
    """Output chunks for planned blocks: the block cut into equal parts of whole tiles
    until a chunk has at most ``max_voxels`` voxels (or is one tile), so that each block
    writes whole chunks of its own and readers do not fetch 64 MiB to see one slice.

    >>> chunk_shape_for((256, 256, 256), (64, 64, 64))
    (128, 128, 128)
    >>> chunk_shape_for((2048, 2048), (120, 120))   # one block covers the image
    (2048, 2048)
    """
    chunk = [int(b) for b in block]
    while math.prod(chunk) > max_voxels:
        # Halve (or third, ...) the longest axis that splits into whole tiles.
        for axis in sorted(range(len(chunk)), key=lambda a: -chunk[a]):
            tiles, rest = divmod(chunk[axis], tile[axis])
            factor = next((f for f in range(2, tiles + 1) if tiles % f == 0), None)
            if rest == 0 and factor is not None:
                chunk[axis] //= factor
                break
        else:
            break
    return tuple(chunk)


def assumed_startup_seconds() -> float:
    """``$INNERDIST_WORKER_STARTUP_SECONDS``, else :data:`WORKER_STARTUP_SECONDS`."""
    text = os.environ.get(STARTUP_ENV)
    if text is None:
        return WORKER_STARTUP_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{STARTUP_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


def choose_workers(
    requested: int,
    *,
    blocks: int,
    serial_seconds: float | None,
    parallel_seconds: float | None = None,
    startup_seconds: float | None = None,
) -> int:
    """How many local workers a job should start: at most one per block, and 1 (the job
    runs in this process) when the workers would not finish in :data:`PARALLEL_GAIN` of
    the estimated in-process time ``serial_seconds`` once their start-up is paid.
    ``parallel_seconds`` is the work's time on the workers (default: perfect scaling,
    ``serial_seconds / workers``; a process that already uses every core through threads
    scales worse, and its caller should measure). ``serial_seconds=None`` (no estimate)
    keeps ``requested``. ``startup_seconds`` defaults to :func:`assumed_startup_seconds`.

    >>> choose_workers(4, blocks=2, serial_seconds=None)
    2
    >>> choose_workers(2, blocks=16, serial_seconds=6.0, startup_seconds=5.0)
    1
    >>> choose_workers(2, blocks=16, serial_seconds=600.0, startup_seconds=5.0)
    2
    """
    if requested < 1 or blocks < 0:
        raise ValueError(f"requested workers must be >= 1 and blocks >= 0, got {requested}, "
                         f"{blocks}")
    workers = max(1, min(requested, blocks))
    if workers == 1 or serial_seconds is None:
        return workers
    if startup_seconds is None:
        startup_seconds = assumed_startup_seconds()
    if parallel_seconds is None:
        parallel_seconds = serial_seconds / workers
    if startup_seconds + parallel_seconds > PARALLEL_GAIN * serial_seconds:
        return 1
    return workers
