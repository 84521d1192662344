"""Import TIFF images and stacks (2-D/3-D, optionally with channels) as zarr volumes.

The TIFF is read lazily -- memory-mapped when its pixels are stored uncompressed and
contiguously, otherwise page by page through tifffile's zarr view -- and copied in slabs
along its first spatial axis (z for stacks, y for single images), so a stack larger than
memory streams through. The output gets the channel axis first as ``c^``::

    stack.tif  axes "ZCYX", shape (200, 2, 1024, 1024), 40 x 8 x 8 nm
        -> out.zarr/raw  axes ["c^", "z", "y", "x"], shape (2, 200, 1024, 1024),
           voxel_size (40, 8, 8), offset (0, 0, 0), written slab by slab of z

The voxel size (world units, nm) is taken from the arguments, else from ImageJ metadata
(``unit``, ``spacing`` and the X/YResolution tags) or OME-XML (``PhysicalSize*``). The
output is marked complete only after the last slab; an interrupted import stays marked
incomplete.

:func:`export_tiff` goes the other way, for Fiji or a script: an ImageJ hyperstack with
the voxel size as its calibration (``unit``, ``spacing``, X/YResolution) and the offset as
its origin; a single-channel volume (a one-channel prediction is ``(1, y, x)``) becomes a
plain image or stack without the channel axis.
"""

from __future__ import annotations

import math
import numbers
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from innerdist.attrs import SOURCE_ATTR
from innerdist.units import NM, OME_LENGTH_UNITS, PX, canonical_unit
from innerdist.volumes import create_volume, mark_complete, split_volume_path

__all__ = ["SUPPORTED_DTYPES", "export_tiff", "import_tiff", "tiff_axes", "tiff_voxel_size"]

#: Pixel types that can be imported (complex and other exotic TIFF types cannot).
SUPPORTED_DTYPES = tuple(
    np.dtype(t)
    for t in (
        "bool",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    )
)

# Bytes per slab copied at once; slabs are whole output chunks along the slab axis.
_SLAB_BYTES = 128 * 2**20


@contextmanager
def _open_tiff(path: Path) -> Iterator[Any]:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError) as e:
        raise ValueError(f"cannot read {str(path)!r} as a TIFF: {e}") from None
    try:
        yield tif
    finally:
        tif.close()


def tiff_axes(tiff_path: str | Path) -> tuple[str, tuple[int, ...]]:
    """tifffile's axes string and shape of the TIFF's first image series.

    E.g. ``("ZCYX", (200, 2, 1024, 1024))``; ``Q``/``I`` mark axes tifffile could not name
    (a plain multi-page TIFF is ``IYX``), ``S`` colour samples.
    """
    path = _existing_file(tiff_path)
    with _open_tiff(path) as tif:
        series = tif.series[0]
        return str(series.axes), tuple(int(s) for s in series.shape)


def _existing_file(tiff_path: str | Path) -> Path:
    if not isinstance(tiff_path, str | Path):
        raise TypeError(f"tiff_path must be a str or Path, got {type(tiff_path).__name__}")
    path = Path(tiff_path)
    if not path.exists():
        raise FileNotFoundError(f"no such TIFF file: {str(path)!r}")
    if not path.is_file():
        raise IsADirectoryError(f"expected a TIFF file, got the directory {str(path)!r}")
    return path


def _infer_axes(tif_axes: str, shape: tuple[int, ...]) -> str:
    """Our axes (letters ``c``, ``z``, ``y``, ``x``) for tifffile's axes string.

    ``Z`` is z, ``C`` (channel) and ``S`` (samples, e.g. RGB) are ``c``. One unnamed axis
    (``Q``, ``I``: a plain page sequence) next to y and x is taken as z. Anything else
    (time, several unnamed axes, ...) needs explicit ``axes``.
    """
    mapping = {"Y": "y", "X": "x", "Z": "z", "C": "c", "S": "c"}
    unknown = [a for a in tif_axes if a in "QI"]
    axes = ""
    for a in tif_axes:
        if a in mapping:
            axes += mapping[a]
        elif a in "QI" and len(unknown) == 1 and "Z" not in tif_axes:
            axes += "z"
        else:
            axes += "?"
    if "?" in axes or axes.count("c") > 1:
        raise ValueError(
            f"cannot tell which axes of the TIFF (tifffile axes {tif_axes!r}, shape {shape}) "
            "are z, y, x and channels; pass axes, e.g. --axes czyx"
        )
    return axes


