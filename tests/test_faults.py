"""Faults of the machine, injected for real: a full disk (a small tmpfs) and a read-only
folder (a read-only tmpfs) under every command's output, and SIGKILL at early, middle and
late points of blockwise jobs followed by a re-run that must equal an uninterrupted run
byte for byte.

Each fault gives one line on stderr naming the path and the cause, exit code 1, and leaves
the output marked incomplete, so the same command resumes once the fault is gone. Mounting
needs root (CI containers and this project's dev machines run as root); elsewhere the
mount tests are skipped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from test_safety import write
from typer.testing import CliRunner

from innerdist.architecture import UNet
from innerdist.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint
from innerdist.cli import app
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.volumes import is_complete, open_volume

runner = CliRunner()
SRC = str(Path(__file__).parents[1] / "src")


def _mount(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``full``: a 1 MiB tmpfs, filled but for 48 KiB; ``ro``: a read-only tmpfs."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    if os.geteuid() != 0 or not _mount(full, "size=1m"):
        pytest.skip("mounting a tmpfs needs root")
    assert _mount(ro, "ro,size=1m")
    (full / "filler").write_bytes(b"\0" * (1024 * 1024 - 48 * 1024))
    try:
        yield {"full": full, "ro": ro}
    finally:
        for where in (full, ro):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _grow(full: Path) -> None:
    """Free space: the disk is remounted larger, its content kept."""
    subprocess.run(["mount", "-o", "remount,size=64m", str(full)], check=True)
    (full / "filler").unlink()




@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 40, (96, 96)).astype(np.uint32)
    pred = rng.random((1, 96, 96)).astype(np.float32)
    d = tmp_path / "in.zarr"
    unet = UNet(input_shape=(20, 20), num_fmaps=2, downsample_factors=[(2, 2)])
    ckpt = random_checkpoint(unet, InnerDistancePredictor(["c"], 10.0), (4, 4),
                             {"min": 0, "max": 255, "dtype": "uint8"})
    tifffile.imwrite(tmp_path / "raw.tif", rng.integers(0, 255, (96, 96), dtype=np.uint8))
    return {
        "labels": write(d / "labels", labels, (4, 4)),
        "raw": write(d / "raw", rng.integers(0, 255, (96, 96), dtype=np.uint8), (4, 4)),
        "pred": write(d / "pred", pred, (4, 4), channels=True),
        "checkpoint": str(save_checkpoint(tmp_path / "model.pt", ckpt)),
        "tiff": str(tmp_path / "raw.tif"),
    }


def _args(command: str, inputs: dict[str, str], where: Path) -> list[str]:
    return {
        "targets": ["targets", inputs["labels"], f"{where}/o.zarr/t", "-s", "8",
                    "--block-shape", "16,16"],
        "predict": ["predict", inputs["checkpoint"], inputs["raw"], f"{where}/o.zarr/p",
                    "--block-shape", "16,16"],
        "segment": ["segment", inputs["pred"], f"{where}/o.zarr/s", "--block-shape", "16,16"],
        "import-tiff": ["import-tiff", inputs["tiff"], f"{where}/o.zarr/raw", "--voxel-size",
                        "4,4", "--chunk-shape", "16,16"],
        "evaluate": ["evaluate", inputs["labels"], inputs["labels"], "--out",
                     f"{where}/scores.json"],
        "make-data": ["make-data", f"{where}/demo", "--dims", "2"],
    }[command]


# targets runs in the default suite; the others (each ~10 s on 2 cores) in the slow one.
COMMANDS = ["targets"] + [
    pytest.param(c, marks=pytest.mark.slow)
    for c in ("predict", "segment", "import-tiff", "evaluate", "make-data")
]
BLOCKWISE = ["targets"] + [pytest.param(c, marks=pytest.mark.slow) for c in ("predict", "segment")]


def _one_fault_line(result: Any, command: str, cause: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.stderr, result.stderr
    # Progress bars aside (they go to stderr too), the error is the one and last line.
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "rror" in line or "Errno" in line]
    assert errors == lines[-1:], result.stderr
    assert errors[0].startswith(f"innerdist {command}: error: "), errors[0]
    assert cause in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_output_folder(disk, inputs, command):
    result = runner.invoke(app, _args(command, inputs, disk["ro"]))
    line = _one_fault_line(result, command, "read-only file system (errno EROFS)")
    assert str(disk["ro"]) in line


@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk(disk, inputs, command):
    args = _args(command, inputs, disk["full"])
    if command == "evaluate":  # the scores are small: leave no space at all
        with open(disk["full"] / "filler", "ab", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    result = runner.invoke(app, args)
    line = _one_fault_line(result, command, "no space left on device (errno ENOSPC)")
    assert str(disk["full"]) in line and "free space, then run the same command" in line
    if command in ("targets", "predict", "segment"):
        out = args[2] if command != "predict" else args[3]
        assert not is_complete(open_volume(out))  # half-written, and says so


@pytest.mark.parametrize("command", BLOCKWISE)
def test_full_disk_then_resume_equals_an_uninterrupted_run(disk, inputs, tmp_path, command):
    args = _args(command, inputs, disk["full"])
    assert runner.invoke(app, args).exit_code == 1
    _grow(disk["full"])
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    reference = runner.invoke(app, _args(command, inputs, tmp_path / "ref"))
    assert reference.exit_code == 0, reference.output
    out = args[2] if command != "predict" else args[3]
    name = Path(out).name
    got, want = open_volume(out), open_volume(tmp_path / "ref" / "o.zarr" / name)
    assert is_complete(got)
    assert got.data.dtype == want.data.dtype
    assert np.asarray(got[got.roi]).tobytes() == np.asarray(want[want.roi]).tobytes()


def test_checkpoints_are_atomic_on_a_full_disk(disk):
    """A checkpoint that did not fit leaves neither a file that a resume would trust nor a
    temporary file; a previous checkpoint at the same path is kept whole."""
    unet = UNet(input_shape=(20, 20), num_fmaps=2, downsample_factors=[(2, 2)])
    small = random_checkpoint(unet, InnerDistancePredictor(["c"], 10.0), (4, 4),
                              {"min": 0, "max": 255, "dtype": "uint8"})
    path = disk["full"] / "iteration_10.pt"
    save_checkpoint(path, small)
    before = path.read_bytes()
    big_unet = UNet(input_shape=(20, 20), num_fmaps=32, downsample_factors=[(2, 2)])
    big = random_checkpoint(big_unet, InnerDistancePredictor(["c"], 10.0), (4, 4),
                            {"min": 0, "max": 255, "dtype": "uint8"})
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, big)
    assert caught.value.errno == 28 or "No space" in str(caught.value)
    assert path.read_bytes() == before
    assert load_checkpoint(path).iteration == small.iteration
    assert sorted(p.name for p in disk["full"].iterdir()) == ["filler", "iteration_10.pt"]


# --- SIGKILL at early, middle and late points ------------------------------------------------


def _run_cli(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-m", "innerdist.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _chunks(folder: Path) -> int:
    """Chunks written to an output's level s0 (outputs are OME-NGFF image groups)."""
    level = folder / "s0" if (folder / "s0").exists() else folder
    return sum(1 for p in (level / "c").rglob("*") if p.is_file()) if level.exists() else 0


