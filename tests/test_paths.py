"""Every command, run from an unrelated working directory, finds its inputs and writes its
outputs where the user meant, whether paths are relative, absolute or ``~``-prefixed, and
when folder names contain spaces.

The whole pipeline runs once per spelling: make-data -> import-tiff -> targets -> train
(a config whose data paths are relative to the config's own folder) -> predict -> segment
-> evaluate. ``~`` is passed literally (as a quoted shell word or an ``--opt=~/x`` option
reaches a program), with ``HOME`` pointing into the test's folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from typer.testing import CliRunner

from innerdist.cli import app
from innerdist.volumes import is_complete, open_volume

runner = CliRunner()

SPELLINGS = ["relative", "absolute", "home"]


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Callable[[Path], str]]:
    """``(home, spell)``: data live under ``home``; the working directory is a sibling."""
    home = tmp_path / "home dir"
    elsewhere = tmp_path / "unrelated dir" / "deeper"
    home.mkdir()
    elsewhere.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(elsewhere)
    return home, lambda p: str(p)


def speller(spelling: str, home: Path) -> Callable[[Path], str]:
    def spell(path: Path) -> str:
        if spelling == "relative":
            return os.path.relpath(path, Path.cwd())
        if spelling == "home":
            return "~/" + str(path.relative_to(home))
        return str(path)

    return spell


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"innerdist {' '.join(args)}:\n{result.output}"
    return result.output


@pytest.mark.parametrize(
    "spelling",
    [
        "relative",
        pytest.param("absolute", marks=pytest.mark.slow),
        pytest.param("home", marks=pytest.mark.slow),
    ],
)
def test_every_command_from_an_unrelated_directory(
    spelling: str, places: tuple[Path, Callable[[Path], str]]
) -> None:
    home, _ = places
    spell = speller(spelling, home)
    data = home / "my data"

    run("make-data", spell(data), "--dims", "2", "--seed", "3")
    train_zarr, validate_zarr = data / "train.zarr", data / "validate.zarr"
    assert is_complete(open_volume(train_zarr / "raw"))
    # Nothing was written relative to the working directory.
    assert not any(Path.cwd().iterdir())

    raw = np.asarray(open_volume(validate_zarr / "raw").data)
    tiff = home / "my tiffs" / "validate raw.tif"
    tiff.parent.mkdir()
    tifffile.imwrite(tiff, raw)
    run("import-tiff", spell(tiff), spell(home / "imported.zarr" / "raw"),
        "--voxel-size", "8,8")
    np.testing.assert_array_equal(open_volume(home / "imported.zarr" / "raw").data, raw)

    run("targets", spell(validate_zarr / "labels"), spell(home / "out.zarr" / "targets"),
        "--scale-factor", "24")
    assert is_complete(open_volume(home / "out.zarr" / "targets"))

    config_dir = home / "my configs"
    config_dir.mkdir()
    config = {
        "data": {
            # Relative to the config's folder, whatever the working directory.
            "train": [
                {"raw": "../my data/train.zarr/raw", "labels": "../my data/train.zarr/labels"}
            ],
            "validate": [
                {"raw": "../my data/validate.zarr/raw", "labels": "../my data/validate.zarr/labels"}
            ],
        },
        "task": {"channels": ["organelle"], "scale_factor": 24},
        "model": {"input_shape": [44, 44], "num_fmaps": 2, "downsample_factors": [[2, 2]]},
        "training": {"iterations": 2, "batch_size": 1, "validation_interval": 2,
                     "checkpoint_interval": 2, "snapshot_interval": 0},
        "validation": {"foreground_levels": [0.05], "seed_levels": [0.5]},
    }
    (config_dir / "tiny run.yaml").write_text(yaml.safe_dump(config))
    run_dir = home / "my runs" / "tiny"
    run("train", spell(config_dir / "tiny run.yaml"), "--run-dir", spell(run_dir))
    checkpoint = run_dir / "best.pt"
    if not checkpoint.exists():
        checkpoint = sorted((run_dir / "checkpoints").glob("*.pt"))[-1]

    prediction = home / "out.zarr" / "prediction"
    run("predict", spell(checkpoint), spell(validate_zarr / "raw"), spell(prediction))
    assert is_complete(open_volume(prediction))
    segmentation = home / "out.zarr" / "segmentation"
    run("segment", spell(prediction), spell(segmentation))
    assert is_complete(open_volume(segmentation))
    scores = home / "my scores" / "scores.json"
    scores.parent.mkdir()
    run("evaluate", spell(segmentation), spell(validate_zarr / "labels"), "--out", spell(scores))
    assert scores.is_file() and scores.with_suffix(".csv").is_file()

    # Still nothing in the working directory: every output went where it was named.
    assert not any(Path.cwd().iterdir())


@pytest.mark.slow
def test_demo_from_an_unrelated_directory(places: tuple[Path, Callable[[Path], str]]) -> None:
    home, _ = places
    out = home / "my demo"
    run("demo", "--out", "~/my demo", "--minutes", "0.2")
    assert (out / "report.md").is_file() and (out / "scores.json").is_file()
    assert not any(Path.cwd().iterdir())