def _check_axes(axes: str, ndim: int, tif_axes: str, shape: tuple[int, ...]) -> str:
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'zyx', got {axes!r}")
    axes = axes.lower()
    if len(axes) != ndim:
        raise ValueError(
            f"axes {axes!r} has {len(axes)} letters but the TIFF's image has {ndim} dimensions "
            f"(shape {shape}, tifffile axes {tif_axes!r})"
        )
    if set(axes) - set("czyx") or len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes):
        raise ValueError(
            f"axes must use each of the letters c, z, y, x at most once and include y and x, "
            f"got {axes!r}"
        )
    return axes


def _unit_to_nm(unit: Any, source: str) -> float:
    """Size of one ``unit`` in nm (the one unit table: :mod:`innerdist.units`)."""
    try:
        name = canonical_unit(str(unit))
    except ValueError as e:
        raise ValueError(f"the TIFF's {source} {e}; pass the voxel size") from None
    if name == PX:
        raise ValueError(
            f"the TIFF's {source} voxel size is in pixels, not a length; pass the voxel size "
            "(e.g. --voxel-size 1,1 --unit px)"
        )
    return float(OME_LENGTH_UNITS[name])


def _imagej_voxel_size(tif: Any, spatial: str) -> dict[str, float] | None:
    """Voxel size in nm per axis letter from ImageJ metadata, or None if uncalibrated."""
    meta = tif.imagej_metadata or {}
    unit = meta.get("unit")
    if unit is None or str(unit).strip().lower() in ("", "pixel", "pixels"):
        return None
    nm = _unit_to_nm(unit, "ImageJ")
    page = tif.pages.first
    sizes: dict[str, float] = {}
    for letter, tag in (("x", "XResolution"), ("y", "YResolution")):
        if tag in page.tags:
            num, den = page.tags[tag].value
            if num > 0:
                # The tag is pixels per unit.
                sizes[letter] = den / num * nm
    if "spacing" in meta:
        sizes["z"] = float(meta["spacing"]) * nm
    missing = [a for a in spatial if a not in sizes]
    if missing:
        raise ValueError(
            f"the TIFF's ImageJ metadata has no voxel size along {', '.join(missing)}; "
            "pass the voxel size (e.g. --voxel-size 40,8,8)"
        )
    return sizes


def _ome_voxel_size(tif: Any, spatial: str) -> dict[str, float] | None:
    """Voxel size in nm per axis letter from OME-XML ``PhysicalSize*``, or None."""
    xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"cannot parse the TIFF's OME-XML metadata: {e}") from None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes: dict[str, float] = {}
    for letter in "xyz":
        value = pixels.get(f"PhysicalSize{letter.upper()}")
        if value is not None:
            # OME's default unit is the micrometre.
            unit = pixels.get(f"PhysicalSize{letter.upper()}Unit", "µm")
            sizes[letter] = float(value) * _unit_to_nm(unit, "OME")
    if not sizes:
        return None
    missing = [a for a in spatial if a not in sizes]
    if missing:
        raise ValueError(
            f"the TIFF's OME metadata has no PhysicalSize along {', '.join(missing)}; "
            "pass the voxel size (e.g. --voxel-size 40,8,8)"
        )
    return sizes


def _metadata_voxel_size(tif: Any, spatial: str) -> tuple[int, ...] | None:
    sizes = _imagej_voxel_size(tif, spatial) if tif.is_imagej else None
    if sizes is None and tif.is_ome:
        sizes = _ome_voxel_size(tif, spatial)
    if sizes is None:
        return None
    values = [sizes[a] for a in spatial]
    # Metadata stores fractions (pixels per unit); allow float round-off, nothing more.
    if any(v <= 0 or abs(v - round(v)) > 1e-3 * max(1.0, v) for v in values):
        pretty = tuple(round(v, 4) for v in values)
        raise ValueError(
            f"the TIFF's metadata gives voxel size {pretty} nm, which is not a positive "
            "integer number of nm; pass the voxel size in integer world units instead"
        )
    return tuple(int(round(v)) for v in values)


