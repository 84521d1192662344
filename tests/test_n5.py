"""N5 reading: spec test vectors, hand-written datasets, metadata and every error."""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from innerdist.n5 import N5Array, open_n5
from innerdist.volumes import open_volume

# ---------------------------------------------------------------------------------------
# A tiny N5 writer, written from the spec (https://github.com/saalfeldlab/n5), so that the
# reader is tested against files laid out exactly as the spec says.


def _compress(kind: str, raw: bytes) -> bytes:
    if kind == "raw":
        return raw
    if kind == "gzip":
        return gzip.compress(raw)
    if kind == "zlib":  # N5 gzip with useZlib: true
        return zlib.compress(raw)
    if kind == "bzip2":
        return bz2.compress(raw)
    if kind == "xz":
        return lzma.compress(raw)
    import numcodecs

    codec = numcodecs.Blosc() if kind == "blosc" else numcodecs.Zstd()
    return bytes(codec.encode(raw))


def block_bytes(block: np.ndarray, compression: str = "raw", mode: int = 0) -> bytes:
    """One N5 block file: header (x-first sizes) then big-endian data, x fastest."""
    dims_x_first = list(reversed(block.shape))
    header = np.array([mode, block.ndim], dtype=">u2").tobytes()
    header += np.array(dims_x_first, dtype=">u4").tobytes()
    if mode == 1:
        header += np.array([block.size], dtype=">u4").tobytes()
    # A C-order (z, y, x) array has x varying fastest, as N5 wants.
    data = np.ascontiguousarray(block).astype(block.dtype.newbyteorder(">")).tobytes()
    return header + _compress(compression, data)


