"""Tests for innerdist.safety and for the rules it enforces in every command: inputs are
never modified (whatever the output's spelling), --overwrite replaces only innerdist job
outputs, half-written or NaN inputs are refused, a finished identical job is a no-op, and
one writer per output."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from funlib.geometry import Roi
from typer.testing import CliRunner

from innerdist.architecture import UNet
from innerdist.blockwise import tracking_dir_for
from innerdist.checkpoint import random_checkpoint, save_checkpoint
from innerdist.cli import app
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.safety import (
    OutputLockedError,
    acquire_output_lock,
    check_input_complete,
    check_output_apart_from_inputs,
    release_output_lock,
    resolved,
)
from innerdist.volumes import create_volume, is_complete, mark_complete, open_volume

runner = CliRunner()


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (symlinks followed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write(path: Path, data: np.ndarray, voxel: tuple[int, ...], channels: bool = False) -> str:
    spatial = data.shape[1:] if channels else data.shape
    roi = Roi((0,) * len(spatial), tuple(s * v for s, v in zip(spatial, voxel, strict=True)))
    array = create_volume(path, roi=roi, voxel_size=voxel, dtype=data.dtype,
                          num_channels=data.shape[0] if channels else None)
    array[roi] = data
    mark_complete(array)
    return str(path)


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Any]:
    """in.zarr with labels, raw and a prediction; a checkpoint that fits the raw."""
    rng = np.random.default_rng(0)
    labels = np.zeros((16, 16), np.uint32)
    labels[2:7, 3:9] = 1
    labels[9:14, 5:15] = 2
    container = tmp_path / "in.zarr"
    write(container / "labels", labels, (4, 4))
    write(container / "raw", rng.integers(0, 255, (24, 24), dtype=np.uint8), (4, 4))
    pred = np.zeros((1, 16, 16), np.float32)
    pred[0, 2:7, 3:9] = 0.9
    write(container / "pred", pred, (4, 4), channels=True)
    unet = UNet(input_shape=(20, 20), num_fmaps=2, downsample_factors=[(2, 2)])
    ckpt = random_checkpoint(unet, InnerDistancePredictor(["c"], 10.0), (4, 4),
                             {"min": 0, "max": 255, "dtype": "uint8"})
    checkpoint = str(save_checkpoint(tmp_path / "model.pt", ckpt))
    (tmp_path / "link.zarr").symlink_to(container, target_is_directory=True)
    return {"root": tmp_path, "container": container, "checkpoint": checkpoint}


def _command(command: str, data: dict[str, Any], out: str) -> list[str]:
    c = data["container"]
    if command == "targets":
        return ["targets", str(c / "labels"), out, "-s", "10"]
    if command == "predict":
        return ["predict", data["checkpoint"], str(c / "raw"), out]
    return ["segment", str(c / "pred"), out, "--block-shape", "8,8"]


_INPUT = {"targets": "labels", "predict": "raw", "segment": "pred"}


@pytest.mark.parametrize("command", ["targets", "predict", "segment"])
@pytest.mark.parametrize(
    "spelling",
    ["same", "dotdot", "container_dotdot", "container", "symlink", "inside", "trailing_slash"],
)
def test_an_input_is_never_modified(data, command, spelling):
    """The output is the input, spelled in every way: refused before anything is created
    or deleted, with --overwrite too, and the input's bytes are unchanged."""
    root, name = data["root"], _INPUT[command]
    out = {
        "same": f"{root}/in.zarr/{name}",
        "dotdot": f"{root}/in.zarr/sub/../{name}",
        "container_dotdot": f"{root}/in.zarr/{name}/..",
        "container": f"{root}/in.zarr",
        "symlink": f"{root}/link.zarr/{name}",
        "inside": f"{root}/in.zarr/{name}/sub",
        "trailing_slash": f"{root}/in.zarr/{name}/",
    }[spelling]
    before = tree_bytes(data["container"])
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, [*_command(command, data, out), *extra])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"innerdist {command}: error: "), lines
        assert tree_bytes(data["container"]) == before


