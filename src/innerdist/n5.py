"""Read-only N5 datasets as :class:`funlib.persistence.Array` (zarr 3 no longer reads N5).

An N5 dataset is a directory with ``attributes.json`` and one file per block. N5 lists
axes x first (``dimensions: [x, y, z]``); numpy and funlib list them z first. This module
reverses every per-axis list, so a dataset with ``dimensions [300, 200, 10]`` opens with
shape ``(10, 200, 300)``::

    em.n5/raw/attributes.json   {"dimensions": [300, 200, 10], "blockSize": [64, 64, 8],
                                 "dataType": "uint8", "compression": {"type": "gzip"}}
    em.n5/raw/0/0/0             block (x=0, y=0, z=0): voxels z 0:8,  y 0:64, x 0:64
    em.n5/raw/4/0/1             block (x=4, y=0, z=1): voxels z 8:10, y 0:64, x 256:300
                                (edge blocks are truncated; a missing block reads as 0)

A block file is a big-endian header -- ``mode`` (uint16: 0 default, 1 varlength),
``ndim`` (uint16), the block's size per axis (uint32 each, x first), for mode 1 the number
of elements (uint32) -- followed by the compressed big-endian data, x varying fastest.
Compressions: ``raw``, ``gzip`` (gzip or zlib framing), ``bzip2``, ``xz``, and ``blosc`` /
``zstd`` when ``numcodecs`` is installed.
"""

from __future__ import annotations

import bz2
import itertools
import json
import lzma
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from funlib.persistence import Array

from innerdist.units import spatial_axis_names, to_world

__all__ = ["N5Array", "open_n5"]

_DTYPES = {
    name: np.dtype(name)
    for name in (
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
    )
}
def _read_attributes(path: Path) -> dict[str, Any]:
    try:
        attrs = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no N5 attributes file at {str(path)!r}") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read N5 attributes {str(path)!r}: {e}") from None
    if not isinstance(attrs, dict):
        raise ValueError(f"N5 attributes {str(path)!r} must hold a JSON object, got {attrs!r}")
    return attrs


_COMPRESSIONS = ("raw", "gzip", "bzip2", "xz", "blosc", "zstd")


def _compression_type(compression: Any, where: Path) -> str:
    """The compression ``type`` of N5 attributes, checked to be one this reader decodes."""
    if isinstance(compression, str):  # N5 < 1.0 wrote "compressionType": "gzip"
        compression = {"type": compression}
    if not isinstance(compression, dict) or not isinstance(compression.get("type"), str):
        raise ValueError(
            f"N5 dataset {str(where)!r} has compression {compression!r}; expected an object "
            "with a 'type' such as 'raw' or 'gzip'"
        )
    kind = str(compression["type"])
    if kind not in _COMPRESSIONS:
        raise ValueError(
            f"N5 dataset {str(where)!r} uses unsupported compression {kind!r}; supported: "
            f"{', '.join(_COMPRESSIONS)}"
        )
    if kind in ("blosc", "zstd"):
        try:
            import numcodecs  # noqa: F401
        except ImportError:
            raise ValueError(
                f"N5 dataset {str(where)!r} uses {kind!r} compression, which needs the "
                "'numcodecs' package; install it to read this dataset"
            ) from None
    return kind


def _decompress(kind: str, data: bytes) -> bytes:
    """A block's payload as raw bytes. A plain function of names, so readers pickle."""
    if kind == "raw":
        return data
    if kind == "gzip":
        # wbits 32 + 15 accepts both gzip and zlib framing (N5's `useZlib` option).
        return zlib.decompress(data, 32 + zlib.MAX_WBITS)
    if kind == "bzip2":
        return bz2.decompress(data)
    if kind == "xz":
        return lzma.decompress(data)
    import numcodecs

    codec = numcodecs.Blosc() if kind == "blosc" else numcodecs.Zstd()
    return bytes(codec.decode(data))


