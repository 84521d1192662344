"""Training: loss, schedule, logs, resume == uninterrupted, validation runs, best files, CLI.

Runs use tiny 2-D volumes and a 4-feature-map U-Net so that each takes a second or two.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import innerdist.train as train_module
from innerdist.checkpoint import load_checkpoint
from innerdist.cli import app
from innerdist.config import TrainConfig
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.plots import label_colors, middle_slice, plot_loss, plot_slices, plot_validation
from innerdist.synthetic import make_em_volume, write_volume
from innerdist.train import _CsvLog, learning_rate, train, weighted_mse
from innerdist.volumes import create_volume, mark_complete

runner = CliRunner()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny networks run fastest on one thread, and the test machine is shared.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_volume(make_em_volume((80, 80), (8, 8), seed=1), d / "train.zarr")
    write_volume(make_em_volume((48, 48), (8, 8), seed=2), d / "validate.zarr")
    return d


def source(container: Path) -> dict[str, str]:
    return {"raw": f"{container}/raw", "labels": f"{container}/labels"}


def config_dict(data_dir: Path, **training: Any) -> dict[str, Any]:
    return {
        "data": {
            "train": [source(data_dir / "train.zarr")],
            "validate": [source(data_dir / "validate.zarr")],
        },
        "task": {"channels": ["organelle"], "scale_factor": 24},
        "model": {"input_shape": [44, 44], "num_fmaps": 4, "downsample_factors": [[2, 2]]},
        "training": {
            "iterations": 8,
            "batch_size": 2,
            "optimizer": {"lr": 3e-3},
            "validation_interval": 4,
            "checkpoint_interval": 3,
            "keep_last": 2,
            **training,
        },
        "validation": {
            "foreground_levels": [0.05],
            "seed_levels": [0.3, 0.6],
            "criteria": ["instances.f1_score@0.5", "binary.dice"],
            "refine": 0,  # the sweep itself is tested in test_validate.py
        },
    }


def write_config(directory: Path, data: dict[str, Any], name: str = "run.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(data))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpts = sorted(
        (run_dir / "checkpoints").glob("iteration_*.pt"), key=lambda p: int(p.stem.split("_")[1])
    )
    return load_checkpoint(ckpts[-1]).weights


# --- pure pieces ------------------------------------------------------------------------


def test_weighted_mse_is_a_weighted_mean() -> None:
    p = torch.tensor([[0.0, 1.0, 0.5, 0.2]])
    t = torch.tensor([[1.0, 1.0, 0.0, 0.2]])
    w = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    # (1 * 1 + 3 * 0 + 2 * 0.25 + 0) / (1 + 3 + 2 + 0) = 1.5 / 6
    assert float(weighted_mse(p, t, w)) == pytest.approx(0.25)
    # Doubling every weight changes nothing; all weights 0 gives 0, not NaN.
    assert float(weighted_mse(p, t, 2 * w)) == pytest.approx(0.25)
    assert float(weighted_mse(p, t, torch.zeros_like(w))) == 0.0


def test_learning_rate_schedules() -> None:
    def training(**schedule: Any) -> Any:
        return TrainConfig.from_dict(
            {
                **config_dict(Path("/x")),
                "training": {"iterations": 110, "optimizer": {"lr": 0.1}, "schedule": schedule},
            }
        ).training

    constant = training(name="constant", warmup=10)
    assert learning_rate(constant, 1) == pytest.approx(0.01)
    assert learning_rate(constant, 5) == pytest.approx(0.05)
    assert learning_rate(constant, 10) == pytest.approx(0.1)
    assert learning_rate(constant, 110) == pytest.approx(0.1)
    cosine = training(name="cosine", warmup=10, min_factor=0.1)
    assert learning_rate(cosine, 10) == pytest.approx(0.1)
    assert learning_rate(cosine, 60) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))  # halfway
    assert learning_rate(cosine, 110) == pytest.approx(0.01)
    step = training(name="step", step_size=30, gamma=0.5)
    assert [learning_rate(step, i) for i in (1, 29, 30, 59, 60)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025]
    )
    with pytest.raises(ValueError, match="iteration must be >= 1"):
        learning_rate(step, 0)


def test_csv_log_truncates_and_drops_partial_rows(tmp_path: Path) -> None:
    log = _CsvLog(tmp_path / "s.csv", ["iteration", "loss"])
    log.append([{"iteration": i, "loss": i / 10} for i in range(1, 6)])
    log.close()
    with (tmp_path / "s.csv").open("a") as f:
        f.write("6,0.")  # a crash in the middle of a row: no newline, one column short...
        f.write("\n7\n")
    assert [r["iteration"] for r in log.rows()] == ["1", "2", "3", "4", "5", "6"]
    kept = log.truncate(3)
    assert [r["iteration"] for r in kept] == ["1", "2", "3"]
    assert read_csv(tmp_path / "s.csv") == [
        {"iteration": "1", "loss": "0.1"},
        {"iteration": "2", "loss": "0.2"},
        {"iteration": "3", "loss": "0.3"},
    ]


# --- plots ------------------------------------------------------------------------------


def test_plots_write_pngs(tmp_path: Path) -> None:
    png = b"\x89PNG"
    p = plot_loss([1, 2, 3], [0.5, 0.4, 0.2], tmp_path / "loss.png", learning_rates=[1, 1, 0.5])
    assert p.read_bytes().startswith(png)
    p = plot_validation({"binary.dice": ([10, 20], [0.5, 0.7])}, tmp_path / "v.png",
                        best={"binary.dice": 20})
    assert p.read_bytes().startswith(png)
    labels = np.zeros((3, 8, 8), np.uint64)
    labels[:, 2:5, 2:5] = 7
    p = plot_slices(
        {"raw": (np.random.default_rng(0).random((1, 3, 8, 8)), "intensity"),
         "labels": (labels, "labels"), "w": (np.ones((3, 8, 8)), "weight"),
         "t": (np.zeros((3, 8, 8)), "distance")},
        tmp_path / "s.png", dims=3, title="t",
    )
    assert p.read_bytes().startswith(png)
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    assert middle_slice(np.arange(27).reshape(1, 3, 3, 3), 3).tolist() == [
        [9, 10, 11], [12, 13, 14], [15, 16, 17]
    ]
    colors = label_colors(np.array([[0, 5, 5, 6]]))
    assert colors[0, 0].tolist() == [0, 0, 0]
    assert colors[0, 1].tolist() == colors[0, 2].tolist() != colors[0, 3].tolist()
    with pytest.raises(ValueError, match="equal length"):
        plot_loss([1, 2], [0.5], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one value per iteration"):
        plot_loss([1, 2], [0.5, 0.4], tmp_path / "x.png", learning_rates=[1])
    with pytest.raises(ValueError, match="at least one criterion"):
        plot_validation({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 iterations but"):
        plot_validation({"c": ([1, 2], [0.5])}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="kind must be"):
        plot_slices({"a": (np.zeros((4, 4)), "rgb")}, tmp_path / "x.png", dims=2)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="at least one image"):
        plot_slices({}, tmp_path / "x.png", dims=2)
    with pytest.raises(ValueError, match="2 spatial axes"):
        middle_slice(np.zeros(4), 2)


# --- training runs ----------------------------------------------------------------------


def test_short_training_lowers_the_loss(data_dir: Path, tmp_path: Path) -> None:
    data = config_dict(data_dir, iterations=30, checkpoint_interval=30, optimizer={"lr": 1e-2})
    data["data"]["validate"] = []  # no validation: no best checkpoint
    data["training"]["augment"] = {"flip": False, "transpose": False, "intensity":
                                   {"probability": 0}, "gamma": {"probability": 0},
                                   "noise": {"probability": 0}}
    config_path = write_config(tmp_path, data)
    result = train(config_path, progress=False)
    assert result.iteration == 30 and result.resumed_from == 0
    assert result.best_checkpoint is None and result.best == {}
    assert result.last_checkpoint == tmp_path / "runs" / "run" / "checkpoints" / "iteration_30.pt"

    # The loss on a fixed set of crops, before (the seeded initial model) and after.
    from innerdist.crops import CropSampler, VolumeSource, open_sources

    config = TrainConfig.from_dict(data)
    predictor = InnerDistancePredictor(["organelle"], 24)
    sampler = CropSampler(
        open_sources([VolumeSource(raw=f"{data_dir}/train.zarr/raw",
                                   labels=f"{data_dir}/train.zarr/labels")], ["organelle"]),
        predictor, (44, 44), (28, 28), augment=config.training.augment,
        normalization={"min": 0.0, "max": 1.0},
    )
    crops = [sampler.sample(np.random.default_rng([99, i])) for i in range(8)]
    batch = {k: torch.from_numpy(np.stack([c[k] for c in crops])) for k in crops[0]}

    def loss_of(model: torch.nn.Module) -> float:
        model.train()
        with torch.no_grad():
            return float(weighted_mse(model(batch["raw"]), batch["target"], batch["weight"]))

    torch.manual_seed(0)
    initial = predictor.create_model(config.model.unet())
    trained = load_checkpoint(result.last_checkpoint).build_model()
    assert loss_of(trained) < 0.75 * loss_of(initial)
    stats = read_csv(result.run_dir / "stats.csv")
    assert [int(r["iteration"]) for r in stats] == list(range(1, 31))
    assert all(0 <= float(r["data_wait_fraction"]) <= 1 for r in stats)
    assert float(stats[0]["lr"]) == 1e-2
    assert (result.run_dir / "loss.png").exists()


class Killed(Exception):
    pass


def test_kill_and_resume_equals_uninterrupted_run(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = config_dict(
        data_dir,
        iterations=6,
        batch_size=1,
        validation_interval=3,
        checkpoint_interval=4,
        snapshot_interval=3,
    )
    straight = train(write_config(tmp_path / "a", data), progress=False)

    # The same run, killed in iteration 6 (after the checkpoints of 3 and 4 and the
    # validation of 3, with the stats row of 5 already written), then resumed.
    calls = {"n": 0}
    real_loss = train_module.weighted_mse

    def dying_loss(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 6:
            raise Killed
        return real_loss(*args)

    config_b = write_config(tmp_path / "b", data)
    monkeypatch.setattr(train_module, "weighted_mse", dying_loss)
    with pytest.raises(Killed):
        train(config_b, progress=False)
    monkeypatch.setattr(train_module, "weighted_mse", real_loss)
    run_b = tmp_path / "b" / "runs" / "run"
    assert [int(r["iteration"]) for r in read_csv(run_b / "stats.csv")] == list(range(1, 6))
    resumed = train(config_b, progress=False)
    assert resumed.resumed_from == 4 and resumed.iteration == 6

    a, b = final_weights(straight.run_dir), final_weights(run_b)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    # Logs hold every iteration once, with the same losses; validation of 3 and 6 once.
    stats_a, stats_b = read_csv(straight.run_dir / "stats.csv"), read_csv(run_b / "stats.csv")
    assert [r["iteration"] for r in stats_b] == [str(i) for i in range(1, 7)]
    for ra, rb in zip(stats_a, stats_b, strict=True):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5)
    val_a = read_csv(straight.run_dir / "validation.csv")
    val_b = read_csv(run_b / "validation.csv")
    assert [(r["iteration"], r["seed_level"]) for r in val_b] == [
        ("3", "0.3"), ("3", "0.6"), ("6", "0.3"), ("6", "0.6")
    ]
    for ra, rb in zip(val_a, val_b, strict=True):
        assert float(ra["binary.dice"]) == pytest.approx(float(rb["binary.dice"]), abs=1e-6)
    assert straight.best.keys() == resumed.best.keys()
    for c in straight.best:
        assert straight.best[c].iteration == resumed.best[c].iteration

    # The run directory: the last keep_last=2 checkpoints, best files, logs, plots.
    ckpts = run_b / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("iteration_*.pt")) == [
        "iteration_4.pt", "iteration_6.pt"
    ]
    best_json = json.loads((ckpts / "best.json").read_text())
    assert best_json["primary"] == "instances.f1_score@0.5"
    assert set(best_json["criteria"]) == {"instances.f1_score@0.5", "binary.dice"}
    dice = best_json["criteria"]["binary.dice"]
    assert dice["checkpoint"] == "best-binary.dice.pt"
    best_dice = load_checkpoint(ckpts / "best-binary.dice.pt")
    assert best_dice.iteration == dice["iteration"] == resumed.best["binary.dice"].iteration
    assert best_dice.postprocessing == {
        "foreground_level": dice["foreground_level"],
        "seed_level": dice["seed_level"],
        "min_size": 0,
        "seed_dynamic": 8.0,  # one voxel: the default sweep with the task's scale
    }
    assert dice["seed_dynamic"] == 8.0
    assert best_dice.training_state is None
    primary = load_checkpoint(ckpts / "best.pt")
    assert primary.iteration == best_json["criteria"]["instances.f1_score@0.5"]["iteration"]
    for name in ("config.yaml", "stats.csv", "validation.csv", "loss.png", "validation.png",
                 "snapshots/iteration_3.png", "snapshots/iteration_6.png"):
        assert (run_b / name).exists(), name
    assert not list(run_b.rglob(".*.tmp"))

    # Nothing left to do: a third call returns at once with the same result.
    again = train(config_b, progress=False)
    assert (again.resumed_from, again.iteration) == (6, 6)
    assert again.last_checkpoint == ckpts / "iteration_6.pt"


@pytest.mark.slow
def test_time_budget_stops_after_a_checkpoint_and_a_validation_and_resumes(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = config_dict(data_dir, iterations=8, batch_size=1, validation_interval=4,
                       checkpoint_interval=4, keep_last=3)
    straight = train(write_config(tmp_path / "a", data), progress=False)

    # A clock that moves 10 s per reading: the call starts at 0, iteration k ends at 10 k,
    # so a 0.5 minute budget is spent at iteration 3 (no validation time to reserve yet).
    ticks = iter(range(0, 10_000, 10))
    monkeypatch.setattr(train_module, "_now", lambda: float(next(ticks)))
    config_b = write_config(tmp_path / "b", data)
    result = runner.invoke(app, ["train", str(config_b), "--minutes", "0.5"])
    assert result.exit_code == 0, result.output
    assert "trained 3 iterations (resumed from 0)" in result.output
    assert "stopped by the time budget" in result.output
    run_b = tmp_path / "b" / "runs" / "run"
    ckpts = run_b / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("iteration_*.pt")) == ["iteration_3.pt"]
    assert {r["iteration"] for r in read_csv(run_b / "validation.csv")} == {"3"}
    assert load_checkpoint(ckpts / "best.pt").iteration == 3

    # Without a budget the run resumes at 3 and ends where an uninterrupted one does.
    monkeypatch.setattr(train_module, "_now", lambda: 0.0)
    resumed = train(config_b, progress=False)
    assert (resumed.resumed_from, resumed.iteration, resumed.out_of_time) == (3, 8, False)
    a, b = final_weights(straight.run_dir), final_weights(run_b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert [r["iteration"] for r in read_csv(run_b / "stats.csv")] == [
        str(i) for i in range(1, 9)
    ]
    # training.max_minutes is the same budget from the config, and may change on resume.
    data["training"]["iterations"] = 12
    data["training"]["max_minutes"] = 0.1  # 6 s: spent after one 10 s tick
    ticks = iter(range(0, 10_000, 10))
    monkeypatch.setattr(train_module, "_now", lambda: float(next(ticks)))
    more = train(write_config(tmp_path / "b", data), progress=False)
    assert (more.resumed_from, more.iteration, more.out_of_time) == (8, 9, True)
    with pytest.raises(ValueError, match="minutes must be a positive number"):
        train(config_b, progress=False, minutes=-1)


def test_resume_validates_a_checkpoint_whose_validation_was_not_logged(
    data_dir: Path, tmp_path: Path
) -> None:
    data = config_dict(data_dir, iterations=4, batch_size=1, checkpoint_interval=4)
    config_path = write_config(tmp_path, data)
    first = train(config_path, progress=False)
    run = first.run_dir
    # As if killed after saving checkpoint 4 but before logging its validation.
    (run / "validation.csv").unlink()
    (run / "checkpoints" / "best.json").unlink()
    (run / "checkpoints" / "best.pt").unlink()
    again = train(config_path, progress=False)
    assert again.resumed_from == 4
    assert [r["iteration"] for r in read_csv(run / "validation.csv")] == ["4", "4"]
    assert (run / "checkpoints" / "best.pt").exists()
    assert again.best == first.best


def test_resume_skips_a_corrupt_checkpoint_and_allows_more_iterations(
    data_dir: Path, tmp_path: Path
) -> None:
    data = config_dict(data_dir, iterations=6, batch_size=1, checkpoint_interval=3)
    data["data"]["validate"] = []
    config_path = write_config(tmp_path, data)
    train(config_path, progress=False)
    run = tmp_path / "runs" / "run"
    (run / "checkpoints" / "iteration_6.pt").write_bytes(b"not a checkpoint")
    data["training"]["iterations"] = 7
    write_config(tmp_path, data)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint .*iteration_6.pt"):
        result = train(config_path, progress=False)
    assert (result.resumed_from, result.iteration) == (3, 7)
    assert [int(r["iteration"]) for r in read_csv(run / "stats.csv")] == list(range(1, 8))

    # Any other change is refused, naming what changed; fewer iterations too.
    data["training"]["optimizer"]["lr"] = 1e-2
    write_config(tmp_path, data)
    with pytest.raises(ValueError, match=r"training.optimizer.lr: 0.003 -> 0.01"):
        train(config_path, progress=False)
    data["training"]["optimizer"]["lr"] = 3e-3
    data["training"]["iterations"] = 5
    write_config(tmp_path, data)
    with pytest.raises(ValueError, match=r"training.iterations: 7 -> 5"):
        train(config_path, progress=False)

    # No checkpoint loads: start over from scratch, and end where the resumed run ended.
    data["training"]["iterations"] = 7
    write_config(tmp_path, data)
    resumed_weights = final_weights(run)
    for path in (run / "checkpoints").glob("iteration_*.pt"):
        path.write_bytes(b"junk")
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        again = train(config_path, progress=False)
    assert (again.resumed_from, again.iteration) == (0, 7)
    assert [int(r["iteration"]) for r in read_csv(run / "stats.csv")] == list(range(1, 8))
    for name, tensor in final_weights(run).items():
        torch.testing.assert_close(tensor, resumed_weights[name], rtol=0, atol=1e-6)


def test_run_dir_that_is_not_a_run(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    config_path = write_config(tmp_path, config_dict(data_dir))
    with pytest.raises(FileExistsError, match="has no config.yaml"):
        train(config_path, tmp_path / "other", progress=False)


# --- bad input through the CLI ----------------------------------------------------------


def cli_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("innerdist train: error: ")
    return lines[0]


def volume(path: Path, data: np.ndarray, voxel_size: tuple[int, ...] = (8, 8),
           offset: tuple[int, ...] = (0, 0)) -> str:
    from funlib.geometry import Coordinate, Roi

    roi = Roi(offset, Coordinate(data.shape) * Coordinate(voxel_size))
    array = create_volume(path, roi=roi, voxel_size=voxel_size, dtype=data.dtype)
    array[roi] = data
    mark_complete(array)
    return str(path)


def test_cli_bad_input_exits_2_with_one_line(data_dir: Path, tmp_path: Path) -> None:
    base = config_dict(data_dir)

    # The config does not validate: every problem on the one line.
    bad = config_dict(data_dir, batch_size="two")
    bad["training"]["learning_rate"] = 1
    line = cli_error(["train", str(write_config(tmp_path / "c1", bad))])
    assert "training.batch_size: Input should be a valid integer" in line
    assert "training.learning_rate: unknown key" in line
    missing_file = str(tmp_path / "nope.yaml")
    assert cli_error(["train", missing_file]).endswith(f"no config file at {missing_file!r}")

    # A missing dataset.
    missing = json.loads(json.dumps(base))
    missing["data"]["train"][0]["labels"] = f"{data_dir}/train.zarr/gt"
    line = cli_error(["train", str(write_config(tmp_path / "c2", missing))])
    assert "dataset 'gt' not found" in line
    assert not (tmp_path / "c2" / "runs").exists()  # nothing written

    # Empty labels.
    labels = volume(tmp_path / "d.zarr" / "empty", np.zeros((80, 80), np.uint64))
    empty = json.loads(json.dumps(base))
    empty["data"]["train"][0]["labels"] = labels
    assert "is empty" in cli_error(["train", str(write_config(tmp_path / "c3", empty))])

    # Crops larger than the data.
    small_raw = volume(tmp_path / "s.zarr" / "raw", np.zeros((20, 20), np.float32))
    small_gt = volume(tmp_path / "s.zarr" / "labels", np.ones((20, 20), np.uint64))
    small = json.loads(json.dumps(base))
    small["data"]["train"][0] = {"raw": small_raw, "labels": small_gt}
    assert "does not fit into the data" in cli_error(
        ["train", str(write_config(tmp_path / "c4", small))]
    )

    # Raw and labels that do not overlap.
    far_gt = volume(tmp_path / "f.zarr" / "labels", np.ones((40, 40), np.uint64),
                    offset=(8000, 8000))
    far = json.loads(json.dumps(base))
    far["data"]["train"][0]["labels"] = far_gt
    assert "do not overlap" in cli_error(["train", str(write_config(tmp_path / "c5", far))])

    # NaN in raw (found when a crop reads it).
    nan_raw = np.full((80, 80), 0.5, np.float32)
    nan_raw[30:50, 30:50] = np.nan
    nan = json.loads(json.dumps(base))
    nan["data"]["train"][0]["raw"] = volume(tmp_path / "n.zarr" / "raw", nan_raw)
    nan["data"]["validate"] = []
    assert "NaN" in cli_error(["train", str(write_config(tmp_path / "c6", nan))])

    # A validation volume with another voxel size.
    other = volume(tmp_path / "o.zarr" / "raw", np.zeros((30, 30), np.float32), (4, 4))
    other_gt = volume(tmp_path / "o.zarr" / "labels", np.ones((30, 30), np.uint64), (4, 4))
    mixed = json.loads(json.dumps(base))
    mixed["data"]["validate"] = [{"raw": other, "labels": other_gt}]
    assert "voxel size (4, 4)" in cli_error(["train", str(write_config(tmp_path / "c7", mixed))])


def test_cli_trains_and_reports(data_dir: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, config_dict(data_dir, iterations=2, batch_size=1))
    result = runner.invoke(app, ["train", str(config_path), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "trained 2 iterations (resumed from 0)" in result.output
    # Not a terminal: a plain progress line (no carriage-return bar) on stderr.
    assert "train: 2/2 iterations, " in result.stderr and "\r" not in result.stderr
    assert f"best checkpoint: {tmp_path / 'r' / 'checkpoints' / 'best.pt'}" in result.output
    assert math.isfinite(float(read_csv(tmp_path / "r" / "stats.csv")[-1]["loss"]))
    # The checkpoint holds the normalisation measured on the training data (percentiles),
    # which predict and validation use as they find it there.
    from innerdist.normalize import measure_normalization
    from innerdist.volumes import open_volume

    ckpt = load_checkpoint(tmp_path / "r" / "checkpoints" / "iteration_2.pt")
    raw = open_volume(f"{data_dir}/train.zarr/raw")
    assert ckpt.normalization == measure_normalization([(raw, raw.roi, "train")])
    assert ckpt.normalization["method"] == "percentiles"


def test_gradient_clipping_clips_the_unscaled_gradients(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[float, float]] = []
    original = torch.nn.utils.clip_grad_norm_

    def recorded(params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        params = list(params)
        norm = original(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])
        )
        calls.append((float(norm), float(after)))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    data = config_dict(data_dir, iterations=3, checkpoint_interval=3, max_grad_norm=1e-3)
    data["data"]["validate"] = []
    train(write_config(tmp_path, data), progress=False)
    assert len(calls) == 3  # once per iteration
    assert all(before > 1e-3 and after <= 1.001e-3 for before, after in calls)


def test_losses_read_back_in_groups_log_the_same_rows(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = config_dict(data_dir, iterations=7, checkpoint_interval=7)
    data["data"]["validate"] = []
    every = read_csv(train(write_config(tmp_path / "a", data), progress=False).run_dir
                     / "stats.csv")
    # As on a GPU: the losses are read back three iterations at a time.
    monkeypatch.setattr(train_module, "_loss_sync_is_free", lambda device: False)
    monkeypatch.setattr(train_module, "LOSS_SYNC_INTERVAL", 3)
    grouped = read_csv(train(write_config(tmp_path / "b", data), progress=False).run_dir
                       / "stats.csv")
    assert [r["iteration"] for r in grouped] == [str(i) for i in range(1, 8)]
    assert [r["loss"] for r in grouped] == [r["loss"] for r in every]


# --- train --dry-run --------------------------------------------------------------------


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in path.rglob("*")} if path.exists() else {}


def test_dry_run_measures_a_run_and_writes_nothing(data_dir: Path, tmp_path: Path) -> None:
    from innerdist.config import load_config
    from innerdist.train import plan_training

    config_path = write_config(tmp_path, config_dict(data_dir, iterations=4, batch_size=1))
    run = tmp_path / "r"
    result = runner.invoke(app, ["train", str(config_path), "--run-dir", str(run),
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not run.exists()
    lines = result.output.splitlines()
    assert lines[0] == "train: plan (nothing was written)"
    unet = load_config(config_path).model.unet()
    out_shape = tuple(unet.output_shape((44, 44)))
    assert lines[1] == f"  crops                input (44, 44), output {out_shape} voxels, batch 1"
    assert "4 iteration(s) to go take about" in lines[4]

    # A real run: the plan's figures are the run's (parameters, checkpoint size), and a
    # dry run of the resumable run changes nothing in its folder.
    train(config_path, run, progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "iteration_4.pt")
    before = _tree(run)
    plan = plan_training(config_path, run, minutes=1e-4)
    assert _tree(run) == before
    assert plan.parameters == sum(w.numel() for w in ckpt.weights.values())
    assert plan.output_shape == out_shape and plan.context == tuple(unet.context)
    size = (run / "checkpoints" / "iteration_4.pt").stat().st_size
    assert abs(plan.checkpoint_bytes - size) <= 0.05 * size
    assert plan.checkpoints_kept == 2 + 2  # keep_last + one best file per criterion
    assert plan.start == 4 and plan.iterations_to_run == 0  # nothing left to do
    assert plan.iteration_seconds > 0 and plan.timed_iterations == 2


def test_training_plan_fits_iterations_to_the_budget() -> None:
    import dataclasses

    from innerdist.plan import TrainingPlan

    plan = TrainingPlan(
        input_shape=(44, 44), output_shape=(4, 4), batch_size=2, output_step=(2, 2),
        context=(20, 20), parameters=1234, device="cpu", iteration_seconds=0.5,
        data_seconds=0.1, timed_iterations=2, host_memory_bytes=2**20,
        device_memory_bytes=None, start=10, iterations=1000, budget_seconds=60.0,
        checkpoint_bytes=1000, checkpoints_kept=4)
    assert plan.iterations_to_run == 120 and plan.estimated_seconds == 60.0
    assert "120 of the 990 iteration(s) to go fit the time budget of 1 min 0 s " \
        "(resuming at iteration 10)" in str(plan)
    unlimited = dataclasses.replace(plan, budget_seconds=None)
    assert unlimited.iterations_to_run == 990
    assert "990 iteration(s) to go take about 8 min 15 s" in str(unlimited)
    assert "<= 3.9 KiB (4 x 1000 B)" in str(plan)


def test_dry_run_bad_input_exits_2(data_dir: Path, tmp_path: Path) -> None:
    from innerdist.train import plan_training

    bad = config_dict(data_dir)
    bad["model"]["input_shape"] = [44, 44, 44]
    bad["model"]["downsample_factors"] = [[2, 2, 2]]
    config_path = write_config(tmp_path, bad)
    result = runner.invoke(app, ["train", str(config_path), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "model.input_shape has 3 axes" in result.output
    with pytest.raises(ValueError, match="timed_iterations must be an integer >= 1"):
        plan_training(config_path, timed_iterations=0)
