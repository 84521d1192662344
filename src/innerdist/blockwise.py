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

Errors cross the process boundary as objects, not text: a worker that fails a block
pickles the exception into ``tracking_dir/errors/`` before daisy sees it, and
:func:`run_blockwise` raises that exception (its type intact) in the parent. daisy's
traceback text is used only when a worker died without a word (killed, segfault).

An output is written by one job at a time: :func:`open_or_create_output` takes a lock
(:mod:`innerdist.safety`) that :func:`finish_output` releases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import daisy.v2 as daisy
from daisy import logging as daisy_logging
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from innerdist.attrs import COMPLETE_ATTR, JOB_ATTR
from innerdist.safety import (
    STORED_CHUNKS_ATTR,
    acquire_output_lock,
    check_output_apart_from_inputs,
    count_stored_chunks,
    release_output_lock,
)
from innerdist.volumes import (
    create_volume,
    is_complete,
    mark_complete,
    open_volume,
    split_volume_path,
)
from innerdist.workers import zarr_batches

__all__ = [
    "BlockFailedError",
    "clear_tracking",
    "existing_block_shape",
    "finish_output",
    "open_or_create_output",
    "run_blockwise",
    "tracking_dir_for",
]

if TYPE_CHECKING:
    from innerdist.workers import BlockFunction

logger = logging.getLogger(__name__)


class BlockFailedError(RuntimeError):
    """Blocks failed in worker processes that died without reporting an exception (killed,
    crashed, or an exception that could not be pickled); finished blocks stay recorded."""


def _errors_dir(tracking_dir: str | Path, name: str) -> Path:
    return Path(tracking_dir) / "errors" / name