class N5Array:
    """One N5 dataset as a read-only, numpy-sliceable array (axes z, y, x order).

    Only the blocks overlapping a requested region are read. ``shape``, ``chunks`` (the
    block shape) and every index are in numpy order, the reverse of N5's. Wrap it with
    :func:`open_n5` to get world units.

    >>> arr = N5Array("em.n5/raw")  # doctest: +SKIP
    >>> arr.shape, arr.chunks, arr[0:2, 10:20, 5].shape  # doctest: +SKIP
    ((10, 200, 300), (8, 64, 64), (2, 10))
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no N5 dataset directory at {str(self.path)!r}")
        attrs = _read_attributes(self.path / "attributes.json")
        for key in ("dimensions", "blockSize", "dataType"):
            if key not in attrs:
                raise ValueError(
                    f"{str(self.path / 'attributes.json')!r} is not an N5 dataset's: it has no "
                    f"{key!r} (keys: {sorted(attrs)})"
                )
        dimensions, block_size = attrs["dimensions"], attrs["blockSize"]
        if (
            not isinstance(dimensions, list)
            or not isinstance(block_size, list)
            or len(dimensions) != len(block_size)
            or not dimensions
            or not all(isinstance(d, int) and d >= 0 for d in dimensions)
            or not all(isinstance(b, int) and b > 0 for b in block_size)
        ):
            raise ValueError(
                f"N5 dataset {str(self.path)!r} has dimensions {dimensions!r} and blockSize "
                f"{block_size!r}; expected equally long lists of non-negative and positive "
                "integers"
            )
        data_type = attrs["dataType"]
        if data_type not in _DTYPES:
            raise ValueError(
                f"N5 dataset {str(self.path)!r} has unsupported dataType {data_type!r}; "
                f"supported: {', '.join(_DTYPES)}"
            )
        if "compression" in attrs:
            self.compression = _compression_type(attrs["compression"], self.path)
        elif "compressionType" in attrs:
            self.compression = _compression_type(attrs["compressionType"], self.path)
        else:
            raise ValueError(
                f"N5 dataset {str(self.path)!r} has no 'compression' in its attributes"
            )
        self.attrs: dict[str, Any] = attrs
        self.shape: tuple[int, ...] = tuple(int(d) for d in reversed(dimensions))
        self.chunks: tuple[int, ...] = tuple(int(b) for b in reversed(block_size))
        self.dtype: np.dtype[Any] = _DTYPES[data_type]
        self._stored = self.dtype.newbyteorder(">")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"N5Array({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read ``self[key]`` for integers, slices (any step) and one ``...``."""
        starts, stops, post, squeeze = self._normalise_key(key)
        region = self._read_region(starts, stops)
        region = region[post]
        return region.reshape([s for i, s in enumerate(region.shape) if i not in squeeze])

    def _normalise_key(self, key: Any) -> tuple[list[int], list[int], tuple[slice, ...], set[int]]:
        """Turn ``key`` into the bounding box to read and the slicing to apply after."""
        if not isinstance(key, tuple):
            key = (key,)
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError(f"an index can only have a single ellipsis, got {key!r}")
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(key) + 1)
            key = key[:i] + fill + key[i + 1 :]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for an array of shape {self.shape}: {key!r}")
        key = key + (slice(None),) * (self.ndim - len(key))
        starts: list[int] = []
        stops: list[int] = []
        post: list[slice] = []
        squeeze: set[int] = set()
        for axis, (k, n) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(k, int | np.integer) and not isinstance(k, bool):
                i = int(k) + n if k < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {int(k)} is out of bounds for axis {axis} of size {n}")
                k = slice(i, i + 1)
                squeeze.add(axis)
            if not isinstance(k, slice):
                raise IndexError(
                    f"N5Array supports integers, slices and '...', got {k!r} for axis {axis}"
                )
            r = range(*k.indices(n))
            if len(r) == 0:
                starts.append(0)
                stops.append(0)
                post.append(slice(0, 0))
                continue
            lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
            starts.append(lo)
            stops.append(hi)
            stop = r.stop - lo
            post.append(slice(r.start - lo, stop if stop >= 0 else None, r.step))
        return starts, stops, tuple(post), squeeze

    def _read_region(self, starts: list[int], stops: list[int]) -> np.ndarray:
        """Voxels ``starts:stops`` (numpy order), reading only the blocks that overlap."""
        out = np.zeros([b - a for a, b in zip(starts, stops, strict=True)], dtype=self.dtype)
        if out.size == 0:
            return out
        block_ranges = [
            range(a // c, (b - 1) // c + 1)
            for a, b, c in zip(starts, stops, self.chunks, strict=True)
        ]
        for grid in itertools.product(*block_ranges):
            block = self._read_block(grid)
            if block is None:
                continue  # never written: the fill value 0
            origin = [g * c for g, c in zip(grid, self.chunks, strict=True)]
            # Overlap of the block (clipped to its actual, possibly truncated size) with
            # the requested region, in array coordinates.
            lo = [max(o, a) for o, a in zip(origin, starts, strict=True)]
            hi = [min(o + s, b) for o, s, b in zip(origin, block.shape, stops, strict=True)]
            if any(h <= low for low, h in zip(lo, hi, strict=True)):
                continue
            src = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin, strict=True))
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, starts, strict=True))
            out[dst] = block[src]
        return out

    def _read_block(self, grid: tuple[int, ...]) -> np.ndarray | None:
        """Decode the block at grid position ``grid`` (numpy order), or ``None`` if absent."""
        path = self.path.joinpath(*[str(g) for g in reversed(grid)])
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < 4:
            raise ValueError(
                f"N5 block {str(path)!r} is too short for a header ({len(data)} bytes)"
            )
        mode, ndim = (int(v) for v in np.frombuffer(data, dtype=">u2", count=2))
        if mode not in (0, 1):
            raise ValueError(
                f"N5 block {str(path)!r} has mode {mode}; only 0 (default) and 1 (varlength) "
                "blocks of numeric data are supported"
            )
        if ndim != self.ndim:
            raise ValueError(
                f"N5 block {str(path)!r} has {ndim} dimensions, the dataset has {self.ndim}"
            )
        header = 4 + 4 * ndim + (4 if mode == 1 else 0)
        if len(data) < header:
            raise ValueError(f"N5 block {str(path)!r} is too short for its header")
        dims = [int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)]
        count = math.prod(dims)
        if mode == 1:
            count = int(np.frombuffer(data, dtype=">u4", count=1, offset=4 + 4 * ndim)[0])
            if count != math.prod(dims):
                raise ValueError(
                    f"N5 block {str(path)!r} holds {count} elements, not a full block of "
                    f"{dims} (x first); variable-length blocks are not supported"
                )
        try:
            payload = _decompress(self.compression, data[header:])
        except Exception as e:  # codec errors come in many types
            raise ValueError(f"cannot decompress N5 block {str(path)!r}: {e}") from e
        expected = count * self._stored.itemsize
        if len(payload) < expected:
            raise ValueError(
                f"N5 block {str(path)!r} has {len(payload)} bytes of data, expected {expected} "
                f"for a block of {dims} (x first) {self.dtype}"
            )
        values = np.frombuffer(payload, dtype=self._stored, count=count)
        # x varies fastest: a C-order array with the axes reversed, i.e. (z, y, x).
        return values.reshape(tuple(reversed(dims))).astype(self.dtype)


