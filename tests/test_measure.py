"""Tests of innerdist.measure: the blockwise table equals skimage's regionprops of the whole
volume, the surface estimate equals a slow face count, resuming, outputs and the CLI."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.measure import regionprops
from test_evaluate import write_volume
from test_faults import disk  # noqa: F401  (the tmpfs fixture)
from typer.testing import CliRunner

from innerdist import measure as measure_module
from innerdist.cli import app
from innerdist.measure import (
    SURFACE_CORRECTION,
    block_stats,
    column_names,
    measure_volume,
    merge_stats,
)

# --------------------------------------------------------------------------------------
# helpers


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def by_id(rows: list[dict[str, str]], channel: int = 0) -> dict[int, dict[str, str]]:
    return {int(r["id"]): r for r in rows if int(r["channel"]) == channel}


def slow_faces(labels: np.ndarray) -> dict[int, list[int]]:
    """Exposed faces per id and axis, voxel by voxel: a face of a voxel is exposed when the
    neighbour across it lies outside the volume or holds another id."""
    faces: dict[int, list[int]] = {}
    dims = labels.ndim
    for index in np.ndindex(labels.shape):
        own = int(labels[index])
        if own == 0:
            continue
        entry = faces.setdefault(own, [0] * dims)
        for d in range(dims):
            for step in (-1, 1):
                other = list(index)
                other[d] += step
                outside = not 0 <= other[d] < labels.shape[d]
                if outside or int(labels[tuple(other)]) != own:
                    entry[d] += 1
    return faces


def check_against_regionprops(
    rows: dict[int, dict[str, str]],
    labels: np.ndarray,
    voxel_size: tuple[int, ...],
    offset: tuple[int, ...],
    raw: np.ndarray | None = None,
) -> None:
    """Every property the table shares with regionprops of the whole volume, and the
    surface columns against :func:`slow_faces`."""
    dims = labels.ndim
    axes = ("z", "y", "x")[3 - dims :]
    vs = np.array(voxel_size)
    # float64 intensities: regionprops averages float32 input in float32
    as64 = None if raw is None else raw.astype(np.float64)
    props = regionprops(labels.astype(np.int64), intensity_image=as64)
    assert sorted(rows) == [p.label for p in props]
    faces = slow_faces(labels)
    face_size = np.prod(vs) // vs
    size, surface, face = column_names(dims, "nm", False)[3:6]
    for p in props:
        row = rows[p.label]
        assert int(row["voxel_count"]) == p.area
        assert int(row[size]) == p.area * np.prod(vs)
        centroid = np.array(offset) + vs * np.array(p.centroid)
        for d, a in enumerate(axes):
            assert float(row[f"centroid_{a}_nm"]) == pytest.approx(centroid[d], rel=1e-12,
                                                                    abs=1e-9)
            assert int(row[f"bbox_begin_{a}_nm"]) == offset[d] + vs[d] * p.bbox[d]
            assert int(row[f"bbox_end_{a}_nm"]) == offset[d] + vs[d] * p.bbox[dims + d]
        touches = any(p.bbox[d] == 0 or p.bbox[dims + d] == labels.shape[d] for d in range(dims))
        assert row["touches_border"] == str(touches)
        expected_faces = int(np.dot(faces[p.label], face_size))
        assert int(row[face]) == expected_faces
        assert float(row[surface]) == pytest.approx(expected_faces * SURFACE_CORRECTION[dims])
        if raw is not None:
            assert float(row["mean_intensity"]) == pytest.approx(p.intensity_mean, rel=1e-9)
            assert float(row["min_intensity"]) == p.intensity_min
            assert float(row["max_intensity"]) == p.intensity_max
            assert float(row["std_intensity"]) == pytest.approx(
                p.intensity_std, rel=1e-7, abs=1e-12
            )


@st.composite
def scenes(draw: Any) -> dict[str, Any]:
    """Random label volumes: a coarse random id grid blown up by random factors (objects
    of a few voxels up to whole slabs, crossing the seams of small blocks), with a few
    random voxels changed (fragmented objects). Blocks cut every axis into 1-4 pieces."""
    dims = draw(st.sampled_from([2, 3]))
    limit = 9 if dims == 3 else 16
    shape = tuple(draw(st.integers(1, limit)) for _ in range(dims))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ids = draw(st.integers(1, 6))
    factor = [int(rng.integers(1, 5)) for _ in range(dims)]
    coarse = rng.integers(0, ids + 1, size=[math.ceil(s / f) for s, f in zip(shape, factor)])
    labels = coarse
    for d, f in enumerate(factor):
        labels = np.repeat(labels, f, axis=d)
    labels = labels[tuple(slice(0, s) for s in shape)].astype(np.uint32)
    noise = rng.random(shape) < 0.05
    labels[noise] = rng.integers(0, ids + 1, size=int(noise.sum()))
    return {
        "labels": labels,
        "raw": rng.normal(100, 20, size=shape).astype(np.float32),
        "voxel_size": tuple(draw(st.sampled_from([1, 4, 8, 40])) for _ in range(dims)),
        "offset": tuple(draw(st.integers(-50, 50)) for _ in range(dims)),
        # at most 4 blocks per axis (block shape 1 for small axes): every seam case,
        # without thousands of blocks
        "block": tuple(draw(st.integers(math.ceil(s / 4), s)) for s in shape),
    }


# --------------------------------------------------------------------------------------
# the table equals regionprops of the whole volume


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(scene=scenes())
def test_blockwise_table_equals_regionprops(tmp_path_factory: Any, scene: dict[str, Any]) -> None:
    folder = tmp_path_factory.mktemp("scene")
    labels, raw = scene["labels"], scene["raw"]
    vs, offset = scene["voxel_size"], scene["offset"]
    inst = write_volume(folder / "d.zarr/inst", labels, vs, channels=False, offset=offset)
    intensities = write_volume(folder / "d.zarr/raw", raw, vs, channels=False, offset=offset)
    result = measure_volume(
        inst, folder / "objects.csv", raw=intensities, block_shape=scene["block"],
        progress=False,
    )
    rows = read_csv(result.table)
    check_against_regionprops(by_id(rows), labels, vs, offset, raw)
    summary = json.loads(result.summary_json.read_text())["channels"][0]
    assert summary["objects"] == len(np.unique(labels[labels > 0]))
    assert summary["volume_fraction"] == pytest.approx((labels > 0).mean())


def test_objects_across_many_small_blocks_anisotropic(tmp_path: Path) -> None:
    """Touching balls on a 40 x 8 x 8 grid, 5^3 blocks: every ball spans several blocks."""
    from labelgen import packed_balls

    rng = np.random.default_rng(3)
    labels = packed_balls(rng, (12, 30, 30), voxel_size=(40, 8, 8), radii=(3, 8), fill=0.5)
    raw = rng.integers(0, 255, size=labels.shape).astype(np.uint8)
    vs, offset = (40, 8, 8), (80, -16, 24)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, vs, channels=False, offset=offset)
    r = write_volume(tmp_path / "d.zarr/raw", raw, vs, channels=False, offset=offset)
    result = measure_volume(inst, tmp_path / "o.csv", raw=r, block_shape=(5, 5, 5),
                            progress=False)
    rows = by_id(read_csv(result.table))
    assert len(rows) > 5
    check_against_regionprops(rows, labels, vs, offset, raw.astype(np.float64))


def test_channels_are_measured_one_by_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(2, 10, 12)).astype(np.uint16)
    labels[1] = np.repeat(labels[1][:, :3], 4, axis=1)  # other objects in channel 1
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (4, 4), channels=True)
    result = measure_volume(inst, tmp_path / "o.csv", block_shape=(4, 5), progress=False)
    rows = read_csv(result.table)
    for c in range(2):
        check_against_regionprops(by_id(rows, c), labels[c], (4, 4), (0, 0))
    channels = json.loads(result.summary_json.read_text())["channels"]
    assert [e["objects"] for e in channels] == [
        len(np.unique(labels[c][labels[c] > 0])) for c in range(2)
    ]


# --------------------------------------------------------------------------------------
# block kernel and merge, by hand


def test_block_stats_of_a_hand_drawn_block() -> None:
    # ids with their context: 5 fills the block's left column and continues above it
    padded = np.array(
        [
            [0, 5, 0, 0],
            [0, 5, 9, 0],
            [0, 5, 9, 0],
            [0, 0, 0, 0],
        ],
        np.uint64,
    )
    s = block_stats(padded, (10, 20), np.array([[1.0, 2.0], [3.0, 6.0]]))
    assert s["ids"].tolist() == [5, 9]
    assert s["count"].tolist() == [2, 2]
    assert s["index_sum"].tolist() == [[21, 40], [21, 42]]
    assert s["box_lo"].tolist() == [[10, 20], [10, 21]]
    assert s["box_hi"].tolist() == [[12, 21], [12, 22]]
    # 5: the face above is shared with 5 (not exposed), the face below is; both x faces
    # of both voxels are exposed (0 left, 9 right)
    assert s["faces"].tolist() == [[1, 4], [2, 4]]
    assert s["sum"].tolist() == [4.0, 8.0]
    assert s["m2"].tolist() == [2.0, 8.0]
    assert s["min"].tolist() == [1.0, 2.0] and s["max"].tolist() == [3.0, 6.0]


def test_merge_gives_the_std_of_the_union() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(1e6, 1.0, size=40)  # bright: a sum of squares would cancel
    halves = []
    for part in (values[:13], values[13:]):
        padded = np.zeros((3, len(part) + 2), np.uint64)
        padded[1, 1:-1] = 4
        halves.append(block_stats(padded, (0, 0), part[np.newaxis]))
    merged = merge_stats(halves)
    assert merged["count"].tolist() == [40]
    assert math.sqrt(merged["m2"][0] / 40) == pytest.approx(values.std(), rel=1e-9)
    assert merged["min"][0] == values.min() and merged["max"][0] == values.max()
    assert merge_stats([]) == {}


# --------------------------------------------------------------------------------------
# surface area estimate


def _ball(radius: float, voxel_size: tuple[int, ...]) -> np.ndarray:
    """A digitised ball (disc in 2-D) of ``radius`` world units, centred off the grid."""
    vs = np.array(voxel_size, float)
    half = np.ceil(radius / vs).astype(int) + 2
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    dist2 = sum(((g + 0.3) * v) ** 2 for g, v in zip(grids, vs))
    return (dist2 <= radius**2).astype(np.uint8)


@pytest.mark.parametrize(
    ("radius", "voxel_size", "block", "tolerance"),
    [
        (160, (8, 8, 8), (9, 9, 9), 0.03),
        (320, (40, 8, 8), (4, 20, 20), 0.04),
        (160, (8, 8), (9, 9), 0.03),
    ],
)
def test_surface_estimate_on_a_digitised_ball(
    tmp_path: Path, radius: float, voxel_size: tuple[int, ...], block: tuple[int, ...],
    tolerance: float,
) -> None:
    """The corrected face count is within a few % of 4 pi r^2 (2 pi r in 2-D), isotropic
    or not; the raw face count overestimates by 3/2 (4/pi)."""
    ball = _ball(radius, voxel_size)
    inst = write_volume(tmp_path / "d.zarr/ball", ball, voxel_size, channels=False)
    result = measure_volume(inst, tmp_path / "o.csv", block_shape=block, progress=False)
    (row,) = read_csv(result.table)
    dims = len(voxel_size)
    exact = 4 * math.pi * radius**2 if dims == 3 else 2 * math.pi * radius
    surface, face = column_names(dims, "nm", False)[4:6]
    assert float(row[surface]) == pytest.approx(exact, rel=tolerance)
    assert float(row[face]) / exact == pytest.approx(1 / SURFACE_CORRECTION[dims], rel=tolerance)


# --------------------------------------------------------------------------------------
# ids, empty volumes, formats


def test_uint64_ids_above_2_53_survive_exactly(tmp_path: Path) -> None:
    big = [2**53 + 1, 2**63 + 1, 2**64 - 1]  # float64 would round each of them
    labels = np.zeros((6, 7), np.uint64)
    labels[:2] = big[0]
    labels[3:, :3] = big[1]
    labels[3:, 4:] = big[2]
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (1, 1), channels=False)
    result = measure_volume(inst, tmp_path / "o.csv", block_shape=(4, 4), progress=False)
    rows = read_csv(result.table)
    assert [int(r["id"]) for r in rows] == big
    assert [int(r["voxel_count"]) for r in rows] == [14, 9, 9]
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = measure_volume(inst, tmp_path / "p.parquet", block_shape=(4, 4), progress=False)
    table = pq.read_table(parquet.table)
    assert str(table.schema.field("id").type) == "uint64"
    assert table.column("id").to_pylist() == big


def test_parquet_holds_the_csv_table(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, size=(5, 6, 7)).astype(np.int32)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (2, 3, 4), channels=False)
    rows = read_csv(measure_volume(inst, tmp_path / "o.csv", progress=False).table)
    table = pq.read_table(measure_volume(inst, tmp_path / "p.parquet", progress=False).table)
    assert table.column_names == list(rows[0])
    for name in table.column_names:
        assert [str(v) for v in table.column(name).to_pylist()] == [r[name] for r in rows]


def test_an_empty_volume_gives_a_header_and_count_0(tmp_path: Path) -> None:
    inst = write_volume(tmp_path / "d.zarr/inst", np.zeros((4, 5, 6), np.uint64), (8, 8, 8),
                        channels=False)
    raw = write_volume(tmp_path / "d.zarr/raw", np.ones((4, 5, 6), np.float32), (8, 8, 8),
                       channels=False)
    result = measure_volume(inst, tmp_path / "o.csv", raw=raw, block_shape=(2, 2, 2),
                            progress=False)
    lines = result.table.read_text().splitlines()
    assert lines == [",".join(column_names(3, "nm", True))]
    summary = json.loads(result.summary_json.read_text())
    assert summary["channels"][0]["objects"] == 0
    assert summary["channels"][0]["volume_fraction"] == 0
    assert result.histogram_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.report() == "channel 0: 0 objects, 0% of the volume"


def test_px_data_name_its_unit(tmp_path: Path) -> None:
    from funlib.geometry import Roi

    from innerdist.volumes import create_volume, mark_complete

    array = create_volume(tmp_path / "d.zarr/inst", roi=Roi((0, 0), (4, 4)), voxel_size=(1, 1),
                          dtype=np.uint8, units="px")
    array[array.roi] = np.eye(4, dtype=np.uint8)
    mark_complete(array)
    result = measure_volume(tmp_path / "d.zarr/inst", tmp_path / "o.csv", progress=False)
    (row,) = read_csv(result.table)
    assert row["area_px2"] == "4" and row["centroid_y_px"] == "1.5"


# --------------------------------------------------------------------------------------
# resuming, re-running, overwriting


def test_a_killed_job_resumes_with_the_blocks_it_had_not_done(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, size=(8, 9, 10)).astype(np.uint32)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (4, 4, 4), channels=False)
    out = tmp_path / "res" / "o.csv"
    real = measure_module.block_stats
    calls = {"n": 0}

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # as if the job were killed here
        return real(*args, **kwargs)

    monkeypatch.setattr(measure_module, "block_stats", dying)
    with pytest.raises(KeyboardInterrupt):
        measure_volume(inst, out, block_shape=(3, 3, 3), progress=False)
    assert not out.exists()  # no table that looks complete
    tracking = out.parent / ".innerdist-blocks" / out.name
    assert len(list((tracking / "blocks").glob("*.npz"))) == 6

    calls["n"] = 0
    monkeypatch.setattr(measure_module, "block_stats", lambda *a, **k: (
        calls.__setitem__("n", calls["n"] + 1) or real(*a, **k)))
    result = measure_volume(inst, out, block_shape=(3, 3, 3), progress=False)
    assert calls["n"] == 3 * 3 * 4 - 6  # only the blocks not done before
    check_against_regionprops(by_id(read_csv(result.table)), labels, (4, 4, 4), (0, 0, 0))
    assert not tracking.exists()

    calls["n"] = 0
    again = measure_volume(inst, out, block_shape=(3, 3, 3), progress=False)
    assert again.already_complete and calls["n"] == 0
    assert again.report() == result.report()


def test_other_jobs_need_overwrite_and_foreign_files_are_kept(tmp_path: Path) -> None:
    labels = np.arange(24, dtype=np.uint8).reshape(4, 6)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (2, 2), channels=False)
    out = tmp_path / "o.csv"
    measure_volume(inst, out, progress=False)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        measure_volume(inst, out, block_shape=(2, 2), progress=False)
    replaced = measure_volume(inst, out, block_shape=(2, 2), overwrite=True, progress=False)
    assert not replaced.already_complete and len(read_csv(out)) == 23

    foreign = tmp_path / "mine.csv"
    foreign.write_text("precious\n")
    with pytest.raises(FileExistsError, match="not written by innerdist measure"):
        measure_volume(inst, foreign, overwrite=True, progress=False)
    assert foreign.read_text() == "precious\n"


def test_unfinished_job_of_other_parameters_is_refused(tmp_path, monkeypatch) -> None:
    labels = np.arange(24, dtype=np.uint8).reshape(4, 6)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (2, 2), channels=False)
    out = tmp_path / "o.csv"

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk went away")

    with monkeypatch.context() as m:
        m.setattr(measure_module, "block_stats", broken)
        with pytest.raises(RuntimeError):
            measure_volume(inst, out, block_shape=(2, 2), progress=False)
    with pytest.raises(FileExistsError, match="unfinished measure job"):
        measure_volume(inst, out, block_shape=(3, 3), progress=False)
    assert len(read_csv(measure_volume(inst, out, block_shape=(3, 3), overwrite=True,
                                       progress=False).table)) == 23


def test_inputs_are_never_modified(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inst = write_volume(tmp_path / "d.zarr/inst", rng.integers(0, 3, (6, 6)).astype(np.uint8),
                        (4, 4), channels=False)
    raw = write_volume(tmp_path / "d.zarr/raw", rng.random((6, 6)), (4, 4), channels=False)
    before = {p: p.read_bytes() for p in (tmp_path / "d.zarr").rglob("*") if p.is_file()}
    measure_volume(inst, tmp_path / "o.csv", raw=raw, block_shape=(4, 4), progress=False)
    after = {p: p.read_bytes() for p in (tmp_path / "d.zarr").rglob("*") if p.is_file()}
    assert after == before


# --------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_raise_naming_what_is_wrong(tmp_path: Path) -> None:
    inst = write_volume(tmp_path / "d.zarr/inst", np.ones((4, 4), np.uint8), (4, 4),
                        channels=False)
    floats = write_volume(tmp_path / "d.zarr/f", np.ones((4, 4), np.float32), (4, 4),
                          channels=False)
    with pytest.raises(ValueError, match="must end in .csv or .parquet"):
        measure_volume(inst, tmp_path / "o.txt")
    with pytest.raises(TypeError, match="expected integer object ids"):
        measure_volume(floats, tmp_path / "o.csv")
    with pytest.raises(ValueError, match="block shape must be 2 positive integers"):
        measure_volume(inst, tmp_path / "o.csv", block_shape=(4, 0))
    with pytest.raises(ValueError, match="num_workers"):
        measure_volume(inst, tmp_path / "o.csv", num_workers=0)
    with pytest.raises(ValueError, match="destroy an input"):
        measure_volume(inst, tmp_path / "d.zarr/inst/o.csv")
    incomplete = write_volume(tmp_path / "d.zarr/half", np.ones((4, 4), np.uint8), (4, 4),
                              channels=False, complete=False)
    with pytest.raises(ValueError, match="incomplete"):
        measure_volume(incomplete, tmp_path / "o.csv")
    two = write_volume(tmp_path / "d.zarr/two", np.ones((2, 4, 4), np.float32), (4, 4))
    with pytest.raises(ValueError, match="one intensity channel"):
        measure_volume(inst, tmp_path / "o.csv", raw=two)
    assert not (tmp_path / "o.csv").exists()


runner = CliRunner()


def one_error_line(result: Any, command: str = "measure") -> str:
    """The one error line on stderr (progress lines may precede it; no traceback)."""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("innerdist")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"innerdist {command}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def volumes(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=(6, 8, 8)).astype(np.uint64)
    return {
        "inst": write_volume(tmp_path / "d.zarr/inst", labels, (40, 8, 8), channels=False),
        "raw": write_volume(tmp_path / "d.zarr/raw", rng.random((6, 8, 8)), (40, 8, 8),
                            channels=False),
        "small": write_volume(tmp_path / "d.zarr/small", rng.random((6, 8, 7)), (40, 8, 8),
                              channels=False),
        "coarse": write_volume(tmp_path / "d.zarr/coarse", rng.random((3, 8, 8)), (80, 8, 8),
                               channels=False),
        "dir": str(tmp_path),
    }


def test_cli_measures_and_prints_the_summary(volumes: dict[str, str]) -> None:
    out = Path(volumes["dir"]) / "objects.csv"
    result = runner.invoke(app, ["measure", volumes["inst"], "--raw", volumes["raw"],
                                 "--out", str(out), "--block-shape", "3,4,5"])
    assert result.exit_code == 0, result.output
    assert "channel 0: 3 objects" in result.stdout
    assert f"wrote {out}" in result.stdout
    assert (out.parent / "objects.summary.json").is_file()
    assert (out.parent / "objects.volumes.png").is_file()
    assert "mean_intensity" in read_csv(out)[0]
    again = runner.invoke(app, ["measure", volumes["inst"], "--raw", volumes["raw"],
                                "--out", str(out), "--block-shape", "3,4,5"])
    assert again.exit_code == 0 and "nothing to do" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{dir}/nope.zarr/inst", "--out", "{dir}/o.csv"], "no container"),
        (["{inst}", "--raw", "{small}", "--out", "{dir}/o.csv"], "does not contain"),
        (["{inst}", "--raw", "{coarse}", "--out", "{dir}/o.csv"], "voxel size"),
        (["{inst}", "--out", "{dir}/o.tsv"], ".csv or .parquet"),
        (["{inst}", "--out", "{dir}/o.csv", "--block-shape", "4,4"], "3 positive integers"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(volumes, args, message) -> None:
    result = runner.invoke(app, ["measure", *(a.format(**volumes) for a in args)])
    assert result.exit_code == 2
    assert message in one_error_line(result)
    assert not (Path(volumes["dir"]) / "o.csv").exists()


def test_cli_parquet_without_pyarrow_is_one_line_exit_2(volumes, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import fails
    result = runner.invoke(app, ["measure", volumes["inst"], "--out",
                                 f"{volumes['dir']}/o.parquet"])
    assert result.exit_code == 2
    assert "needs pyarrow" in one_error_line(result)


def test_cli_full_disk_is_one_line_exit_1(volumes, monkeypatch) -> None:
    real = os.replace

    def full(src: Any, dst: Any) -> None:
        if str(dst).endswith(".csv"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    out = f"{volumes['dir']}/o.csv"
    result = runner.invoke(app, ["measure", volumes["inst"], "--out", out])
    assert result.exit_code == 1
    assert "no space left on device" in one_error_line(result)
    assert not Path(out).exists()
    assert not list(Path(volumes["dir"]).glob(".o.csv.*"))  # no temporary left behind
    monkeypatch.setattr(os, "replace", real)
    resumed = runner.invoke(app, ["measure", volumes["inst"], "--out", out])
    assert resumed.exit_code == 0, resumed.output
    assert len(read_csv(Path(out))) == 3


# --------------------------------------------------------------------------------------
# workers


@pytest.mark.slow
def test_two_worker_processes_give_the_same_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 9, size=(10, 12, 12)).astype(np.uint64)
    raw = rng.random(labels.shape)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (8, 8, 8), channels=False)
    r = write_volume(tmp_path / "d.zarr/raw", raw, (8, 8, 8), channels=False)
    serial = measure_volume(inst, tmp_path / "a.csv", raw=r, block_shape=(4, 5, 6),
                            progress=False)
    parallel = measure_volume(inst, tmp_path / "b.csv", raw=r, block_shape=(4, 5, 6),
                              num_workers=2, progress=False)
    assert parallel.table.read_text() == serial.table.read_text()


@pytest.mark.slow
def test_workers_through_a_worker_command(tmp_path: Path) -> None:
    submit = f"{sys.executable} {Path(__file__).parent / 'fake_submit.py'} {{command}}"
    labels = np.random.default_rng(7).integers(0, 5, size=(12, 12)).astype(np.uint32)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (4, 4), channels=False)
    result = measure_volume(inst, tmp_path / "o.csv", block_shape=(5, 5), num_workers=2,
                            worker_command=submit, progress=False)
    check_against_regionprops(by_id(read_csv(result.table)), labels, (4, 4), (0, 0))


@pytest.mark.slow
def test_sigkill_then_the_same_command_resumes(tmp_path: Path) -> None:
    """A real kill: the CLI in a subprocess, SIGKILLed once some block tables exist."""
    import signal
    import subprocess
    import time

    labels = np.random.default_rng(8).integers(0, 30, size=(60, 240)).astype(np.uint32)
    labels = np.repeat(labels, 4, axis=0)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (8, 8), channels=False)
    out = tmp_path / "o.csv"
    command = [sys.executable, "-m", "innerdist", "measure", inst, "--out", str(out),
               "--block-shape", "12,12"]
    blocks = tmp_path / ".innerdist-blocks" / "o.csv" / "blocks"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(blocks.glob("*.npz"))) < 20:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(blocks.glob("*.npz")))
    assert 20 <= done < 20 * 20, done  # killed part way
    assert not out.exists()
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    check_against_regionprops(by_id(read_csv(out)), labels, (8, 8), (0, 0))
    assert not blocks.exists()
    uninterrupted = measure_volume(inst, tmp_path / "ref.csv", block_shape=(12, 12),
                                   progress=False)
    assert out.read_bytes() == uninterrupted.table.read_bytes()


def test_a_lost_block_table_is_named_and_overwrite_starts_afresh(tmp_path, monkeypatch):
    labels = np.arange(48, dtype=np.uint16).reshape(6, 8) % 5
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (2, 2), channels=False)
    out = tmp_path / "o.csv"
    real = measure_module.block_stats
    calls = {"n": 0}

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(measure_module, "block_stats", dying)
        with pytest.raises(RuntimeError):
            measure_volume(inst, out, block_shape=(2, 2), progress=False)
    blocks = tmp_path / ".innerdist-blocks" / "o.csv" / "blocks"
    sorted(blocks.glob("*.npz"))[0].unlink()  # a table daisy counts as done
    with pytest.raises(FileNotFoundError, match="is missing although daisy recorded"):
        measure_volume(inst, out, block_shape=(2, 2), progress=False)
    result = measure_volume(inst, out, block_shape=(2, 2), overwrite=True, progress=False)
    check_against_regionprops(by_id(read_csv(result.table)), labels, (2, 2), (0, 0))


@pytest.mark.slow
def test_a_cluster_worker_killed_part_way_is_replaced(tmp_path, monkeypatch) -> None:
    submit = f"{sys.executable} {Path(__file__).parent / 'fake_submit.py'} {{command}}"
    labels = np.random.default_rng(9).integers(0, 7, size=(40, 40)).astype(np.uint64)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (4, 4), channels=False)
    blocks = tmp_path / "out" / ".innerdist-blocks" / "o.csv" / "blocks"
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("FAKE_SUBMIT_KILL_AFTER", f"{blocks}:5")
    monkeypatch.setenv("FAKE_SUBMIT_PIDS", str(pids))
    result = measure_volume(inst, tmp_path / "out" / "o.csv", block_shape=(5, 5),
                            worker_command=submit, progress=False)
    assert len(list(pids.iterdir())) >= 2  # the one worker was killed and replaced
    check_against_regionprops(by_id(read_csv(result.table)), labels, (4, 4), (0, 0))


# --------------------------------------------------------------------------------------
# real faults: tmpfs mounts (root only), as in test_faults


def test_read_only_folder_and_full_disk_are_one_line_exit_1_then_resume(
    disk: dict[str, Path],  # noqa: F811  (the fixture imported from test_faults)
    tmp_path: Path,
) -> None:
    from test_faults import _grow, _one_fault_line

    labels = np.random.default_rng(10).integers(0, 3000, (96, 96)).astype(np.uint32)
    inst = write_volume(tmp_path / "d.zarr/inst", labels, (4, 4), channels=False)
    read_only = runner.invoke(app, ["measure", inst, "--out", str(disk["ro"] / "o.csv")])
    line = _one_fault_line(read_only, "measure", "read-only file system (errno EROFS)")
    assert str(disk["ro"]) in line

    out = disk["full"] / "o.csv"  # ~2900 objects: tables far beyond the 48 KiB left
    args = ["measure", inst, "--out", str(out), "--block-shape", "48,48"]
    full = runner.invoke(app, args)
    line = _one_fault_line(full, "measure", "no space left on device (errno ENOSPC)")
    assert "free space, then run the same command" in line
    assert not out.exists() and not (disk["full"] / "o.summary.json").exists()
    _grow(disk["full"])
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    reference = measure_volume(inst, tmp_path / "o.csv", block_shape=(48, 48), progress=False)
    assert out.read_bytes() == reference.table.read_bytes()


def test_a_second_writer_is_refused_while_one_runs(tmp_path: Path) -> None:
    import subprocess

    from innerdist.safety import OutputLockedError

    inst = write_volume(tmp_path / "d.zarr/inst", np.ones((4, 4), np.uint8), (4, 4),
                        channels=False)
    out = tmp_path / "o.csv"
    tracking = tmp_path / ".innerdist-blocks" / "o.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from innerdist.safety import acquire_output_lock; "
         f"acquire_output_lock({str(tracking)!r}, {str(out)!r}); print('held', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match="being written by another running job"):
            measure_volume(inst, out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert len(read_csv(measure_volume(inst, out, progress=False).table)) == 1