def _kill_when(args: list[str], ready: Any) -> bool:
    """Start the command and SIGKILL it as soon as ``ready()``; whether it was still
    running then (a run that finished first proves nothing)."""
    proc = _run_cli(args)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# Where to kill: early (the output was just created), middle (a third of the first pass's
# chunks written), late (all but a few of the last pass's chunks written). segment's
# first pass writes the fragments, its last the output; 36 blocks per job.
POINTS = {
    "early": lambda out, command: lambda: out.exists(),
    "middle": lambda out, command: lambda: _chunks(
        out.parent / f"{out.name}__fragments" if command == "segment" else out) >= 12,
    "late": lambda out, command: lambda: _chunks(out) >= 32,
}


@pytest.mark.slow
@pytest.mark.parametrize("command", ["targets", "predict", "segment"])
@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_then_rerun_equals_an_uninterrupted_run(inputs, tmp_path, command, point):
    work = tmp_path / "work"
    args = _args(command, inputs, work)
    out = Path(args[2] if command != "predict" else args[3])
    killed = _kill_when(args, POINTS[point](out, command))
    assert killed, "the run finished before the kill point"
    assert not (out / "zarr.json").exists() or not is_complete(open_volume(out))
    rerun = _run_cli(args)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr
    assert runner.invoke(app, _args(command, inputs, tmp_path / "ref")).exit_code == 0
    got, want = open_volume(out), open_volume(tmp_path / "ref" / "o.zarr" / out.name)
    assert is_complete(got)
    assert np.asarray(got[got.roi]).tobytes() == np.asarray(want[want.roi]).tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["ro", "full"])
def test_train_on_a_faulty_run_directory(disk, tmp_path, monkeypatch, fault):
    import yaml

    from innerdist.synthetic import make_em_volume, write_volume

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_volume(make_em_volume((64, 64), (8, 8), seed=1), tmp_path / "train.zarr")
    data = {"raw": f"{tmp_path}/train.zarr/raw", "labels": f"{tmp_path}/train.zarr/labels"}
    config = {
        "data": {"train": [data], "validate": [data]},
        "task": {"channels": ["organelle"], "scale_factor": 24},
        "model": {"input_shape": [44, 44], "num_fmaps": 4, "downsample_factors": [[2, 2]]},
        "training": {"iterations": 2, "batch_size": 1, "checkpoint_interval": 1,
                     "validation_interval": 2},
        "validation": {"foreground_levels": [0.05], "seed_levels": [0.5]},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    run_dir = disk[fault] / "run"
    result = runner.invoke(app, ["train", str(tmp_path / "run.yaml"), "--run-dir",
                                 str(run_dir)])
    cause = "read-only file system" if fault == "ro" else "no space left on device"
    _one_fault_line(result, "train", cause)
    if fault == "full":
        # Nothing a resume would trust: every checkpoint present loads whole.
        for ckpt in (run_dir / "checkpoints").glob("*.pt") if run_dir.exists() else []:
            load_checkpoint(ckpt)
        _grow(disk["full"])
        resumed = runner.invoke(app, ["train", str(tmp_path / "run.yaml"), "--run-dir",
                                      str(run_dir)])
        assert resumed.exit_code == 0, resumed.output
        assert "trained 2 iterations" in resumed.stdout
