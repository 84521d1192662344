"""Pyramids: reductions against a slow reference, level factors, blockwise levels on disk."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.geometry import Roi
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from innerdist.pyramid import downsample, level_factors, write_pyramid
from innerdist.volumes import create_volume, mark_complete, open_volume


def slow_downsample(data: np.ndarray, factor: tuple[int, ...], reduction: str) -> np.ndarray:
    """One window at a time, with Python's own counting."""
    lead = data.ndim - len(factor)
    spatial = data.shape[lead:]
    out_shape = tuple(-(-s // f) for s, f in zip(spatial, factor, strict=True))
    out = np.zeros(data.shape[:lead] + out_shape, dtype=data.dtype)
    for c in itertools.product(*(range(s) for s in data.shape[:lead])):
        for j in itertools.product(*(range(s) for s in out_shape)):
            window = data[
                c + tuple(slice(i * f, (i + 1) * f) for i, f in zip(j, factor, strict=True))
            ]
            values = window.ravel().tolist()
            if reduction == "mean":
                mean = sum(float(v) for v in values) / len(values)
                out[c + j] = np.rint(mean) if np.issubdtype(data.dtype, np.integer) else mean
            else:
                best = max(values.count(v) for v in values)
                out[c + j] = min(v for v in values if values.count(v) == best)
    return out


def test_by_hand() -> None:
    labels = np.array([[5, 5, 0], [0, 7, 0], [9, 9, 1]], dtype=np.uint64)
    # Windows: {5,5,0,7} -> 5; {0,0} -> 0; {9,9} -> 9; {1} -> 1.
    np.testing.assert_array_equal(downsample(labels, (2, 2), "mode"), [[5, 0], [9, 1]])
    # A tie {1, 2} goes to the smaller value; no new ids appear.
    np.testing.assert_array_equal(downsample(np.array([[2, 1]]), (1, 2), "mode"), [[1]])
    pred = np.array([[[0.0, 1.0], [1.0, 2.0]]], dtype=np.float32)  # (c, y, x)
    np.testing.assert_array_equal(downsample(pred, (2, 2), "mean"), [[[1.0]]])
    np.testing.assert_array_equal(
        downsample(np.array([[0, 255, 255]], np.uint8), (1, 2), "mean"), [[128, 255]]
    )


@settings(max_examples=40, deadline=None)
@given(
    data=st.one_of(
        arrays(
            np.uint16, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=st.integers(0, 3)
        ),
        arrays(
            np.uint64,
            st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
            elements=st.integers(0, 3),
        ),
    ),
    factors=st.lists(st.sampled_from([1, 2, 3]), min_size=3, max_size=3),
    reduction=st.sampled_from(["mean", "mode"]),
)
def test_matches_slow_reference(data: np.ndarray, factors: list[int], reduction: str) -> None:
    factor = tuple(factors[: data.ndim])
    expected = slow_downsample(data, factor, reduction)
    np.testing.assert_array_equal(downsample(data, factor, reduction), expected)


@settings(max_examples=20, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
        elements=st.floats(-1, 1, width=32),
    )
)
def test_mean_with_channels_matches_reference(data: np.ndarray) -> None:
    np.testing.assert_allclose(
        downsample(data, (2, 2), "mean"), slow_downsample(data, (2, 2), "mean"), rtol=1e-6
    )


def test_downsample_errors() -> None:
    with pytest.raises(ValueError, match="reduction must be one of"):
        downsample(np.zeros((2, 2)), (2, 2), "max")
    with pytest.raises(ValueError, match="must be positive with at most 2 entries"):
        downsample(np.zeros((2, 2)), (2, 2, 2), "mean")
    with pytest.raises(ValueError, match="must be positive"):
        downsample(np.zeros((2, 2)), (0, 2), "mean")


def test_level_factors() -> None:
    # Anisotropic EM: z waits for y and x to catch up, then everything shrinks together.
    assert level_factors((40, 8, 8), (256, 512, 512), (64, 64, 64)) == [
        (1, 2, 2),
        (1, 2, 2),
        (2, 2, 2),
        (2, 1, 1),
    ]
    assert level_factors((4, 4), (100, 30), (32, 32)) == [(2, 1), (2, 1)]
    assert level_factors((4, 4), (32, 32), (32, 32)) == []
    # Only a long coarse axis left: it is still halved (no endless loop).
    assert level_factors((40, 8), (300, 8), (64, 64)) == [(2, 1), (2, 1), (2, 1)]
    with pytest.raises(ValueError, match="must be equally long"):
        level_factors((4, 4), (8,), (2, 2))
    with pytest.raises(ValueError, match="positive"):
        level_factors((0, 4), (8, 8), (2, 2))


def _image(tmp_path: Path, data: np.ndarray, voxel: tuple[int, ...], label: bool) -> Path:
    path = tmp_path / "out.zarr" / "vol"
    channels = data.shape[0] if data.ndim == len(voxel) + 1 else None
    spatial = data.shape[-len(voxel) :]
    array = create_volume(
        path,
        roi=Roi((0,) * len(voxel), tuple(s * v for s, v in zip(spatial, voxel, strict=True))),
        voxel_size=voxel,
        dtype=data.dtype,
        num_channels=channels,
        chunk_shape=(4,) * len(voxel),
        ome=True,
        label=label,
    )
    array[array.roi] = data
    mark_complete(array)
    return path


def test_pyramid_of_a_label_image(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image_label import ImageLabel

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(5, 17, 10)).astype(np.uint64)
    path = _image(tmp_path, labels, (40, 8, 8), label=True)
    names = write_pyramid(path, reduction="mode", tracking_dir=tmp_path / "track", progress=False)
    factors = level_factors((40, 8, 8), labels.shape, (4, 4, 4))
    assert names == ["s0"] + [f"s{k}" for k in range(1, len(factors) + 1)]
    expected = labels
    for name, factor in zip(names[1:], factors, strict=True):
        expected = slow_downsample(expected, factor, "mode")
        np.testing.assert_array_equal(zarr.open_array(path / name)[...], expected)
    ImageLabel.from_zarr(zarr.open_group(path, mode="r"))
    meta = next(iter(Reader(parse_url(str(path)))())).metadata
    scales = [t[0]["scale"] for t in meta["coordinateTransformations"]]
    assert scales[:3] == [[40, 8, 8], [40, 16, 16], [40, 32, 32]]
    # s1 covers pairs of s0 voxels: its first voxel centre is 4 nm on in y and x.
    assert meta["coordinateTransformations"][1][1]["translation"] == [0, 4, 4]
    s1 = open_volume(path, level=1)
    assert tuple(s1.voxel_size) == (40, 16, 16) and tuple(s1.offset) == (0, 4, 4)


def test_pyramid_mean_equals_direct_downsampling_and_resumes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pred = rng.random((2, 16, 16)).astype(np.float64)  # (c, y, x), divisible by 4
    path = _image(tmp_path, pred, (8, 8), label=False)
    names = write_pyramid(path, reduction="mean", tracking_dir=tmp_path / "track", progress=False)
    assert names == ["s0", "s1", "s2"]
    s2 = zarr.open_array(path / "s2")[...]
    np.testing.assert_allclose(s2, slow_downsample(pred, (4, 4), "mean"))
    meta = json.loads((path / "zarr.json").read_text())["attributes"]["ome"]
    assert [a["name"] for a in meta["multiscales"][0]["axes"]] == ["c", "y", "x"]
    # Run again: finished blocks are recorded, so s1 (tampered with here) is not rewritten.
    zarr.open_array(path / "s1", mode="r+")[0, 0, 0] = -1.0
    write_pyramid(path, reduction="mean", tracking_dir=tmp_path / "track", progress=False)
    assert zarr.open_array(path / "s1")[0, 0, 0] == -1.0


def test_write_pyramid_errors(tmp_path: Path) -> None:
    plain = create_volume(
        tmp_path / "p.zarr" / "v", roi=Roi((0, 0), (4, 4)), voxel_size=(1, 1), dtype=np.uint8
    )
    del plain
    with pytest.raises(ValueError, match="not an OME-NGFF multiscale image"):
        write_pyramid(tmp_path / "p.zarr" / "v", reduction="mean", tracking_dir=tmp_path / "t")
    with pytest.raises(ValueError, match="reduction must be one of"):
        write_pyramid(tmp_path / "p.zarr" / "v", reduction="max", tracking_dir=tmp_path / "t")


def test_interrupted_pyramid_resumes_with_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import innerdist.pyramid as pyramid_module
    from innerdist.targets import compute_targets
    from innerdist.volumes import is_complete

    labels = np.zeros((40, 40), dtype=np.uint32)
    labels[4:20, 4:30] = 1
    labels[24:36, 10:38] = 2
    src = create_volume(tmp_path / "in.zarr" / "labels", roi=Roi((0, 0), (160, 160)),
                        voxel_size=(4, 4), dtype=np.uint32)
    src[src.roi] = labels
    mark_complete(src)
    out = tmp_path / "out.zarr" / "targets"
    real = pyramid_module._reduce_block
    calls = {"n": 0}

    def flaky(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk went away")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pyramid_module, "_reduce_block", flaky)
    with pytest.raises(OSError, match="disk went away"):
        compute_targets(src_path := str(tmp_path / "in.zarr" / "labels"), out, scale_factor=8,
                        block_shape=(8, 8), progress=False)
    assert not is_complete(open_volume(out))
    monkeypatch.setattr(pyramid_module, "_reduce_block", real)
    compute_targets(src_path, out, scale_factor=8, block_shape=(8, 8), progress=False)
    assert is_complete(open_volume(out))
    s0 = zarr.open_array(out / "s0")[...]
    expected = s0
    for k, factor in enumerate(level_factors((4, 4), (40, 40), (8, 8)), start=1):
        expected = slow_downsample(expected, factor, "mean")
        np.testing.assert_allclose(zarr.open_array(out / f"s{k}")[...], expected, rtol=1e-6)