def _integer_world(values: list[float], what: str, where: Path) -> list[int]:
    if any(not math.isfinite(v) or abs(v - round(v)) > 1e-6 * max(1.0, abs(v)) for v in values):
        raise ValueError(
            f"N5 {what} {values} of {str(where)!r} is not integer; innerdist needs integer "
            "world units (describe it in a smaller unit)"
        )
    return [int(round(v)) for v in values]


def _number_list(value: Any, what: str, where: Path) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"N5 {what} of {str(where)!r} must be a list of numbers, got {value!r}")
    return [float(v) for v in value]


def open_n5(container: str | Path, dataset: str) -> Array:
    """Open ``container/dataset`` (an N5 dataset) as a read-only funlib Array.

    Voxel size, offset (world units) and axis names come from, in this order:

    - funlib's own attributes ``voxel_size``, ``offset``, ``axis_names``, ``units``, in
      numpy (z-first) order, when ``voxel_size`` is present;
    - else ``resolution`` (x first, e.g. CREMI / gunpowder files) or ``pixelResolution``
      ``{"dimensions": [...], "unit": "nm"}`` (x first, BigDataViewer / Janelia), with
      ``offset`` then read x first too; micrometre units are converted to nm;
    - else voxel size 1 and offset 0.

    Axis names default to ``z, y, x`` (``y, x`` in 2-D); leading axes beyond the voxel
    size's length are channel axes (``c^``). The voxel size must be integer in the unit
    used (nm after conversion), as everywhere in innerdist.
    """
    container = Path(container)
    if not container.exists():
        raise FileNotFoundError(f"no N5 container at {str(container)!r}")
    path = container / dataset
    if not (path / "attributes.json").exists():
        raise FileNotFoundError(
            f"no N5 dataset {dataset!r} in {str(container)!r}: "
            f"{str(path / 'attributes.json')!r} does not exist"
        )
    reader = N5Array(path)
    voxel, offset, units = _world_metadata(reader.attrs, reader.ndim, path)
    axis_names = _axis_names(reader.attrs, reader.ndim, len(voxel), path)
    return Array(reader, offset=offset, voxel_size=voxel, axis_names=axis_names, units=units)


