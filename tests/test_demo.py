"""The end-to-end demo, shrunk: tiny volumes, a tiny U-Net, two iterations."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from innerdist.checkpoint import load_checkpoint
from innerdist.cli import app
from innerdist.demo import _SCORES_SHOWN, DEMO_MODEL, demo_config, run_demo
from innerdist.evaluate import evaluate_volumes
from innerdist.volumes import is_complete, open_volume

TINY_MODEL: dict[str, Any] = {
    "input_shape": [12, 44, 44],
    "num_fmaps": 4,
    "batch_norm": True,  # as the demo's model
    "downsample_factors": [[1, 2, 2]],
    "kernel_size_down": [[[1, 3, 3], [1, 3, 3]], [[3, 3, 3], [3, 3, 3]]],
    "kernel_size_up": [[[1, 3, 3], [1, 3, 3]]],
}
TINY_SHAPES = {"train": (16, 64, 64), "validate": (12, 48, 48), "test": (12, 48, 48)}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _read(path: str | Path) -> np.ndarray:
    array = open_volume(path)
    return np.asarray(array[array.roi])


def _reference_scores(segmentation: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Instance F1 / precision / recall at IoU 0.5 and foreground Dice, by brute force.

    Above IoU 0.5 a ground-truth object can overlap at most one predicted object that much
    (and vice versa), so the matches are simply the pairs with IoU > 0.5.
    """
    pred_ids = [int(i) for i in np.unique(segmentation) if i != 0]
    gt_ids = [int(i) for i in np.unique(labels) if i != 0]
    matches = 0
    for g in gt_ids:
        in_g = labels == g
        for p in np.unique(segmentation[in_g]):
            if p == 0:
                continue
            in_p = segmentation == p
            iou = np.sum(in_g & in_p) / np.sum(in_g | in_p)
            matches += int(iou > 0.5)
    fg_pred, fg_gt = segmentation != 0, labels != 0
    return {
        "instances.f1_score@0.5": 2 * matches / (len(pred_ids) + len(gt_ids)),
        "instances.precision@0.5": matches / len(pred_ids) if pred_ids else 0.0,
        "instances.recall@0.5": matches / len(gt_ids),
        "binary.dice": 2 * np.sum(fg_pred & fg_gt) / (np.sum(fg_pred) + np.sum(fg_gt)),
    }


