"""The ``innerdist`` command line: thin wrappers that parse arguments and call the library.

Heavy modules (torch, numba kernels, daisy) are imported inside the commands, after
argument parsing, so ``innerdist --help`` is instant. Every failure is one line on stderr,
``innerdist COMMAND: error: ...``:

- bad input (``ValueError``, ``TypeError``, missing or existing files, bad option values
  and other usage errors): exit code 2;
- faults of the machine (read-only or full disk, permission denied, I/O errors: any other
  ``OSError``), naming the path and the cause: exit code 1. Outputs stay marked
  incomplete, so the same command resumes once the fault is fixed;
- anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

# typer >= 0.2x runs on its own copy of click (typer._click); its contexts and usage errors
# are those classes, not the click package's.
try:
    from typer._click import exceptions as click_exceptions
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - typer on the click package
    from click import exceptions as click_exceptions  # type: ignore[no-redef]
    from click import get_current_context  # type: ignore[no-redef]


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a bad option value, a missing argument) as one line and exit code 2,
    in the form every other error has, instead of click's boxed usage panel."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        try:
            result = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click_exceptions.ClickException as e:
            if not standalone:
                raise
            if isinstance(e, click_exceptions.NoArgsIsHelpError):
                e.show()  # the help text
                sys.exit(e.exit_code)
            context = getattr(e, "ctx", None)
            command = context.info_name if context is not None else None
            prefix = "innerdist" if command in (None, "innerdist") else f"innerdist {command}"
            typer.echo(f"{prefix}: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            if not standalone:
                raise
            typer.echo("innerdist: aborted", err=True)
            sys.exit(1)
        if not standalone:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="innerdist",
    help="Inner-distance targets, training, blockwise prediction, segmentation and scoring "
    "of 2-D/3-D microscopy volumes. Volumes are given as CONTAINER/DATASET paths, e.g. "
    "data.zarr/raw.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)


_OUTPUT_ARGUMENTS = ("out", "out_dir", "run_dir")


def fault_message(error: OSError, output: str | None = None) -> str:
    """One line naming the path and the cause of a fault (full or read-only disk...).

    >>> fault_message(OSError(30, "Read-only file system", "out.zarr/pred"))
    'out.zarr/pred: read-only file system (errno EROFS); choose a writable output location'
    """
    cause = error.strerror or str(error) or type(error).__name__
    if cause[:2] != cause[:2].upper():  # "No space ..." -> "no space ...", keep "I/O ..."
        cause = cause[0].lower() + cause[1:]
    name = errno.errorcode.get(error.errno) if isinstance(error.errno, int) else None
    code = f" (errno {name})" if name else ""
    paths = [os.fsdecode(p) for p in (error.filename, error.filename2) if p is not None]
    if paths:
        where = f"{' -> '.join(paths)}: "
    else:  # e.g. zarr's writes do not name the chunk: name the command's output
        where = f"writing {output}: " if output else ""
    fix = {
        errno.ENOSPC: "free space, then run the same command again to resume",
        errno.EDQUOT: "free space, then run the same command again to resume",
        errno.EROFS: "choose a writable output location",
        errno.EACCES: "check the permissions (or choose another output location)",
        errno.EPERM: "check the permissions (or choose another output location)",
    }.get(error.errno if isinstance(error.errno, int) else -1, "")
    first_line = f"{where}{cause.strip().splitlines()[0] if cause.strip() else cause}{code}"
    return f"{first_line}; {fix}" if fix else first_line


def _expand_home(value: Any) -> Any:
    """``~/data.zarr/raw`` -> ``$HOME/data.zarr/raw``, as a shell does for an unquoted word.

    A ``~`` reaches the program when the word was quoted or followed ``=`` (``--out=~/x``);
    a user still means their home folder. Only strings starting with ``~`` change.
    """
    if isinstance(value, str) and (value == "~" or value.startswith(("~/", "~" + os.sep))):
        return os.path.expanduser(value)
    return value


def user_errors_exit_2(func: F) -> F:
    """Turn errors caused by bad input into one line on stderr and exit code 2, and faults
    of the machine (any other ``OSError``) into one line naming path and cause, exit 1.

    String arguments starting with ``~`` are expanded to the home folder first.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs = {name: _expand_home(value) for name, value in kwargs.items()}
        context = get_current_context(silent=True)
        command = context.info_name if context else func.__name__.replace("_", "-")
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            typer.echo(f"innerdist {command}: error: {message}", err=True)
            raise typer.Exit(code=2) from None
        except OSError as e:
            output = next((str(kwargs[k]) for k in _OUTPUT_ARGUMENTS if kwargs.get(k)), None)
            typer.echo(f"innerdist {command}: error: {fault_message(e, output)}", err=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # daisy warns about every failed block; the error that stops the command is printed
        # once, as one line, by user_errors_exit_2 (details stay in the worker logs).
        logging.getLogger("daisy").setLevel(logging.ERROR)
    # A warning for the user is one line, not the library's source line that raised it.
    warnings.formatwarning = _one_line_warning


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    line: str | None = None,
) -> str:
    """``innerdist: warning: MESSAGE`` (the file and line only with ``-v``)."""
    where = f" ({filename}:{lineno})" if logging.getLogger().isEnabledFor(logging.INFO) else ""
    return f"innerdist: warning: {message}{where}\n"


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]
Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")]
WorkerCommand = Annotated[
    str | None,
    typer.Option(
        "--worker-command",
        envvar="INNERDIST_WORKER_COMMAND",
        help="Start each worker through this shell command template, {command} standing for "
        "the worker, e.g. 'srun --gres=gpu:1 {command}' or 'bsub -K -n 4 {command}'; it must "
        "wait for the worker. Inputs and outputs must be on a shared file system.",
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an existing output of another innerdist job (never anything else) "
        "instead of failing.",
    ),
]
Level = Annotated[
    int | None,
    typer.Option(
        min=0, help="Level of an OME-Zarr multiscale input (default 0; or name it: img/s1)."
    ),
]
NoPyramid = Annotated[
    bool,
    typer.Option("--no-pyramid", help="Write level s0 only, no multiscale pyramid."),
]
AllowIncomplete = Annotated[
    bool,
    typer.Option(
        "--allow-incomplete",
        help="Use an input that an innerdist job marked incomplete (half-written), with a "
        "warning, instead of refusing it.",
    ),
]


