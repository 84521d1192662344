"""Synthetic EM-like volumes: determinism, label properties, image cues, writing, CLI."""

from __future__ import annotations

import time
from pathlib import Path

import cc3d
import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from scipy import ndimage
from typer.testing import CliRunner

import innerdist.synthetic as synthetic
from innerdist.cli import app
from innerdist.synthetic import (
    DEMO_SHAPES,
    SyntheticVolume,
    make_demo_dataset,
    make_em_volume,
    write_volume,
)
from innerdist.volumes import is_complete, open_volume


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different non-zero ids that share a voxel face."""
    pairs: set[tuple[int, int]] = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        touch = (a != b) & (a != 0) & (b != 0)
        pairs |= {(int(min(x, y)), int(max(x, y))) for x, y in zip(a[touch], b[touch], strict=True)}
    return pairs


def pieces_per_id(labels: np.ndarray) -> dict[int, int]:
    """Number of face-connected components of every non-zero id."""
    connectivity = 6 if labels.ndim == 3 else 4
    pieces = cc3d.connected_components(labels, connectivity=connectivity)
    owner = np.zeros(int(pieces.max()) + 1, dtype=np.uint64)
    owner[pieces.ravel()] = labels.ravel()
    counts: dict[int, int] = {}
    for piece_id in range(1, owner.size):
        counts[int(owner[piece_id])] = counts.get(int(owner[piece_id]), 0) + 1
    return counts


@pytest.fixture(scope="module")
def vol3d() -> SyntheticVolume:
    return make_em_volume((32, 128, 128), seed=0)


@pytest.fixture(scope="module")
def vol2d() -> SyntheticVolume:
    return make_em_volume((256, 256), seed=0)


# ---------------------------------------------------------------------------------------
# Basic contract


@pytest.mark.parametrize("which", ["vol3d", "vol2d"])
def test_types_ranges_and_metadata(which: str, request: pytest.FixtureRequest) -> None:
    vol: SyntheticVolume = request.getfixturevalue(which)
    dims = vol.labels.ndim
    assert vol.raw.dtype == np.float32 and vol.labels.dtype == np.uint64
    assert vol.raw.shape == vol.labels.shape
    assert vol.raw.min() >= 0.0 and vol.raw.max() <= 1.0
    assert vol.voxel_size == ((40, 8, 8) if dims == 3 else (8, 8))
    assert vol.offset == (0,) * dims
    assert vol.roi == Roi((0,) * dims, Coordinate(vol.labels.shape) * Coordinate(vol.voxel_size))
    ids = np.unique(vol.labels)
    assert ids[0] == 0
    # Ids are 1..n without gaps, and there are enough objects to learn from.
    np.testing.assert_array_equal(ids[1:], np.arange(1, ids.size))
    assert vol.num_objects == ids.size - 1 >= 10
    foreground = float((vol.labels > 0).mean())
    assert 0.15 < foreground < 0.6


def test_same_seed_same_volume_other_seed_other_volume() -> None:
    a = make_em_volume((12, 64, 64), seed=5)
    b = make_em_volume((12, 64, 64), seed=5)
    c = make_em_volume((12, 64, 64), seed=6)
    np.testing.assert_array_equal(a.raw, b.raw)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    assert not np.array_equal(a.raw, c.raw)


def test_offset_and_voxel_size_are_kept() -> None:
    vol = make_em_volume((16, 32), voxel_size=(4, 2), offset=(-8, 6), seed=1)
    assert vol.voxel_size == (4, 2) and vol.offset == (-8, 6)
    assert vol.roi == Roi((-8, 6), (64, 64))


def test_fast_enough_for_the_demo() -> None:
    make_em_volume((8, 32, 32), seed=0)  # warm-up (imports)
    start = time.perf_counter()
    make_em_volume((32, 128, 128), seed=1)
    elapsed = time.perf_counter() - start
    # About 0.3 s on one core; generous for a shared 2-core machine.
    assert elapsed < 5.0, f"make_em_volume((32, 128, 128)) took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize(
    ("shape", "seed"), [((32, 128, 128), 0), ((24, 96, 96), 3), ((256, 256), 0), ((200, 300), 7)]
)
def test_every_id_is_one_connected_component_and_touching_pairs_exist(
    shape: tuple[int, ...], seed: int
) -> None:
    vol = make_em_volume(shape, seed=seed)
    counts = pieces_per_id(vol.labels)
    assert set(counts) == set(range(1, vol.num_objects + 1))
    assert all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n > 1}
    assert len(touching_pairs(vol.labels)) >= 1


def test_without_touching_fraction_objects_keep_a_gap() -> None:
    vol = make_em_volume((128, 128), seed=2, touching_fraction=0.0)
    assert vol.num_objects >= 5
    assert touching_pairs(vol.labels) == set()
    # Not even diagonal contact: dilating any object by one pixel (8-neighbourhood) finds
    # only background around it.
    for obj_id in range(1, vol.num_objects + 1):
        grown = ndimage.binary_dilation(vol.labels == obj_id, structure=np.ones((3, 3)))
        assert set(np.unique(vol.labels[grown])) <= {0, obj_id}


def test_keep_largest_pieces_by_hand() -> None:
    labels = np.array(
        [
            [1, 1, 0, 1],
            [1, 0, 0, 0],
            [0, 2, 2, 0],
            [3, 3, 0, 2],
        ],
        dtype=np.int32,
    )
    expected = np.array(
        [
            [1, 1, 0, 0],
            [1, 0, 0, 0],
            [0, 2, 2, 0],
            [3, 3, 0, 0],
        ]
    )
    np.testing.assert_array_equal(synthetic._keep_largest_pieces(labels), expected)


def test_objects_are_flattened_in_voxels_by_anisotropic_voxel_size(vol3d: SyntheticVolume) -> None:
    extents = []
    for obj in ndimage.find_objects(vol3d.labels.astype(np.int64)):
        if obj is None:
            continue
        if any(s.start == 0 or s.stop == n for s, n in zip(obj, vol3d.labels.shape, strict=True)):
            continue  # cut by the volume's border
        extents.append([s.stop - s.start for s in obj])
    ext = np.array(extents, dtype=float)
    assert len(ext) >= 8
    # Sizes are drawn in nm: about equal in world units, so 5x thinner in voxels along z.
    voxel_ratio = np.median(ext[:, 0] / ext[:, 1])
    world_ratio = np.median(ext[:, 0] * 40 / (ext[:, 1] * 8))
    assert voxel_ratio < 0.35
    assert 0.5 < world_ratio < 2.0
    # With isotropic voxels of the same size in z the objects are not flat.
    iso = make_em_volume((32, 128, 128), voxel_size=(8, 8, 8), seed=0)
    iso_ext = np.array(
        [[s.stop - s.start for s in obj] for obj in ndimage.find_objects(iso.labels.astype(int))]
    )
    assert 0.6 < np.median(iso_ext[:, 0] / iso_ext[:, 1]) < 1.6


def test_num_objects_limits_the_count() -> None:
    assert make_em_volume((12, 64, 64), num_objects=3, seed=0).num_objects == 3
    empty = make_em_volume((12, 64, 64), num_objects=0, seed=0)
    assert empty.num_objects == 0 and not empty.labels.any()
    assert 0 < empty.raw.mean() < 1


# ---------------------------------------------------------------------------------------
# Image: the cues a network learns


@pytest.mark.parametrize("which", ["vol3d", "vol2d"])
def test_membranes_are_darker_than_interiors_and_background(
    which: str, request: pytest.FixtureRequest
) -> None:
    vol: SyntheticVolume = request.getfixturevalue(which)
    labels = vol.labels
    voxel = np.array(vol.voxel_size, dtype=float)
    boundary = synthetic._boundary_voxels(labels)
    inside = labels > 0
    # Object voxels whose face neighbour has another id (incl. the membrane between two
    # touching objects).
    membrane = boundary
    # Interiors: at least 4 in-plane voxels from any boundary; background: at least 4 from
    # any object.
    to_boundary = ndimage.distance_transform_edt(~boundary, sampling=tuple(voxel))
    to_object = ndimage.distance_transform_edt(~inside, sampling=tuple(voxel))
    interior = inside & (to_boundary >= 4 * voxel.min())
    background = ~inside & (to_object >= 4 * voxel.min())
    raw = vol.raw
    m, i, b = raw[membrane].mean(), raw[interior].mean(), raw[background].mean()
    assert m < i - 0.1, (m, i)
    assert m < b - 0.15, (m, b)
    # Between touching objects too.
    between = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, c = labels[tuple(lo)], labels[tuple(hi)]
        touch = (a != c) & (a != 0) & (c != 0)
        between[tuple(lo)] |= touch
        between[tuple(hi)] |= touch
    assert between.any()
    assert raw[between].mean() < i - 0.1


def test_noise_level_is_what_was_asked() -> None:
    clean = make_em_volume((8, 64, 64), seed=3, noise=0.0)
    noisy = make_em_volume((8, 64, 64), seed=3, noise=0.1)
    np.testing.assert_array_equal(clean.labels, noisy.labels)
    diff = (noisy.raw - clean.raw)[(clean.raw > 0.2) & (clean.raw < 0.8)]
    # std = noise * sqrt(0.25 + 0.75 x) lies in [0.05, 0.1] for x in [0, 1].
    assert 0.05 < diff.std() < 0.1
    assert abs(diff.mean()) < 0.01


def test_membrane_width_and_blur_are_world_units() -> None:
    kwargs = {"seed": 4, "noise": 0.0, "psf_sigma": 0.0}
    thin = make_em_volume((96, 96), voxel_size=(4, 4), membrane_width=4.0, **kwargs)
    thick = make_em_volume((96, 96), voxel_size=(4, 4), membrane_width=16.0, **kwargs)
    np.testing.assert_array_equal(thin.labels, thick.labels)
    # Without blur or noise the rim is exactly the object pixels closer than the width.
    dark_thin = ((thin.raw < 0.3) & (thin.labels > 0)).sum()
    dark_thick = ((thick.raw < 0.3) & (thick.labels > 0)).sum()
    assert dark_thick > 2.5 * dark_thin


# ---------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"shape": (64,)}, ValueError, "2 or 3 entries"),
        ({"shape": (2, 64, 64, 64)}, ValueError, "2 or 3 entries"),
        ({"shape": (3, 64)}, ValueError, "at least 4 voxels"),
        ({"shape": (0, 64)}, ValueError, "must be positive"),
        ({"shape": (8.5, 64)}, TypeError, "must contain integers"),
        ({"shape": "64,64"}, TypeError, "must be a sequence of integers"),
        ({"voxel_size": (8, 8, 8)}, ValueError, "voxel_size must have 2 entries"),
        ({"voxel_size": (8, 0)}, ValueError, "voxel_size must be positive"),
        ({"offset": (4, 0)}, ValueError, r"offset \(4, 0\) must be a multiple"),
        ({"offset": (8,)}, ValueError, "offset must have 2 entries"),
        ({"seed": -1}, ValueError, "seed must be a non-negative integer"),
        ({"seed": 1.5}, ValueError, "seed must be a non-negative integer"),
        ({"num_objects": -2}, ValueError, "num_objects must be None or a non-negative"),
        ({"num_objects": 65}, ValueError, "num_objects 65 cannot fit in 256 voxels"),
        ({"noise": -0.1}, ValueError, "noise must be a finite number >= 0"),
        ({"noise": float("inf")}, ValueError, "noise must be finite"),
        ({"touching_fraction": 1.5}, ValueError, r"touching_fraction must be in \[0, 1.0\]"),
        ({"membrane_width": -1}, ValueError, "membrane_width must be None or a finite"),
        ({"psf_sigma": "wide"}, ValueError, "psf_sigma must be None or a finite"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    args: dict[str, object] = {"shape": (16, 16), **kwargs}
    shape = args.pop("shape")
    with pytest.raises(error, match=match):
        make_em_volume(shape, **args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Writing


def test_write_volume_round_trip(tmp_path: Path) -> None:
    vol = make_em_volume((10, 40, 48), voxel_size=(40, 8, 8), offset=(80, 16, -8), seed=2)
    raw_path, labels_path = write_volume(vol, tmp_path / "v.zarr")
    assert (raw_path, labels_path) == (tmp_path / "v.zarr" / "raw", tmp_path / "v.zarr" / "labels")
    for path, data in ((raw_path, vol.raw), (labels_path, vol.labels)):
        array = open_volume(path)
        assert array.voxel_size == Coordinate(40, 8, 8)
        assert array.offset == Coordinate(80, 16, -8)
        assert array.axis_names == ["z", "y", "x"]
        assert array.dtype == data.dtype
        assert is_complete(array)
        np.testing.assert_array_equal(array[array.roi], data)


def test_write_volume_refuses_to_overwrite_before_writing_anything(tmp_path: Path) -> None:
    a = make_em_volume((24, 24), seed=1)
    b = make_em_volume((24, 24), seed=2)
    write_volume(a, tmp_path / "v.zarr", raw="image")
    with pytest.raises(FileExistsError, match="v.zarr/image' already exists"):
        write_volume(b, tmp_path / "v.zarr", raw="image", labels="gt")
    assert not (tmp_path / "v.zarr" / "gt").exists()
    write_volume(b, tmp_path / "v.zarr", raw="image", overwrite=True)
    image = open_volume(tmp_path / "v.zarr" / "image")
    np.testing.assert_array_equal(image[image.roi], b.raw)


def test_write_volume_bad_arguments(tmp_path: Path) -> None:
    vol = make_em_volume((16, 16), seed=0)
    with pytest.raises(TypeError, match="must be a SyntheticVolume"):
        write_volume(vol.raw, tmp_path / "v.zarr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be different datasets"):
        write_volume(vol, tmp_path / "v.zarr", raw="x", labels="x")
    with pytest.raises(ValueError, match="no container component"):
        write_volume(vol, tmp_path / "v")


SMALL_DEMO = {
    3: {"train": (8, 40, 40), "validate": (6, 32, 32), "test": (6, 32, 32)},
    2: {"train": (64, 64), "validate": (48, 48), "test": (48, 48)},
}


@pytest.mark.parametrize("dims", [2, 3])
def test_make_demo_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dims: int) -> None:
    monkeypatch.setitem(DEMO_SHAPES, dims, SMALL_DEMO[dims])
    paths = make_demo_dataset(tmp_path / "demo", seed=1, dims=dims)
    assert paths == {s: tmp_path / "demo" / f"{s}.zarr" for s in ("train", "validate", "test")}
    raws = {}
    for split, container in paths.items():
        raw = open_volume(container / "raw")
        labels = open_volume(container / "labels")
        assert raw.shape == SMALL_DEMO[dims][split] == labels.shape
        assert raw.voxel_size == Coordinate((40, 8, 8) if dims == 3 else (8, 8))
        assert is_complete(raw) and is_complete(labels)
        assert labels[labels.roi].max() >= 1
        raws[split] = raw[raw.roi]
    # Different seeds per split (validate and test have the same shape).
    assert not np.array_equal(raws["validate"], raws["test"])
    # Same seed, same data; refuses to overwrite without overwrite=True.
    with pytest.raises(FileExistsError, match="already exists"):
        make_demo_dataset(tmp_path / "demo", seed=1, dims=dims)
    make_demo_dataset(tmp_path / "demo", seed=1, dims=dims, overwrite=True)
    again = open_volume(paths["test"] / "raw")
    np.testing.assert_array_equal(again[again.roi], raws["test"])


def test_demo_shapes_are_the_documented_ones() -> None:
    assert DEMO_SHAPES[3] == {
        "train": (48, 192, 192),
        "validate": (32, 128, 128),
        "test": (32, 128, 128),
    }
    assert DEMO_SHAPES[2] == {"train": (512, 512), "validate": (256, 256), "test": (256, 256)}


def test_make_demo_dataset_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dims must be 2 or 3, got 4"):
        make_demo_dataset(tmp_path, dims=4)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        make_demo_dataset(tmp_path, seed=-3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        make_demo_dataset(tmp_path / "file")


# ---------------------------------------------------------------------------------------
# CLI


def test_cli_make_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DEMO_SHAPES, 2, SMALL_DEMO[2])
    runner = CliRunner()
    out = tmp_path / "demo"
    result = runner.invoke(app, ["make-data", str(out), "--dims", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert (
        lines[0] == f"wrote train: {out / 'train.zarr' / 'raw'} and {out / 'train.zarr' / 'labels'}"
    )
    assert open_volume(out / "test.zarr" / "labels").shape == (48, 48)

    result = runner.invoke(app, ["make-data", str(out), "--dims", "2"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    result = runner.invoke(app, ["make-data", str(out), "--dims", "2", "--overwrite"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--dims", "4"], "dims must be 2 or 3, got 4"), (["--seed", "-1"], "seed must be")],
)
def test_cli_make_data_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["make-data", str(tmp_path / "demo"), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "error:" in lines[0]
