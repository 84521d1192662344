"""The end-to-end demo, shrunk: tiny volumes, a tiny U-Net, two iterations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from innerdist.checkpoint import load_checkpoint
from innerdist.cli import app
from innerdist.demo import DEMO_MODEL, demo_config, run_demo
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

    headline = result.headline()
    assert len(headline) >= 8
    assert all(isinstance(v, float) and math.isfinite(v) for v in headline.values())
    assert 0.0 <= headline["instances.f1_score@0.5"] <= 1.0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["channels"][0]["instances"]["num_ground_truth"] > 0

    report = result.report.read_text()
    assert "| instance F1 @ IoU 0.5 |" in report
    assert f"{headline['instances.f1_score@0.5']:.4f}" in report
    assert "![slices](slices.png)" in report and "![loss](run/loss.png)" in report
    summary = result.summary()
    assert str(result.report) in summary and "test instance F1 @ IoU 0.5" in summary
    assert set(result.seconds) >= {"data", "train", "predict", "segment", "evaluate", "total"}

    # Again: the data and config are reused and the finished run is not retrained.
    data_written = (out / "data" / "test.zarr" / "raw").stat().st_mtime_ns
    again = run_demo(out, **kwargs)
    assert again.run.resumed_from == 1 and again.run.iteration == 1
    assert (out / "data" / "test.zarr" / "raw").stat().st_mtime_ns == data_written
    assert again.headline() == pytest.approx(headline)
    with pytest.raises(ValueError, match="made with seed 0, not 1; use another --out"):
        run_demo(out, **{**kwargs, "seed": 1})


def test_demo_config_is_valid_and_validates_four_times() -> None:
    from innerdist.config import TrainConfig

    data = {"train": Path("/d/train.zarr"), "validate": Path("/d/validate.zarr")}
    config = TrainConfig.from_dict(demo_config(data, iterations=400))
    assert config.training.validation_interval == 100
    assert config.data.train[0].raw == "/d/train.zarr/raw"
    assert config.model.unet().output_shape(DEMO_MODEL["input_shape"]) == (8, 52, 52)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        demo_config(data, iterations=0)


def test_demo_input_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="minutes must be a positive number"):
        run_demo(tmp_path, minutes=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        run_demo(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        run_demo(tmp_path, iterations=0)
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
