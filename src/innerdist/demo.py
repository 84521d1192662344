"""``innerdist demo``: the whole pipeline on generated EM-like data, in a few minutes on a CPU.

::

    make_demo_dataset ──> train (calibrated to the time budget, validation picks best.pt)
         │                   │
         │  test volume      ▼
         └────────────> predict_volume (blockwise) ──> segment_volume (blockwise, levels
                                                          tuned on validation)
                                                              │
                         report.md <── evaluate_volumes <─────┘

Everything lands in one directory (default ``innerdist-demo/``)::

    data/{train,validate,test}.zarr     raw + labels, (40, 8, 8) nm voxels
    demo.yaml                           the training config
    run/                                the training run (checkpoints, logs, plots)
    test.zarr/{prediction,segmentation} blockwise outputs on the held-out test volume
    scores.json, scores.csv             evaluate's scores of the test segmentation
    slices.png                          raw / prediction / segmentation / ground truth
    report.md                           the scores table and the figures

The demo is deterministic: fixed data (``seed``), a fixed number of training iterations
(:data:`DEMO_ITERATIONS`), seeded training on a single-process loader, so two runs on the
same machine give the same scores, however busy the machine is. ``minutes`` instead
calibrates the iterations to a time budget: a short timed run measures one training step
and one validation on this machine, and the config gets as many iterations as fit (the
scores then depend on the machine's load). Running the demo again reuses the data and
the config, so the training resumes (or is already done) and the rest is redone.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from innerdist.train import RunResult

__all__ = ["DEMO_ITERATIONS", "DEMO_MODEL", "DemoResult", "demo_config", "run_demo"]

#: The demo's 3-D U-Net for (40, 8, 8) nm voxels: in-plane convolutions at full resolution,
#: 3-D ones after two in-plane downsamplings (where voxels are nearly isotropic). Training
#: input (28, 116, 116) -> output (16, 76, 76) voxels; prediction uses bigger blocks. Chosen
#: for learning fast per CPU minute: batch norm lifts the correlation with the target from
#: 0.66 to 0.91 (300 iterations); nearest-neighbour upsampling avoids the checkerboard of
#: transposed convolutions, whose speckles split objects, and is cheaper; 8 feature maps
#: learn as fast per iteration as 12. The crop is bigger than (20, 92, 92): 4.3x the output
#: voxels for 1.35x the time of a step, so 450 of its steps take as long as 600 of the
#: smaller ones and score better (test F1 0.73 against 0.69, bench/README.md).
DEMO_MODEL: dict[str, Any] = {
    "input_shape": [28, 116, 116],
    "num_fmaps": 8,
    "batch_norm": True,
    "upsample": "nearest",
    "fmap_inc_factor": 2,
    "downsample_factors": [[1, 2, 2], [1, 2, 2]],
    "kernel_size_down": [
        [[1, 3, 3], [1, 3, 3]],
        [[3, 3, 3], [3, 3, 3]],
        [[3, 3, 3], [3, 3, 3]],
    ],
    "kernel_size_up": [[[1, 3, 3], [1, 3, 3]], [[3, 3, 3], [3, 3, 3]]],
    "eval_shape_increase": [8, 32, 32],
}

#: Training iterations of the default demo: fixed, so that the scores do not depend on the
#: machine's load. About 5 minutes of training on 2 quiet CPU cores (bench/README.md): 600
#: rather than 450 steps lift test F1 from 0.83 to 0.85 (seed 0), mostly by finding thin
#: vesicles that 450 steps predict too low to seed.
DEMO_ITERATIONS = 600

# Calibration (``minutes``): this many training steps, the first ones (lazy set-up) not timed; the
# iterations are planned for a slightly smaller budget, as the machine may get busier.
_CALIBRATION_ITERATIONS = 10
_UNTIMED_STEPS = 2
_BUDGET_MARGIN = 0.9
_VALIDATIONS = 4
_MIN_ITERATIONS = 20
_SCORES_SHOWN = (
    ("instances.f1_score@0.5", "instance F1 @ IoU 0.5"),
    ("instances.precision@0.5", "instance precision @ IoU 0.5"),
    ("instances.recall@0.5", "instance recall @ IoU 0.5"),
    ("instances.f1_score@0.7", "instance F1 @ IoU 0.7"),
    ("instances.mean_matched_iou", "mean IoU of matches (@ 0.5)"),
    ("instances.panoptic_quality", "panoptic quality"),
    ("instances.adapted_rand_error", "adapted Rand error (lower is better)"),
    ("instances.voi_split", "VOI split, bits (lower is better)"),
    ("instances.voi_merge", "VOI merge, bits (lower is better)"),
    ("binary.dice", "foreground Dice"),
)


@dataclass(frozen=True)
class DemoResult:
    """Paths and numbers of a demo run.

    ``scores`` is :func:`innerdist.evaluate.evaluate_volumes`'s result on the test volume;
    ``quality`` the headline scores (see :meth:`headline`); ``seconds`` the wall time of
    each stage.
    """

    out: Path
    report: Path
    config: Path
    run: RunResult
    prediction: str
    segmentation: str
    scores: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def headline(self) -> dict[str, float]:
        """The scores of :data:`_SCORES_SHOWN` (channel 0) as ``{name: value}``."""
        return _headline(self.scores)

    def summary(self) -> str:
        """Where everything is and the main numbers, for the terminal."""
        h = self.headline()
        lines = [
            f"demo finished in {self.seconds.get('total', 0.0) / 60:.1f} min",
            f"  test instance F1 @ IoU 0.5: {h['instances.f1_score@0.5']:.3f}, "
            f"precision {h['instances.precision@0.5']:.3f}, "
            f"recall {h['instances.recall@0.5']:.3f}, "
            f"foreground Dice {h['binary.dice']:.3f}",
            f"  report:       {self.report}",
            f"  training run: {self.run.run_dir} ({self.run.iteration} iterations)",
            f"  prediction:   {self.prediction}",
            f"  segmentation: {self.segmentation}",
            f"  scores:       {self.out / 'scores.json'}",
        ]
        return "\n".join(lines)


def _headline(scores: Mapping[str, Any]) -> dict[str, float]:
    from innerdist.validate import criterion_value

    channel = scores["channels"][0]
    return {
        name: criterion_value(name, channel["binary"], channel.get("instances"))
        for name, _ in _SCORES_SHOWN
    }


def demo_config(
    data: Mapping[str, Path],
    *,
    iterations: int,
    seed: int = 0,
    model: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The demo's training config (a plain dict, as in the YAML file).

    ``data`` maps ``train``/``validate`` to zarr containers with ``raw`` and ``labels``.
    Validation runs four times; the sweep covers a few foreground and seed levels.
    ``overrides`` (for experiments, e.g. ``{"training": {"optimizer": {"lr": 3e-3}}}``) is
    merged in last: nested mappings key by key, anything else replaces the value.

    >>> c = demo_config({"train": Path("t"), "validate": Path("v")}, iterations=8,
    ...                 overrides={"training": {"optimizer": {"lr": 0.01}}})
    >>> c["training"]["optimizer"]["lr"], c["training"]["optimizer"]["name"]
    (0.01, 'adam')
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a mapping, got {type(overrides).__name__}")
    interval = max(1, math.ceil(iterations / _VALIDATIONS))
    config = {
        "data": {
            "train": [{"raw": f"{data['train']}/raw", "labels": f"{data['train']}/labels"}],
            "validate": [
                {"raw": f"{data['validate']}/raw", "labels": f"{data['validate']}/labels"}
            ],
        },
        # 25 nm: most of each object's interior saturates near 1, so short training gives
        # compact seeds, and vesicles only 1-2 sections thick still reach ~0.6.
        "task": {"channels": ["organelle"], "scale_factor": 25},
        "model": dict(model if model is not None else DEMO_MODEL),
        "training": {
            "iterations": int(iterations),
            "batch_size": 1,
            # Short training learns most from a high peak rate that decays to 0: at 150 of
            # 600 iterations, validation Dice 0.92 (F1 0.52) against 0.82 (0.44) with a
            # constant 1e-3; after 600, test F1 0.69 against 0.59 (bench/README.md).
            "optimizer": {"name": "adam", "lr": 3e-3},
            "schedule": {"name": "cosine", "warmup": min(50, max(1, iterations // 10))},
            "augment": {"flip": True, "transpose": True},
            "num_workers": 0,
            "seed": int(seed),
            "validation_interval": interval,
            "checkpoint_interval": interval,
            "keep_last": 2,
            "snapshot_interval": interval,
            "min_foreground_fraction": 0.05,
        },
        "validation": {
            # Low levels find the thin vesicles (their target peaks near 0.6); a wider sweep
            # of a 150-iteration network on validation picked foreground 0.1-0.2 and seed
            # 0.4-0.5 (bench/README.md).
            "foreground_levels": [0.1, 0.2, 0.35],
            "seed_levels": [0.5, 0.6, 0.75, 0.9],
            # nm^3: 0, 98, 391 and 977 voxels of 40 x 8 x 8 nm. Briefly trained networks
            # leave specks and fragments that the larger sizes remove (at the price of the
            # smallest vesicles); validation picks the size that scores best.
            "min_size": [0, 250_000, 1_000_000, 2_500_000],
            "criteria": ["instances.f1_score@0.5", "binary.dice"],
        },
    }
    return _merged(config, overrides or {})


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merged(result[key], value)
        else:
            result[key] = value
    return result


def _write_data(
    directory: Path, seed: int, shapes: Mapping[str, Sequence[int]] | None
) -> dict[str, Path]:
    """The three demo volumes; existing complete ones are reused."""
    from innerdist.synthetic import make_demo_dataset, make_em_volume, write_volume
    from innerdist.volumes import is_complete, open_volume

    splits = ("train", "validate", "test")
    paths = {s: directory / f"{s}.zarr" for s in splits}

    def usable(container: Path) -> bool:
        try:
            return all(is_complete(open_volume(container / n)) for n in ("raw", "labels"))
        except (FileNotFoundError, ValueError):
            return False

    if all(usable(p) for p in paths.values()):
        return paths
    if shapes is None:
        written = make_demo_dataset(directory, seed=seed, overwrite=True)
        return {s: Path(p) for s, p in written.items()}
    missing = [s for s in splits if s not in shapes]
    if missing:
        raise ValueError(
            f"shapes must give a shape for every split {list(splits)}, missing {missing}"
        )
    # Seeds derived as make_demo_dataset does, so splits never share a volume.
    split_seeds = np.random.SeedSequence(int(seed)).generate_state(len(splits))
    for split, split_seed in zip(splits, split_seeds, strict=True):
        vol = make_em_volume(tuple(shapes[split]), seed=int(split_seed))
        write_volume(vol, paths[split], overwrite=True)
    return paths


def _calibrate(
    out: Path, data: Mapping[str, Path], seed: int, model: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None, budget_s: float,
) -> int:
    """Iterations that fit ``budget_s`` seconds of training, from a short timed run."""
    from innerdist.train import train

    directory = out / "calibration"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config = demo_config(
        data, iterations=_CALIBRATION_ITERATIONS, seed=seed, model=model, overrides=overrides
    )
    config["training"].update(validation_interval=_CALIBRATION_ITERATIONS, snapshot_interval=0)
    path = directory / "calibration.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    began = time.perf_counter()
    result = train(path, directory / "run", progress=False)
    wall = time.perf_counter() - began
    steps = _step_times(directory / "run" / "stats.csv")
    shutil.rmtree(directory, ignore_errors=True)
    step = statistics.median(steps[_UNTIMED_STEPS:] or steps)
    # The calibration's wall time (mostly one-off imports) is spent; the real run then
    # pays its steps and validations (its own start-up is short: imports are warm).
    left = _BUDGET_MARGIN * budget_s - wall - _VALIDATIONS * result.validation_seconds
    return max(_MIN_ITERATIONS, int(left / step))


def _step_times(stats_csv: Path) -> list[float]:
    import csv

    with stats_csv.open(newline="") as f:
        return [float(r["step_time_s"]) for r in csv.DictReader(f)]


def run_demo(
    out: str | Path = "innerdist-demo",
    *,
    iterations: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    model: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    block_shape: Sequence[int] | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the demo into ``out``; see the module docstring.

    ``iterations`` (default :data:`DEMO_ITERATIONS`) is the number of training steps.
    ``minutes``, given instead, is a training time budget (calibration, steps and
    validations) that the iterations are calibrated to; the data, prediction,
    segmentation and report add a minute or so.

    ``shapes`` (voxels per split: ``{"train": (z, y, x), "validate": ..., "test": ...}``),
    ``model`` (the config's model section) and ``block_shape`` (prediction/segmentation
    blocks, voxels) shrink the demo for tests; ``overrides`` changes any other part of the
    config (see :func:`demo_config`).
    """
    from innerdist.evaluate import evaluate_volumes, write_scores
    from innerdist.predict import predict_volume
    from innerdist.segment import segment_volume
    from innerdist.train import train

    if minutes is not None and not (
        isinstance(minutes, int | float) and not isinstance(minutes, bool)
        and math.isfinite(minutes) and minutes > 0
    ):
        raise ValueError(f"minutes must be a positive number or None, got {minutes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if iterations is not None and (
        isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1
    ):
        raise ValueError(f"iterations must be a positive integer or None, got {iterations!r}")
    if iterations is not None and minutes is not None:
        raise ValueError(
            f"give iterations ({iterations}) or minutes ({minutes:g}), not both: minutes "
            "calibrates the iterations to a time budget"
        )
    # Absolute from here on: the configs written below resolve relative paths against
    # their own folder, so a relative root would be joined twice.
    root = Path(out).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--out {str(root)!r} exists and is not a directory")
    seconds: dict[str, float] = {}
    began = time.perf_counter()

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 2)
        return now

    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    previous = root / "demo.yaml"
    if previous.exists():
        used = (yaml.safe_load(previous.read_text()) or {}).get("training", {}).get("seed")
        if used != seed:
            raise ValueError(
                f"{str(root)!r} holds a demo made with seed {used!r}, not {seed}; use another "
                "--out directory for another seed"
            )

    say(f"[1/5] data -> {root / 'data'}")
    data = _write_data(root / "data", seed, shapes)
    t = stage("data", began)

    config_path = root / "demo.yaml"
    if config_path.exists():
        say(f"[2/5] training: reusing {config_path} (resumes the run)")
    else:
        if minutes is not None:
            say(f"[2/5] training: timing a few steps to fit {minutes:g} min")
            iterations = _calibrate(root, data, seed, model, overrides, minutes * 60)
        elif iterations is None:
            iterations = DEMO_ITERATIONS
        say(f"[2/5] training: {iterations} iterations")
        config_path.write_text(
            "# Written by `innerdist demo`; run `innerdist train demo.yaml --run-dir run` to\n"
            "# continue the training by hand.\n"
            + yaml.safe_dump(
                demo_config(
                    data, iterations=iterations, seed=seed, model=model, overrides=overrides
                ),
                sort_keys=False,
            )
        )
    run = train(config_path, root / "run", progress=progress)
    if run.best_checkpoint is None:
        raise RuntimeError(f"the demo run {run.run_dir} has no best checkpoint")
    t = stage("train", t)

    say("[3/5] blockwise prediction and segmentation of the test volume")
    test = data["test"]
    prediction = predict_volume(
        run.best_checkpoint, f"{test}/raw", f"{root}/test.zarr/prediction",
        block_shape=block_shape, overwrite=True, progress=progress,
    )
    t = stage("predict", t)
    segmentation = segment_volume(
        prediction, f"{root}/test.zarr/segmentation", mode="instances",
        block_shape=block_shape, overwrite=True, progress=progress,
    )
    t = stage("segment", t)

    say("[4/5] evaluation")
    scores = evaluate_volumes(segmentation, f"{test}/labels", progress=progress)
    write_scores(scores, root / "scores.json", overwrite=True)
    t = stage("evaluate", t)

    say("[5/5] report")
    _slices_png(root / "slices.png", f"{test}/raw", prediction, segmentation, f"{test}/labels")
    stage("report", t)
    seconds["total"] = round(time.perf_counter() - began, 2)
    result = DemoResult(
        out=root,
        report=root / "report.md",
        config=config_path,
        run=run,
        prediction=str(prediction),
        segmentation=str(segmentation),
        scores=scores,
        seconds=seconds,
    )
    _write_report(result, data)
    return result


