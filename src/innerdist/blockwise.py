"""Resumable blockwise processing on top of daisy.

Every blockwise job in innerdist (targets, prediction, segmentation passes) runs through
:func:`run_blockwise`. The output ROI is cut into write blocks; each block is handed its
write ROI and a read ROI grown by ``context`` on every side::

        total read ROI (output ROI grown by context)
    +-------------------------------------------+
    |  read ROI of block 0                      |
    |  +-------------------+                    |
    |  |  context          |                    |
    |  |   +-----------+---+-------+            |
    |  |   | write ROI | write ROI |  ...       |
    |  |   | block 0   | block 1   |            |
    |  |   +-----------+---+-------+            |
    |  +-------------------+                    |
    +-------------------------------------------+

Write blocks tile the output ROI exactly (the last ones are shrunk at the far edges); read
ROIs may stick out of the data, so ``process`` must read with padding (e.g.
``Array.to_ndarray(roi, fill_value=0)``). All ROIs are in world units.

Finished blocks are recorded in ``tracking_dir`` by daisy, so a job that was killed picks up
where it stopped when run again with the same ``tracking_dir``. ``num_workers=1`` runs every
block in this process (no scheduler, no subprocesses): the serial switch for debugging and
for tests.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import daisy.v2 as daisy
from daisy import logging as daisy_logging
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from innerdist.volumes import (
    COMPLETE_ATTR,
    create_volume,
    is_complete,
    mark_complete,
    open_volume,
    split_volume_path,
)

__all__ = [
    "BlockFailedError",
    "BlockInputError",
    "clear_tracking",
    "finish_output",
    "open_or_create_output",
    "run_blockwise",
    "tracking_dir_for",
]

JOB_ATTR = "innerdist_job"

logger = logging.getLogger(__name__)


class BlockFailedError(RuntimeError):
    """Some blocks of a blockwise job failed; finished blocks stay recorded."""


class BlockInputError(BlockFailedError, ValueError):
    """A block failed in a worker because of bad input (it raised ValueError/TypeError)."""


_INPUT_ERRORS = ("ValueError", "TypeError", "FileNotFoundError", "FileExistsError")


def _last_error_line(error: str) -> str:
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else error


def clear_tracking(tracking_dir: str | Path) -> None:
    """Forget which blocks were done (used when an output is overwritten)."""
    path = Path(tracking_dir)
    if path.exists():
        shutil.rmtree(path)


def run_blockwise(
    name: str,
    *,
    total_roi: Roi,
    block_shape: Coordinate,
    context: Coordinate,
    process: Callable[[Roi, Roi], None],
    tracking_dir: str | Path,
    num_workers: int = 1,
    progress: bool = True,
) -> None:
    """Call ``process(read_roi, write_roi)`` for every block of ``total_roi``.

    Parameters
    ----------
    name:
        Task name (shown in the progress bar; tracking lives in ``tracking_dir/name``).
    total_roi:
        The ROI to write, world units.
    block_shape:
        Shape of one write block, world units (a multiple of the output voxel size).
    context:
        Added to each side of a write block to get its read ROI, world units.
    process:
        Called once per block; must be picklable-free (closures are fine, daisy forks).
    tracking_dir:
        Directory where finished blocks are recorded; reuse it to resume.
    num_workers:
        Worker processes; 1 runs serially in this process.

    Raises
    ------
    BlockFailedError
        When a block failed in a worker process after daisy's retries; its first error is
        quoted. A :class:`BlockInputError` (also a ``ValueError``) when that error was a
        ``ValueError``/``TypeError``, i.e. bad input. With ``num_workers=1`` the block's own
        exception propagates unchanged (blocks finished before it stay recorded).
    """
    block_shape = Coordinate(block_shape)
    context = Coordinate(context)
    if block_shape.dims != total_roi.dims or context.dims != total_roi.dims:
        raise ValueError(
            f"block shape {block_shape} and context {context} must have "
            f"{total_roi.dims} axes like the ROI {total_roi}"
        )
    if any(s <= 0 for s in block_shape) or any(c < 0 for c in context):
        raise ValueError(
            f"block shape must be positive and context non-negative, got {block_shape}, {context}"
        )
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")

    from innerdist.progress import BlockProgress, Progress

    # Progress: daisy calls an observer only when it runs workers; in serial mode the
    # blocks are counted here. Either way a bar on a terminal, plain lines in a log.
    serial_bar = None
    if progress and num_workers == 1:
        grid = Roi((0,) * total_roi.dims, total_roi.shape).snap_to_grid(block_shape, "grow")
        serial_bar = Progress(math.prod(grid.shape / block_shape), name, "block")

    def process_block(block: daisy.Block) -> None:
        process(block.read_roi, block.write_roi)
        if serial_bar is not None:
            serial_bar.update()

    # Worker logs go next to the block tracking, not into the current directory.
    daisy_logging.set_log_basedir(Path(tracking_dir) / "logs")
    task = daisy.Task(
        name,
        total_roi=total_roi.grow(context, context),
        read_roi=Roi((0,) * total_roi.dims, block_shape + context * 2),
        write_roi=Roi(context, block_shape),
        process_function=process_block,
        read_write_conflict=False,
        fit="shrink",
        max_workers=num_workers,
        max_retries=1,
        tracking_path=str(Path(tracking_dir) / name),
    )
    try:
        states = daisy.run_blockwise(
            [task],
            multiprocessing=num_workers > 1,
            progress=BlockProgress() if progress and serial_bar is None else False,
            return_states=True,
            summary=False,
        )
    except BaseException:
        if serial_bar is not None:
            serial_bar.close()
        raise
    state = states[name]
    if serial_bar is not None:
        # Blocks found done when resuming never reach process_block.
        serial_bar.skip(max(0, int(state.completed_count) - serial_bar.n))
        serial_bar.close()
    if state.completed_count != state.total_block_count:
        error = state.first_worker_error or state.last_worker_error
        failed = task.failed_blocks()
        detail = f"; first error: {_last_error_line(error)}" if error else ""
        if failed and not error:
            detail = f"; failed blocks: {[str(b.write_roi) for b in failed[:5]]}"
        is_input = bool(error) and _last_error_line(error).startswith(_INPUT_ERRORS)
        raise (BlockInputError if is_input else BlockFailedError)(
            f"{name}: {state.total_block_count - state.completed_count} of "
            f"{state.total_block_count} blocks did not finish{detail}. Finished blocks are "
            f"recorded in {tracking_dir}; run the same command again to resume."
        )


def tracking_dir_for(path: str | Path) -> Path:
    """Where block completion of the job writing ``path`` is recorded.

    ``data.zarr/pred`` -> ``data.zarr/.innerdist-blocks/pred`` (inside the container, so it
    moves with the data, and hidden from dataset listings).
    """
    container, dataset = split_volume_path(path)
    return container / ".innerdist-blocks" / dataset


def open_or_create_output(
    path: str | Path, *, job: dict[str, Any], overwrite: bool, **create_kwargs: Any
) -> Array:
    """Create the output of a blockwise job, or reopen it to resume an interrupted run.

    ``job`` is a JSON-able description of everything that determines the output (inputs,
    parameters). It is stored in the output's attributes, so that an interrupted run is
    resumed only by the same job:

    - no output yet, or ``overwrite``: a fresh, empty output marked incomplete;
    - an incomplete output written by the same ``job``: reopened, finished blocks are kept;
    - a complete output, or one from a different job: :class:`FileExistsError`.

    ``create_kwargs`` go to :func:`innerdist.volumes.create_volume`.
    """
    job = json.loads(json.dumps(job))  # normalise tuples -> lists for comparison
    container, dataset = split_volume_path(path)
    tracking = tracking_dir_for(path)
    if (container / dataset).exists() and not overwrite:
        existing = open_volume(path, mode="r+")
        if is_complete(existing):
            raise FileExistsError(
                f"output {str(path)!r} already exists; pass --overwrite to replace it"
            )
        if existing.attrs.get(JOB_ATTR) != job:
            raise FileExistsError(
                f"output {str(path)!r} is an unfinished output of a different job "
                "(other inputs or parameters); pass --overwrite to replace it"
            )
        logger.info("resuming %s: finished blocks are kept", path)
        return existing
    clear_tracking(tracking)
    attrs = dict(create_kwargs.pop("attrs", None) or {})
    attrs[JOB_ATTR] = job
    return create_volume(path, overwrite=True, attrs=attrs, **create_kwargs)


def finish_output(array: Array, path: str | Path) -> None:
    """Mark ``array`` complete and drop the block tracking of the job that wrote it."""
    mark_complete(array)
    clear_tracking(tracking_dir_for(path))
    if not array.attrs.get(COMPLETE_ATTR, False):
        raise RuntimeError(f"could not mark {str(path)!r} complete")
