"""The ``innerdist`` command line: thin wrappers that parse arguments and call the library.

Heavy modules (torch, numba kernels, daisy) are imported inside the commands, after
argument parsing, so ``innerdist --help`` is instant. Errors caused by the user's input
(``ValueError``, ``TypeError``, missing or existing files) are printed as one line and exit
with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer

app = typer.Typer(
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
    PermissionError,
)


def user_errors_exit_2(func: F) -> F:
    """Turn errors caused by bad input into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            context = click.get_current_context(silent=True)
            command = context.info_name if context else func.__name__.replace("_", "-")
            typer.echo(f"innerdist {command}: error: {message}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]
Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output instead of failing.")
]


@app.command()
@user_errors_exit_2
def targets(
    labels: Annotated[str, typer.Argument(help="Instance label volume, e.g. gt.zarr/labels.")],
    out: Annotated[str, typer.Argument(help="Output volume, e.g. gt.zarr/targets.")],
    scale_factor: Annotated[
        float, typer.Option("--scale-factor", "-s", help="tanh scale in world units (nm).")
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
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Compute inner-distance targets of a label volume blockwise (resumable)."""
    _setup_logging(verbose)
    from innerdist.targets import compute_targets

    result = compute_targets(
        labels,
        out,
        scale_factor=scale_factor,
        channels=channels,
        block_shape=_parse_shape(block_shape),
        num_workers=workers,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {result}")


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
    workers: Workers = 1,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Score a segmentation against ground truth (binary and instance scores), blockwise."""
    _setup_logging(verbose)
    from innerdist.evaluate import evaluate_volumes, format_scores, write_scores

    if mode not in ("auto", "binary", "instances"):
        raise ValueError(f"--mode must be auto, binary or instances, got {mode!r}")
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
        num_workers=workers,
    )
    typer.echo(format_scores(scores))
    if out is not None:
        json_path, csv_path = write_scores(scores, out, overwrite=overwrite)
        typer.echo(f"wrote {json_path} and {csv_path}")


@app.command()
@user_errors_exit_2
def predict(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file (innerdist train output).")],
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
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda or cuda:N (default: cuda when available)."),
    ] = None,
    block_shape: Annotated[
        str | None,
        typer.Option(
            help="Write block (and chunk) shape in output voxels, comma separated; rounded "
            "up to the network's output step (default: the model's eval output shape)."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Network tiles per forward pass.")
    ] = 1,
    dtype: Annotated[
        str,
        typer.Option(help="Output dtype: float32, float16 or uint8 (quantized to [0, 1])."),
    ] = "float32",
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Predict a raw volume blockwise with a trained network (resumable: run the same
    command again after an interruption)."""
    _setup_logging(verbose)
    from innerdist.predict import parse_roi, predict_volume

    result = predict_volume(
        checkpoint,
        raw,
        out,
        roi=parse_roi(roi) if roi is not None else None,
        num_workers=workers,
        device=device,
        block_shape=_parse_shape(block_shape),
        batch_size=batch_size,
        dtype=dtype,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {result}")


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
            help="Seeds where the prediction exceeds it (default: tuned value, else 0.8)."
        ),
    ] = None,
    min_size: Annotated[
        float | None,
        typer.Option(
            help="Remove smaller objects; world units, nm^3 (3-D) or nm^2 (2-D) (default: "
            "tuned value, else 0)."
        ),
    ] = None,
    block_shape: Annotated[
        str | None,
        typer.Option(help="Block (and chunk) shape in voxels, comma separated (default 64^3 / "
                     "512^2)."),
    ] = None,
    max_watershed_voxels: Annotated[
        int,
        typer.Option(
            min=1,
            help="Touching objects whose joint bounding box has more voxels are split "
            "blockwise, approximately at block seams (a warning says so).",
        ),
    ] = 2**24,
    workers: Workers = 1,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Segment a prediction blockwise: instances identical to a whole-volume watershed, or
    a thresholded mask (resumable: run the same command again after an interruption)."""
    _setup_logging(verbose)
    from innerdist.segment import segment_volume

    result = segment_volume(
        prediction,
        out,
        mode=mode,
        foreground_level=foreground_level,
        seed_level=seed_level,
        min_size=min_size,
        block_shape=_parse_shape(block_shape),
        num_workers=workers,
        overwrite=overwrite,
        max_watershed_voxels=max_watershed_voxels,
    )
    typer.echo(f"wrote {result}")


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
    overwrite: Overwrite = False,
) -> None:
    """Copy a TIFF into a zarr volume with voxel size and offset, streaming slab by slab."""
    from innerdist.tiff import import_tiff as run_import

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
        overwrite=overwrite,
    )
    typer.echo(
        f"wrote {out}: axes {','.join(array.axis_names)}, shape {tuple(array.shape)}, "
        f"{array.dtype}, voxel size {tuple(array.voxel_size)} nm, "
        f"offset {tuple(array.offset)} nm"
    )


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
    verbose: Verbose = False,
) -> None:
    """Train a U-Net as CONFIG says, validate it and keep the best checkpoint.

    Run the same command again to resume after a crash (or with more iterations).
    """
    _setup_logging(verbose)
    from innerdist.config import ConfigError
    from innerdist.train import train as run_training

    try:
        result = run_training(config, run_dir)
    except ConfigError as e:
        # All problems on the one line the error handler prints.
        raise ValueError(f"invalid config {e.source}: " + "; ".join(e.problems)) from None
    typer.echo(f"trained {result.iteration} iterations (resumed from {result.resumed_from})")
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


def main() -> None:
    """Entry point of the ``innerdist`` console script."""
    app()


if __name__ == "__main__":
    main()