def _complete_output(path: str) -> bool:
    """Whether ``path`` is an output that an innerdist job finished (read before a run:
    a run that then succeeds without --overwrite was the same job, a no-op)."""
    from innerdist.attrs import COMPLETE_ATTR
    from innerdist.volumes import open_volume

    try:
        return open_volume(path).attrs.get(COMPLETE_ATTR) is True
    except (OSError, ValueError, TypeError):
        return False


def _report(result: str, *, was_complete: bool) -> None:
    if was_complete:
        typer.echo(f"{result} is already complete (same job): nothing to do")
    else:
        typer.echo(f"wrote {result}")


@app.command()
@user_errors_exit_2
def targets(
    labels: Annotated[str, typer.Argument(help="Instance label volume, e.g. gt.zarr/labels.")],
    out: Annotated[str, typer.Argument(help="Output volume, e.g. gt.zarr/targets.")],
    scale_factor: Annotated[
        float, typer.Option("--scale-factor", "-s", help="tanh scale in world units (nm, or px).")
    ],
    channels: Annotated[
        list[str] | None,
        typer.Option("--channels", "-c", help="Channel names (default: one per label channel)."),
    ] = None,
    block_shape: Annotated[
        str | None,
        typer.Option(help="Write block shape in voxels, comma separated (default: 64 per axis)."),
    ] = None,
    workers: Workers = 1,
    level: Level = None,
    no_pyramid: NoPyramid = False,
    worker_command: WorkerCommand = None,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Compute inner-distance targets of a label volume blockwise (resumable)."""
    _setup_logging(verbose)
    from innerdist.targets import compute_targets
    from innerdist.volumes import level_path

    was_complete = not overwrite and _complete_output(out)
    result = compute_targets(
        level_path(labels, level),
        out,
        scale_factor=scale_factor,
        channels=channels,
        block_shape=_parse_shape(block_shape),
        num_workers=workers,
        worker_command=worker_command,
        overwrite=overwrite,
        pyramid=not no_pyramid,
    )
    _report(result, was_complete=was_complete)


@app.command()
@user_errors_exit_2
def evaluate(
    predicted: Annotated[str, typer.Argument(help="Segmentation to score, e.g. out.zarr/seg.")],
    ground_truth: Annotated[str, typer.Argument(help="Ground truth, e.g. gt.zarr/labels.")],
    mask: Annotated[
        str | None, typer.Option("--mask", "-m", help="Volume whose 0 voxels are ignored.")
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="auto|binary|instances; auto = binary for bool/uint8 volumes, else instances."
        ),
    ] = "auto",
    tol_distance: Annotated[
        float, typer.Option(help="Distance tolerance, world units (nm).")
    ] = 40.0,
    clip_distance: Annotated[
        float, typer.Option(help="Distances are clipped here (also caps Hausdorff), nm.")
    ] = 200.0,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Write scores to this .json (+ .csv).")
    ] = None,
    block_shape: Annotated[
        str | None,
        typer.Option(help="Block shape in voxels, comma separated (default 128^3 / 1024^2)."),
    ] = None,
    iou_thresholds: Annotated[
        str | None,
        typer.Option(
            help="IoU thresholds, comma separated, e.g. 0.5,0.75 (a pair matches when "
            "IoU >= t; default 0.1,0.2,...,0.9,0.95)."
        ),
    ] = None,
    workers: Workers = 1,
    worker_command: WorkerCommand = None,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Score a segmentation against ground truth (binary and instance scores), blockwise
    (resumable with --out: the block counts wait next to it until the scores are written)."""
    _setup_logging(verbose)
    from innerdist.evaluate import (
        DEFAULT_IOU_THRESHOLDS,
        evaluate_volumes,
        format_scores,
        parse_iou_thresholds,
        write_scores,
    )

    if mode not in ("auto", "binary", "instances"):
        raise ValueError(f"--mode must be auto, binary or instances, got {mode!r}")
    thresholds = (
        DEFAULT_IOU_THRESHOLDS if iou_thresholds is None else parse_iou_thresholds(iou_thresholds)
    )
    if out is not None and not out.endswith(".json"):
        raise ValueError(f"--out must end in .json, got {out!r}")
    if out is not None and not overwrite:
        for existing in (Path(out), Path(out).with_suffix(".csv")):
            if existing.exists():
                raise FileExistsError(
                    f"{str(existing)!r} already exists; pass --overwrite to replace it"
                )
    scores = evaluate_volumes(
        predicted,
        ground_truth,
        mask=mask,
        mode=mode,  # type: ignore[arg-type]
        tol_distance=tol_distance,
        clip_distance=clip_distance,
        block_shape=_parse_shape(block_shape),
        iou_thresholds=thresholds,
        num_workers=workers,
        worker_command=worker_command,
        tracking_dir=None if out is None else Path(out).with_suffix(".blocks"),
    )
    typer.echo(format_scores(scores))
    if out is not None:
        json_path, csv_path = write_scores(scores, out, overwrite=overwrite)
        typer.echo(f"wrote {json_path} and {csv_path}")


@app.command()
@user_errors_exit_2
def predict(
    checkpoint: Annotated[
        str,
        typer.Argument(
            help="Checkpoint file (innerdist train output) or a bioimage.io package from "
            "innerdist export (.zip, folder or rdf.yaml)."
        ),
    ],
    raw: Annotated[str, typer.Argument(help="Raw volume, e.g. data.zarr/raw.")],
    out: Annotated[str, typer.Argument(help="Output volume, e.g. data.zarr/prediction.")],
    roi: Annotated[
        str | None,
        typer.Option(
            help="Region to predict in world units (nm), 'BEGIN:END' with comma-separated "
            "begin (inclusive) and end (exclusive) per axis, e.g. '0,0,0:400,800,800'. "
            "Default: the whole raw volume."
        ),
    ] = None,
    workers: Workers = 1,
    worker_command: WorkerCommand = None,
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda or cuda:N (default: cuda when available)."),
    ] = None,
    block_shape: Annotated[
        str | None,
        typer.Option(
            help="Write block (and chunk) shape in output voxels, comma separated; rounded "
            "up to the network's output step (default: planned from the network's tiles, "
            "the memory budget and the volume)."
        ),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="Memory one block may use when blocks are planned, e.g. 4G (default: a "
            "quarter of the RAM shared by the workers)."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Network tiles per forward pass.")
    ] = 1,
    dtype: Annotated[
        str,
        typer.Option(help="Output dtype: float32, float16 or uint8 (quantized to [0, 1])."),
    ] = "float32",
    level: Level = None,
    time: Annotated[
        int | None,
        typer.Option(min=0, help="Time point of an OME-Zarr raw with a t axis (0-based)."),
    ] = None,
    no_pyramid: NoPyramid = False,
    precision: Annotated[
        str,
        typer.Option(help="Forward pass precision: fp32, or fp16/bf16 on a CUDA GPU (faster)."),
    ] = "fp32",
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (blocks, per-block time and memory measured on one sample "
            "block, output size, estimated wall time) and write nothing.",
        ),
    ] = False,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Test-time augmentation: average over the flips and the transposes of "
            "axes with equal voxel size (8x the time in 2-D, 16x for z,y,x with y = x, 48x "
            "isotropic 3-D).",
        ),
    ] = False,
    overwrite: Overwrite = False,
    allow_incomplete: AllowIncomplete = False,
    verbose: Verbose = False,
) -> None:
    """Predict a raw volume blockwise with a trained network (resumable: run the same
    command again after an interruption)."""
    _setup_logging(verbose)
    from innerdist.plan import parse_bytes
    from innerdist.predict import parse_roi, predict_volume
    from innerdist.volumes import level_path

    was_complete = not overwrite and _complete_output(out)
    result = predict_volume(
        checkpoint,
        level_path(raw, level),
        out,
        roi=parse_roi(roi) if roi is not None else None,
        num_workers=workers,
        worker_command=worker_command,
        device=device,
        block_shape=_parse_shape(block_shape),
        memory_budget=None if memory_budget is None else parse_bytes(memory_budget),
        batch_size=batch_size,
        dtype=dtype,
        precision=precision,
        dry_run=dry_run,
        overwrite=overwrite,
        time=time,
        pyramid=not no_pyramid,
        allow_incomplete=allow_incomplete,
        tta=tta,
    )
    if dry_run:
        typer.echo(result)
    else:
        _report(result, was_complete=was_complete)