def _world_metadata(
    attrs: dict[str, Any], ndim: int, path: Path
) -> tuple[list[int], list[int], list[str]]:
    """Voxel size, offset (world units, numpy order) and units, see :func:`open_n5`."""
    units: list[str] | None = None
    offset: list[int] | None = None
    if "voxel_size" in attrs:
        # funlib's attributes, in numpy order.
        values = _number_list(attrs["voxel_size"], "voxel_size", path)
        voxel = _integer_world(values, "voxel size", path)
        if "offset" in attrs:
            values = _number_list(attrs["offset"], "offset", path)
            offset = _integer_world(values, "offset", path)
        if isinstance(attrs.get("units"), list):
            units = [str(u) for u in attrs["units"]]
    else:
        # N5 conventions, x first; plain `resolution` is in nm (CREMI, gunpowder).
        unit: Any = "nm"
        if "resolution" in attrs:
            resolution = _number_list(attrs["resolution"], "resolution", path)
        elif "pixelResolution" in attrs:
            pixel = attrs["pixelResolution"]
            if not isinstance(pixel, dict) or "dimensions" not in pixel:
                raise ValueError(
                    f"N5 pixelResolution of {str(path)!r} must be an object with "
                    f"'dimensions' (and 'unit'), got {pixel!r}"
                )
            resolution = _number_list(pixel["dimensions"], "pixelResolution", path)
            unit = pixel.get("unit", "nm")
        else:
            resolution = [1.0] * min(ndim, 3)
        where = f"N5 dataset {str(path)!r}"
        voxel_t, world = to_world(reversed(resolution), unit, f"{where}: voxel size")
        voxel = list(voxel_t)
        units = [world] * len(voxel)
        if "offset" in attrs:
            values = _number_list(attrs["offset"], "offset", path)
            offset = list(to_world(reversed(values), unit, f"{where}: offset")[0])
    dims = len(voxel)
    if not 1 <= dims <= ndim:
        raise ValueError(
            f"N5 dataset {str(path)!r} has {ndim} axes but a voxel size with {dims} "
            f"entries ({voxel})"
        )
    if any(v <= 0 for v in voxel):
        raise ValueError(f"N5 voxel size of {str(path)!r} must be positive, got {voxel}")
    if offset is None:
        offset = [0] * dims
    if len(offset) != dims:
        raise ValueError(
            f"N5 offset {offset} of {str(path)!r} must have {dims} entries like the voxel "
            f"size {voxel}"
        )
    if units is None or len(units) != dims:
        units = ["nm"] * dims
    return voxel, offset, units


def _axis_names(attrs: dict[str, Any], ndim: int, dims: int, path: Path) -> list[str]:
    """Axis names in numpy order; the leading ``ndim - dims`` axes are channels (``^``)."""
    if isinstance(attrs.get("axis_names"), list):
        names = [str(a) for a in attrs["axis_names"]]
        spatial = [a for a in names if not a.endswith("^")]
        if len(names) != ndim or len(spatial) != dims:
            raise ValueError(
                f"N5 axis_names {names} of {str(path)!r} must name {ndim} axes, {dims} of "
                "them spatial (channel axes end in '^')"
            )
        return names
    if isinstance(attrs.get("axes"), list) and len(attrs["axes"]) == ndim:
        # N5 viewers list axis names x first, e.g. ["x", "y", "z"].
        names = [str(a) for a in reversed(attrs["axes"])]
        return [a if i >= ndim - dims else a.rstrip("^") + "^" for i, a in enumerate(names)]
    channels = ndim - dims
    spatial = spatial_axis_names(dims) if dims in (2, 3) else [f"d{i}" for i in range(dims)]
    channel_names = ["c^"] if channels == 1 else [f"c{i}^" for i in range(channels)]
    return channel_names + spatial
