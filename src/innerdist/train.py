"""``innerdist train CONFIG.yaml``: from labelled volumes to a validated best checkpoint.

:func:`train` reads the config (:mod:`innerdist.config`), checks the data, and trains a
U-Net on random crops (:mod:`innerdist.crops`) to predict inner-distance targets. Everything
it writes goes into one run directory, by default ``runs/<config stem>/`` next to the
config::

    runs/mito/
      config.yaml            the validated config (absolute paths)
      checkpoints/
        iteration_<n>.pt     the last ``keep_last`` checkpoints (weights + training state)
        best.pt              best by the first criterion, with its post-processing levels
        best-<criterion>.pt  best by each further criterion
        best.json            per criterion: iteration, score, levels, checkpoint file
      stats.csv              iteration, loss, lr, step time, data-wait fraction, elapsed
      validation.csv         one row per (iteration, volume, level pair), see validate.py
      loss.png, validation.png
      snapshots/iteration_<n>.png   raw / labels / target / prediction / weight slices

Loss: the weighted mean squared error ``sum(w * (p - t)^2) / max(sum(w), 1e-6)`` over the
batch (see :func:`weighted_mse`).

Resuming: running the same command again continues from the newest checkpoint that loads
(model, optimizer, AMP scaler, torch RNG state, iteration, elapsed time); rows that the logs
hold past that iteration are dropped first, so nothing is counted twice. Training samples
are drawn from ``(seed, sample index)`` alone (:class:`innerdist.crops.TrainingDataset`), so
a resumed run sees the same crops as an uninterrupted one and, on the CPU, ends with the
same weights. The config must be the one the run started with, except that
``training.iterations`` may grow (with a cosine schedule that stretches the rest of the
schedule). Checkpoints and ``best.json`` are written atomically (temporary file + rename);
a crash leaves at worst a stale temporary file, never a half-written checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from innerdist.config import TrainConfig, TrainingConfig, load_config, save_config
from innerdist.validate import (
    ROW_KEYS,
    SWEPT,
    Best,
    load_validation_volumes,
    scores_per_iteration,
    select_best,
    validate,
)

if TYPE_CHECKING:
    import torch

    from innerdist.model import Model
    from innerdist.plan import TrainingPlan

__all__ = [
    "STATS_COLUMNS",
    "RunResult",
    "default_run_dir",
    "plan_training",
    "learning_rate",
    "train",
    "weighted_mse",
]

logger = logging.getLogger(__name__)

STATS_COLUMNS = (
    "iteration",
    "loss",
    "lr",
    "step_time_s",
    "data_wait_s",
    "data_wait_fraction",
    "elapsed_s",
)
#: On a GPU the loss is read back (a device sync) once per this many iterations.
LOSS_SYNC_INTERVAL = 25
_CHECKPOINT = re.compile(r"^iteration_(\d+)\.pt$")


@dataclass(frozen=True)
class RunResult:
    """What a call of :func:`train` did.

    ``iteration``: iterations done in total; ``resumed_from``: the checkpoint iteration this
    call started from (0 for a fresh run); ``best``: per criterion, the best validation
    result so far; ``best_checkpoint``: ``checkpoints/best.pt`` (``None`` without
    validation data); ``iterations_per_second`` and ``data_wait_fraction`` (share of the
    step time spent waiting for the data loader) cover this call's iterations only, as does
    ``validation_seconds`` (time spent validating). ``out_of_time``: the time budget
    (``minutes`` / ``training.max_minutes``) ended the call before ``training.iterations``.
    """

    run_dir: Path
    iteration: int
    resumed_from: int
    final_loss: float | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    best: dict[str, Best] = field(default_factory=dict)
    iterations_per_second: float | None = None
    data_wait_fraction: float | None = None
    validation_seconds: float = 0.0
    out_of_time: bool = False


def _now() -> float:
    """Seconds on a monotonic clock (a function, so tests can move time on)."""
    return time.monotonic()


def default_run_dir(config_path: str | Path) -> Path:
    """``runs/<config stem>/`` in the directory of the config file."""
    p = Path(config_path)
    return p.parent / "runs" / p.stem


# --- loss and schedule ------------------------------------------------------------------


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``sum(w * (p - t)^2) / max(sum(w), 1e-6)`` over all voxels and the batch.

    A weighted *mean*, not ``mean(w * (p - t)^2)``: masked-out voxels (weight 0) then do not
    dilute the loss, so its scale does not depend on how much of a crop is masked, and a
    batch that is masked out entirely gives 0 instead of NaN. The class-balanced weights of
    :meth:`InnerDistancePredictor.create_weight` sum to about the number of unmasked voxels,
    so the value still reads as a mean squared error.

    >>> import torch
    >>> p, t = torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0])
    >>> float(weighted_mse(p, t, torch.tensor([2.0, 2.0])))
    0.125
    """
    squared = (prediction.float() - target.float()) ** 2
    return (weight * squared).sum() / weight.sum().clamp_min(1e-6)


