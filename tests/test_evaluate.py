"""Tests of innerdist.evaluate: blockwise scores equal in-memory ones, volumes on disk,
reporting and the CLI (the metrics themselves: test_metrics.py)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_metrics import split_scene
from typer.testing import CliRunner

from innerdist.cli import app
from innerdist.evaluate import (
    binary_scores,
    evaluate_arrays,
    evaluate_volumes,
    format_scores,
    instance_scores,
    write_scores,
)
from innerdist.volumes import create_volume, mark_complete, open_volume

# --------------------------------------------------------------------------------------
# helpers




def write_volume(
    path: Path | str,
    data: np.ndarray,
    voxel_size: tuple[int, ...],
    *,
    channels: bool = True,
    offset: tuple[int, ...] | None = None,
    complete: bool = True,
) -> str:
    """Write ``data`` (``(C, *spatial)`` when ``channels``) as a zarr dataset; return its path."""
    spatial = data.shape[1:] if channels else data.shape
    vs = Coordinate(voxel_size)
    roi = Roi(offset if offset is not None else (0,) * vs.dims, Coordinate(spatial) * vs)
    array = create_volume(
        path,
        roi=roi,
        voxel_size=vs,
        dtype=data.dtype,
        num_channels=data.shape[0] if channels else None,
    )
    array[roi] = data
    if complete:
        mark_complete(array)
    return str(path)


def in_memory(data: np.ndarray, voxel_size: tuple[int, ...], channels: bool, offset=None) -> Array:
    dims = len(voxel_size)
    names = ["z", "y", "x"][3 - dims :]
    if channels:
        names = ["c^", *names]
    off = offset if offset is not None else (0,) * dims
    return Array(data, offset=off, voxel_size=voxel_size, axis_names=names)


def assert_scores_close(a: Any, b: Any, path: str = "") -> None:
    """Recursive comparison: ints/strings exactly, floats to 1e-9."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_scores_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_scores_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9), path
    else:
        assert a == b, path