def _slices_png(
    path: Path, raw: str, prediction: str, segmentation: str, labels: str
) -> None:
    """Middle z slice of the test volume: raw, prediction, instances, ground truth."""
    from innerdist.plots import plot_slices
    from innerdist.predict import dequantize
    from innerdist.volumes import open_volume

    def read(p: str) -> np.ndarray:
        array = open_volume(p)
        return np.asarray(array[array.roi])

    pred_array = open_volume(prediction)
    pred = dequantize(np.asarray(pred_array[pred_array.roi]), pred_array.attrs)
    raw_data = read(raw)
    plot_slices(
        {
            "raw": (raw_data, "intensity"),
            "prediction": (pred, "distance"),
            "instances": (read(segmentation), "labels"),
            "ground truth": (read(labels), "labels"),
        },
        path,
        dims=raw_data.ndim if open_volume(raw).channel_dims == 0 else raw_data.ndim - 1,
        title="test volume, middle section",
    )


def _write_report(result: DemoResult, data: Mapping[str, Path]) -> None:
    """``report.md``: the picture, the scores, what to run next, then the details."""
    from innerdist.volumes import open_volume

    run = result.run
    h = result.headline()
    test_raw = open_volume(f"{data['test']}/raw")
    shape = tuple(int(s) for s in test_raw.shape[-test_raw.spatial_dims :])
    voxel = tuple(int(v) for v in test_raw.voxel_size)
    best = run.best.get("instances.f1_score@0.5")
    rel = result.out
    inst = result.scores["channels"][0].get("instances", {})
    config = _rel(result.config, rel)
    lines = [
        "# innerdist demo",
        "",
        "What you are looking at: the middle section of the held-out test volume, generated",
        "EM-like data (touching organelle-like objects with dark membranes, noise, "
        f"{voxel[0]} x {voxel[1]} x {voxel[2]} nm voxels).",
        "From left to right: the raw image; the network's prediction (each voxel's inner",
        "distance to its object's boundary, tanh-scaled, 0 outside objects); the instances",
        "segmented from it blockwise, one colour per object; the ground truth that the",
        "scores below compare them with.",
        "",
        "![raw, prediction, instances, ground truth](slices.png)",
        "",
        "## Scores on the test volume",
        "",
        "| score | value |",
        "|---|---|",
    ]
    for name, label in _SCORES_SHOWN:
        lines.append(f"| {label} | {h[name]:.4f} |")
    lines += [
        "",
        f"{inst.get('num_predicted', '?')} objects predicted, "
        f"{inst.get('num_ground_truth', '?')} in the ground truth. An object counts as found "
        "when its IoU with a ground-truth object reaches the threshold (IoU >= t, as "
        "StarDist counts). All scores: "
        "`scores.json` / `scores.csv`.",
        "",
        "## Next: your own data",
        "",
        "```bash",
        "# 1. your image stack (and labels) as zarr, with the voxel size in nm",
        "innerdist import-tiff em.tif mydata/train.zarr/raw --voxel-size 40,8,8",
        "innerdist import-tiff labels.tif mydata/train.zarr/labels --voxel-size 40,8,8",
        "#    (the same for a validation volume: mydata/validate.zarr)",
        "# 2. this demo's config, with data: pointing at your volumes (and task:",
        "#    scale_factor, the tanh scale in nm, suited to your objects' size)",
        f"cp {result.config} mine.yaml",
        "innerdist train mine.yaml --run-dir myrun",
        "# 3. predict and segment any volume blockwise (resumable), then score it",
        "innerdist predict myrun/checkpoints/best.pt big.zarr/raw out.zarr/prediction",
        "innerdist segment out.zarr/prediction out.zarr/segmentation --mode instances",
        "innerdist evaluate out.zarr/segmentation big.zarr/labels --out scores.json",
        "```",
        "",
        "`examples/em_3d.yaml` is a commented config for the same kind of data with a wider",
        "network and longer training. Every command has `--help`.",
        "",
        "## How this was made",
        "",
        f"- Data: train / validate / test volumes in `{data['train'].parent}`; test volume "
        f"{shape} voxels of {voxel} nm.",
        f"- Training: {run.iteration} iterations (config `{config}`, run "
        f"`{_rel(run.run_dir, rel)}`).",
    ]
    if best is not None:
        lines.append(
            f"- Best checkpoint (instance F1 @ 0.5 on validation {best.score:.3f}): "
            f"iteration {best.iteration}, foreground level {best.foreground_level}, seed "
            f"level {best.seed_level}; the segmentation used these levels."
        )
    lines += [
        f"- Wall time: {result.seconds.get('total', 0.0) / 60:.1f} min "
        + "("
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "total")
        + ").",
        "",
        "Training loss and validation scores:",
        "",
        f"![loss]({_rel(run.run_dir / 'loss.png', rel)})",
        "",
        f"![validation]({_rel(run.run_dir / 'validation.png', rel)})",
        "",
    ]
    result.report.write_text("\n".join(lines))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
