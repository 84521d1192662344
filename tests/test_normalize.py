"""innerdist.normalize: one normalisation for training crops, validation and prediction."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from hypothesis import given, settings
from hypothesis import strategies as st

from innerdist.augment import AugmentConfig
from innerdist.config import SourceConfig
from innerdist.crops import CropSampler, VolumeSource
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.normalize import (
    DEFAULT_PERCENTILES,
    NonFiniteRawError,
    check_normalization,
    dtype_range,
    measure_normalization,
    normalize_raw,
    range_mismatch,
    sample_intensities,
    warn_tiny_range,
)
from innerdist.validate import load_validation_volumes
from innerdist.volumes import create_volume, mark_complete, open_volume


def write(path: Path, data: np.ndarray, voxel: tuple[int, ...] = (4, 4)) -> str:
    roi = Roi((0,) * data.ndim, Coordinate(data.shape) * Coordinate(voxel))
    array = create_volume(str(path), roi=roi, voxel_size=voxel, dtype=data.dtype)
    array[roi] = data
    mark_complete(array)
    return str(path)


# --- the map and its dict -----------------------------------------------------------------


def test_normalize_raw_by_hand() -> None:
    raw = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    out = normalize_raw(raw, {"min": 0, "max": 255, "method": "dtype"})
    np.testing.assert_array_equal(out, np.array([[0, 0.2], [0.8, 1]], dtype=np.float32))
    out = normalize_raw(np.array([5, 10, 30], np.uint16), {"min": 10, "max": 30})
    np.testing.assert_array_equal(out, [-0.25, 0, 1])  # not clipped


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 65535), min_size=1, max_size=30), st.integers(0, 60000),
       st.integers(1, 5000))
def test_normalize_raw_does_not_depend_on_the_storage_dtype(
    values: list[int], low: int, width: int
) -> None:
    # The same values stored as uint16, int32 or float64 map to the same float32.
    norm = {"min": low, "max": low + width}
    reference = normalize_raw(np.array(values, np.uint16), norm)
    for dtype in (np.int32, np.float64):
        np.testing.assert_array_equal(normalize_raw(np.array(values, dtype), norm), reference)


@pytest.mark.parametrize(
    ("normalization", "error", "message"),
    [
        ([0, 255], TypeError, "must be a dict"),
        ({"min": 0, "max": 255}, ValueError, r"missing keys \['dtype'\]"),
        ({"min": 0, "max": 255, "dtype": "uint8", "mean": 3}, ValueError, r"unknown keys \['mean"),
        ({"min": 5, "max": 5, "dtype": "uint8"}, ValueError, "min < max"),
        ({"min": 0, "max": float("inf"), "dtype": "uint8"}, ValueError, "must be finite"),
        ({"min": "0", "max": 1, "dtype": "uint8"}, TypeError, "must be a number"),
        ({"min": 0, "max": 1, "dtype": "not-a-dtype"}, TypeError, "must name a numpy dtype"),
        ({"min": 0, "max": 1, "dtype": "uint8", "method": "guess"}, ValueError, "method"),
        ({"min": 0, "max": 1, "dtype": "uint8", "percentiles": 5}, TypeError, "two numbers"),
        ({"min": 0, "max": 1, "dtype": "uint8", "percentiles": [50, 5]}, ValueError, "low < high"),
    ],
)
def test_check_normalization_errors(normalization: Any, error: type[Exception],
                                    message: str) -> None:
    with pytest.raises(error, match=message):
        check_normalization(normalization)


def test_check_normalization_keeps_where_the_range_came_from() -> None:
    assert check_normalization({"min": -1, "max": 1}, require_dtype=False) == {
        "min": -1.0, "max": 1.0
    }
    full = {"min": 3, "max": 250, "dtype": "uint8", "method": "percentiles",
            "percentiles": (1, 99.8)}
    assert check_normalization(full) == {"min": 3.0, "max": 250.0, "dtype": "uint8",
                                         "method": "percentiles", "percentiles": [1.0, 99.8]}


def test_dtype_range() -> None:
    assert dtype_range(np.uint8) == {"min": 0.0, "max": 255.0, "dtype": "uint8",
                                     "method": "dtype"}
    assert dtype_range("int16")["min"] == -32768.0
    with pytest.raises(ValueError, match="needs an integer dtype, got float32"):
        dtype_range(np.float32)


def test_non_finite_raw_is_refused() -> None:
    raw = np.array([0.0, np.nan, 1.0], np.float32)
    with pytest.raises(NonFiniteRawError, match=r"in block 3: 1 voxel\(s\).*index \(1,\)"):
        normalize_raw(raw, {"min": 0, "max": 1}, where="block 3")


# --- measuring the range ------------------------------------------------------------------


def test_measured_range_is_the_percentiles_of_a_small_volume(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (40, 50)).astype(np.uint16)
    array = open_volume(write(tmp_path / "a.zarr" / "raw", data))
    norm = measure_normalization([(array, None, "a")])
    low, high = np.percentile(data, DEFAULT_PERCENTILES)  # small: every voxel is read
    assert (norm["min"], norm["max"]) == (low, high)
    assert norm["dtype"] == "uint16" and norm["method"] == "percentiles"
    assert norm["percentiles"] == list(DEFAULT_PERCENTILES)
    # A roi (world units) restricts the measurement to it.
    roi = Roi((0, 0), (40, 100))  # the first 10 rows, 25 columns
    norm = measure_normalization([(array, roi, "a")], percentiles=(0, 100))
    assert (norm["min"], norm["max"]) == (data[:10, :25].min(), data[:10, :25].max())


def test_large_volumes_are_sampled_not_read_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(500, 50, (300, 300)).astype(np.float32)
    array = open_volume(write(tmp_path / "big.zarr" / "raw", data))
    sample = sample_intensities(array, max_voxels=20_000)
    assert 4096 <= sample.size <= 20_000  # whole 64x64 boxes within the budget
    # Same seed, same sample (a resumed run measures the same range).
    np.testing.assert_array_equal(sample, sample_intensities(array, max_voxels=20_000))
    norm = measure_normalization([(array, None, "big")], max_voxels=20_000)
    exact = np.percentile(data, DEFAULT_PERCENTILES)
    # Normal data: a 20k sample finds the 1 % / 99.8 % levels within a few nm of signal.
    np.testing.assert_allclose([norm["min"], norm["max"]], exact, atol=15)
    with pytest.raises(ValueError, match="max_voxels must be a positive integer"):
        sample_intensities(array, max_voxels=0)
    with pytest.raises(ValueError, match="not inside"):
        sample_intensities(array, Roi((0, 0), (4000, 4)))


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
def test_small_integer_raw_maps_as_the_float64_formula_does(dtype: str) -> None:
    # 8- and 16-bit blocks go through a table of every value; it must give the same
    # float32 as the arithmetic path, for every value the dtype holds (both ends too),
    # whatever the strides of the block.
    info = np.iinfo(dtype)
    every = np.arange(info.min, info.max + 1).astype(dtype)
    block = np.concatenate([every, every[::-1]]).reshape(2, -1)
    for lo, hi in ((0.0, 255.0), (-3.25, 1000.5), (float(info.min) - 1, float(info.max))):
        expected = ((block.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
        out = normalize_raw(block, {"min": lo, "max": hi})
        assert out.dtype == np.float32 and out.shape == block.shape
        np.testing.assert_array_equal(out, expected)
        view = block[:, ::-3]  # not contiguous, still larger than the table for 8 bits
        np.testing.assert_array_equal(normalize_raw(view, {"min": lo, "max": hi}),
                                      expected[:, ::-3])
    small = block[:, :7].copy()  # below the table's size: the arithmetic path
    np.testing.assert_array_equal(normalize_raw(small, {"min": 0, "max": 255}),
                                  ((small.astype(np.float64)) / 255).astype(np.float32))


def test_a_sample_of_whole_chunks_reads_chunks_of_the_array(tmp_path: Path) -> None:
    from innerdist.normalize import MIN_CHUNKS, _chunk_boxes

    # Chunks of 16 x 32 voxels, a world origin off zero, anisotropic voxels.
    voxel, origin = Coordinate((4, 8)), Coordinate((12, 40))
    roi = Roi(origin, Coordinate((100, 130)) * voxel)
    array = create_volume(str(tmp_path / "c.zarr" / "raw"), roi=roi, voxel_size=voxel,
                          dtype=np.uint16, chunk_shape=(16, 32))
    data = np.arange(100 * 130, dtype=np.uint16).reshape(100, 130)
    array[roi] = data
    array = open_volume(str(tmp_path / "c.zarr" / "raw"))
    region = Roi(origin + voxel * Coordinate((5, 7)), voxel * Coordinate((80, 100)))
    chunk = Coordinate((16, 32)) * voxel
    boxes = _chunk_boxes(array, region, 2000, np.random.default_rng(0))
    assert len(boxes) >= MIN_CHUNKS
    assert len({(b.begin, b.shape) for b in boxes}) == len(boxes)  # no chunk twice
    for box in boxes:
        assert region.contains(box)
        # Inside one chunk of the array's grid, and the whole of that chunk inside region.
        first = (box.begin - origin) // chunk
        last = (box.end - origin - Coordinate((1, 1))) // chunk
        assert first == last
        whole = Roi(origin + first * chunk, chunk).intersect(region)
        assert box == whole
    sample = sample_intensities(array, region, max_voxels=2000, whole_chunks=True)
    assert sample.size == sum(int(np.prod(b.shape / voxel)) for b in boxes)
    inside = data[5:85, 7:107]
    assert np.isin(sample, inside).all()
    # A region within the budget is read whole; the same seed gives the same sample.
    assert _chunk_boxes(array, region, 8000, np.random.default_rng(0)) == [region]
    np.testing.assert_array_equal(
        sample, sample_intensities(array, region, max_voxels=2000, whole_chunks=True))
    # Never more than 8x the budget, even when MIN_CHUNKS would take more.
    few = _chunk_boxes(array, region, 512, np.random.default_rng(0))
    assert sum(int(np.prod(b.shape / voxel)) for b in few) <= 8 * 512 + 512


def test_8_bit_values_in_uint16_give_the_same_input_as_uint8(tmp_path: Path) -> None:
    """The trap of the issue: dtype-range normalisation made such data 0..0.0039."""
    rng = np.random.default_rng(2)
    labels = np.zeros((40, 40), np.uint32)
    labels[5:20, 5:20] = 1
    labels[24:36, 20:38] = 2
    raw8 = np.clip(rng.normal(60, 20, (40, 40)) + 120 * (labels > 0), 0, 255).astype(np.uint8)
    paths = {}
    for name, raw in (("u8", raw8), ("u16", raw8.astype(np.uint16))):
        paths[name] = {"raw": write(tmp_path / f"{name}.zarr" / "raw", raw),
                       "labels": write(tmp_path / f"{name}.zarr" / "labels", labels)}
    predictor = InnerDistancePredictor(["obj"], 16.0)
    off = AugmentConfig.disabled()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s8 = CropSampler([VolumeSource(**paths["u8"])], predictor, (24, 24), (16, 16),
                         augment=off)
    with pytest.warns(RuntimeWarning, match=r"uint16.*only 0\.\d+ % of the uint16 range"):
        s16 = CropSampler([VolumeSource(**paths["u16"])], predictor, (24, 24), (16, 16),
                          augment=off)
    assert (s8.normalization["min"], s8.normalization["max"]) == (
        s16.normalization["min"], s16.normalization["max"])
    a, b = (s.sample(np.random.default_rng(7))["raw"] for s in (s8, s16))
    np.testing.assert_array_equal(a, b)
    assert a.max() > 0.5  # the network sees the whole range, not 0..0.0039

    # Validation reads through the same map: identical arrays too.
    vols = [
        load_validation_volumes([SourceConfig(**paths[n])], ["obj"], s8.normalization, (4, 4))[0]
        for n in ("u8", "u16")
    ]
    np.testing.assert_array_equal(vols[0].raw, vols[1].raw)
    np.testing.assert_array_equal(
        vols[0].raw[0], normalize_raw(raw8, s8.normalization)
    )


def test_given_range_that_the_data_barely_use_warns(tmp_path: Path) -> None:
    data = np.arange(1600, dtype=np.uint16).reshape(40, 40) % 200
    array = open_volume(write(tmp_path / "g.zarr" / "raw", data))
    with pytest.warns(RuntimeWarning, match="almost constant image"):
        norm = measure_normalization([(array, None, "g")], given={"min": 0, "max": 65535})
    assert norm == {"min": 0.0, "max": 65535.0, "dtype": "uint16", "method": "given"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measure_normalization([(array, None, "g")], given={"min": 0, "max": 255},
                              percentiles=(0, 100))


def test_measure_errors_and_constant_data(tmp_path: Path) -> None:
    a = open_volume(write(tmp_path / "a.zarr" / "raw", np.full((20, 20), 7, np.uint8)))
    b = open_volume(write(tmp_path / "b.zarr" / "raw", np.zeros((20, 20), np.float32)))
    with pytest.warns(RuntimeWarning, match=r"constant \(7\).*min=7, max=8"):
        norm = measure_normalization([(a, None, "a")])
    assert (norm["min"], norm["max"]) == (7.0, 8.0)
    with pytest.raises(ValueError, match=r"different dtypes \['float32', 'uint8'\]"):
        measure_normalization([(a, None, "a"), (b, None, "b")])
    with pytest.raises(ValueError, match="non-empty list"):
        measure_normalization([])
    with pytest.raises(ValueError, match="low < high"):
        measure_normalization([(a, None, "a")], percentiles=(99, 1))


def test_warn_tiny_range() -> None:
    with pytest.warns(RuntimeWarning, match="only 0.39 % of the uint16 range"):
        assert warn_tiny_range(0, 255, "uint16", "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_tiny_range(0, 4095, "uint16", "12-bit data")
        assert not warn_tiny_range(0, 0.001, "float32", "floats have no dtype range")


def test_range_mismatch() -> None:
    data = np.arange(256)
    assert range_mismatch(data, {"min": 0, "max": 255}) is None
    assert range_mismatch(data, {"min": 100, "max": 200}) is None  # partly outside: fine
    constant = range_mismatch(data, {"min": 0, "max": 65535})
    assert constant is not None and "almost constant image" in constant
    far = range_mismatch(data + 5000, {"min": 0, "max": 255})
    assert far is not None and "far outside its training range" in far
    assert range_mismatch(np.array([]), {"min": 0, "max": 1}) is None


def test_predict_warns_when_the_raw_does_not_fit_the_network(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from innerdist.architecture import UNet
    from innerdist.checkpoint import random_checkpoint, save_checkpoint
    from innerdist.predict import predict_volume

    unet = UNet((20, 20), num_fmaps=2, downsample_factors=[(2, 2)])
    predictor = InnerDistancePredictor(["obj"], 16.0)
    raw8 = (np.arange(400) % 256).astype(np.uint16).reshape(20, 20)
    raw = write(tmp_path / "r.zarr" / "raw", raw8)
    for norm, expect in (({"min": 0, "max": 255, "dtype": "uint16"}, False),
                         ({"min": 0, "max": 65535, "dtype": "uint16"}, True)):
        ckpt = save_checkpoint(tmp_path / "m.pt", random_checkpoint(unet, predictor, (4, 4), norm))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="innerdist.predict"):
            predict_volume(ckpt, raw, tmp_path / "r.zarr" / "pred", overwrite=True,
                           progress=False)
        assert ("sees an almost constant image" in caplog.text) == expect, caplog.text