# --------------------------------------------------------------------------------------
# blockwise == in memory


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), dims=st.sampled_from([2, 3]), use_mask=st.booleans())
def test_blockwise_equals_in_memory(data, dims, use_mask) -> None:
    shape = tuple(data.draw(st.integers(3, 10 if dims == 2 else 6)) for _ in range(dims))
    vs = tuple(data.draw(st.integers(1, 3)) for _ in range(dims))
    block = tuple(data.draw(st.integers(2, 4)) for _ in range(dims))
    clip = data.draw(st.floats(0.5, 8))
    tol = data.draw(st.floats(0, clip))
    channels = data.draw(st.integers(1, 2))
    gt_channel_axis = channels > 1 or data.draw(st.booleans())
    mode = data.draw(st.sampled_from(["binary", "instances"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    # Upsampled noise: objects a few voxels wide, with both background and foreground.
    pred = rng.integers(0, 4, (channels, *shape)).astype(np.uint64)
    gt = rng.integers(0, 4, (channels, *shape)).astype(np.uint32)
    pred[rng.random(pred.shape) < 0.3] = 0
    mask = (rng.random(shape) < 0.8).astype(np.uint8) if use_mask else None
    offset = tuple(3 * v for v in vs)
    result = evaluate_arrays(
        in_memory(pred, vs, True, offset),
        in_memory(gt if gt_channel_axis else gt[0], vs, gt_channel_axis, offset),
        mask=in_memory(mask, vs, False, offset) if mask is not None else None,
        mode=mode,
        tol_distance=tol,
        clip_distance=clip,
        block_shape=block,
    )
    assert result["mode"] == mode and result["roi_note"] is None
    assert result["roi_offset"] == list(offset)
    for c, entry in enumerate(result["channels"]):
        expected = binary_scores(
            pred[c], gt[c], vs, mask=mask, tol_distance=tol, clip_distance=clip
        )
        assert_scores_close(entry["binary"], expected, f"channel {c} binary")
        if mode == "instances":
            assert_scores_close(
                entry["instances"], instance_scores(pred[c], gt[c], mask=mask), f"channel {c}"
            )
        else:
            assert "instances" not in entry
        assert entry["num_voxels"] == (mask.sum() if mask is not None else math.prod(shape))


def test_block_context_is_needed_for_exact_distances() -> None:
    # A false positive 5 voxels from the only gt voxel, in another block: found through
    # the context (clip 8 -> 8 voxels) and exact; with clip 3 it is clipped, also exact.
    gt = np.zeros((1, 1, 12), np.uint8)
    gt[0, 0, 1] = 1
    pred = np.zeros_like(gt)
    pred[0, 0, 6] = 1
    for clip, expected in ((8, 5.0), (3, 3.0)):
        r = evaluate_arrays(
            in_memory(pred, (1, 1), True),
            in_memory(gt, (1, 1), True),
            block_shape=(1, 4),
            tol_distance=1,
            clip_distance=clip,
        )
        b = r["channels"][0]["binary"]
        assert b["mean_false_positive_distance"] == pytest.approx(expected)
        assert b["false_positives_with_tolerance"] == 1


def test_rois_are_intersected_and_reported() -> None:
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 3, (1, 8, 8)).astype(np.uint64)
    gt = rng.integers(0, 3, (6, 6)).astype(np.uint64)
    # gt starts 2 voxels (voxel size 4) further along both axes.
    r = evaluate_arrays(
        in_memory(pred, (4, 4), True),
        in_memory(gt, (4, 4), False, offset=(8, 8)),
        block_shape=(3, 3),
    )
    assert r["roi_offset"] == [8, 8] and r["roi_shape"] == [24, 24]
    assert "intersection" in r["roi_note"]
    expected = instance_scores(pred[0, 2:8, 2:8], gt[:6, :6])
    assert_scores_close(r["channels"][0]["instances"], expected)
    # A mask covering part of the ROI crops the evaluation to it.
    mask = in_memory(np.ones((3, 3), np.uint8), (4, 4), False, offset=(8, 8))
    r = evaluate_arrays(
        in_memory(pred, (4, 4), True), in_memory(gt, (4, 4), False, (8, 8)), mask=mask
    )
    assert r["roi_shape"] == [12, 12] and "mask" in r["roi_note"]
    assert_scores_close(
        r["channels"][0]["instances"], instance_scores(pred[0, 2:5, 2:5], gt[:3, :3])
    )


def test_auto_mode_follows_the_dtypes() -> None:
    ids = np.zeros((1, 4, 4), np.uint64)
    masks = np.zeros((1, 4, 4), np.uint8)
    r = evaluate_arrays(in_memory(ids, (1, 1), True), in_memory(ids, (1, 1), True))
    assert r["mode"] == "instances" and "instances" in r["channels"][0]
    r = evaluate_arrays(in_memory(masks, (1, 1), True), in_memory(ids, (1, 1), True))
    assert r["mode"] == "binary"
    r = evaluate_arrays(in_memory(masks != 0, (1, 1), True), in_memory(masks, (1, 1), True))
    assert r["mode"] == "binary"


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("voxel", ValueError, r"voxel size \(2, 2\) differs"),
        ("dims", ValueError, "spatial axes"),
        ("channels", ValueError, "channel counts differ: predicted has 2, ground truth has 1"),
        ("float", TypeError, "dtype float32"),
        ("disjoint", ValueError, "do not intersect"),
        ("mode", ValueError, "mode must be"),
        ("block", ValueError, "block_shape must be 2 positive integers"),
        ("mask_voxel", ValueError, "mask voxel size"),
        ("mask_channels", ValueError, "mask must have no channel axis or one channel"),
        ("mask_disjoint", ValueError, "mask ROI .* does not intersect"),
        ("tol", ValueError, "must not exceed clip_distance"),
        ("not_array", TypeError, "funlib.persistence.Array"),
    ],
)
def test_evaluate_arrays_rejects_bad_input(case, error, match) -> None:
    a = np.zeros((1, 4, 4), np.uint64)
    pred, gt = in_memory(a, (1, 1), True), in_memory(a, (1, 1), True)
    kwargs: dict[str, Any] = {}
    if case == "voxel":
        gt = in_memory(a, (2, 2), True)
    elif case == "dims":
        gt = in_memory(np.zeros((1, 4, 4, 4), np.uint64), (1, 1, 1), True)
    elif case == "channels":
        pred = in_memory(np.zeros((2, 4, 4), np.uint64), (1, 1), True)
    elif case == "float":
        gt = in_memory(a.astype(np.float32), (1, 1), True)
    elif case == "disjoint":
        gt = in_memory(a, (1, 1), True, offset=(4, 4))
    elif case == "mode":
        kwargs["mode"] = "semantic"
    elif case == "block":
        kwargs["block_shape"] = (4, 0)
    elif case == "mask_voxel":
        kwargs["mask"] = in_memory(a[0], (2, 1), False)
    elif case == "mask_channels":
        kwargs["mask"] = in_memory(np.zeros((2, 4, 4), np.uint8), (1, 1), True)
    elif case == "mask_disjoint":
        kwargs["mask"] = in_memory(a[0], (1, 1), False, offset=(8, 8))
    elif case == "tol":
        kwargs.update(tol_distance=50, clip_distance=10)
    elif case == "not_array":
        gt = a  # type: ignore[assignment]
    with pytest.raises(error, match=match):
        evaluate_arrays(pred, gt, **kwargs)