def _record_error(folder: Path, error: BaseException) -> None:
    """Pickle ``error`` (in a worker) so the parent can raise it with its type intact."""
    try:
        payload = pickle.dumps(error)
        pickle.loads(payload)  # exceptions with custom __init__ may not come back
    except Exception:
        payload = pickle.dumps(BlockFailedError(f"{type(error).__name__}: {error}"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # time first: the names sort in the order the errors happened
        tmp = folder / f".{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(payload)
        os.replace(tmp, folder / f"{time.time_ns():020d}-{uuid.uuid4().hex}.pickle")
    except OSError:
        pass  # the disk may be what failed; daisy's text is the fallback


def _first_recorded_error(folder: Path) -> BaseException | None:
    for file in sorted(folder.glob("*.pickle")):
        try:
            error = pickle.loads(file.read_bytes())
        except Exception:
            continue
        if isinstance(error, BaseException):
            return error
    return None


@contextlib.contextmanager
def _stderr_to(log: Path) -> Iterator[None]:
    """Send file descriptor 2 to ``log`` while workers run, keeping ``sys.stderr`` (the
    progress bar, Python logging set up later) on the terminal.

    daisy's scheduler and its workers write every failed block's traceback to fd 2; the
    error that matters is raised once by :func:`run_blockwise`, and the tracebacks stay in
    the log next to the block tracking. Without a log file (full disk) nothing changes.
    """
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    terminal = open(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    previous = sys.stderr
    try:
        os.dup2(log_fd, 2)
        if previous is sys.__stderr__:
            sys.stderr = terminal
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stderr = previous
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log_fd)
        terminal.close()


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
    worker_command: str | None = None,
    worker_job: BlockFunction | None = None,
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
        Called once per block. With ``num_workers > 1`` daisy starts fresh worker
        processes (it spawns, it does not fork) and sends them ``process`` serialised
        with cloudpickle: closures and lambdas work, but everything they capture must be
        picklable (paths and parameters, not open files, locks or live handles).
    tracking_dir:
        Directory where finished blocks are recorded; reuse it to resume.
    num_workers:
        Worker processes; 1 runs serially in this process.
    worker_command:
        A template such as ``'srun {command}'``: each of the ``num_workers`` workers is
        started through it (see :mod:`innerdist.workers`), even for one worker. Then
        ``worker_job`` must describe ``process`` so that a worker can rebuild it from the
        job file; ``process`` itself is not used.

    Raises
    ------
    Exception
        The first exception a block raised, of its own type in serial and parallel runs
        alike (in parallel runs it is pickled by the worker and raised here, with a note
        saying how many blocks did not finish). Blocks finished before it stay recorded.
    BlockFailedError
        When blocks failed in workers that reported no exception (a killed worker), with
        daisy's last traceback line.
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

    errors = _errors_dir(tracking_dir, name)
    if errors.exists():
        shutil.rmtree(errors)  # from an earlier run; only this run's errors count
    parallel = num_workers > 1 or worker_command is not None

    from innerdist.progress import BlockProgress, Progress

    # Progress: daisy calls an observer only when it runs workers; in serial mode the
    # blocks are counted here. Either way a bar on a terminal, plain lines in a log.
    serial_bar = None
    if progress and not parallel:
        grid = Roi((0,) * total_roi.dims, total_roi.shape).snap_to_grid(block_shape, "grow")
        serial_bar = Progress(math.prod(grid.shape / block_shape), name, "block")

    def process_block(block: daisy.Block) -> None:
        try:
            with zarr_batches():  # a block reads and writes many chunks at once
                process(block.read_roi, block.write_roi)
        except Exception as e:
            if parallel:
                _record_error(errors, e)
            raise
        if serial_bar is not None:
            serial_bar.update()

    worker_function: Callable[..., None] = process_block
    restarts: dict[str, int] = {}
    workers_dir: str | None = None
    if worker_command is not None:
        from innerdist import workers

        worker_command = workers.check_worker_command(worker_command)
        if worker_job is None:
            raise TypeError("run_blockwise with a worker_command needs worker_job")
        tracking_dir = Path(os.path.abspath(tracking_dir))  # workers start elsewhere
        job_file = workers.write_job_file(
            workers.job_file_for(tracking_dir, name),
            name=name,
            block_function=worker_job,
            total_roi=total_roi,
            block_shape=block_shape,
            context=context,
        )
        workers_dir = str(job_file.parent / f"{name}.workers")
        worker_function = workers.WorkerLauncher(worker_command, str(job_file), workers_dir)
        restarts = {"max_worker_restarts": workers.max_worker_restarts()}

    # Worker logs go next to the block tracking, not into the current directory.
    daisy_logging.set_log_basedir(Path(tracking_dir) / "logs")
    task = daisy.Task(
        name,
        total_roi=total_roi.grow(context, context),
        read_roi=Roi((0,) * total_roi.dims, block_shape + context * 2),
        write_roi=Roi(context, block_shape),
        process_function=worker_function,
        read_write_conflict=False,
        fit="shrink",
        max_workers=num_workers,
        max_retries=1,
        tracking_path=str(Path(tracking_dir) / name),
        **restarts,
    )
    quiet = _stderr_to(Path(tracking_dir) / "logs" / "stderr.log") if parallel else None
    try:
        with quiet or contextlib.nullcontext():
            states = daisy.run_blockwise(
                [task],
                multiprocessing=parallel,
                progress=BlockProgress() if progress and serial_bar is None else False,
                return_states=True,
                summary=False,
            )
    except RuntimeError:
        if serial_bar is not None:
            serial_bar.close()
        if workers_dir is not None:
            from innerdist.workers import launch_failure

            failure = launch_failure(workers_dir)
            if failure is not None:
                raise failure from None
        raise
    except BaseException:
        if serial_bar is not None:
            serial_bar.close()
        raise
    state = states[name]
    if serial_bar is not None:
        # Blocks found done when resuming never reach process_block.
        serial_bar.skip(max(0, int(state.completed_count) - serial_bar.n))
        serial_bar.close()
    if workers_dir is not None and state.completed_count != state.total_block_count:
        from innerdist.workers import launch_failure

        failure = launch_failure(workers_dir)
        if failure is not None:
            raise failure
    if state.completed_count != state.total_block_count:
        summary = (
            f"{name}: {state.total_block_count - state.completed_count} of "
            f"{state.total_block_count} blocks did not finish. Finished blocks are recorded "
            f"in {tracking_dir}; run the same command again to resume."
        )
        recorded = _first_recorded_error(errors)
        if recorded is not None:
            recorded.add_note(summary)
            raise recorded
        error = state.first_worker_error or state.last_worker_error
        failed = task.failed_blocks()
        detail = f" First error: {_last_error_line(error)}" if error else ""
        if failed and not error:
            detail = f" Failed blocks: {[str(b.write_roi) for b in failed[:5]]}"
        raise BlockFailedError(summary + detail)


def tracking_dir_for(path: str | Path) -> Path:
    """Where block completion of the job writing ``path`` is recorded.

    ``data.zarr/pred`` -> ``data.zarr/.innerdist-blocks/pred`` (inside the container, so it
    moves with the data, and hidden from dataset listings).
    """
    container, dataset = split_volume_path(path)
    return container / ".innerdist-blocks" / dataset


def existing_block_shape(path: str | Path, task: str, dims: int) -> tuple[int, ...] | None:
    """The block shape (voxels) an existing output of a ``task`` job (``"predict"``,
    ``"segment"``) at ``path`` was written with, as its job attributes record it; None
    when there is no such output or it records none.

    Planned blocks depend on the workers and the machine's RAM, so a job that plans
    again would be another job: an unfinished output resumes with the blocks it has, and
    a finished one stays the same job (a no-op) when run again with other workers.
    """
    container, dataset = split_volume_path(path)
    job = (_attrs_on_disk(container / dataset) or {}).get(JOB_ATTR)
    if not isinstance(job, dict) or job.get("task") != task:
        return None
    block = job.get("block_shape")
    if not (isinstance(block, list) and len(block) == dims
            and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        return None
    return tuple(block)


def _attrs_on_disk(target: Path) -> dict[str, Any] | None:
    """Attributes of the zarr node at ``target`` (``None`` when it is not a zarr node).

    For an OME-NGFF image (how innerdist writes its outputs) these are the attributes of
    its level 0, where the job and completeness attributes live.
    """
    attrs = _node_attrs(target)
    if attrs is None:
        return None
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if isinstance(multiscales, list) and multiscales:
        try:
            level0 = multiscales[0]["datasets"][0]["path"]
        except (KeyError, IndexError, TypeError):
            return attrs
        return _node_attrs(target / str(level0))
    return attrs


def _node_attrs(target: Path) -> dict[str, Any] | None:
    for marker, key in (("zarr.json", "attributes"), (".zattrs", None), (".zarray", None)):
        file = target / marker
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                return None
            if key is None:
                if marker == ".zarray":
                    return {}
                return data if isinstance(data, dict) else None
            attrs = data.get(key, {}) if isinstance(data, dict) else None
            return attrs if isinstance(attrs, dict) else {}
    return None


def open_or_create_output(
    path: str | Path,
    *,
    job: dict[str, Any],
    overwrite: bool,
    inputs: Mapping[str, str | Path | None] | None = None,
    **create_kwargs: Any,
) -> Array:
    """Create the output of a blockwise job, or reopen it to resume an interrupted run.

    ``job`` is a JSON-able description of everything that determines the output (inputs,
    parameters). It is stored in the output's attributes, so that an interrupted run is
    resumed only by the same job:

    - no output yet: a fresh, empty output marked incomplete;
    - an incomplete output written by the same ``job``: reopened, finished blocks are kept;
    - a complete output written by the same ``job``: returned as is (it is complete, so the
      caller has nothing to do: re-running a finished job is a no-op);
    - a complete output of a different job, or an unfinished one of a different job:
      :class:`FileExistsError`, unless ``overwrite``;
    - ``overwrite``: the existing output is deleted and created afresh, but only when its
      attributes show it was written by an innerdist blockwise job; anything else is
      refused with :class:`FileExistsError` (``--overwrite`` never deletes user data).

    ``inputs`` maps a role to each path the job reads; an output that is, contains or lies
    inside one of them is refused with :class:`ValueError` before anything is touched
    (:func:`innerdist.safety.check_output_apart_from_inputs`). The job's lock is taken
    here (:class:`innerdist.safety.OutputLockedError` when another run holds it) and
    released by :func:`finish_output`, or here when nothing is left to do.

    ``create_kwargs`` go to :func:`innerdist.volumes.create_volume`.
    """
    job = json.loads(json.dumps(job))  # normalise tuples -> lists for comparison
    container, dataset = split_volume_path(path)
    tracking = tracking_dir_for(path)
    check_output_apart_from_inputs([path, tracking], inputs or {})
    _check_on_grid(path, inputs or {}, create_kwargs)
    _refuse_foreign(path, container / dataset, overwrite)  # before the lock file is made
    acquire_output_lock(tracking, path)
    try:
        array = _open_or_create(path, container / dataset, tracking, job, overwrite,
                                create_kwargs)
    except BaseException:
        release_output_lock(tracking)
        raise
    if is_complete(array):
        release_output_lock(tracking)
    return array


def _check_on_grid(
    path: str | Path, inputs: Mapping[str, str | Path | None], create_kwargs: dict[str, Any]
) -> None:
    """An output ROI off the voxel grid comes from an input with such an offset: say so,
    naming the input, rather than letting the volume writer complain about a ROI nobody
    gave."""
    roi, voxel = create_kwargs.get("roi"), create_kwargs.get("voxel_size")
    if roi is None or voxel is None:
        return
    voxel = Coordinate(voxel)
    # Only the shape: offsets may be off the grid (OME-NGFF levels above 0 sit half a fine
    # voxel off level 0's grid, and outputs keep their input's geometry).
    if not Coordinate(roi.shape).is_multiple_of(voxel):
        named = ", ".join(f"{role} {str(p)!r}" for role, p in inputs.items() if p) or "input"
        raise ValueError(
            f"cannot write {str(path)!r}: its region {roi} (world units, taken from the "
            f"{named}) has a shape {tuple(roi.shape)} that is not a multiple of the voxel "
            f"size {tuple(voxel)}; fix the input's shape/voxel_size metadata"
        )


def _holds_no_file(target: Path) -> bool:
    """An empty folder tree (a run killed while creating its output): nothing to lose."""
    if target.is_symlink() or not target.is_dir():
        return False
    return not any(p.is_file() or p.is_symlink() for p in target.rglob("*"))


def _refuse_foreign(path: str | Path, target: Path, overwrite: bool) -> None:
    """Refuse to replace (or reuse) something at ``target`` that no innerdist job wrote."""
    if not (target.exists() or target.is_symlink()) or _holds_no_file(target):
        return
    attrs = _attrs_on_disk(target)
    if overwrite and (attrs is None or JOB_ATTR not in attrs):
        raise FileExistsError(
            f"output {str(path)!r} exists and was not written by an innerdist job (no "
            f"{JOB_ATTR} attribute); --overwrite only replaces innerdist outputs: "
            "choose another output path or delete it yourself"
        )
    if attrs is None:
        raise FileExistsError(
            f"output {str(path)!r} already exists and is not a zarr array; "
            "choose another output path"
        )


def _open_or_create(
    path: str | Path,
    target: Path,
    tracking: Path,
    job: dict[str, Any],
    overwrite: bool,
    create_kwargs: dict[str, Any],
) -> Array:
    if (target.exists() or target.is_symlink()) and not _holds_no_file(target):
        _refuse_foreign(path, target, overwrite)  # again, now that the lock is held
        attrs = _attrs_on_disk(target) or {}
        if not overwrite:
            same_job = attrs.get(JOB_ATTR) == job
            complete = bool(attrs.get(COMPLETE_ATTR, True))
            if complete and same_job:
                logger.info("%s is already complete (same job): nothing to do", path)
                return open_volume(path, mode="r+")
            if complete and JOB_ATTR not in attrs:
                raise FileExistsError(
                    f"output {str(path)!r} already exists and was not written by an "
                    "innerdist job; choose another output path (--overwrite only replaces "
                    "innerdist outputs)"
                )
            if complete:
                raise FileExistsError(
                    f"output {str(path)!r} already exists; pass --overwrite to replace it "
                    "(it holds the result of another job: other inputs or parameters)"
                )
            if not same_job:
                raise FileExistsError(
                    f"output {str(path)!r} is an unfinished output of a different job "
                    "(other inputs or parameters); pass --overwrite to replace it"
                )
            logger.info("resuming %s: finished blocks are kept", path)
            return open_volume(path, mode="r+")
    clear_tracking(tracking)
    attrs_new = dict(create_kwargs.pop("attrs", None) or {})
    attrs_new[JOB_ATTR] = job
    # The volume writer creates the array and then its attributes; killed in between, the
    # array would look like complete user data. So it is made under a temporary name and
    # renamed (atomic) once its attributes say "incomplete, written by this job".
    staging = tracking.parent / f"{tracking.name}.creating"
    # A label image goes into its image's labels/ (refused for an image innerdist cannot
    # extend): checked before anything is written, listed there once it is in place.
    from innerdist.ome import register_label
    from innerdist.volumes import image_of_label

    image = image_of_label(target) if create_kwargs.get("ome") and create_kwargs.get("label") \
        else None
    if staging.exists():
        shutil.rmtree(staging)
    create_volume(staging, overwrite=True, attrs=attrs_new, **create_kwargs)
    if target.exists() or target.is_symlink():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, target)
    if image is not None:
        register_label(image, target.name)
    return open_volume(path, mode="r+")


def finish_output(array: Array, path: str | Path) -> None:
    """Mark ``array`` complete, drop the block tracking of the job that wrote it and
    release its lock."""
    tracking = tracking_dir_for(path)
    container, dataset = split_volume_path(path)
    # Recorded so readers can tell a missing chunk (damage) from one never stored.
    array._source_data.attrs[STORED_CHUNKS_ATTR] = count_stored_chunks(container / dataset)
    mark_complete(array)
    clear_tracking(tracking)
    if not array.attrs.get(COMPLETE_ATTR, False):
        raise RuntimeError(f"could not mark {str(path)!r} complete")
    release_output_lock(tracking)
