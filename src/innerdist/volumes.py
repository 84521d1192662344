"""Opening and creating volumes on disk (zarr v2/v3, OME-NGFF, N5) in world units.

A volume is addressed by one path: the container followed by the dataset inside it,
e.g. ``data/cells.zarr/raw`` or ``data/em.n5/volumes/labels``. Everything returned is a
:class:`funlib.persistence.Array`, whose ``roi``, ``offset`` and ``voxel_size`` are in
world units (e.g. nm) and whose channel axes are named with a trailing ``^`` (``c^``).

OME-NGFF images open by their group (``img.ome.zarr``: level 0), a level
(``img.ome.zarr/s1``) or a label image (``img.ome.zarr/labels/cells``); see
:mod:`innerdist.ome`. Outputs are OME-NGFF 0.5 images themselves (``create_volume(...,
ome=True)``: the group ``out.zarr/pred`` with level ``s0``), opened by the same path.

Outputs written by innerdist carry ``innerdist_complete`` in their attributes: ``False``
while a job is writing them, ``True`` once every block is written. A reader that gets an
output with ``innerdist_complete == False`` knows it is looking at a half-written result.

Voxel sizes and offsets are integers in one world unit per volume (funlib.geometry's
rule): nm, converted exactly from the unit the metadata gives (:mod:`innerdist.units`;
0.008 micrometer is 8 nm, 4.5 nm is an error), or px for data without a calibration.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds, prepare_ds

from innerdist.attrs import COMPLETE_ATTR
from innerdist.n5 import open_n5
from innerdist.ome import (
    OmeLevel,
    is_multiscale_group,
    locate_level,
    multiscale_attrs,
    register_label,
    write_multiscales,
)
from innerdist.units import NM, PX, spatial_axis_names

__all__ = [
    "COMPLETE_ATTR",
    "OUTPUT_LEVEL",
    "create_volume",
    "is_complete",
    "label_output_path",
    "level_path",
    "mark_complete",
    "num_channels",
    "open_volume",
    "read",
    "read_padded",
    "read_upsampled",
    "spatial_axis_names",
    "split_volume_path",
    "zarr_array_path",
]

#: Name of level 0 in the OME-NGFF images innerdist writes.
OUTPUT_LEVEL = "s0"
_CONTAINER_SUFFIXES = (".zarr", ".n5", ".zr", ".ome.zarr")


def split_volume_path(path: str | Path) -> tuple[Path, str]:
    """Split ``container.zarr/dataset/path`` into the container and the dataset name.

    A container that is itself an OME-NGFF image (``img.ome.zarr``) is its own volume,
    with dataset ``""``.

    >>> split_volume_path("data/cells.zarr/volumes/raw")
    (PosixPath('data/cells.zarr'), 'volumes/raw')
    """
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.endswith(_CONTAINER_SUFFIXES):
            container = Path(*parts[: i + 1])
            dataset = "/".join(parts[i + 1 :])
            if not dataset and is_multiscale_group(container):
                return container, ""
            if not dataset:
                raise ValueError(
                    f"volume path {str(path)!r} names a container but no dataset inside it; "
                    f"expected e.g. {str(container / 'raw')!r}"
                )
            return container, dataset
    raise ValueError(
        f"volume path {str(path)!r} has no container component ending in "
        f"{', '.join(_CONTAINER_SUFFIXES)}; expected e.g. 'data.zarr/raw'"
    )


def num_channels(array: Array) -> int | None:
    """Number of channels of a volume, or ``None`` when it has no channel axis."""
    if array.channel_dims == 0:
        return None
    if array.channel_dims > 1:
        raise ValueError(
            f"expected at most one channel axis, got axes {array.axis_names} "
            f"({array.channel_dims} channel axes)"
        )
    channel_axis = [i for i, n in enumerate(array.axis_names) if n.endswith("^")][0]
    if channel_axis != 0:
        raise ValueError(
            f"expected the channel axis first, got axes {array.axis_names}"
        )
    return int(array.shape[0])


def _list_datasets(container: Path) -> list[str]:
    """Names of the arrays in a container, for error messages (best effort)."""
    found: list[str] = []
    for marker in ("zarr.json", ".zarray", "attributes.json"):
        for p in sorted(container.rglob(marker)):
            rel = p.parent.relative_to(container).as_posix()
            if rel == ".":
                continue
            if marker == "zarr.json":
                try:
                    if json.loads(p.read_text()).get("node_type") != "array":
                        continue
                except (OSError, ValueError):
                    continue
            if marker == "attributes.json":
                try:
                    if "dimensions" not in json.loads(p.read_text()):
                        continue
                except (OSError, ValueError):
                    continue
            found.append(rel)
    return sorted(set(found))


def open_volume(
    path: str | Path, mode: str = "r", *, level: int | None = None, time: int | None = None
) -> Array:
    """Open ``container/dataset`` as a :class:`funlib.persistence.Array`.

    Works for zarr v2/v3 datasets with funlib metadata (``voxel_size``, ``offset``,
    ``axis_names`` attributes), OME-NGFF 0.4/0.5 multiscale images and label images
    (see :mod:`innerdist.ome`: ``img.ome.zarr`` or ``img.ome.zarr/labels/cells`` opens
    level 0 or ``level``, ``img.ome.zarr/s1`` that level; a ``t`` axis needs ``time``)
    and N5 datasets (read only). Voxel size and offset are whole nm, or px for data
    without a physical unit (``array.units``). Raises :class:`FileNotFoundError` naming
    the container or the dataset (and listing the datasets that do exist) when either is
    missing, ``ValueError`` for metadata innerdist cannot use.
    """
    container, dataset = split_volume_path(path)
    if not container.exists():
        raise FileNotFoundError(f"no container at {str(container)!r} (from {str(path)!r})")
    if dataset and not (container / dataset).exists():
        available = _list_datasets(container)
        raise FileNotFoundError(
            f"dataset {dataset!r} not found in {str(container)!r}; "
            f"available datasets: {available if available else 'none'}"
        )
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    if time is not None and (isinstance(time, bool) or not isinstance(time, int) or time < 0):
        raise ValueError(f"time must be a non-negative integer, got {time!r}")
    if str(container).endswith(".n5") or (container / dataset / "attributes.json").exists():
        if level is not None or time is not None:
            raise ValueError(f"--level/--time apply to OME-Zarr images, not the N5 {str(path)!r}")
        return open_n5(container, dataset)
    found = locate_level(container, dataset, level)
    if found is None:
        if time is not None:
            raise ValueError(f"a time point ({time}) was given but {str(path)!r} has no t axis")
        try:
            return open_ds(container / dataset, mode=mode)  # type: ignore[arg-type]
        except TypeError as e:
            raise FileNotFoundError(
                f"{str(path)!r} is not an array (is it a group?): {e}"
            ) from e
    return _open_ome(found, str(path), mode, time)


def _open_ome(found: OmeLevel, path: str, mode: str, time: int | None) -> Array:
    spatial = len(found.voxel_size)
    units = [found.unit] * spatial
    types = ["channel" if n.endswith("^") else "space" for n in found.axis_names]
    if found.time_axis is None:
        if time is not None:
            raise ValueError(f"a time point ({time}) was given but {path!r} has no t axis")
        return open_ds(
            found.array_path,
            mode=mode,  # type: ignore[arg-type]
            voxel_size=found.voxel_size,
            offset=found.offset,
            axis_names=list(found.axis_names),
            units=units,
            types=types,
        )
    if time is None:
        raise ValueError(
            f"{path!r} has a t axis with {found.time_points} time points; choose one with "
            "--time T (0-based)"
        )
    assert found.time_points is not None
    if time >= found.time_points:
        raise ValueError(
            f"time point {time} does not exist in {path!r}: it has {found.time_points} "
            f"(0 to {found.time_points - 1})"
        )
    if mode != "r":
        raise ValueError(f"{path!r} has a t axis; one time point of it can only be read")
    import dask.array as da
    import zarr

    stored = zarr.open_array(found.array_path, mode="r")
    index = tuple(time if i == found.time_axis else slice(None) for i in range(stored.ndim))
    data = da.from_zarr(stored)[index]
    return Array(
        data,
        offset=found.offset,
        voxel_size=found.voxel_size,
        axis_names=list(found.axis_names),
        units=units,
        types=types,
    )


def create_volume(
    path: str | Path,
    *,
    roi: Roi,
    voxel_size: Sequence[int],
    dtype: Any,
    num_channels: int | None = None,
    chunk_shape: Sequence[int] | None = None,
    overwrite: bool = False,
    attrs: Mapping[str, Any] | None = None,
    units: str = NM,
    ome: bool = False,
    label: bool = False,
) -> Array:
    """Create an empty zarr dataset covering ``roi`` (world units) and mark it incomplete.

    ``num_channels=None`` writes spatial axes only; an integer adds a leading ``c^`` axis.
    ``chunk_shape`` is in voxels, spatial axes only. An existing dataset raises
    :class:`FileExistsError` unless ``overwrite`` is set, in which case it is deleted first.
    ``units`` is the world unit, ``"nm"`` or ``"px"``.

    ``ome=True`` makes ``path`` an OME-NGFF 0.5 image (``label=True``: a label image)
    whose level 0 is the returned array, so viewers open it at its physical scale::

        out.zarr/pred             zarr v3 group, "ome": {"multiscales": [...]}
        out.zarr/pred/s0          the array (funlib attributes, innerdist_complete)
        out.zarr/pred/s1 ...      pyramid levels (innerdist.pyramid)

    :func:`open_volume` opens such an output by its group path.
    """
    voxel = Coordinate(voxel_size)
    roi = Roi(roi.offset, roi.shape)
    if roi.dims != voxel.dims:
        raise ValueError(f"roi {roi} has {roi.dims} axes but voxel size {voxel} has {voxel.dims}")
    if any(v <= 0 for v in voxel):
        raise ValueError(f"voxel size must be positive, got {voxel}")
    # The offset need not be a multiple of the voxel size: OME-NGFF pyramid levels sit
    # half a fine voxel off the grid of level 0, and outputs keep their input's geometry.
    if roi.empty or not roi.shape % voxel == Coordinate((0,) * voxel.dims):
        raise ValueError(
            f"roi {roi} is empty or its shape is not a multiple of the voxel size {voxel}"
        )
    container, dataset = split_volume_path(path)
    if not dataset:
        raise ValueError(
            f"output {str(path)!r} names the OME-NGFF image container itself; write into "
            f"it instead, e.g. {str(container / 'labels' / 'cells')!r}"
        )
    target = container / dataset
    image = image_of_label(target) if ome and label else None  # checked before deleting
    if target.exists():
        if not overwrite:
            raise FileExistsError(
                f"output {str(path)!r} already exists; pass --overwrite to replace it"
            )
        shutil.rmtree(target)
    shape = roi.shape / voxel
    axis_names = spatial_axis_names(voxel.dims)
    types = ["space"] * voxel.dims
    full_shape: tuple[int, ...] = tuple(shape)
    chunks = tuple(chunk_shape) if chunk_shape is not None else tuple(min(s, 64) for s in shape)
    if len(chunks) != voxel.dims:
        raise ValueError(f"chunk shape {chunks} must have {voxel.dims} entries (spatial axes)")
    if num_channels is not None:
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        full_shape = (num_channels, *full_shape)
        axis_names = ["c^", *axis_names]
        types = ["channel", *types]
        chunks = (num_channels, *chunks)
    if units not in (NM, PX):
        raise ValueError(f"units must be {NM!r} or {PX!r}, got {units!r}")
    meta = dict(attrs or {})
    meta[COMPLETE_ATTR] = False
    container.mkdir(parents=True, exist_ok=True)
    if ome:
        zarr.open_group(target, mode="w", zarr_format=3)
    array = prepare_ds(
        target / OUTPUT_LEVEL if ome else target,
        shape=full_shape,
        offset=roi.offset,
        voxel_size=voxel,
        axis_names=axis_names,
        units=[units] * voxel.dims,
        types=types,
        chunk_shape=chunks,
        dtype=np.dtype(dtype),
        mode="w",
        custom_metadata=meta,
        **({"dimension_names": [n.rstrip("^") for n in axis_names]} if ome else {}),
    )
    if ome:
        write_multiscales(
            target,
            [OUTPUT_LEVEL],
            [tuple(voxel)],
            [tuple(roi.offset)],
            unit=units,
            num_channels=num_channels,
            label=label,
        )
    if image is not None:
        register_label(image, target.name)
    return array


def image_of_label(target: Path) -> Path | None:
    """The OME-NGFF image a label output ``image/labels/NAME`` belongs to, if any."""
    image = target.parent.parent
    if target.parent.name != "labels" or not is_multiscale_group(image):
        return None
    found = multiscale_attrs(image)
    if found is not None and found[0] != "0.5":
        raise ValueError(
            f"{str(image)!r} is an OME-NGFF {found[0]} (zarr v2) image; innerdist writes "
            "0.5 (zarr v3) label images, so write the segmentation into another container"
        )
    return image


def label_output_path(path: str | Path) -> str:
    """Where a segmentation output goes: under ``labels/`` of an OME-NGFF image container.

    ``img.ome.zarr/seg`` -> ``img.ome.zarr/labels/seg`` when ``img.ome.zarr`` is an image
    (as the specification places label images); any other path is kept.
    """
    container, dataset = split_volume_path(path)
    if dataset and not dataset.startswith("labels/") and is_multiscale_group(container):
        return str(container / "labels" / dataset)
    return str(path)


def level_path(path: str | Path, level: int | None) -> str:
    """The path of level ``level`` of the OME-NGFF image ``path`` (``path`` if ``None``).

    ``level_path("img.ome.zarr", 1)`` is ``"img.ome.zarr/s1"`` for ome-zarr-py's level
    names; what the command-line option ``--level`` does to an input.
    """
    if level is None:
        return str(path)
    container, dataset = split_volume_path(path)
    if not (container / dataset).exists():
        return str(path)  # open_volume names what is missing
    found = locate_level(container, dataset, level)
    if found is None:  # pragma: no cover - locate_level raises when a level is given
        raise ValueError(f"{str(path)!r} is not an OME-NGFF multiscale image")
    return str(found.array_path)


def zarr_array_path(array: Array) -> str | None:
    """The directory of the zarr array ``array`` reads voxel for voxel, else ``None``.

    Worker processes open this path with zarr itself (no funlib, no dask graph per read).
    ``None`` for anything that is not a plain zarr array on a local disk: N5, one time
    point of an OME-Zarr ``t`` axis, lazy operations, in-memory arrays.
    """
    import zarr

    source = array._source_data
    if array.lazy_ops or not isinstance(source, zarr.Array):
        return None
    root = getattr(source.store, "root", None)
    if root is None:
        return None
    return str(Path(root) / source.path) if source.path else str(root)


def read(array: Array, roi: Roi) -> np.ndarray:
    """``array[roi]`` as numpy (``roi`` inside the array, on its grid, world units).

    A plain zarr array is sliced directly: funlib goes through a dask graph, which costs
    about as much again as reading the chunks. Anything else (lazy ops, N5, numpy) goes
    through funlib, computed in the calling thread: dask's default thread pool does not
    survive a fork, so a forked loader worker would wait forever on the parent's pool.
    """
    import dask
    import zarr

    source = array._source_data
    if not array.lazy_ops and isinstance(source, zarr.Array):
        voxel = Coordinate(array.voxel_size)
        begin = (roi.begin - array.roi.begin) / voxel
        end = (roi.end - array.roi.begin) / voxel
        channels = (slice(None),) * array.channel_dims
        index = channels + tuple(slice(b, e) for b, e in zip(begin, end, strict=True))
        return np.asarray(source[index])
    with dask.config.set(scheduler="synchronous"):
        return np.asarray(array[roi])


def read_padded(
    array: Array, roi: Roi, fill: str = "zero", bounds: Roi | None = None
) -> np.ndarray:
    """Read ``roi`` (on ``array``'s grid, may leave its ROI), padding ``"zero"``/``"edge"``.

    Channel axes are kept whole; the region outside the data (and outside ``bounds``, when
    given: a training source's ``roi``) is 0 or repeats the nearest voxel inside it, so
    nothing outside ``bounds`` is ever read.
    """
    if fill not in ("zero", "edge"):
        raise ValueError(f"fill must be 'zero' or 'edge', got {fill!r}")
    voxel = Coordinate(array.voxel_size)
    shape = roi.shape / voxel
    inside = roi.intersect(array.roi if bounds is None else array.roi.intersect(bounds))
    channel_shape = tuple(array.shape[: array.channel_dims])
    if inside.empty:
        return np.zeros((*channel_shape, *shape), dtype=array.dtype)
    data = read(array, inside)
    before = (inside.begin - roi.begin) / voxel
    after = (roi.end - inside.end) / voxel
    if not any(before) and not any(after):
        return data
    pad = [(0, 0)] * len(channel_shape) + list(zip(before, after, strict=True))
    return np.pad(data, pad, mode="edge" if fill == "edge" else "constant")


def read_upsampled(
    array: Array, roi: Roi, factor: Sequence[int], fill: str = "zero",
    bounds: Roi | None = None,
) -> np.ndarray:
    """Read ``roi`` on the grid ``array.voxel_size / factor`` by nearest neighbour.

    A voxel of ``array`` becomes ``factor`` voxels per axis (labels 8 nm, raw 4 nm:
    ``factor (2, 2)``); ``roi`` lies on the finer grid and may leave the data (``fill``
    and ``bounds`` as in :func:`read_padded`).
    """
    factor = Coordinate(factor)
    coarse = Coordinate(array.voxel_size)
    if any(f < 1 for f in factor) or factor.dims != coarse.dims:
        raise ValueError(f"factor must be positive with one entry per axis, got {factor}")
    if all(f == 1 for f in factor):
        return read_padded(array, roi, fill, bounds)
    offset = array.roi.offset
    snapped = roi.shift(-offset).snap_to_grid(coarse, mode="grow").shift(offset)
    data = read_padded(array, snapped, fill, bounds)
    lead = array.channel_dims
    for axis, f in enumerate(factor):
        if f > 1:
            data = np.repeat(data, f, axis=lead + axis)
    fine = coarse / factor
    begin = (roi.begin - snapped.begin) / fine
    shape = roi.shape / fine
    spatial = tuple(slice(b, b + s) for b, s in zip(begin, shape, strict=True))
    return data[(slice(None),) * lead + spatial]


def mark_complete(array: Array, complete: bool = True) -> None:
    """Record in the dataset's attributes that every block has been written."""
    array._source_data.attrs[COMPLETE_ATTR] = complete


def is_complete(array: Array) -> bool:
    """Whether ``array`` was fully written (inputs not made by innerdist count as complete)."""
    return bool(array.attrs.get(COMPLETE_ATTR, True))