def learning_rate(training: TrainingConfig, iteration: int) -> float:
    """The learning rate of optimizer step ``iteration`` (1-based).

    ``warmup`` steps ramp linearly up to ``optimizer.lr`` (step ``k`` gets ``k / warmup``
    of it); afterwards ``constant`` keeps it, ``cosine`` follows half a cosine down to
    ``min_factor * lr`` at the last iteration, ``step`` multiplies it by ``gamma`` after
    every ``step_size`` steps.
    """
    if iteration < 1:
        raise ValueError(f"iteration must be >= 1 (optimizer steps are 1-based), got {iteration}")
    schedule = training.schedule
    lr = training.optimizer.lr
    if iteration <= schedule.warmup:
        return lr * iteration / schedule.warmup
    done = iteration - schedule.warmup
    if schedule.name == "cosine":
        span = max(1, training.iterations - schedule.warmup)
        progress = min(1.0, done / span)
        low = schedule.min_factor
        return lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))
    if schedule.name == "step":
        return lr * schedule.gamma ** (done // schedule.step_size)
    return lr


# --- logs -------------------------------------------------------------------------------


class _CsvLog:
    """A CSV file of rows keyed by ``iteration`` that can be cut back to an iteration.

    Appended rows are flushed by :meth:`flush` (at checkpoints); after a crash the file may
    end in a partial row, which :meth:`rows` drops.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self._file: Any = None
        self._flushed = 0.0

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != self.columns:
                return []
            rows = []
            for values in reader:
                if len(values) != len(self.columns):
                    continue  # a row cut short by a crash
                row = dict(zip(self.columns, values, strict=True))
                try:
                    int(row["iteration"])
                except ValueError:
                    continue
                rows.append(row)
            return rows

    def truncate(self, iteration: int) -> list[dict[str, str]]:
        """Keep the rows up to ``iteration`` (rewritten atomically); returns them."""
        self.close()
        kept = [r for r in self.rows() if int(r["iteration"]) <= iteration]
        _atomic_write(self.path, _csv_text(self.columns, kept))
        return kept

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if self._file is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._file = self.path.open("a", newline="")
            if new:
                csv.writer(self._file).writerow(self.columns)
        writer = csv.writer(self._file)
        for row in rows:
            writer.writerow([_fmt(row[c]) for c in self.columns])

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        self._flushed = time.monotonic()

    def flush_every(self, seconds: float) -> None:
        """Flush if the last flush is older than ``seconds`` (so the file is readable
        while training runs, without a write per iteration)."""
        if time.monotonic() - self._flushed >= seconds:
            self.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_csv_field(_fmt(row[c])) for c in columns))
    return "\n".join(lines) + "\n"


def _csv_field(text: str) -> str:
    if any(ch in text for ch in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _validation_rows(
    rows: Sequence[Mapping[str, str]], criteria: Sequence[str]
) -> list[dict[str, Any]]:
    """CSV strings back to numbers."""
    out = []
    for r in rows:
        row: dict[str, Any] = {
            "iteration": int(r["iteration"]),
            "volume": r["volume"],
            # Logs from before a parameter was swept lack its column: 0 (seed_dynamic 0 is
            # level seeds, what those runs used).
            **{p: float(r.get(p) or 0.0) for p in SWEPT},
        }
        row.update({c: float(r[c]) for c in criteria})
        out.append(row)
    return out


# --- the run directory ------------------------------------------------------------------


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found = []
    for k in keys:
        where = f"{prefix}{k}"
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += _differences(a, b, where + ".")
        elif a != b:
            found.append(f"{where}: {a!r} -> {b!r}")
    return found


def _check_resumable(run_dir: Path, config: TrainConfig) -> TrainConfig | None:
    """The config the run in ``run_dir`` started with (``None`` for a new run); raises
    when ``config`` differs from it in more than a larger ``training.iterations``."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(
                f"run directory {str(run_dir)!r} exists, is not empty and has no config.yaml; "
                "it is not an innerdist run: choose another run directory"
            )
        return None
    saved = load_config(saved_path)
    old, new = saved.to_dict(), config.to_dict()
    old_its, new_its = old["training"].pop("iterations"), new["training"].pop("iterations")
    # A time budget is for one call, not part of what was trained.
    old["training"].pop("max_minutes", None)
    new["training"].pop("max_minutes", None)
    changed = _differences(old, new)
    if new_its < old_its:
        changed.insert(0, f"training.iterations: {old_its!r} -> {new_its!r}")
    if changed:
        more = f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
        shown = "; ".join(changed[:3]) + more
        raise ValueError(
            f"the config differs from the one run {str(run_dir)!r} started with ({shown}); "
            "only training.iterations may grow (and training.max_minutes change) when "
            "resuming: use another run directory (--run-dir) to train with new settings"
        )
    return saved


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every ``iteration_<n>.pt``, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _CHECKPOINT.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _slug(criterion: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", criterion)


def _best_file(criteria: Sequence[str], criterion: str) -> str:
    return "best.pt" if criterion == criteria[0] else f"best-{_slug(criterion)}.pt"


# --- devices and data -------------------------------------------------------------------


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _threads(num_workers: int) -> int:
    """Torch threads for the training step on the CPU: ``OMP_NUM_THREADS`` when set, else
    the cores left over by the loader workers. (On a machine that other jobs keep busy,
    fewer threads are faster: OpenMP threads that wait for a busy core stall every op.)"""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        return int(env)
    return max(1, _cores() - num_workers)


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("training.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def _worker_init(_: int) -> None:
    import torch

    # Loader workers only cut and augment crops; one thread each leaves the cores to the
    # training step.
    torch.set_num_threads(1)


def _unwrap_loader_error(error: Exception) -> Exception:
    """A data-loader worker re-raises errors as 'Caught ValueError in DataLoader worker';
    recover the original message (its last line) so the CLI can print it."""
    text = str(error)
    if "DataLoader worker" not in text:
        return error
    last = text.strip().splitlines()[-1]
    message = last.split(": ", 1)[1] if ": " in last else last
    return type(error)(message)


# --- training ---------------------------------------------------------------------------


@dataclass
class _Setup:
    """What :func:`train` and :func:`plan_training` check and build before a run
    directory is touched."""

    config: TrainConfig
    run: Path
    minutes: float | None
    saved: TrainConfig | None
    predictor: Any
    unet: Any
    sampler: Any
    voxel_size: tuple[int, ...]
    normalization: dict[str, Any]
    volumes: list[Any]
    device: torch.device


def _prepare(
    config_path: str | Path, run_dir: str | Path | None, minutes: float | None
) -> _Setup:
    """Read the config and check everything that can fail on bad input (raises with one
    line naming the problem); writes nothing."""
    from innerdist.crops import CropSampler, VolumeSource, open_sources
    from innerdist.inner_distance import InnerDistancePredictor
    from innerdist.normalize import measure_normalization

    config = load_config(config_path)
    run = Path(run_dir) if run_dir is not None else default_run_dir(config_path)
    tc = config.training
    if minutes is None:
        minutes = tc.max_minutes
    elif isinstance(minutes, bool) or not isinstance(minutes, int | float) or not (
        math.isfinite(minutes) and minutes > 0
    ):
        raise ValueError(f"minutes must be a positive number (time budget), got {minutes!r}")
    saved = _check_resumable(run, config)

    # --- everything that can fail on bad input, before the run directory is touched ---
    task = config.task
    predictor = InnerDistancePredictor(
        task.channels, task.scale_factor, epsilon=task.epsilon, threshold=task.threshold
    )
    unet = config.model.unet()
    sources = open_sources(
        [VolumeSource.model_validate(s.model_dump(exclude_none=True)) for s in config.data.train],
        task.channels,
    )
    voxel_size = tuple(int(v) for v in sources[0].voxel_size)
    if unet.dims != len(voxel_size):
        raise ValueError(
            f"model.input_shape has {unet.dims} axes but the training data "
            f"{sources[0].source.raw!r} has {len(voxel_size)} spatial axes"
        )
    if sources[0].num_raw_channels != unet.num_in_channels:
        raise ValueError(
            f"training raw {sources[0].source.raw!r} has {sources[0].num_raw_channels} "
            f"channel(s) but model.num_in_channels is {unet.num_in_channels}"
        )
    given = tc.normalization
    normalization = measure_normalization(
        [(s.raw, s.roi, s.source.raw) for s in sources],
        given=None if given is None else given.model_dump(),
    )
    input_shape = tuple(int(s) for s in unet.input_shape)
    output_shape = tuple(int(s) for s in unet.output_shape(input_shape))
    sampler = CropSampler(
        sources,
        predictor,
        input_shape,
        output_shape,
        augment=tc.augment,
        normalization=normalization,
        min_foreground_fraction=tc.min_foreground_fraction,
    )
    volumes = load_validation_volumes(
        config.data.validate_, task.channels, normalization, tuple(unet.context)
    )
    for v in volumes:
        if tuple(v.voxel_size) != voxel_size or v.raw.shape[0] != unet.num_in_channels:
            raise ValueError(
                f"validation raw {v.name!r} has voxel size {tuple(v.voxel_size)} and "
                f"{v.raw.shape[0]} channel(s); the training data has {voxel_size} and "
                f"{unet.num_in_channels}"
            )
    device = _device(tc.device)

    return _Setup(config, run, minutes, saved, predictor, unet, sampler, voxel_size,
                  normalization, volumes, device)


def train(
    config_path: str | Path,
    run_dir: str | Path | None = None,
    *,
    progress: bool = True,
    minutes: float | None = None,
) -> RunResult:
    """Train (or resume training) as ``config_path`` says; see the module docstring.

    ``minutes`` (default ``training.max_minutes``; ``None``: no limit) is this call's time
    budget, counted from the call: training stops after the first iteration with which the
    elapsed time plus the duration of the last validation reaches it, with a checkpoint and
    a validation of that iteration (so ``best.pt`` knows the last state). Running again
    resumes from there.

    Raises ``ValueError``/``TypeError`` (invalid config, unusable data: missing datasets
    are ``FileNotFoundError``), with one line naming the problem, before the run directory
    is created or changed.
    """
    call_began = _now()
    import torch

    from innerdist.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from innerdist.crops import TrainingDataset

    setup = _prepare(config_path, run_dir, minutes)
    config, run, tc, minutes = setup.config, setup.run, setup.config.training, setup.minutes
    budget_s = None if minutes is None else float(minutes) * 60.0
    saved, predictor, unet, sampler = setup.saved, setup.predictor, setup.unet, setup.sampler
    voxel_size, normalization, volumes = setup.voxel_size, setup.normalization, setup.volumes
    device = setup.device

    # --- the run directory ---
    ckpt_dir = run / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run / "config.yaml")
    stats_log = _CsvLog(run / "stats.csv", STATS_COLUMNS)
    criteria = config.validation.criteria
    selection: dict[str, Any] = {
        "smooth_levels": config.validation.smooth_levels,
        "smooth_checkpoints": config.validation.smooth_checkpoints,
    }
    val_log = _CsvLog(run / "validation.csv", [*ROW_KEYS, *criteria])

    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(_threads(tc.num_workers))
    try:
        def fresh() -> tuple[Model, torch.optim.Optimizer]:
            torch.manual_seed(tc.seed)
            model = predictor.create_model(unet).to(device)
            return model, _optimizer(tc, model)

        model, optimizer = fresh()
        use_amp = tc.amp and device.type == "cuda"
        amp_dtype = (
            torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        )
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        # --- resume ---
        start, elapsed = 0, 0.0
        if saved is not None:
            for iteration, path in _checkpoints(ckpt_dir):
                try:
                    ckpt = load_checkpoint(path)
                    state = ckpt.training_state
                    if state is None:
                        raise ValueError("it has no training state")
                    model.load_state_dict(ckpt.weights)
                    optimizer.load_state_dict(state["optimizer"])
                    scaler.load_state_dict(state["scaler"])
                except (ValueError, KeyError, RuntimeError) as e:
                    warnings.warn(
                        f"skipping checkpoint {str(path)!r} when resuming: {e}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
                torch.set_rng_state(state["torch_rng"])
                if device.type == "cuda" and state.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(state["cuda_rng"], device)
                start, elapsed = iteration, float(state["elapsed_s"])
                break
            else:
                if _checkpoints(ckpt_dir):
                    # Every checkpoint failed, maybe after loading some weights: start over.
                    model, optimizer = fresh()
                    scaler = torch.amp.GradScaler("cuda", enabled=scaler.is_enabled())
        stats_log.truncate(start)
        rows = _validation_rows(val_log.truncate(start), criteria)
        best = select_best(rows, criteria, **selection)
        validation_seconds = 0.0
        if start > 0:
            logger.info("resuming %s from iteration %d", run, start)
            _repair_best(ckpt_dir, best, criteria, voxel_size)

        def checkpoint(iteration: int) -> Any:
            state = {
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "elapsed_s": elapsed,
            }
            ckpt = Checkpoint.from_model(
                model,
                predictor,
                voxel_size=voxel_size,
                normalization=normalization,
                iteration=iteration,
                training_state=state,
            )
            save_checkpoint(ckpt_dir / f"iteration_{iteration}.pt", ckpt)
            stats_log.flush()
            return ckpt

        last_validation_s = 0.0

        def run_validation(iteration: int, ckpt: Any) -> None:
            nonlocal best, validation_seconds, last_validation_s
            began = time.perf_counter()
            new_rows = validate(model, volumes, config.validation, iteration=iteration,
                                device=device, scale=config.task.scale_factor)
            val_log.append(new_rows)
            val_log.flush()
            rows.extend(new_rows)
            best = select_best(rows, criteria, **selection)
            for b in best.values():
                if b.iteration == iteration:
                    _write_best(ckpt_dir, ckpt, b, criteria, voxel_size)
            _write_best_json(ckpt_dir, best, criteria, voxel_size)
            _plot_validation(run, rows, criteria, best)
            last_validation_s = time.perf_counter() - began
            validation_seconds += last_validation_s

        def due(iteration: int, interval: int) -> bool:
            return iteration % interval == 0 or iteration == tc.iterations

        if (
            volumes
            and 0 < start <= tc.iterations
            and due(start, tc.validation_interval)
            and not any(r["iteration"] == start for r in rows)
        ):
            # Killed after the checkpoint was saved but before its validation was logged.
            run_validation(start, load_checkpoint(ckpt_dir / f"iteration_{start}.pt"))

        # --- the loop ---
        dataset = TrainingDataset(sampler, tc.seed, tc.iterations * tc.batch_size)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=tc.batch_size,
            sampler=range(start * tc.batch_size, tc.iterations * tc.batch_size),
            num_workers=tc.num_workers,
            worker_init_fn=_worker_init if tc.num_workers else None,
            # spawn: safe whatever threads this process runs (see TrainingDataset); each
            # worker pays its imports once, as workers persist.
            multiprocessing_context="spawn" if tc.num_workers else None,
            persistent_workers=bool(tc.num_workers),
            prefetch_factor=4 if tc.num_workers else None,
            pin_memory=device.type == "cuda",
        )
        from innerdist.progress import Progress

        # A bar on a terminal, a plain line every 10 s in a log.
        bar = Progress(tc.iterations, "train", "it", initial=start, enabled=progress)
        batches: Iterator[dict[str, torch.Tensor]] = iter(loader)
        model.train()
        loss_value: float | None = None
        session_wait = session_time = 0.0
        done_here = 0
        last_ckpt = ckpt_dir / f"iteration_{start}.pt" if start else None
        plotted = -1  # the iteration whose logs the PNGs show
        # Rows wait for their loss here: reading a CUDA loss stalls the GPU queue, so it is
        # read back for many iterations at once (every iteration on the CPU, where it is free).
        pending: list[tuple[dict[str, Any], torch.Tensor]] = []
        sync_every = 1 if _loss_sync_is_free(device) else LOSS_SYNC_INTERVAL

        def log_losses() -> None:
            nonlocal loss_value
            if not pending:
                return
            values = torch.stack([loss for _, loss in pending]).float().cpu().tolist()
            rows = []
            for (row, _), value in zip(pending, values, strict=True):
                if not math.isfinite(value):
                    raise ValueError(
                        f"the loss became {value} at iteration {row['iteration']}; lower "
                        "training.optimizer.lr or check the data"
                    )
                rows.append({**row, "loss": value})
            pending.clear()
            stats_log.append(rows)
            loss_value = values[-1]
            stats_log.flush_every(10.0)
            bar.set_postfix(loss=f"{loss_value:.4g}")

        last_iteration = start
        out_of_time = False
        try:
            for iteration in range(start + 1, tc.iterations + 1):
                t0 = time.perf_counter()
                try:
                    batch = next(batches)
                except (ValueError, TypeError, FileNotFoundError) as e:
                    raise _unwrap_loader_error(e) from e
                t1 = time.perf_counter()
                lr = learning_rate(tc, iteration)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                raw = batch["raw"].to(device, non_blocking=True)
                target = batch["target"].to(device, non_blocking=True)
                weight = batch["weight"].to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    prediction = model(raw)
                loss = weighted_mse(prediction, target, weight)
                scaler.scale(loss).backward()
                if tc.max_grad_norm is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients, not fp16-scaled ones
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                t2 = time.perf_counter()
                step, wait = t2 - t0, t1 - t0
                elapsed += step
                session_wait += wait
                session_time += step
                done_here += 1
                pending.append(({
                    "iteration": iteration,
                    "lr": lr,
                    "step_time_s": round(step, 6),
                    "data_wait_s": round(wait, 6),
                    "data_wait_fraction": round(wait / step, 4) if step > 0 else 0.0,
                    "elapsed_s": round(elapsed, 3),
                }, loss.detach()))
                last_iteration = iteration
                # The final validation must fit the budget too: reserve the last one's time.
                out_of_time = (
                    budget_s is not None
                    and iteration < tc.iterations
                    and _now() - call_began + last_validation_s >= budget_s
                )
                validating = bool(volumes) and (
                    due(iteration, tc.validation_interval) or out_of_time
                )
                checkpointing = validating or out_of_time or due(iteration, tc.checkpoint_interval)
                if checkpointing or len(pending) >= sync_every or iteration == tc.iterations:
                    log_losses()
                bar.update(1)

                if tc.snapshot_interval and iteration % tc.snapshot_interval == 0:
                    _snapshot(run, iteration, batch, prediction, unet.dims)
                if checkpointing:
                    ckpt = checkpoint(iteration)
                    last_ckpt = ckpt_dir / f"iteration_{iteration}.pt"
                    if validating:
                        run_validation(iteration, ckpt)
                    _prune(ckpt_dir, tc.keep_last)
                    if validating or not volumes:
                        _plot_loss(run, stats_log)
                        plotted = iteration
                if out_of_time:
                    logger.info(
                        "time budget of %g min reached at iteration %d of %d; run again to "
                        "resume", minutes, iteration, tc.iterations,
                    )
                    break
        finally:
            bar.close()
            stats_log.close()
            val_log.close()
            del batches  # shuts loader workers down

        # The loop always checkpoints its last iteration; with nothing left to do, the
        # resumed checkpoint is the last one.
        last = last_ckpt if last_ckpt is not None else ckpt_dir / f"iteration_{start}.pt"
        if plotted != last_iteration:
            _plot_loss(run, stats_log)
        if rows and plotted != last_iteration:
            _plot_validation(run, rows, criteria, best)
    finally:
        torch.set_num_threads(threads_before)

    return RunResult(
        run_dir=run,
        iteration=max(start, last_iteration),
        resumed_from=start,
        final_loss=loss_value,
        last_checkpoint=last,
        best_checkpoint=(ckpt_dir / "best.pt") if (ckpt_dir / "best.pt").exists() else None,
        best=best,
        iterations_per_second=done_here / session_time if session_time > 0 else None,
        data_wait_fraction=session_wait / session_time if session_time > 0 else None,
        validation_seconds=validation_seconds,
        out_of_time=out_of_time,
    )


def plan_training(
    config_path: str | Path,
    run_dir: str | Path | None = None,
    *,
    minutes: float | None = None,
    timed_iterations: int = 2,
) -> TrainingPlan:
    """``innerdist train --dry-run``: what :func:`train` with these arguments would do,
    from the same checks and ``timed_iterations`` real training steps (after one warm-up)
    on crops of the configured data, with a throw-away model and optimizer; the size of
    one checkpoint is measured by saving one to a temporary folder. Nothing is written
    into the run directory."""
    import torch

    from innerdist.checkpoint import Checkpoint, save_checkpoint
    from innerdist.plan import TrainingPlan, _reset_peak, _rss_and_peak

    if isinstance(timed_iterations, bool) or not isinstance(timed_iterations, int) \
            or timed_iterations < 1:
        raise ValueError(f"timed_iterations must be an integer >= 1, got {timed_iterations!r}")
    setup = _prepare(config_path, run_dir, minutes)
    tc, unet, device = setup.config.training, setup.unet, setup.device
    start = next(iter(_checkpoints(setup.run / "checkpoints")), (0, None))[0] \
        if setup.saved is not None else 0
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(_threads(0))
    try:
        torch.manual_seed(tc.seed)
        model = setup.predictor.create_model(unet).to(device)
        optimizer = _optimizer(tc, model)
        use_amp = tc.amp and device.type == "cuda"
        amp_dtype = (
            torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        )
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        from innerdist.crops import TrainingDataset

        dataset = TrainingDataset(setup.sampler, tc.seed, (timed_iterations + 1) * tc.batch_size)

        def step(index: int) -> float:
            began = time.perf_counter()
            items = [dataset[index * tc.batch_size + b] for b in range(tc.batch_size)]
            batch = {k: torch.stack([item[k] for item in items]).to(device) for k in items[0]}
            waited = time.perf_counter() - began
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                prediction = model(batch["raw"])
            loss = weighted_mse(prediction, batch["target"], batch["weight"])
            scaler.scale(loss).backward()
            if tc.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            float(loss)  # waits for the device
            return waited

        model.train()
        step(0)  # warm-up: allocations, kernels, first reads
        before = _rss_and_peak()
        measurable = before is not None and _reset_peak()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        waited = sum(step(i) for i in range(1, timed_iterations + 1))
        seconds = (time.perf_counter() - began) / timed_iterations
        after = _rss_and_peak()
        host = after[1] - before[0] if measurable and before and after else None
        gpu = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
        with tempfile.TemporaryDirectory(prefix="innerdist-plan-") as tmp:
            state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "torch_rng": torch.get_rng_state(), "cuda_rng": None, "elapsed_s": 0.0}
            ckpt = Checkpoint.from_model(model, setup.predictor, voxel_size=setup.voxel_size,
                                         normalization=setup.normalization, iteration=1,
                                         training_state=state)
            size = save_checkpoint(Path(tmp) / "iteration_1.pt", ckpt).stat().st_size
    finally:
        torch.set_num_threads(threads_before)
    input_shape = tuple(int(s) for s in unet.input_shape)
    return TrainingPlan(
        input_shape=input_shape,
        output_shape=tuple(int(s) for s in unet.output_shape(input_shape)),
        batch_size=tc.batch_size,
        output_step=tuple(int(s) for s in unet.output_step),
        context=tuple(int(c) for c in unet.context),
        parameters=sum(p.numel() for p in model.parameters()),
        device=str(device),
        iteration_seconds=seconds,
        data_seconds=waited / timed_iterations,
        timed_iterations=timed_iterations,
        host_memory_bytes=host,
        device_memory_bytes=gpu,
        start=start,
        iterations=tc.iterations,
        budget_seconds=None if setup.minutes is None else float(setup.minutes) * 60.0,
        checkpoint_bytes=size,
        checkpoints_kept=tc.keep_last + len(setup.config.validation.criteria),
    )