def test_check_output_apart_from_inputs(tmp_path):
    a = tmp_path / "a.zarr"
    check_output_apart_from_inputs(a / "out", {"raw": a / "raw", "mask": None})
    check_output_apart_from_inputs([a / "raw2", a / "ra"], {"raw": a / "raw"})  # prefixes
    cases = [
        (a / "raw", "is the raw"),
        (a / "x" / ".." / "raw", "is the raw"),
        (a, "contains the raw"),
        (a / "raw" / "c", "is inside the raw"),
    ]
    for out, message in cases:
        with pytest.raises(ValueError, match=message):
            check_output_apart_from_inputs([tmp_path / "ok.zarr" / "o", out], {"raw": a / "raw"})
    (tmp_path / "b.zarr").symlink_to(a)
    with pytest.raises(ValueError, match="is the labels .*both resolve to"):
        check_output_apart_from_inputs(tmp_path / "b.zarr" / "l", {"labels": a / "l"})
    assert resolved("x/../y") == Path.cwd() / "y"


def test_overwrite_never_deletes_what_no_innerdist_job_wrote(data):
    """An existing volume without an innerdist job attribute (here: user data) is not
    replaced by --overwrite."""
    c = data["container"]
    user = write(c / "mine", np.ones((16, 16), np.float32), (4, 4))
    before = tree_bytes(c)
    for command in ("targets", "segment"):
        result = runner.invoke(app, [*_command(command, data, user), "--overwrite"])
        assert result.exit_code == 2, result.output
        assert "not written by an innerdist job" in result.stderr
        assert tree_bytes(c) == before


def test_a_finished_identical_job_is_a_no_op(data):
    out = str(data["root"] / "o.zarr" / "t")
    first = runner.invoke(app, _command("targets", data, out))
    assert first.exit_code == 0 and f"wrote {out}" in first.stdout, first.output
    before = tree_bytes(data["root"] / "o.zarr")
    again = runner.invoke(app, _command("targets", data, out))
    assert again.exit_code == 0, again.output
    assert "already complete (same job): nothing to do" in again.stdout
    assert tree_bytes(data["root"] / "o.zarr") == before
    # A different job on the same output still needs --overwrite.
    other = runner.invoke(app, [*_command("targets", data, out)[:-1], "20"])
    assert other.exit_code == 2 and "pass --overwrite" in other.stderr
    seg = str(data["root"] / "o.zarr" / "s")
    for _ in range(2):
        result = runner.invoke(app, _command("segment", data, seg))
        assert result.exit_code == 0, result.output
    assert "already complete" in result.stdout


def test_segment_refuses_nan_in_the_prediction(data):
    c = data["container"]
    pred = np.zeros((1, 16, 16), np.float32)
    pred[0, 11, 13] = np.nan
    nan = write(c / "nan", pred, (4, 4), channels=True)
    for mode in ("instances", "threshold"):
        out = str(data["root"] / "o.zarr" / mode)
        result = runner.invoke(app, ["segment", nan, out, "--mode", mode, "--block-shape",
                                     "8,8"])
        assert result.exit_code == 2, result.output
        line = result.stderr.strip()
        assert "1 non-finite value(s)" in line and "at voxel (11, 13)" in line, line
        assert not is_complete(open_volume(out))


def _incomplete(path: Path, task: str) -> str:
    """A volume an innerdist ``task`` job left half-written."""
    array = open_volume(path, mode="r+")
    array._source_data.attrs["innerdist_job"] = {"task": task}
    mark_complete(array, False)
    return str(path)


def test_incomplete_inputs_are_refused_naming_the_job(data, caplog):
    c = data["container"]
    raw = _incomplete(c / "raw", "import")
    pred = _incomplete(c / "pred", "predict")
    labels = _incomplete(c / "labels", "segment")
    cases = [
        (["predict", data["checkpoint"], raw, str(data["root"] / "o.zarr" / "p")], "import"),
        (["segment", pred, str(data["root"] / "o.zarr" / "s")], "predict"),
        (["targets", labels, str(data["root"] / "o.zarr" / "t"), "-s", "10"], "segment"),
    ]
    for args, job in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        line = result.stderr.strip()
        assert "is incomplete" in line and f"run the innerdist {job} job again" in line, line
        assert ("--allow-incomplete" in line) == (args[0] != "targets")
    with caplog.at_level(logging.WARNING):
        result = runner.invoke(app, [*cases[1][0], "--allow-incomplete", "--block-shape",
                                     "8,8"])
    assert result.exit_code == 0, result.output
    assert "using it as it is (--allow-incomplete)" in caplog.text