@app.command()
@user_errors_exit_2
def segment(
    prediction: Annotated[
        str, typer.Argument(help="Prediction volume (innerdist predict), e.g. data.zarr/pred.")
    ],
    out: Annotated[str, typer.Argument(help="Output volume, e.g. data.zarr/instances.")],
    mode: Annotated[
        str,
        typer.Option(
            help="instances (uint64 ids, seeded watershed) or threshold (uint8 mask of "
            "prediction > foreground level)."
        ),
    ] = "instances",
    foreground_level: Annotated[
        float | None,
        typer.Option(
            help="Foreground where the prediction exceeds it (default: the prediction's "
            "tuned value, else 0.05)."
        ),
    ] = None,
    seed_level: Annotated[
        float | None,
        typer.Option(
            help="Seeds where the prediction exceeds it; with dynamic seeds, the level above "
            "which the prediction counts as one plateau (default: tuned value, else 0.8)."
        ),
    ] = None,
    seed_dynamic: Annotated[
        float | None,
        typer.Option(
            help="Dynamic seeds: every maximum of the inner distance rising at least this "
            "far (nm) above its saddles is a seed, whatever the object's size; 0: seeds "
            "above --seed-level only (default: tuned value, else one voxel when the "
            "prediction records its tanh scale, else 0).",
        ),
    ] = None,
    min_size: Annotated[
        float | None,
        typer.Option(
            help="Remove smaller objects; world units, nm^3 (3-D) or nm^2 (2-D), px^3/px^2 "
            "for data in px (default: "
            "tuned value, else 0)."
        ),
    ] = None,
    block_shape: Annotated[
        str | None,
        typer.Option(help="Block shape in voxels, comma separated, also the output's chunks "
                     "(default: planned from the volume, the prediction's chunks, the "
                     "workers and the memory; an existing output keeps its blocks)."),
    ] = None,
    max_watershed_voxels: Annotated[
        int,
        typer.Option(
            min=1,
            help="Touching objects whose joint bounding box has more voxels are split "
            "blockwise, approximately at block seams (a warning says so).",
        ),
    ] = 2**24,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (blocks, per-block time and memory, output size, estimated "
            "wall time per step), measured by running every step on a sample of up to 2 "
            "blocks per axis in a temporary folder; nothing is written near the output.",
        ),
    ] = False,
    workers: Workers = 1,
    no_pyramid: NoPyramid = False,
    worker_command: WorkerCommand = None,
    overwrite: Overwrite = False,
    allow_incomplete: AllowIncomplete = False,
    verbose: Verbose = False,
) -> None:
    """Segment a prediction blockwise: instances identical to a whole-volume watershed, or
    a thresholded mask (resumable: run the same command again after an interruption)."""
    _setup_logging(verbose)
    from innerdist.segment import segment_volume

    was_complete = not overwrite and _complete_output(out)
    result = segment_volume(
        prediction,
        out,
        mode=mode,
        foreground_level=foreground_level,
        seed_level=seed_level,
        seed_dynamic=seed_dynamic,
        min_size=min_size,
        block_shape=_parse_shape(block_shape),
        num_workers=workers,
        worker_command=worker_command,
        overwrite=overwrite,
        max_watershed_voxels=max_watershed_voxels,
        pyramid=not no_pyramid,
        allow_incomplete=allow_incomplete,
        dry_run=dry_run,
    )
    if dry_run:
        typer.echo(result)
    else:
        _report(result, was_complete=was_complete)


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"64,128,128"`` -> ``(64, 128, 128)``."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def _existing_path(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {path!r}")
    return p