def _loss_sync_is_free(device: torch.device) -> bool:
    """Reading a loss back costs nothing on the CPU; on a GPU it waits for its queue."""
    return device.type == "cpu"


def _optimizer(tc: TrainingConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    import torch

    o = tc.optimizer
    params = model.parameters()
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` iteration checkpoints (best files are copies)."""
    for _, path in _checkpoints(ckpt_dir)[keep_last:]:
        path.unlink(missing_ok=True)


def _write_best(
    ckpt_dir: Path, ckpt: Any, best: Best, criteria: Sequence[str], voxel_size: Sequence[int]
) -> None:
    """``best.pt`` / ``best-<criterion>.pt``: the checkpoint with the criterion's levels as
    its post-processing params and without the training state (it is for prediction)."""
    from innerdist.checkpoint import Checkpoint, save_checkpoint

    copy = Checkpoint(
        architecture=ckpt.architecture,
        predictor=ckpt.predictor,
        weights=ckpt.weights,
        voxel_size=ckpt.voxel_size,
        normalization=ckpt.normalization,
        iteration=ckpt.iteration,
        postprocessing=best.postprocessing(voxel_size),
        training_state=None,
    )
    save_checkpoint(ckpt_dir / _best_file(criteria, best.criterion), copy)


def _write_best_json(
    ckpt_dir: Path, best: Mapping[str, Best], criteria: Sequence[str], voxel_size: Sequence[int]
) -> None:
    entries = {}
    for criterion in criteria:
        if criterion not in best:
            continue
        b = best[criterion]
        entries[criterion] = {
            **b.to_dict(),
            "min_size_voxels": b.postprocessing(voxel_size)["min_size"],
            "checkpoint": _best_file(criteria, criterion),
        }
    text = json.dumps({"primary": criteria[0], "criteria": entries}, indent=2) + "\n"
    _atomic_write(ckpt_dir / "best.json", text)


def _repair_best(
    ckpt_dir: Path, best: Mapping[str, Best], criteria: Sequence[str], voxel_size: Sequence[int]
) -> None:
    """Make the best files agree with the validation log (after a crash between logging a
    validation and updating them). Only the newest checkpoint can be missing from them,
    and it is never pruned, so the weights are there."""
    from innerdist.checkpoint import load_checkpoint

    path = ckpt_dir / "best.json"
    try:
        recorded = json.loads(path.read_text())["criteria"] if path.exists() else {}
    except (ValueError, KeyError):
        recorded = {}
    stale = False
    for criterion, b in best.items():
        entry = recorded.get(criterion)
        if entry is not None and {k: entry.get(k) for k in b.to_dict()} == b.to_dict():
            continue
        stale = True
        source = ckpt_dir / f"iteration_{b.iteration}.pt"
        if source.exists():
            _write_best(ckpt_dir, load_checkpoint(source), b, criteria, voxel_size)
        else:
            warnings.warn(
                f"cannot restore {_best_file(criteria, criterion)}: checkpoint of iteration "
                f"{b.iteration} no longer exists",
                RuntimeWarning,
                stacklevel=3,
            )
    if stale or set(recorded) != set(best):
        _write_best_json(ckpt_dir, best, criteria, voxel_size)


# --- pictures ---------------------------------------------------------------------------


def _plot_loss(run: Path, log: _CsvLog) -> None:
    from innerdist.plots import plot_loss

    rows = log.rows()
    if rows:
        plot_loss(
            [int(r["iteration"]) for r in rows],
            [float(r["loss"]) for r in rows],
            run / "loss.png",
            learning_rates=[float(r["lr"]) for r in rows],
        )


def _plot_validation(
    run: Path, rows: Sequence[Mapping[str, Any]], criteria: Sequence[str], best: Mapping[str, Best]
) -> None:
    from innerdist.plots import plot_validation

    plot_validation(
        {c: scores_per_iteration(rows, c) for c in criteria},
        run / "validation.png",
        best={c: b.iteration for c, b in best.items()},
    )


def _snapshot(
    run: Path, iteration: int, batch: Mapping[str, Any], prediction: Any, dims: int
) -> None:
    from innerdist.plots import plot_slices

    raw = batch["raw"][0].numpy()
    target = batch["target"][0].numpy()
    # Show raw over the output region, so every panel covers the same voxels.
    inner = [
        slice((r - t) // 2, (r - t) // 2 + t)
        for r, t in zip(raw.shape[1:], target.shape[1:], strict=True)
    ]
    raw = raw[(slice(None), *inner)]
    plot_slices(
        {
            "raw": (raw, "intensity"),
            "labels": (batch["labels"][0].numpy(), "labels"),
            "target": (target, "distance"),
            "prediction": (prediction[0].detach().float().cpu().numpy(), "distance"),
            "weight": (batch["weight"][0].numpy(), "weight"),
        },
        run / "snapshots" / f"iteration_{iteration}.png",
        dims=dims,
        title=f"iteration {iteration} (first crop of the batch, channel 0)",
    )