def _imagej_offset(tif: Any, spatial: str, voxel: tuple[int, ...]) -> tuple[int, ...]:
    """World offset (nm) of the first voxel from ImageJ's origin (``xorigin`` ... : where
    the world origin lies, in pixels, so ``offset = -origin * voxel``); 0 without one or
    for an origin that is not a whole number of pixels (an offset must be on the grid)."""
    meta = tif.imagej_metadata or {}
    origin = []
    for letter in spatial:
        value = meta.get(f"{letter}origin", 0)
        try:
            number = float(value)
        except (TypeError, ValueError):
            return (0,) * len(spatial)
        if not number.is_integer():
            return (0,) * len(spatial)
        origin.append(int(number))
    return tuple(-o * v for o, v in zip(origin, voxel, strict=True))


def tiff_voxel_size(tiff_path: str | Path, axes: str | None = None) -> tuple[int, ...] | None:
    """Voxel size (integer nm, spatial axes in z, y, x order) from the TIFF's metadata.

    Returns ``None`` when the TIFF has no ImageJ or OME calibration.
    """
    path = _existing_file(tiff_path)
    with _open_tiff(path) as tif:
        series = tif.series[0]
        shape = tuple(int(s) for s in series.shape)
        ax = (
            _infer_axes(series.axes, shape)
            if axes is None
            else _check_axes(axes, len(shape), series.axes, shape)
        )
        return _metadata_voxel_size(tif, "".join(a for a in "zyx" if a in ax))


def _int_list(name: str, value: Any, length: int, *, positive: bool, axes: str) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a sequence of integers (world units), got {value!r}")
    values = list(value)
    if len(values) != length:
        raise ValueError(
            f"{name} must have {length} entries, one per spatial axis of the TIFF (axes "
            f"{axes!r}), got {len(values)}: {tuple(values)}"
        )
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
            raise ValueError(f"{name} must contain integers (world units), got {tuple(values)}")
        if positive and v <= 0:
            raise ValueError(f"{name} must be positive, got {tuple(values)}")
        out.append(int(float(v)))
    return tuple(out)


def _check_not_truncated(tif: Any, path: Path, shape: tuple[int, ...]) -> None:
    """A contiguous image cut short (an interrupted copy) would otherwise fail inside mmap
    with no word of why, after the output was created."""
    series = tif.series[0]
    if series.dataoffset is None:
        return
    need = int(series.dataoffset) + int(np.prod(shape)) * np.dtype(series.dtype).itemsize
    have = path.stat().st_size
    if have < need:
        raise ValueError(
            f"{str(path)!r} is truncated: its pixels need {need} bytes but the file has "
            f"{have} (an interrupted copy or download?)"
        )


@contextmanager
def _lazy_pixels(tif: Any, path: Path, shape: tuple[int, ...]) -> Iterator[Any]:
    """A sliceable view of series 0 (shape ``shape``) that reads only what is sliced."""
    import tifffile

    series = tif.series[0]
    if series.dataoffset is not None:
        # Uncompressed and contiguous: map the file and let the OS page it in.
        yield tifffile.memmap(path, series=0, mode="r").reshape(shape)
        return
    import zarr

    store = series.aszarr(level=0)
    try:
        yield zarr.open_array(store, mode="r")
    finally:
        store.close()


