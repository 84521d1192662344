"""Blockwise workers started through a cluster's submit command (LSF, SLURM, ...).

With ``--worker-command TEMPLATE`` (or ``INNERDIST_WORKER_COMMAND``) every one of a job's
``--workers N`` daisy workers is started by running TEMPLATE through the shell, with
``{command}`` replaced by the shell-quoted command that runs one innerdist worker::

    bsub -K -n 4 -gpu num=1 {command}
    srun --gres=gpu:1 {command}

This is daisy's own mechanism: each daisy worker slot runs a *worker function*
(:class:`WorkerLauncher`) that runs the template and waits for it; the worker at the far
end (:func:`run_worker`, the hidden ``innerdist worker JOBFILE`` command) connects back to
the scheduler with daisy's :class:`daisy.Client` and the context daisy handed the slot.
The template must therefore wait until the worker has finished (``bsub -K``, ``srun``,
``sbatch --wait``).

A worker depends on nothing of the submitting process: not its working directory, not its
Python objects. Everything it needs is in the *job file* written next to the job's block
tracking (inside the output container): the block function as an importable factory plus
JSON parameters (:class:`BlockFunction`), and the ROIs. What must be shared between the
machines is therefore the input and output containers (and the checkpoint for
``predict``) at the same absolute paths, and the Python environment at the same path.

A worker that dies (killed, preempted, out of memory) is replaced by daisy, up to
``INNERDIST_MAX_WORKER_RESTARTS`` times per pass (default 10); the block it held is handed
out again. A template that never starts a worker, or whose workers exit at once, ends the
job with a :class:`WorkerCommandError` naming the template and the launch's last output
line, instead of waiting forever.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from funlib.geometry import Coordinate, Roi

__all__ = [
    "MAX_RESTARTS_ENV",
    "WORKER_COMMAND_ENV",
    "BlockFunction",
    "WorkerCommandError",
    "WorkerLauncher",
    "check_worker_command",
    "claim_gpu",
    "job_file_for",
    "launch_failure",
    "max_worker_restarts",
    "read_job_file",
    "resolve_worker_command",
    "run_worker",
    "worker_argv",
    "worker_id_from_env",
    "write_job_file",
    "zarr_batches",
]

WORKER_COMMAND_ENV = "INNERDIST_WORKER_COMMAND"
MAX_RESTARTS_ENV = "INNERDIST_MAX_WORKER_RESTARTS"
DEFAULT_MAX_RESTARTS = 10
PLACEHOLDER = "{command}"
JOB_FILE_VERSION = 1


class WorkerCommandError(ValueError):
    """The worker command template did not start working innerdist workers (bad input:
    the template is the user's to fix)."""


@dataclass(frozen=True)
class BlockFunction:
    """A block function a worker can rebuild on its own: ``factory(**params)``.

    ``factory`` is ``"package.module:function"``; ``params`` must be JSON-able (paths
    absolute, so that a worker started in another directory finds them). The factory
    returns ``process(read_roi, write_roi)``.
    """

    factory: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        module, sep, name = self.factory.partition(":")
        if not (module and sep and name.isidentifier()):
            raise ValueError(
                f"block function factory must be 'package.module:function', got {self.factory!r}"
            )
        try:
            json.dumps(dict(self.params), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"parameters of the block function {self.factory!r} must be JSON-able: {e}"
            ) from None

    def build(self) -> Callable[[Roi, Roi], None]:
        module, _, name = self.factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
        process: Callable[[Roi, Roi], None] = factory(**self.params)
        return process

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, "params": json.loads(json.dumps(dict(self.params)))}


def check_worker_command(template: str) -> str:
    """``template`` unchanged if it can start workers, else :class:`ValueError`."""
    if not isinstance(template, str):
        raise TypeError(f"worker command must be a string, got {template!r}")
    if PLACEHOLDER not in template:
        raise ValueError(
            f"worker command {template!r} has no {PLACEHOLDER}: it must say where the worker "
            f"command goes, e.g. 'srun --gres=gpu:1 {PLACEHOLDER}'"
        )
    return template


def resolve_worker_command(template: str | None) -> str | None:
    """The template to use: ``template``, else ``$INNERDIST_WORKER_COMMAND``, else None
    (workers are local processes)."""
    if template is None:
        template = os.environ.get(WORKER_COMMAND_ENV) or None
    return None if template is None else check_worker_command(template)


def max_worker_restarts() -> int:
    """How often daisy replaces a dead worker per pass (``$INNERDIST_MAX_WORKER_RESTARTS``)."""
    text = os.environ.get(MAX_RESTARTS_ENV)
    if text is None:
        return DEFAULT_MAX_RESTARTS
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{MAX_RESTARTS_ENV} must be an integer >= 0, got {text!r}")
    return value