@app.command("import-tiff")
@user_errors_exit_2
def import_tiff(
    tiff: Annotated[str, typer.Argument(help="TIFF image or stack (2-D/3-D, channels ok).")],
    out: Annotated[str, typer.Argument(help="Output volume, e.g. em.zarr/raw.")],
    voxel_size: Annotated[
        str | None,
        typer.Option(
            help="World units (nm) per voxel, z,y,x (e.g. 40,8,8); default: the TIFF's "
            "ImageJ/OME calibration."
        ),
    ] = None,
    offset: Annotated[
        str | None, typer.Option(help="World offset (nm) of the first voxel, z,y,x; default 0.")
    ] = None,
    axes: Annotated[
        str | None,
        typer.Option(
            help="The TIFF's axes in stored order from c,z,y,x (zyx, cyx, czyx, zcyx, yx, "
            "yxc...); default: from the TIFF."
        ),
    ] = None,
    chunk_shape: Annotated[
        str | None, typer.Option(help="Output chunk shape in voxels (default 64 per axis).")
    ] = None,
    unit: Annotated[
        str | None,
        typer.Option(
            help="World unit of --voxel-size/--offset: nm (default) or px for data "
            "without a physical calibration (e.g. --voxel-size 1,1 --unit px)."
        ),
    ] = None,
    roi: Annotated[
        str | None,
        typer.Option(
            help="Import only this region, world units (nm) like --voxel-size and --offset: "
            "'BEGIN:END', comma-separated begin (inclusive) and end (exclusive) per axis, "
            "z,y,x, e.g. '0,0:2048,4096'. The output keeps its world coordinates."
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Copy a TIFF into a zarr volume with voxel size and offset, streaming slab by slab."""
    from innerdist.predict import parse_roi
    from innerdist.tiff import import_tiff as run_import
    from innerdist.units import world_unit

    def ints(option: str, text: str | None, *, positive: bool) -> tuple[int, ...] | None:
        if text is None:
            return None
        try:
            values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{option}: expected comma-separated integers, got {text!r}") from None
        if not values or (positive and any(v <= 0 for v in values)):
            raise ValueError(f"{option}: expected positive integers, got {text!r}")
        return values

    array = run_import(
        _existing_path(tiff),
        out,
        voxel_size=ints("--voxel-size", voxel_size, positive=True),
        offset=ints("--offset", offset, positive=False),
        axes=axes,
        chunk_shape=ints("--chunk-shape", chunk_shape, positive=True),
        roi=None if roi is None else parse_roi(roi),
        overwrite=overwrite,
        unit=unit,
    )
    world = world_unit(array.units)
    typer.echo(
        f"wrote {out}: axes {','.join(array.axis_names)}, shape {tuple(array.shape)}, "
        f"{array.dtype}, voxel size {tuple(array.voxel_size)} {world}, "
        f"offset {tuple(array.offset)} {world}"
    )


@app.command("export-tiff")
@user_errors_exit_2
def export_tiff(
    volume: Annotated[str, typer.Argument(help="Volume to export, e.g. data.zarr/seg.")],
    out: Annotated[str, typer.Argument(help="Output TIFF file (.tif), e.g. seg.tif.")],
    roi: Annotated[
        str | None,
        typer.Option(
            help="Export only this region, world units (nm): 'BEGIN:END', comma-separated "
            "begin (inclusive) and end (exclusive) per axis. Default: the whole volume."
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write a volume as an ImageJ TIFF for Fiji or a script, calibrated with its voxel
    size; one channel gives a plain image (YX / ZYX), several a hyperstack (CYX / ZCYX)."""
    from innerdist.predict import parse_roi
    from innerdist.tiff import export_tiff as run_export

    path = run_export(
        volume, out, roi=None if roi is None else parse_roi(roi), overwrite=overwrite
    )
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        typer.echo(
            f"wrote {path}: axes {series.axes}, shape {tuple(series.shape)}, {series.dtype}"
        )


@app.command("export")
@user_errors_exit_2
def export_model(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file (innerdist train output).")],
    out: Annotated[str, typer.Argument(help="Output bioimage.io model package, e.g. model.zip.")],
    raw: Annotated[
        str | None,
        typer.Option(
            help="Raw volume whose middle becomes the package's test input (the checkpoint's "
            "voxel size and dtype); default: a synthetic image."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Model name (letters, digits, spaces, _+-()).")
    ] = None,
    author: Annotated[
        list[str] | None, typer.Option(help="Author name; repeat for several.")
    ] = None,
    license: Annotated[
        str, typer.Option(help="SPDX license id of the model, e.g. CC-BY-4.0 or MIT.")
    ] = "CC-BY-4.0",
    unit: Annotated[
        str, typer.Option(help="World unit of the checkpoint's voxel size: nm, or px.")
    ] = "nm",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing OUT.")
    ] = False,
) -> None:
    """Write a checkpoint as a bioimage.io model package (spec 0.5): TorchScript and state
    dict weights, normalisation as preprocessing, the tuned post-processing in its config.
    'innerdist predict' accepts the package in place of the checkpoint."""
    from innerdist.export import export_package

    path = export_package(
        _existing_path(checkpoint), out, raw=raw, name=name, license=license, unit=unit,
        authors=author or ("innerdist user",), overwrite=overwrite,
    )
    typer.echo(f"wrote {path}")


@app.command()
@user_errors_exit_2
def measure(
    instances: Annotated[str, typer.Argument(help="Instance volume, e.g. out.zarr/seg.")],
    out: Annotated[
        str,
        typer.Option("--out", "-o", help="Table: objects.csv or objects.parquet (+ "
                     "objects.summary.json, objects.volumes.png next to it)."),
    ],
    raw: Annotated[
        str | None, typer.Option(help="Intensities for mean/min/max/std per object.")
    ] = None,
    block_shape: Annotated[
        str | None,
        typer.Option(help="Block shape in voxels, comma separated (default 128^3 / 1024^2)."),
    ] = None,
    workers: Workers = 1,
    level: Level = None,
    worker_command: WorkerCommand = None,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """One table row per object (size, surface, centroid, box, intensities), blockwise
    for volumes larger than memory (resumable); see docs/measure.md."""
    _setup_logging(verbose)
    from innerdist.measure import measure_volume
    from innerdist.volumes import level_path

    result = measure_volume(
        level_path(instances, level), out, raw=raw, block_shape=_parse_shape(block_shape),
        num_workers=workers, worker_command=worker_command, overwrite=overwrite,
    )
    typer.echo(result.report())
    if result.already_complete:
        typer.echo(f"{out} is already complete (same job): nothing to do")
    else:
        typer.echo(f"wrote {result.table}, {result.summary_json}, {result.histogram_png}")


@app.command("make-data")
@user_errors_exit_2
def make_demo_data(
    out_dir: Annotated[str, typer.Argument(help="Directory for train/validate/test.zarr.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    dims: Annotated[int, typer.Option(help="2 or 3 spatial dimensions.")] = 3,
    overwrite: Overwrite = False,
) -> None:
    """Write synthetic EM-like demo volumes (raw + instance labels) for train/validate/test."""
    from innerdist.synthetic import make_demo_dataset

    paths = make_demo_dataset(out_dir, seed=seed, dims=dims, overwrite=overwrite)
    for split, container in paths.items():
        typer.echo(f"wrote {split}: {container / 'raw'} and {container / 'labels'}")


@app.command()
@user_errors_exit_2
def train(
    config: Annotated[str, typer.Argument(help="Training config (YAML); see examples/.")],
    run_dir: Annotated[
        str | None,
        typer.Option(help="Run directory (default: runs/<config name>/ next to the config)."),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            help="Time budget of this call in minutes: stop after a checkpoint and a "
            "validation once it is spent (default: training.max_minutes, else none).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the plan (crop shapes, network output and context, parameters, "
            "time and memory per iteration measured on two iterations, iterations that fit "
            "the time budget, checkpoint disk) and write nothing.",
        ),
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Train a U-Net as CONFIG says, validate it and keep the best checkpoint.

    Run the same command again to resume after a crash, a time budget (--minutes) or
    with more iterations.
    """
    _setup_logging(verbose)
    from innerdist.config import ConfigError
    from innerdist.train import plan_training
    from innerdist.train import train as run_training

    try:
        if dry_run:
            typer.echo(str(plan_training(config, run_dir, minutes=minutes)))
            return
        result = run_training(config, run_dir, minutes=minutes)
    except ConfigError as e:
        # All problems on the one line the error handler prints.
        raise ValueError(f"invalid config {e.source}: " + "; ".join(e.problems)) from None
    typer.echo(f"trained {result.iteration} iterations (resumed from {result.resumed_from})")
    if result.out_of_time:
        typer.echo("stopped by the time budget; run the same command again to continue")
    typer.echo(f"run directory: {result.run_dir}")
    typer.echo(f"last checkpoint: {result.last_checkpoint}")
    for criterion, best in result.best.items():
        typer.echo(
            f"best {criterion}: {best.score:.4f} at iteration {best.iteration} "
            f"(foreground_level {best.foreground_level}, seed_level {best.seed_level})"
        )
    if result.best_checkpoint is not None:
        typer.echo(f"best checkpoint: {result.best_checkpoint}")


@app.command()
@user_errors_exit_2
def demo(
    out: Annotated[
        str, typer.Option(help="Directory for the data, run, outputs and report.")
    ] = "innerdist-demo",
    iterations: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Training iterations (default: the demo's fixed number, the same on "
            "every machine).",
        ),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            min=0.2,
            help="Instead of a fixed number of iterations, as many as fit this training "
            "time budget on this machine (scores then depend on the machine's load).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the data and the training.")] = 0,
    verbose: Verbose = False,
) -> None:
    """End to end on generated EM-like data: train, predict, segment, evaluate, report.

    Deterministic by default (fixed data, seed and iterations: the same scores on every
    run). Running it again reuses the data and continues the same run.
    """
    _setup_logging(verbose)
    from innerdist.demo import run_demo

    result = run_demo(out, iterations=iterations, minutes=minutes, seed=seed)
    typer.echo(result.summary())


@app.command(hidden=True)
def worker(
    job_file: Annotated[str, typer.Argument(help="Job file written by the submitting run.")],
    context: Annotated[str, typer.Option(help="daisy worker context (host, port, task).")],
    token: Annotated[str, typer.Option(help="Name of this launch's marker files.")],
) -> None:
    """Run one blockwise worker of a job (started through --worker-command)."""
    from innerdist.workers import run_worker

    try:
        count = run_worker(job_file, context=context, token=token)
    except Exception as e:  # the launcher reports the last line; the log keeps the rest
        import traceback

        traceback.print_exc()
        typer.echo(f"innerdist worker: error: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(code=2 if isinstance(e, USER_ERRORS) else 1) from None
    typer.echo(f"innerdist worker: {count} block(s) done")


def main() -> None:
    """Entry point of the ``innerdist`` console script."""
    app()


if __name__ == "__main__":
    main()