def import_tiff(
    tiff_path: str | Path,
    out: str | Path,
    *,
    voxel_size: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
    axes: str | None = None,
    chunk_shape: Sequence[int] | None = None,
    roi: Roi | None = None,
    overwrite: bool = False,
    unit: str | None = None,
) -> Array:
    """Copy a TIFF image/stack into the zarr volume ``out`` (``container.zarr/dataset``).

    Parameters
    ----------
    tiff_path
        A 2-D or 3-D TIFF, optionally with one channel axis (ImageJ hyperstacks, OME-TIFF,
        plain multi-page TIFF, RGB).
    out
        Output volume path, e.g. ``"em.zarr/raw"``.
    voxel_size
        World units (nm) per voxel, spatial axes in z, y, x order (``(40, 8, 8)``).
        ``None`` reads it from ImageJ or OME metadata and fails if there is none.
    offset
        World coordinate (nm) of the first voxel's corner, a multiple of the voxel size;
        default: from ImageJ's origin (as :func:`export_tiff` writes it) when it is a
        whole number of pixels, else 0.
    axes
        The TIFF's axes in stored order using ``c``, ``z``, ``y``, ``x`` (``"zyx"``,
        ``"cyx"``, ``"czyx"``, ``"zcyx"``, ``"yxc"``, ``"yx"``...). ``None`` takes them
        from the TIFF (tifffile's axes; one unnamed page axis counts as z).
    chunk_shape
        Output chunk shape in voxels, spatial axes only; default up to 64 per axis.
    roi
        Import only this region, in world units (nm) like the voxel size and offset (the
        TIFF's first voxel sits at ``offset``); it must lie inside the image and on its
        voxel grid. The output keeps the region's world coordinates (its offset is
        ``roi.begin``), so parts of one image line up with each other.
    overwrite
        Replace an existing output; otherwise an existing output raises
        :class:`FileExistsError`.
    unit
        World unit of ``voxel_size`` and ``offset``: ``"nm"`` (default) or ``"px"`` for
        data without a physical calibration (then ``voxel_size`` is required, e.g.
        ``(1, 1)``).

    Returns the written volume, opened, with the channel axis (if any) first as ``c^``.
    """
    path = _existing_file(tiff_path)
    name = "nanometer" if unit is None else canonical_unit(unit)
    if name not in (PX, "nanometer"):
        raise ValueError(
            f"unit must be nm or px, got {unit!r} (give the voxel size in nm instead)"
        )
    world = PX if name == PX else NM
    if world == PX and voxel_size is None:
        raise ValueError("unit px needs the voxel size in pixels, e.g. --voxel-size 1,1")
    container, dataset = split_volume_path(out)
    target = container / dataset
    if target.exists() and not overwrite:
        raise FileExistsError(f"output {str(out)!r} already exists; pass --overwrite to replace it")
    with _open_tiff(path) as tif:
        series = tif.series[0]
        shape = tuple(int(s) for s in series.shape)
        tif_axes = str(series.axes)
        ax = (
            _infer_axes(tif_axes, shape)
            if axes is None
            else _check_axes(axes, len(shape), tif_axes, shape)
        )
        dtype = np.dtype(series.dtype)
        if dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
            raise ValueError(
                f"the TIFF's pixel type {dtype} is not supported; supported: "
                f"{', '.join(str(t) for t in SUPPORTED_DTYPES)}"
            )
        dtype = dtype.newbyteorder("=")
        spatial = "".join(a for a in "zyx" if a in ax)
        dims = len(spatial)
        if voxel_size is None:
            found = _metadata_voxel_size(tif, spatial)
            if found is None:
                raise ValueError(
                    f"{str(path)!r} has no voxel size in its metadata (no ImageJ or OME "
                    f"calibration); pass one with {dims} entries in nm, e.g. --voxel-size "
                    + ",".join(["40", "8", "8"][3 - dims :])
                )
            vs = found
        else:
            vs = _int_list("voxel_size", voxel_size, dims, positive=True, axes=ax)
        if offset is None:
            off = _imagej_offset(tif, spatial, vs) if tif.is_imagej else (0,) * dims
        else:
            off = _int_list("offset", offset, dims, positive=False, axes=ax)
        if any(o % v for o, v in zip(off, vs, strict=True)):
            raise ValueError(f"offset {off} must be a multiple of the voxel size {vs}")
        chunks = None
        if chunk_shape is not None:
            chunks = _int_list("chunk_shape", chunk_shape, dims, positive=True, axes=ax)

        # Output order: c first, then z, y, x.
        order = [ax.index(a) for a in "czyx" if a in ax]
        out_shape = tuple(shape[i] for i in order)
        num_channels = shape[ax.index("c")] if "c" in ax else None
        spatial_shape = out_shape[1:] if num_channels is not None else out_shape
        if min(spatial_shape) == 0:
            raise ValueError(f"the TIFF's image is empty (shape {shape})")
        full = Roi(Coordinate(off), Coordinate(spatial_shape) * Coordinate(vs))
        region = full if roi is None else _check_region(roi, full, Coordinate(vs))
        _check_not_truncated(tif, path, shape)
        array = create_volume(
            out,
            roi=region,
            voxel_size=vs,
            dtype=dtype,
            num_channels=num_channels,
            chunk_shape=chunks,
            overwrite=overwrite,
            attrs={SOURCE_ATTR: str(path.resolve())},
            units=world,
        )
        box = ((region - full.offset) / Coordinate(vs)).to_slices()
        with _lazy_pixels(tif, path, shape) as pixels:
            _copy_in_slabs(pixels, array, ax, order, box, dtype)
    mark_complete(array)
    return array


