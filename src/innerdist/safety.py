"""Keeping a job's outputs away from its inputs, and one writer per output.

Two rules protect data that a job reads:

- An output may not be, contain, or lie inside any input. Paths are compared after
  resolving symlinks and ``..`` (``in.zarr/sub/../labels`` *is* ``in.zarr/labels``;
  ``in.zarr/raw/..`` is the container holding ``in.zarr/raw``), before anything is created
  or deleted. :func:`check_output_apart_from_inputs` raises :class:`ValueError`.
- Only one job writes an output at a time: :func:`acquire_output_lock` takes an exclusive
  ``flock`` on a lock file next to the output's block tracking. The kernel drops the lock
  when its process ends, however it ends (SIGKILL included), so a lock left by a crash is
  never mistaken for a running job; a second writer gets :class:`OutputLockedError`.

A lock is held by the process that took it until :func:`release_output_lock` (called by
:func:`innerdist.blockwise.finish_output`) or the end of the process; taking it again in
the same process (a retry after an error) reuses it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "OutputLockedError",
    "acquire_output_lock",
    "STORED_CHUNKS_ATTR",
    "check_input_complete",
    "count_stored_chunks",
    "check_output_apart_from_inputs",
    "release_output_lock",
    "resolved",
]


logger = logging.getLogger(__name__)

STORED_CHUNKS_ATTR = "innerdist_stored_chunks"
_METADATA_FILES = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


class OutputLockedError(FileExistsError):
    """Another running job writes the same output (its lock file is held)."""


def resolved(path: str | Path) -> Path:
    """``path`` made absolute with symlinks and ``..`` resolved (it need not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_apart_from_inputs(
    outputs: str | Path | Iterable[str | Path],
    inputs: Mapping[str, str | Path | None],
) -> None:
    """Raise :class:`ValueError` when an output is, contains or lies inside an input.

    ``outputs`` are the paths a job may create or delete (a volume path
    ``container/dataset``, or a file); ``inputs`` maps a role (``"raw"``, ``"labels"``,
    ...) to a path the job reads (``None`` entries are skipped).

    >>> check_output_apart_from_inputs("a.zarr/pred", {"raw": "a.zarr/raw"})
    >>> check_output_apart_from_inputs("a.zarr/raw/../raw", {"raw": "a.zarr/raw"})
    Traceback (most recent call last):
    ...
    ValueError: output 'a.zarr/raw/../raw' is the raw 'a.zarr/raw' (both resolve to ...
    """
    outs = [outputs] if isinstance(outputs, (str, Path)) else list(outputs)
    for out in outs:
        out_real = resolved(out)
        for role, path in inputs.items():
            if path is None:
                continue
            in_real = resolved(path)
            if out_real == in_real:
                relation = f"is the {role} {str(path)!r} (both resolve to {str(in_real)!r})"
            elif _within(in_real, out_real):
                relation = f"contains the {role} {str(path)!r} (resolved: {str(in_real)!r})"
            elif _within(out_real, in_real):
                relation = f"is inside the {role} {str(path)!r} (resolved: {str(in_real)!r})"
            else:
                continue
            raise ValueError(
                f"output {str(out)!r} {relation}; writing it would destroy an input, "
                "choose another output path"
            )


_HELD: dict[Path, int] = {}


def _lock_file(tracking_dir: str | Path) -> Path:
    tracking = resolved(tracking_dir)
    return tracking.parent / f"{tracking.name}.lock"


def acquire_output_lock(tracking_dir: str | Path, output: str | Path) -> None:
    """Take the exclusive lock of the job writing ``output`` (tracked in ``tracking_dir``).

    The lock file is ``<tracking_dir>.lock``, beside the tracking folder rather than in it,
    so clearing the tracking of an overwritten output keeps the lock. Raises
    :class:`OutputLockedError` when another process holds it.
    """
    lock = _lock_file(tracking_dir)
    if lock in _HELD:
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutputLockedError(
            f"output {str(output)!r} is being written by another running job "
            f"({holder}); wait for it to finish (or stop it), then run again"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    _HELD[lock] = fd


def release_output_lock(tracking_dir: str | Path) -> None:
    """Release the lock taken by :func:`acquire_output_lock` (a no-op when not held)."""
    fd = _HELD.pop(_lock_file(tracking_dir), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def check_input_complete(
    attrs: Mapping[str, object],
    path: str | Path,
    role: str,
    *,
    allow_incomplete: bool | None = False,
) -> None:
    """Refuse an input that an innerdist job marked incomplete (half-written).

    ``attrs`` are the input's attributes. The message names the job to re-run, from the
    input's ``innerdist_job`` attribute (``predict``, ``targets``, ``segment``, ...).
    With ``allow_incomplete`` the input is used as it is, with a warning; ``None`` means
    the command has no such override (the message does not offer one).
    """
    if bool(attrs.get("innerdist_complete", True)):
        _check_chunks(attrs, path, role)
        return
    job = attrs.get("innerdist_job")
    command = None
    if isinstance(job, Mapping):
        command = job.get("task") or job.get("command")
    which = f"the innerdist {command} job" if isinstance(command, str) else "the job"
    message = (
        f"{role} {str(path)!r} is incomplete (innerdist_complete is false: {which} writing "
        f"it was interrupted or failed); run {which} again to finish it"
    )
    if allow_incomplete is None:
        raise ValueError(message)
    if not allow_incomplete:
        raise ValueError(message + ", or pass --allow-incomplete to use it as it is")
    logger.warning("%s; using it as it is (--allow-incomplete)", message)


def count_stored_chunks(dataset: str | Path) -> int:
    """Number of chunk files of the zarr array in folder ``dataset`` (metadata excluded)."""
    count = 0
    for _root, _dirs, files in os.walk(dataset):
        count += sum(1 for f in files if f not in _METADATA_FILES)
    return count


def _check_chunks(attrs: Mapping[str, object], path: str | Path, role: str) -> None:
    """zarr reads a missing chunk as the fill value; in an output that an innerdist job
    finished (it recorded how many chunks it stored) a missing chunk means damage."""
    recorded = attrs.get(STORED_CHUNKS_ATTR)
    if not isinstance(recorded, int) or not Path(path).is_dir():
        return
    found = count_stored_chunks(path)
    if found < recorded:
        job = attrs.get("innerdist_job")
        command = job.get("task") or job.get("command") if isinstance(job, Mapping) else None
        rerun = f"the innerdist {command} job" if isinstance(command, str) else "its job"
        raise ValueError(
            f"{role} {str(path)!r} is damaged: the job that wrote it stored {recorded} chunks, "
            f"{recorded - found} of them are missing now (deleted or partly copied; zarr "
            f"would read them as zeros); restore it or run {rerun} again with --overwrite"
        )