# --------------------------------------------------------------------------------------
# volumes on disk, reporting, CLI


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, str]:
    """The split scene in 3-D (two slices), voxel size (40, 8, 8) nm, on disk."""
    pred2, gt2 = split_scene()
    pred = np.stack([pred2, pred2])[np.newaxis]
    gt = np.stack([gt2, gt2])
    return {
        "pred": write_volume(tmp_path / "out.zarr/seg", pred, (40, 8, 8)),
        "gt": write_volume(tmp_path / "gt.zarr/labels", gt, (40, 8, 8), channels=False),
        "mask": write_volume(
            tmp_path / "gt.zarr/mask", np.ones(gt.shape, np.uint8), (40, 8, 8), channels=False
        ),
        "gt_4nm": write_volume(tmp_path / "gt.zarr/fine", gt, (40, 4, 4), channels=False),
        "gt_2ch": write_volume(tmp_path / "gt.zarr/two", np.stack([gt, gt]), (40, 8, 8)),
        "dir": str(tmp_path),
    }


def test_evaluate_volumes_on_disk(scene: dict[str, str]) -> None:
    r = evaluate_volumes(
        scene["pred"], scene["gt"], mask=scene["mask"], block_shape=(1, 7, 9), progress=False
    )
    assert r["mode"] == "instances" and r["units"] == "nm" and r["voxel_size"] == [40, 8, 8]
    assert r["predicted"] == scene["pred"] and r["mask"] == scene["mask"]
    assert r["roi_note"] is None
    s = r["channels"][0]["instances"]
    # B's 60% piece (IoU 0.6) matches up to t = 0.6 included.
    assert [m["true_positives"] for m in s["matching"]] == [2, 2, 2, 2, 2, 2, 1, 1, 1, 1]
    assert s["panoptic_quality"] == pytest.approx(0.8 * 2 / 3)
    b = r["channels"][0]["binary"]
    assert b["false_positives"] == 2 * 24
    # False object -> B: 3 voxels along y, 6 along x at 8 nm, both clipped at 200 nm.
    assert b["hausdorff_distance"] == pytest.approx(min(8 * math.hypot(6, 11), 200.0))
    text = format_scores(r)
    assert "panoptic_quality" in text and ">= 200" not in text
    assert "0.95" in text and "hausdorff_distance" in text