def _check_region(roi: Roi, full: Roi, voxel: Coordinate) -> Roi:
    """``roi`` checked against the image's ``full`` ROI (world units)."""
    if not isinstance(roi, Roi):
        raise TypeError(f"roi must be a funlib.geometry.Roi (world units, nm), got {roi!r}")
    if roi.dims != full.dims:
        raise ValueError(f"roi {roi} has {roi.dims} axes but the TIFF has {full.dims} spatial axes")
    if roi.unbounded or roi.empty:
        raise ValueError(f"roi {roi} is empty or unbounded; expected a finite region")
    if not ((roi.begin - full.begin).is_multiple_of(voxel) and roi.shape.is_multiple_of(voxel)):
        raise ValueError(
            f"roi {roi.begin}..{roi.end} (nm) is not on the image's voxel grid (voxel size "
            f"{tuple(voxel)} nm, first voxel at {tuple(full.begin)}); use multiples of the "
            "voxel size"
        )
    if not full.contains(roi):
        raise ValueError(
            f"roi {roi.begin}..{roi.end} (nm) is not inside the image, which covers "
            f"{full.begin}..{full.end} nm"
        )
    return roi


def _copy_in_slabs(
    pixels: Any,
    array: Array,
    ax: str,
    order: list[int],
    box: tuple[slice, ...],
    dtype: np.dtype[Any],
) -> None:
    """Copy the pixels of ``box`` (voxel slices of the spatial axes, z, y, x order) in slabs
    along the first spatial axis, whole output chunks each."""
    spatial = "".join(a for a in "zyx" if a in ax)
    spatial_shape = tuple(b.stop - b.start for b in box)
    first = spatial[0]  # z for stacks, y for single images
    source_axis = ax.index(first)
    # The zarr chunk along that axis (funlib's chunk_shape is dask's, which may differ).
    chunk = int(array._source_data.chunks[array.channel_dims])
    bytes_per_plane = math.prod(spatial_shape[1:]) * dtype.itemsize
    if "c" in ax:
        bytes_per_plane *= int(array.shape[0])
    step = max(1, _SLAB_BYTES // max(1, bytes_per_plane * chunk)) * chunk
    voxel = array.voxel_size
    for start in range(0, spatial_shape[0], step):
        stop = min(start + step, spatial_shape[0])
        key = [slice(None) if a == "c" else box[spatial.index(a)] for a in ax]
        key[source_axis] = slice(box[0].start + start, box[0].start + stop)
        slab = _read_slab(pixels, tuple(key)).transpose(order)
        slab_roi = Roi(
            array.roi.offset + Coordinate((start,) + (0,) * (voxel.dims - 1)) * voxel,
            Coordinate((stop - start, *spatial_shape[1:])) * voxel,
        )
        array[slab_roi] = slab.astype(dtype, copy=False)


def _read_slab(pixels: Any, key: tuple[slice, ...]) -> np.ndarray:
    """Read one slab (a separate function so tests can interrupt an import midway)."""
    return np.asarray(pixels[key])


# --- export -----------------------------------------------------------------------------

# ImageJ reads these pixel types; others are converted (see _export_dtype).
_IMAGEJ_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))


def _export_dtype(dtype: np.dtype[Any], low: float, high: float, name: str) -> np.dtype[Any]:
    """The ImageJ pixel type that holds values ``low..high`` of ``dtype`` exactly."""
    if dtype in _IMAGEJ_DTYPES:
        return dtype
    if dtype == np.bool_:
        return np.dtype("uint8")
    if np.issubdtype(dtype, np.integer):
        if low >= 0 and high <= 65535:
            return np.dtype("uint16")
        if max(abs(low), abs(high)) <= 2**24:  # integers a float32 holds exactly
            return np.dtype("float32")
        raise ValueError(
            f"{name} holds {dtype} values {low:g}..{high:g}, which no ImageJ pixel type (uint8, "
            "uint16, float32) holds exactly; relabel it first"
        )
    return np.dtype("float32")  # float16 / float64