def test_check_input_complete():
    check_input_complete({}, "a.zarr/x", "raw")  # not written by innerdist: complete
    check_input_complete({"innerdist_complete": True}, "a.zarr/x", "raw")
    with pytest.raises(ValueError, match="raw 'a.zarr/x' is incomplete .* run the job again"):
        check_input_complete({"innerdist_complete": False}, "a.zarr/x", "raw")
    with pytest.raises(ValueError, match=r"innerdist targets job again to finish it$"):
        check_input_complete({"innerdist_complete": False, "innerdist_job": {"command":
                             "targets"}}, "a.zarr/x", "labels", allow_incomplete=None)


def test_predict_refuses_integer_raw_of_another_dtype(data):
    c = data["container"]
    raw16 = write(c / "raw16", np.zeros((24, 24), np.uint16), (4, 4))
    result = runner.invoke(app, ["predict", data["checkpoint"], raw16,
                                 str(data["root"] / "o.zarr" / "p")])
    assert result.exit_code == 2, result.output
    assert "is uint16 but the network was trained on uint8 raw" in result.stderr


def test_a_second_writer_is_refused_and_a_crashed_lock_is_not_stale(data):
    out = data["root"] / "o.zarr" / "p"
    code = (
        "import sys; from innerdist.safety import acquire_output_lock; "
        f"acquire_output_lock({str(tracking_dir_for(out))!r}, 'p'); print('held', flush=True);"
        " sys.stdin.read()"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, [*_command("predict", data, str(out)), "--overwrite"])
        assert result.exit_code == 2, result.output
        assert "being written by another running job (pid" in result.stderr
        assert not out.exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up ran, the kernel dropped the lock
        holder.wait()
    result = runner.invoke(app, [*_command("predict", data, str(out)), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert is_complete(open_volume(out))


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    tracking = tmp_path / "a.zarr" / ".innerdist-blocks" / "x"
    acquire_output_lock(tracking, "a.zarr/x")
    acquire_output_lock(tracking, "a.zarr/x")  # a retry in the same process
    code = (
        "from innerdist.safety import acquire_output_lock as a; "
        f"a({str(tracking)!r}, 'a.zarr/x')"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env)
    assert other.returncode == 1 and "OutputLockedError" in other.stderr
    release_output_lock(tracking)
    release_output_lock(tracking)  # a no-op when not held
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env)
    assert other.returncode == 0, other.stderr
    assert issubclass(OutputLockedError, FileExistsError)


def test_a_missing_chunk_in_a_finished_output_is_damage(data):
    """zarr reads a missing chunk as its fill value; an innerdist output records how many
    chunks it stored, so a reader can tell damage from a chunk that was never stored."""
    pred = data["root"] / "o.zarr" / "p"
    # Level s0 only (no pyramid), so the chunks are those of the blocks.
    result = runner.invoke(app, [*_command("predict", data, str(pred)), "--block-shape",
                                 "8,8", "--no-pyramid"])
    assert result.exit_code == 0, result.output
    attrs = open_volume(pred).attrs
    chunks = sorted(p for p in (pred / "s0" / "c").rglob("*") if p.is_file())
    assert attrs["innerdist_stored_chunks"] == len(chunks) == 9
    seg = [*_command("segment", data, str(data["root"] / "o.zarr" / "s"))]
    seg[1] = str(pred)
    chunks[4].unlink()
    result = runner.invoke(app, seg)
    assert result.exit_code == 2, result.output
    assert ("is damaged: the job that wrote it stored 9 chunks, 1 of them are missing now"
            in result.stderr)
    assert "run the innerdist predict job again with --overwrite" in result.stderr


def test_segment_never_deletes_data_where_its_intermediates_go(data):
    c = data["container"]
    mine = write(c / "s__seeds", np.ones((16, 16), np.uint8), (4, 4))
    before = tree_bytes(c)
    result = runner.invoke(app, _command("segment", data, str(c / "s")))
    assert result.exit_code == 2, result.output
    assert f"{mine!r} exists, but segment keeps its intermediate results there" in result.stderr
    assert tree_bytes(c) == before