# --- job file --------------------------------------------------------------------------------


def job_file_for(tracking_dir: str | Path, name: str) -> Path:
    """``tracking_dir/name.job.json``: next to daisy's tracking of the pass ``name``."""
    return Path(os.path.abspath(tracking_dir)) / f"{name}.job.json"


def write_job_file(
    path: Path,
    *,
    name: str,
    block_function: BlockFunction,
    total_roi: Roi,
    block_shape: Coordinate,
    context: Coordinate,
) -> Path:
    """Write the job file atomically (a worker never reads half a file)."""
    content = {
        "version": JOB_FILE_VERSION,
        "name": name,
        "block_function": block_function.to_dict(),
        "total_roi": {"offset": list(total_roi.offset), "shape": list(total_roi.shape)},
        "block_shape": list(block_shape),
        "context": list(context),
        "workers": str(path.parent / f"{name}.workers"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    workers = path.parent / f"{name}.workers"
    if workers.exists():  # markers of an earlier, interrupted run
        shutil.rmtree(workers)
    workers.mkdir()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_job_file(path: str | Path) -> dict[str, Any]:
    """The job file's content, checked; :class:`ValueError` naming what is wrong."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"job file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"job file {str(path)!r} is not JSON: {e}") from None
    if not isinstance(content, dict) or content.get("version") != JOB_FILE_VERSION:
        raise ValueError(
            f"job file {str(path)!r} is not an innerdist job file of version {JOB_FILE_VERSION}"
        )
    missing = [k for k in ("name", "block_function", "workers") if k not in content]
    if missing:
        raise ValueError(f"job file {str(path)!r} lacks {missing}")
    return content


# --- launching ------------------------------------------------------------------------------


def worker_argv(job_file: Path, context: str, token: str) -> list[str]:
    """The command that runs one worker: this Python, ``-m innerdist worker JOBFILE``."""
    return [
        sys.executable, "-m", "innerdist", "worker", str(job_file),
        "--context", context, "--token", token,
    ]


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class WorkerLauncher:
    """daisy's worker function for one slot: run the template, wait, check the worker ran.

    Picklable (daisy ships it to its worker-slot process). Each launch gets a token; the
    worker writes ``<workers>/<token>.started`` when it has read the job file and
    ``<token>.done`` when the scheduler has no more blocks. A launch that ends without
    ``.done`` is a dead worker (daisy replaces it); one that never wrote ``.started``
    leaves ``<token>.failed`` (JSON) for the submitting process to explain.
    """

    template: str
    job_file: str
    workers_dir: str

    def __call__(self, *, context: Any) -> None:
        token = uuid.uuid4().hex
        workers = Path(self.workers_dir)
        log = workers / f"{token}.log"
        command = shlex.join(worker_argv(Path(self.job_file), context.to_env(), token))
        line = self.template.replace(PLACEHOLDER, command)
        with log.open("wb") as out:
            returncode = subprocess.run(
                line, shell=True, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            ).returncode
        if (workers / f"{token}.done").exists():
            return
        started = (workers / f"{token}.started").exists()
        last = _last_line(log)
        record = {
            "template": self.template,
            "returncode": returncode,
            "last_line": last,
            "log": str(log),
            "started": started,
        }
        if not started:
            tmp = workers / f".{token}.failed"
            tmp.write_text(json.dumps(record))
            os.replace(tmp, workers / f"{token}.failed")
        raise RuntimeError(
            f"worker launched by {self.template!r} "
            + ("died" if started else "never started")
            + f" (exit code {returncode}); last output line: {last!r}; log: {log}"
        )


def launch_failure(workers_dir: str | Path) -> WorkerCommandError | None:
    """A :class:`WorkerCommandError` for the newest launch that never started a worker,
    or None when every launch started one."""
    records = sorted(Path(workers_dir).glob("*.failed"), key=lambda p: p.stat().st_mtime)
    if not records:
        return None
    record = json.loads(records[-1].read_text())
    how = (
        f"exited with code {record['returncode']}"
        if record["returncode"]
        else "exited with code 0"
    )
    return WorkerCommandError(
        f"worker command {record['template']!r} {how} without starting an innerdist worker "
        f"({len(records)} launch(es) failed); its last output line: {record['last_line']!r} "
        f"(full output: {record['log']}). The template must run {PLACEHOLDER} and wait for "
        "it (e.g. 'bsub -K ...', 'srun ...', 'sbatch --wait ...')."
    )


# --- GPUs ---------------------------------------------------------------------------------


def worker_id_from_env() -> int | None:
    """This process's daisy worker id, when it is a daisy worker (``DAISY_CONTEXT``)."""
    text = os.environ.get("DAISY_CONTEXT")
    if not text:
        return None
    fields = dict(item.split("=", 1) for item in text.split(":") if "=" in item)
    try:
        return int(fields["worker_id"])
    except (KeyError, ValueError):
        return None


def claim_gpu(worker_id: int, gpu_ids: Sequence[str], lock_dir: str | Path) -> tuple[int, IO[str]]:
    """Index of a visible GPU that no other innerdist worker on this machine holds.

    ``gpu_ids`` are the visible GPUs' identities (UUIDs, so that processes with different
    ``CUDA_VISIBLE_DEVICES`` agree). GPUs are tried from ``worker_id % len(gpu_ids)`` on;
    the claim is an exclusive ``flock`` on ``lock_dir/innerdist-gpu-<uid>-<id>.lock``, held by
    the returned open file and released by the OS when the worker exits (also when it is
    killed), so a replacement worker finds the GPU free. Raises :class:`RuntimeError` when
    every visible GPU is held: one GPU is never shared by accident.
    """
    import fcntl

    count = len(gpu_ids)
    if count == 0:
        raise RuntimeError("no CUDA GPU is visible to this worker (CUDA_VISIBLE_DEVICES?)")
    for k in range(count):
        index = (worker_id + k) % count
        # Per user: another user's lock file would not be writable (their GPUs are the
        # batch system's to keep apart).
        name = f"innerdist-gpu-{os.getuid()}-{gpu_ids[index]}.lock"
        handle = open(Path(lock_dir) / name, "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return index, handle
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    raise RuntimeError(
        f"all {count} visible GPU(s) are held by other innerdist workers on this machine "
        f"(CUDA_VISIBLE_DEVICES={visible}); use at most one worker per GPU"
    )


# --- the worker -----------------------------------------------------------------------------


#: Chunks zarr encodes or decodes in one batch inside :func:`zarr_batches`. zarr 3's default
#: of 1 spends about 0.4 ms per chunk: a 2048^2 block of 64^2 chunks read in 0.39 s, in
#: 0.18 s with 16 (large chunks read as fast either way).
ZARR_BATCH_SIZE = 16


@contextmanager
def zarr_batches() -> Iterator[None]:
    """Within this block, zarr reads and writes :data:`ZARR_BATCH_SIZE` chunks per batch,
    unless the user configured a batch size of their own (``zarr.config``). Around every
    block of a blockwise job, run here (:func:`run_worker`) or by
    ``blockwise.run_blockwise``: a block reads and writes many chunks at a time. Here and
    not in :mod:`innerdist.volumes`, so that a cluster worker need not import funlib."""
    import zarr

    key = "codec_pipeline.batch_size"
    if zarr.config.get(key, 1) != 1:
        yield
        return
    with zarr.config.set({key: ZARR_BATCH_SIZE}):
        yield


def run_worker(job_file: str | Path, *, context: str, token: str) -> int:
    """Process blocks of a job until its scheduler has none left; returns their number.

    ``context`` is daisy's worker context (``DAISY_CONTEXT`` format: host, port, task,
    worker id); ``token`` names this launch's marker files. The block function is rebuilt
    from the job file; nothing else of the submitting process is used.
    """
    import daisy.v2 as daisy

    job = read_job_file(job_file)
    if not token or not token.isalnum():
        raise ValueError(f"worker token must be alphanumeric, got {token!r}")
    workers = Path(job["workers"])
    spec = job["block_function"]
    process = BlockFunction(spec["factory"], spec.get("params", {})).build()
    os.environ["DAISY_CONTEXT"] = context
    try:
        client = daisy.Client()
    except (KeyError, ValueError) as e:
        raise ValueError(f"worker context {context!r} is not a daisy context: {e}") from None
    host = socket.gethostname()
    (workers / f"{token}.started").write_text(json.dumps({"host": host, "pid": os.getpid()}))
    count = 0
    while True:
        with client.acquire_block() as block:
            if block is None:
                break
            try:
                with zarr_batches():
                    process(block.read_roi, block.write_roi)
            except Exception as e:
                # The scheduler raises it with its type (as local workers do): the job
                # file sits in the tracking folder, beside the job's recorded errors.
                from innerdist.blockwise import _errors_dir, _record_error

                _record_error(_errors_dir(Path(job_file).parent, job["name"]), e)
                raise
            count += 1
    (workers / f"{token}.done").write_text(json.dumps({"host": host, "blocks": count}))
    return count