def export_tiff(
    volume: str | Path,
    out: str | Path,
    *,
    roi: Roi | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a volume (``container.zarr/dataset``, any innerdist volume) as an ImageJ TIFF.

    Axes: ``YX`` or ``ZYX`` for one channel (including a one-channel prediction, stored
    ``(1, y, x)``), ``CYX`` or ``ZCYX`` for several. The calibration is the voxel size in
    nm (Fiji's *Image > Properties* shows it), the origin (``xorigin`` ... in voxels) the
    volume's offset. Pixel types: uint8, uint16 and float32 are written as they are;
    other integers (instance ids) as uint16 when their values fit, else float32 when that
    holds them exactly (up to 2^24), else an error; bool as uint8, other floats as float32.
    Quantised predictions are written as stored (``value = stored * scale + offset``, see
    :func:`innerdist.predict.dequantize`). ``roi`` (world units) exports a region only.
    Written plane by plane (a stack larger than memory streams through) to a temporary
    file moved into place at the end. Returns the path.
    """
    import os
    import tempfile

    import tifffile

    from innerdist.volumes import num_channels, open_volume

    target = Path(out)
    if target.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"output {str(out)!r} must end in .tif or .tiff")
    if target.exists() and not overwrite:
        raise FileExistsError(f"output {str(out)!r} already exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"directory {str(target.parent)!r} for {str(out)!r} does not exist")
    array = open_volume(volume)
    dims = array.spatial_dims
    if dims not in (2, 3):
        raise ValueError(f"{str(volume)!r} has {dims} spatial axes; expected 2 or 3")
    channels = num_channels(array)  # raises unless at most one channel axis, first
    voxel = Coordinate(array.voxel_size)
    region = array.roi if roi is None else _check_region(roi, array.roi, voxel)
    name = repr(str(volume))

    def read(box: Roi) -> np.ndarray:
        import dask

        with dask.config.set(scheduler="synchronous"):
            data = np.asarray(array[box])
        return data if channels is not None else data[np.newaxis]  # (C, *spatial)

    # Planes along z (3-D) or the whole image (2-D): each is (C, y, x).
    if dims == 3:
        step = Coordinate((voxel[0], *region.shape[1:]))
        planes = [Roi(region.begin + Coordinate((z, 0, 0)), step)
                  for z in range(0, region.shape[0], voxel[0])]
    else:
        planes = [region]
    dtype = np.dtype(array.dtype)
    if dtype not in _IMAGEJ_DTYPES and dtype != np.bool_ and np.issubdtype(dtype, np.integer):
        low, high = math.inf, -math.inf
        for plane in planes:  # one pass to find the range, so the type holds every value
            data = read(plane)
            if data.size:
                low, high = min(low, float(data.min())), max(high, float(data.max()))
        out_dtype = _export_dtype(dtype, low, high, name)
    else:
        out_dtype = _export_dtype(dtype, 0, 0, name)

    c = 1 if channels is None else int(array.shape[0])
    spatial = tuple(int(v) for v in region.shape / voxel)
    shape: tuple[int, ...]
    if dims == 3:
        axes, shape = ("ZYX", spatial) if c == 1 else ("ZCYX", (spatial[0], c, *spatial[1:]))
    else:
        axes, shape = ("YX", spatial) if c == 1 else ("CYX", (c, *spatial))

    def pages() -> Iterator[np.ndarray]:
        for plane in planes:
            data = read(plane).astype(out_dtype, copy=False)
            if dims == 3:
                data = data[:, 0]
            yield from data  # one (y, x) page per channel

    unit = "nm"
    units = [str(u) for u in getattr(array, "units", []) if u]
    if units and len(set(units)) == 1:
        unit = units[0]
    if unit in ("px", "pixel", "pixels"):
        unit = "pixel"
    metadata: dict[str, Any] = {"axes": axes, "unit": unit}
    origin = region.begin / voxel  # voxels from the world origin to the first voxel
    metadata["yorigin"], metadata["xorigin"] = -origin[-2], -origin[-1]
    if dims == 3:
        metadata["spacing"] = voxel[0]
        metadata["zorigin"] = -origin[0]
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tifffile.imwrite(
            tmp,
            pages(),
            shape=shape,
            dtype=out_dtype,
            imagej=True,
            resolution=(1.0 / voxel[-1], 1.0 / voxel[-2]),
            metadata=metadata,
        )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