def test_evaluate_volumes_with_workers_equals_serial(scene: dict[str, str]) -> None:
    serial = evaluate_volumes(scene["pred"], scene["gt"], block_shape=(1, 8, 8), progress=False)
    pooled = evaluate_volumes(
        scene["pred"], scene["gt"], block_shape=(1, 8, 8), num_workers=2, progress=False
    )
    assert_scores_close(pooled, serial)
    # Blocks cut another way count the same (the distance context is exact).
    assert_scores_close(evaluate_volumes(scene["pred"], scene["gt"], block_shape=(2, 5, 40),
                                         progress=False), serial)


def test_evaluate_resumes_with_the_blocks_it_counted(
    scene: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import innerdist.evaluate as evaluate

    tracking = tmp_path / "scores.blocks"
    real = evaluate._score_block
    calls: list[Roi] = []

    def dies_at_the_third(plan: Any, arrays: Any, read: Roi, write: Roi, counters: Any) -> None:
        calls.append(write)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed part way
        real(plan, arrays, read, write, counters)

    monkeypatch.setattr(evaluate, "_score_block", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate_volumes(scene["pred"], scene["gt"], block_shape=(1, 8, 8), progress=False,
                         tracking_dir=tracking)
    assert len(list((tracking / "counts").glob("*.pickle"))) == 2
    calls.clear()
    monkeypatch.setattr(evaluate, "_score_block", lambda *a: (calls.append(a[3]), real(*a)))
    resumed = evaluate_volumes(scene["pred"], scene["gt"], block_shape=(1, 8, 8),
                               progress=False, tracking_dir=tracking)
    total = evaluate._plan(*[open_volume(scene[k]) for k in ("pred", "gt")], None, "auto",
                           40.0, 200.0, (1, 8, 8))[0].num_blocks()
    assert len(calls) == total - 2  # the two counted blocks are not counted again
    assert not tracking.exists()  # gone once the scores are computed
    assert_scores_close(resumed, evaluate_volumes(scene["pred"], scene["gt"],
                                                  block_shape=(1, 8, 8), progress=False))


def test_evaluate_through_a_worker_command_needs_a_shared_folder(scene: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="needs a folder on the shared file system"):
        evaluate_volumes(scene["pred"], scene["gt"], worker_command="srun {command}")


@pytest.mark.slow
def test_evaluate_through_the_fake_submitter_equals_serial(
    scene: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    import innerdist

    tests = Path(__file__).resolve().parent
    src = Path(innerdist.__file__).resolve().parent.parent
    monkeypatch.setenv("PYTHONPATH", f"{src}{os.pathsep}{tests}")
    submit = f"{sys.executable} {tests / 'fake_submit.py'} {{command}}"
    serial = evaluate_volumes(scene["pred"], scene["gt"], mask=scene["mask"],
                              block_shape=(1, 8, 8), progress=False)
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(app, [
        "evaluate", scene["pred"], scene["gt"], "--mask", scene["mask"], "--block-shape",
        "1,8,8", "--workers", "2", "--worker-command", submit, "--out", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    assert_scores_close({k: scores[k] for k in serial}, serial)
    assert not out.with_suffix(".blocks").exists()


def test_evaluate_volumes_refuses_bad_inputs(scene: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset 'nothing' not found"):
        evaluate_volumes(scene["pred"], scene["dir"] + "/gt.zarr/nothing")
    half = write_volume(
        tmp_path / "half.zarr/seg", np.zeros((1, 2, 4, 4), np.uint64), (40, 8, 8), complete=False
    )
    with pytest.raises(ValueError, match="marked incomplete"):
        evaluate_volumes(half, scene["gt"])
    with pytest.raises(ValueError, match="num_workers"):
        evaluate_volumes(scene["pred"], scene["gt"], num_workers=0)
    with pytest.raises(ValueError, match="voxel size"):
        evaluate_volumes(scene["pred"], scene["gt_4nm"])


def test_write_scores_json_and_csv(scene: dict[str, str], tmp_path: Path) -> None:
    r = evaluate_volumes(
        scene["pred"], scene["gt"], clip_distance=40, tol_distance=8, progress=False
    )
    json_path, csv_path = write_scores(r, tmp_path / "scores/run.json")
    assert csv_path == tmp_path / "scores/run.csv"
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(r))
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    by_name = {row["score"]: float(row["value"]) for row in rows}
    assert by_name["instances.f1_score@0.5"] == pytest.approx(2 / 3)
    assert by_name["binary.dice"] == pytest.approx(r["channels"][0]["binary"]["dice"])
    assert by_name["binary.hausdorff_distance"] == 40.0
    assert {row["channel"] for row in rows} == {"0"}
    assert ">= 40" in format_scores(r)  # Hausdorff capped at the clip distance
    with pytest.raises(FileExistsError, match="already exists"):
        write_scores(r, json_path)
    write_scores(r, json_path, overwrite=True)
    with pytest.raises(ValueError, match="must end in .json"):
        write_scores(r, tmp_path / "scores.txt")
    with pytest.raises(TypeError, match="'channels' list"):
        write_scores({"a": 1}, tmp_path / "x.json")
    with pytest.raises(TypeError, match="'channels' list"):
        format_scores({"a": 1})


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_writes_json_and_csv(scene: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            scene["pred"],
            scene["gt"],
            "--mask",
            scene["mask"],
            "--out",
            str(out),
            "--block-shape",
            "1,10,10",
            "--tol-distance",
            "16",
            "--clip-distance",
            "80",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "panoptic_quality" in result.stdout and "wrote" in result.stdout
    scores = json.loads(out.read_text())
    assert scores["tol_distance"] == 16 and scores["clip_distance"] == 80
    assert (tmp_path / "s.csv").exists()
    again = CliRunner().invoke(app, ["evaluate", scene["pred"], scene["gt"], "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in _error_line(again)
    forced = CliRunner().invoke(
        app,
        [
            "evaluate",
            scene["pred"],
            scene["gt"],
            "--out",
            str(out),
            "--overwrite",
            "--mode",
            "binary",
        ],
    )
    assert forced.exit_code == 0 and json.loads(out.read_text())["mode"] == "binary"


def test_cli_iou_thresholds(scene: dict[str, str]) -> None:
    result = CliRunner().invoke(
        app, ["evaluate", scene["pred"], scene["gt"], "--iou-thresholds", "0.6, 0.75"]
    )
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("      0.")]
    # (threshold, TP, FP, FN): B's piece of IoU 0.6 matches at 0.6, not at 0.75.
    assert [r[:4] for r in rows] == [["0.60", "2", "2", "0"], ["0.75", "1", "3", "1"]]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["{pred}", "{dir}/gt.zarr/missing"], "dataset 'missing' not found"),
        (["{pred}", "{gt_4nm}"], "voxel size"),
        (["{pred}", "{gt_2ch}"], "channel counts differ"),
        (["{pred}", "{gt}", "--mode", "semantic"], "--mode must be"),
        (["{pred}", "{gt}", "--out", "{dir}/s.txt"], "--out must end in .json"),
        (["{pred}", "{gt}", "--block-shape", "4,4"], "block_shape must be 3"),
        (["{pred}", "{gt}", "--tol-distance", "300"], "must not exceed clip_distance"),
        (["{pred}", "{gt}", "--iou-thresholds", "0.5,x"], "comma-separated numbers"),
        (["{pred}", "{gt}", "--iou-thresholds", "0.5,0"], "in (0, 1]"),
        (["{pred}", "{gt}", "--iou-thresholds", "0.5,0.5"], "must be distinct"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(scene: dict[str, str], args, match) -> None:
    argv = ["evaluate", *(a.format(**scene) for a in args)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    line = _error_line(result)
    assert line.startswith("innerdist evaluate: error:")
    assert match in line