def write_n5(
    container: Path,
    dataset: str,
    data: np.ndarray,
    block_shape: tuple[int, ...],
    *,
    compression: str = "raw",
    missing: tuple[tuple[int, ...], ...] = (),
    pad_edges: bool = False,
    attrs: dict[str, Any] | None = None,
) -> np.ndarray:
    """Write ``data`` (numpy order) as an N5 dataset; return what a reader should see.

    ``missing`` lists block grid positions (numpy order) not written, which read as 0.
    ``pad_edges`` writes edge blocks at full size (allowed by readers, some writers do).
    """
    container.mkdir(parents=True, exist_ok=True)
    (container / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    path = container / dataset
    path.mkdir(parents=True, exist_ok=True)
    comp: dict[str, Any] = {"type": "gzip" if compression == "zlib" else compression}
    if compression == "zlib":
        comp["useZlib"] = True
    meta = {
        "dimensions": list(reversed(data.shape)),
        "blockSize": list(reversed(block_shape)),
        "dataType": str(data.dtype),
        "compression": comp,
        **(attrs or {}),
    }
    (path / "attributes.json").write_text(json.dumps(meta))
    expected = data.copy()
    grid = [range(-(-s // b)) for s, b in zip(data.shape, block_shape, strict=True)]
    for pos in itertools.product(*grid):
        sl = tuple(slice(p * b, (p + 1) * b) for p, b in zip(pos, block_shape, strict=True))
        if pos in missing:
            expected[sl] = 0
            continue
        block = data[sl]
        if pad_edges and block.shape != block_shape:
            padded = np.full(block_shape, 77, dtype=data.dtype)  # junk beyond the edge
            padded[tuple(slice(0, s) for s in block.shape)] = block
            block = padded
        file = path.joinpath(*[str(p) for p in reversed(pos)])
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(block_bytes(block, compression))
    return expected


# ---------------------------------------------------------------------------------------
# The spec's own example: a 1 x 2 x 3 (x, y, z) uint16 block holding 1..6, as written by
# the Java reference implementation (headers and payloads copied from the spec's hexdumps).

SPEC_HEADER = bytes.fromhex("0000 0003 00000001 00000002 00000003".replace(" ", ""))
SPEC_PAYLOADS = {
    "raw": bytes.fromhex("000100020003000400050006"),
    "gzip": bytes.fromhex("1f8b08000000000000006360646062606660616065600300aaea6dbf0c000000"),
    "bzip2": bytes.fromhex(
        "425a6839314159265359023e0dd200000040007f002000310c010d31a87394337c5dc914e1424008f83748"
    ),
    "xz": bytes.fromhex(
        "fd377a585a000004e6d6b4460200210116000000742fe5a301000b00010002000300040005000600"
        "0d0309ca34ec15a70001240ca618d8d81fb6f37d010000000004595a"
    ),
}


@pytest.mark.parametrize("compression", list(SPEC_PAYLOADS))
def test_spec_example_block(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "spec.n5" / "data"
    path.mkdir(parents=True)
    attrs = {
        "dimensions": [1, 2, 3],
        "blockSize": [1, 2, 3],
        "dataType": "uint16",
        "compression": {"type": compression},
    }
    (path / "attributes.json").write_text(json.dumps(attrs))
    (path / "0" / "0").mkdir(parents=True)
    (path / "0" / "0" / "0").write_bytes(SPEC_HEADER + SPEC_PAYLOADS[compression])
    arr = N5Array(path)
    assert arr.shape == (3, 2, 1)  # numpy order: z, y, x
    assert arr.chunks == (3, 2, 1)
    assert arr.dtype == np.dtype("uint16") and arr.dtype.isnative
    # x varies fastest: value(x, y, z) = 1 + x + y + 2 z.
    np.testing.assert_array_equal(arr[:, :, 0], [[1, 2], [3, 4], [5, 6]])


# ---------------------------------------------------------------------------------------
# Hand-written datasets


@pytest.mark.parametrize("compression", ["raw", "gzip", "zlib", "bzip2", "xz", "blosc", "zstd"])
def test_every_value_with_partial_edge_blocks_and_a_missing_block(
    tmp_path: Path, compression: str
) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 60000, size=(5, 7, 9), dtype=np.uint16)  # no zeros: 0 = missing
    expected = write_n5(
        tmp_path / "c.n5", "raw", data, (2, 3, 4), compression=compression, missing=((1, 2, 0),)
    )
    arr = N5Array(tmp_path / "c.n5" / "raw")
    assert arr.shape == (5, 7, 9) and arr.ndim == 3 and arr.chunks == (2, 3, 4)
    np.testing.assert_array_equal(arr[:], expected)
    # The missing block covers z 2:4, y 6:7, x 0:4 and reads as zeros; the rest is data.
    assert not expected[2:4, 6:7, 0:4].any()
    assert (expected != data).sum() == 2 * 1 * 4


def test_axis_order_is_reversed_on_disk(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4)
    write_n5(tmp_path / "c.n5", "d", data, (2, 3, 4))
    attrs = json.loads((tmp_path / "c.n5" / "d" / "attributes.json").read_text())
    assert attrs["dimensions"] == [4, 3, 2]
    raw = (tmp_path / "c.n5" / "d" / "0" / "0" / "0").read_bytes()
    # Header sizes x first, then x varies fastest: data[0, 0, 1] is the second value.
    assert list(np.frombuffer(raw, ">u4", count=3, offset=4)) == [4, 3, 2]
    assert list(np.frombuffer(raw, ">i4", count=3, offset=16)) == [0, 1, 2]
    arr = N5Array(tmp_path / "c.n5" / "d")
    assert arr.shape == (2, 3, 4)
    np.testing.assert_array_equal(arr[...], data)
    assert arr[1, 2, 3] == 23


def test_blocks_stored_under_x_first_directories(tmp_path: Path) -> None:
    data = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)  # (y, x)
    write_n5(tmp_path / "c.n5", "d", data, (2, 3))
    # Block at numpy grid position (y=1, x=0) lives at d/0/1 (x first).
    assert (tmp_path / "c.n5" / "d" / "0" / "1").is_file()
    (tmp_path / "c.n5" / "d" / "0" / "1").unlink()
    expected = data.copy()
    expected[2:4, 0:3] = 0
    np.testing.assert_array_equal(N5Array(tmp_path / "c.n5" / "d")[:, :], expected)


def test_full_size_edge_blocks_are_clipped(tmp_path: Path) -> None:
    data = np.arange(5 * 7, dtype=np.float32).reshape(5, 7) + 0.5
    write_n5(tmp_path / "c.n5", "d", data, (4, 4), pad_edges=True)
    np.testing.assert_array_equal(N5Array(tmp_path / "c.n5" / "d")[:], data)


def test_varlength_mode_block_with_full_count(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.int16).reshape(2, 3) - 3
    write_n5(tmp_path / "c.n5", "d", data, (2, 3))
    (tmp_path / "c.n5" / "d" / "0" / "0").write_bytes(block_bytes(data, "raw", mode=1))
    np.testing.assert_array_equal(N5Array(tmp_path / "c.n5" / "d")[:], data)


@pytest.mark.parametrize(
    "dtype",
    [
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float32",
        "float64",
    ],
)
def test_every_n5_data_type(tmp_path: Path, dtype: str) -> None:
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else np.finfo(dtype)
    data = np.array([[info.min, 1, info.max], [2, 3, 4]], dtype=dtype)
    write_n5(tmp_path / "c.n5", "d", data, (2, 2), compression="gzip")
    arr = N5Array(tmp_path / "c.n5" / "d")
    out = arr[:]
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, data)


def test_reads_only_the_blocks_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.arange(8 * 8 * 8, dtype=np.uint32).reshape(8, 8, 8)
    write_n5(tmp_path / "c.n5", "d", data, (4, 4, 4))
    arr = N5Array(tmp_path / "c.n5" / "d")
    seen: list[tuple[int, ...]] = []
    original = N5Array._read_block

    def spy(self: N5Array, grid: tuple[int, ...]) -> np.ndarray | None:
        seen.append(grid)
        return original(self, grid)

    monkeypatch.setattr(N5Array, "_read_block", spy)
    np.testing.assert_array_equal(arr[1:3, 0:4, 2:6], data[1:3, 0:4, 2:6])
    assert sorted(seen) == [(0, 0, 0), (0, 0, 1)]
    seen.clear()
    assert arr[7, 7, 7] == data[7, 7, 7]
    assert seen == [(1, 1, 1)]
    seen.clear()
    assert arr[0:0, :, :].shape == (0, 8, 8)
    assert seen == []


def test_pickles_for_worker_processes(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_n5(tmp_path / "c.n5", "d", data, (2, 2), compression="zstd")
    arr = pickle.loads(pickle.dumps(N5Array(tmp_path / "c.n5" / "d")))
    np.testing.assert_array_equal(arr[:], data)


KEYS = st.one_of(
    st.integers(-12, 12),
    st.builds(
        slice,
        st.one_of(st.none(), st.integers(-12, 12)),
        st.one_of(st.none(), st.integers(-12, 12)),
        st.one_of(st.none(), st.integers(-3, 3).filter(lambda s: s != 0)),
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    blocks=st.lists(st.integers(1, 5), min_size=3, max_size=3),
    keys=st.lists(KEYS, min_size=0, max_size=3),
    ellipsis_at=st.one_of(st.none(), st.integers(0, 3)),
    seed=st.integers(0, 2**16),
)
def test_indexing_matches_numpy(
    tmp_path_factory: pytest.TempPathFactory,
    shape: list[int],
    blocks: list[int],
    keys: list[Any],
    ellipsis_at: int | None,
    seed: int,
) -> None:
    data = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.int64)
    block_shape = tuple(blocks[: len(shape)])
    root = tmp_path_factory.mktemp("n5")
    write_n5(root / "c.n5", "d", data, block_shape, compression="gzip")
    arr = N5Array(root / "c.n5" / "d")
    key: list[Any] = keys[: len(shape)]
    if ellipsis_at is not None:
        key.insert(min(ellipsis_at, len(key)), Ellipsis)
    try:
        expected = data[tuple(key)]
    except IndexError:
        with pytest.raises(IndexError):
            arr[tuple(key)]
        return
    got = arr[tuple(key)]
    assert got.shape == np.shape(expected)
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------
# open_n5: world units and axis names


def test_open_n5_resolution_and_offset_are_x_first(tmp_path: Path) -> None:
    data = np.arange(4 * 6 * 8, dtype=np.uint8).reshape(4, 6, 8)
    write_n5(
        tmp_path / "c.n5",
        "volumes/raw",
        data,
        (2, 4, 4),
        compression="gzip",
        attrs={"resolution": [4, 8, 40], "offset": [400, 80, 1200]},
    )
    array = open_n5(tmp_path / "c.n5", "volumes/raw")
    assert array.voxel_size == Coordinate(40, 8, 4)
    assert array.offset == Coordinate(1200, 80, 400)
    assert array.axis_names == ["z", "y", "x"]
    assert array.units == ["nm", "nm", "nm"]
    assert array.roi == Roi((1200, 80, 400), (160, 48, 32))
    np.testing.assert_array_equal(array[array.roi], data)
    # A world-unit ROI: z 1280:1360 is voxels 2:4, y 96:112 is 2:4, x 404:420 is 1:5.
    sub = Roi((1280, 96, 404), (80, 16, 16))
    np.testing.assert_array_equal(array[sub], data[2:4, 2:4, 1:5])


def test_open_volume_dispatches_to_n5(tmp_path: Path) -> None:
    data = np.arange(3 * 5, dtype=np.uint64).reshape(3, 5)
    write_n5(tmp_path / "c.n5", "labels", data, (2, 2), attrs={"resolution": [8, 16]})
    array = open_volume(tmp_path / "c.n5" / "labels")
    assert array.voxel_size == Coordinate(16, 8)
    assert array.axis_names == ["y", "x"]
    np.testing.assert_array_equal(array[array.roi], data)


def test_open_n5_pixel_resolution_in_micrometres(tmp_path: Path) -> None:
    data = np.zeros((2, 3, 4), dtype=np.uint8)
    write_n5(
        tmp_path / "c.n5",
        "s0",
        data,
        (2, 3, 4),
        attrs={
            "pixelResolution": {"dimensions": [0.004, 0.004, 0.04], "unit": "um"},
            "offset": [0.008, 0.0, 0.08],
        },
    )
    array = open_n5(tmp_path / "c.n5", "s0")
    assert array.voxel_size == Coordinate(40, 4, 4)
    assert array.offset == Coordinate(80, 0, 8)
    assert array.units == ["nm", "nm", "nm"]


def test_open_n5_funlib_attributes_are_numpy_order(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    write_n5(
        tmp_path / "c.n5",
        "pred",
        data,
        (2, 2, 2),
        attrs={
            "voxel_size": [8, 8],
            "offset": [16, 24],
            "axis_names": ["c^", "y", "x"],
            "units": ["nm", "nm"],
        },
    )
    array = open_n5(tmp_path / "c.n5", "pred")
    assert array.voxel_size == Coordinate(8, 8)
    assert array.offset == Coordinate(16, 24)
    assert array.axis_names == ["c^", "y", "x"]
    assert array.channel_dims == 1
    np.testing.assert_array_equal(array[array.roi], data)


def test_open_n5_without_metadata_and_with_n5_axes(tmp_path: Path) -> None:
    data = np.arange(2 * 2 * 3 * 4, dtype=np.uint16).reshape(2, 2, 3, 4)
    write_n5(tmp_path / "c.n5", "plain", data, (1, 2, 2, 2))
    array = open_n5(tmp_path / "c.n5", "plain")
    assert array.voxel_size == Coordinate(1, 1, 1)
    assert array.offset == Coordinate(0, 0, 0)
    assert array.axis_names == ["c^", "z", "y", "x"]
    np.testing.assert_array_equal(array[array.roi], data)

    write_n5(tmp_path / "c.n5", "named", data[0], (2, 2, 2), attrs={"axes": ["x", "y", "z"]})
    assert open_n5(tmp_path / "c.n5", "named").axis_names == ["z", "y", "x"]


# ---------------------------------------------------------------------------------------
# Errors


def _dataset(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "c.n5" / "d"
    path.mkdir(parents=True, exist_ok=True)
    attrs = {
        "dimensions": [4, 3],
        "blockSize": [2, 2],
        "dataType": "uint8",
        "compression": {"type": "raw"},
    }
    attrs.update(overrides)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    (path / "attributes.json").write_text(json.dumps(attrs))
    return path


def test_missing_container_and_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no N5 container"):
        open_n5(tmp_path / "nope.n5", "raw")
    (tmp_path / "c.n5").mkdir()
    with pytest.raises(FileNotFoundError, match="no N5 dataset 'raw'"):
        open_n5(tmp_path / "c.n5", "raw")
    with pytest.raises(FileNotFoundError, match="no N5 dataset directory"):
        N5Array(tmp_path / "c.n5" / "raw")
    (tmp_path / "c.n5" / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match="no N5 attributes file"):
        N5Array(tmp_path / "c.n5" / "raw")


@pytest.mark.parametrize("key", ["dimensions", "blockSize", "dataType"])
def test_missing_mandatory_attribute(tmp_path: Path, key: str) -> None:
    path = _dataset(tmp_path, **{key: None})
    with pytest.raises(ValueError, match=f"has no '{key}'"):
        N5Array(path)


def test_missing_compression(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no 'compression'"):
        N5Array(_dataset(tmp_path, compression=None))


def test_legacy_compression_type_key(tmp_path: Path) -> None:
    path = _dataset(tmp_path, compression=None, compressionType="gzip")
    assert N5Array(path).compression == "gzip"


@pytest.mark.parametrize(
    ("compression", "match"),
    [
        ({"type": "lz4"}, "unsupported compression 'lz4'"),
        ({"level": 3}, "expected an object with a 'type'"),
        ("lz4", "unsupported compression 'lz4'"),
        (7, "expected an object with a 'type'"),
    ],
)
def test_unsupported_compression(tmp_path: Path, compression: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        N5Array(_dataset(tmp_path, compression=compression))


def test_codec_from_numcodecs_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "numcodecs", None)  # import now raises ImportError
    with pytest.raises(ValueError, match="needs the 'numcodecs' package"):
        N5Array(_dataset(tmp_path, compression={"type": "blosc"}))


@pytest.mark.parametrize("data_type", ["complex64", "object", "float16", "bool"])
def test_unsupported_data_type(tmp_path: Path, data_type: str) -> None:
    with pytest.raises(ValueError, match=f"unsupported dataType '{data_type}'"):
        N5Array(_dataset(tmp_path, dataType=data_type))


@pytest.mark.parametrize(
    ("dimensions", "block_size"),
    [([4, 3], [2]), ([4, -1], [2, 2]), ([4, 3], [2, 0]), ([], []), ("4,3", [2, 2])],
)
def test_bad_dimensions_or_block_size(tmp_path: Path, dimensions: Any, block_size: Any) -> None:
    with pytest.raises(ValueError, match="expected equally long lists"):
        N5Array(_dataset(tmp_path, dimensions=dimensions, blockSize=block_size))


def test_attributes_not_json_or_not_an_object(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    (path / "attributes.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read N5 attributes"):
        N5Array(path)
    (path / "attributes.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        N5Array(path)


def _write_block(path: Path, content: bytes) -> None:
    (path / "0").mkdir(exist_ok=True)
    (path / "0" / "0").write_bytes(content)


def test_corrupt_blocks(tmp_path: Path) -> None:
    path = _dataset(tmp_path)  # (y, x) = (3, 4), blocks (2, 2), uint8, raw
    arr = N5Array(path)
    good = block_bytes(np.ones((2, 2), dtype=np.uint8))
    _write_block(path, b"\x00")
    with pytest.raises(ValueError, match="too short for a header"):
        arr[:]
    _write_block(path, good[:6])
    with pytest.raises(ValueError, match="too short for its header"):
        arr[:]
    _write_block(path, block_bytes(np.ones((2, 2, 1), dtype=np.uint8)))
    with pytest.raises(ValueError, match="has 3 dimensions, the dataset has 2"):
        arr[:]
    _write_block(path, np.array([2, 2], ">u2").tobytes() + good[4:])
    with pytest.raises(ValueError, match="has mode 2"):
        arr[:]
    _write_block(path, good[:-1])
    with pytest.raises(ValueError, match="has 3 bytes of data, expected 4"):
        arr[:]
    varlength = block_bytes(np.ones((2, 2), dtype=np.uint8), mode=1)
    _write_block(path, varlength[:12] + np.array([3], ">u4").tobytes() + varlength[16:])
    with pytest.raises(ValueError, match="holds 3 elements"):
        arr[:]
    gz = _dataset(tmp_path / "gz", compression={"type": "gzip"})
    _write_block(gz, good)  # raw payload where gzip is expected
    with pytest.raises(ValueError, match="cannot decompress N5 block"):
        N5Array(gz)[:]


def test_bad_indices(tmp_path: Path) -> None:
    arr = N5Array(_dataset(tmp_path))
    with pytest.raises(IndexError, match="too many indices"):
        arr[0, 0, 0]
    with pytest.raises(IndexError, match="out of bounds for axis 1 of size 4"):
        arr[0, 4]
    with pytest.raises(IndexError, match="single ellipsis"):
        arr[..., ...]
    with pytest.raises(IndexError, match="supports integers, slices"):
        arr[[0, 1]]


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"resolution": [4.5, 4]}, r"voxel size \[4.0, 4.5\] nm is not a whole number of nm"),
        (
            {"pixelResolution": {"dimensions": [4, 4], "unit": "furlong"}},
            "unit 'furlong' is not a length unit",
        ),
        ({"resolution": [4, 0]}, "must be positive"),
        ({"resolution": [4, 4, 4]}, "has 2 axes but a voxel size with 3 entries"),
        ({"resolution": "4,4"}, "resolution of .* must be a list of numbers"),
        ({"resolution": [4, 4], "offset": [1]}, r"offset \[1\] .* must have 2 entries"),
        ({"pixelResolution": [4, 4]}, "must be an object with 'dimensions'"),
        ({"voxel_size": [4, 4], "axis_names": ["z", "y", "x"]}, "must name 2 axes"),
        ({"voxel_size": [4, 4], "offset": [0.5, 0]}, "offset .* is not integer"),
    ],
)
def test_bad_world_metadata(tmp_path: Path, attrs: dict[str, Any], match: str) -> None:
    _dataset(tmp_path, **attrs)
    with pytest.raises(ValueError, match=match):
        open_n5(tmp_path / "c.n5", "d")


def test_pixel_resolution_in_pixels_and_angstrom(tmp_path: Path) -> None:
    # BigDataViewer writes "pixel" for uncalibrated data: the volume is then in px.
    _dataset(tmp_path, pixelResolution={"dimensions": [1, 2], "unit": "pixel"})
    array = open_n5(tmp_path / "c.n5", "d")
    assert tuple(array.voxel_size) == (2, 1) and array.units == ["px", "px"]
    _dataset(tmp_path, pixelResolution={"dimensions": [40, 80], "unit": "Å"}, offset=[80, 0])
    array = open_n5(tmp_path / "c.n5", "d")
    assert tuple(array.voxel_size) == (8, 4) and tuple(array.offset) == (0, 8)