def test_tiny_demo_writes_report_outputs_and_scores(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    kwargs: dict[str, Any] = dict(
        iterations=1, shapes=TINY_SHAPES, model=TINY_MODEL, block_shape=(8, 24, 24),
        progress=False,
    )
    result = run_demo(out, **kwargs)

    for name in ("report.md", "slices.png", "scores.json", "scores.csv", "demo.yaml",
                 "run/loss.png", "run/validation.png", "run/checkpoints/best.pt"):
        assert (out / name).exists(), name
    for split in ("train", "validate", "test"):
        assert is_complete(open_volume(out / "data" / f"{split}.zarr" / "raw"))
    prediction = open_volume(result.prediction)
    segmentation = open_volume(result.segmentation)
    assert is_complete(prediction) and is_complete(segmentation)
    assert tuple(segmentation.voxel_size) == (40, 8, 8)
    assert prediction.shape == (1, 12, 48, 48)
    # The segmentation used the levels tuned on validation (stored with best.pt).
    best = load_checkpoint(result.run.best_checkpoint)  # type: ignore[arg-type]
    assert prediction.attrs["innerdist_postprocessing"] == best.postprocessing

    # The scores are those of the written segmentation: evaluate again from the files, and
    # the headline ones by brute force from the arrays.
    scores = json.loads((out / "scores.json").read_text())
    assert scores == json.loads(json.dumps(evaluate_volumes(
        result.segmentation, out / "data" / "test.zarr" / "labels", progress=False
    )))
    seg = _read(result.segmentation)[0]
    labels = _read(out / "data" / "test.zarr" / "labels")
    assert seg.shape == labels.shape == (12, 48, 48)
    headline = result.headline()
    reference = _reference_scores(seg, labels)
    for name, value in reference.items():
        assert headline[name] == pytest.approx(value, abs=1e-9), name
    inst = scores["channels"][0]["instances"]
    assert inst["num_ground_truth"] == len(np.unique(labels[labels != 0])) > 0
    assert inst["num_predicted"] == len(np.unique(seg[seg != 0]))

    # The report opens with the picture, then the scores table (these values), then what
    # to run next.
    report = result.report.read_text()
    picture = report.index("](slices.png)")
    table = report.index("| instance F1 @ IoU 0.5 |")
    assert picture < table < report.index("## Next: your own data")
    for name, label in _SCORES_SHOWN:
        assert f"| {label} | {headline[name]:.4f} |" in report, label
    assert "innerdist train mine.yaml" in report and f"cp {out / 'demo.yaml'}" in report
    assert "![loss](run/loss.png)" in report
    png = (out / "slices.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 3 * height  # four panels side by side
    summary = result.summary()
    assert str(result.report) in summary and "test instance F1 @ IoU 0.5" in summary
    assert set(result.seconds) >= {"data", "train", "predict", "segment", "evaluate", "total"}

    # Again: the data and config are reused and the finished run is not retrained.
    data_written = (out / "data" / "test.zarr" / "raw").stat().st_mtime_ns
    again = run_demo(out, **kwargs)
    assert again.run.resumed_from == 1 and again.run.iteration == 1
    assert (out / "data" / "test.zarr" / "raw").stat().st_mtime_ns == data_written
    assert again.headline() == headline
    with pytest.raises(ValueError, match="made with seed 0, not 1; use another --out"):
        run_demo(out, **{**kwargs, "seed": 1})


@pytest.mark.slow  # three tiny demos
def test_two_fresh_demo_runs_give_identical_weights_and_scores(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = dict(
        iterations=3, shapes=TINY_SHAPES, model=TINY_MODEL, block_shape=(8, 24, 24),
        progress=False,
    )
    first = run_demo(tmp_path / "a", **kwargs)
    second = run_demo(tmp_path / "b", **kwargs)
    a = load_checkpoint(first.run.best_checkpoint)  # type: ignore[arg-type]
    b = load_checkpoint(second.run.best_checkpoint)  # type: ignore[arg-type]
    assert a.iteration == b.iteration
    state_a, state_b = a.weights, b.weights
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert np.array_equal(_read(first.prediction), _read(second.prediction))
    scores_a, scores_b = (json.loads((tmp_path / d / "scores.json").read_text()) for d in "ab")
    assert scores_a["channels"] == scores_b["channels"]  # exact: every score, every count
    assert first.headline() == second.headline()
    # A third run with another training seed learns other weights (the check can fail).
    third = run_demo(tmp_path / "c", **{**kwargs, "seed": 1})
    c = load_checkpoint(third.run.best_checkpoint)  # type: ignore[arg-type]
    assert not all(torch.equal(state_a[k], c.weights[k]) for k in state_a)


def test_default_demo_trains_the_fixed_iterations_without_calibrating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import innerdist.demo as demo

    def no_calibration(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("the default demo must not calibrate")

    monkeypatch.setattr(demo, "DEMO_ITERATIONS", 2)
    monkeypatch.setattr(demo, "_calibrate", no_calibration)
    kwargs: dict[str, Any] = dict(
        shapes=TINY_SHAPES, model=TINY_MODEL, block_shape=(8, 24, 24), progress=False
    )
    result = run_demo(tmp_path / "fixed", **kwargs)
    assert result.run.iteration == 2
    written = yaml.safe_load((tmp_path / "fixed" / "demo.yaml").read_text())
    assert written["training"]["iterations"] == 2

    # minutes: the iterations come from the calibration, with the budget in seconds.
    budgets: list[float] = []

    def calibrate(
        out: Path, data: Any, seed: int, model: Any, overrides: Any, budget_s: float
    ) -> int:
        budgets.append(budget_s)
        return 3

    monkeypatch.setattr(demo, "_calibrate", calibrate)
    timed = run_demo(tmp_path / "timed", minutes=0.5, **kwargs)
    assert budgets == [30.0] and timed.run.iteration == 3


def test_demo_config_is_valid_and_validates_four_times() -> None:
    from innerdist.config import TrainConfig

    data = {"train": Path("/d/train.zarr"), "validate": Path("/d/validate.zarr")}
    config = TrainConfig.from_dict(demo_config(data, iterations=400))
    assert config.training.validation_interval == 100
    assert config.data.train[0].raw == "/d/train.zarr/raw"
    assert config.model.unet().output_shape(DEMO_MODEL["input_shape"]) == (16, 76, 76)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        demo_config(data, iterations=0)

    # Overrides merge section by section: the rest of each section stays.
    changed = demo_config(data, iterations=400, overrides={
        "training": {"schedule": {"name": "cosine"}, "batch_size": 2},
        "validation": {"seed_levels": [0.5]},
    })
    plain = demo_config(data, iterations=400)
    assert changed["training"]["schedule"] == {**plain["training"]["schedule"], "name": "cosine"}
    assert changed["training"]["batch_size"] == 2
    assert changed["training"]["optimizer"] == plain["training"]["optimizer"]
    assert changed["validation"]["seed_levels"] == [0.5]
    assert changed["model"] == plain["model"] and changed["data"] == plain["data"]
    TrainConfig.from_dict(changed)
    with pytest.raises(TypeError, match="overrides must be a mapping, got list"):
        demo_config(data, iterations=4, overrides=[("training", {})])  # type: ignore[arg-type]


def test_demo_input_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="minutes must be a positive number or None"):
        run_demo(tmp_path, minutes=0)
    with pytest.raises(ValueError, match="minutes must be a positive number or None"):
        run_demo(tmp_path, minutes=math.inf)
    with pytest.raises(ValueError, match=r"give iterations \(5\) or minutes \(2\), not both"):
        run_demo(tmp_path, iterations=5, minutes=2)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        run_demo(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        run_demo(tmp_path, iterations=0)
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        run_demo(tmp_path, iterations=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"missing \['test'\]"):
        run_demo(tmp_path / "d", iterations=1, shapes={"train": (8, 8, 8), "validate": (8, 8, 8)})
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        run_demo(tmp_path / "file")


def test_demo_cli_bad_input_exits_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("innerdist demo: error: ")
    assert "is not a directory" in lines[0]
    assert CliRunner().invoke(app, ["demo", "--minutes", "0"]).exit_code == 2
    assert CliRunner().invoke(app, ["demo", "--iterations", "0"]).exit_code == 2
    both = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--iterations", "5",
                                    "--minutes", "2"])
    assert both.exit_code == 2
    assert both.output.strip() == (
        "innerdist demo: error: give iterations (5) or minutes (2), not both: minutes "
        "calibrates the iterations to a time budget"
    )
