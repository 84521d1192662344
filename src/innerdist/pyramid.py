"""Multiscale pyramids of innerdist's OME-NGFF outputs, written blockwise and resumable.

Level ``k + 1`` is level ``k`` downsampled by 2 along every axis that is not already
much coarser than the finest one, down to about one chunk per axis. For 40 x 8 x 8 nm
data, z waits until the in-plane voxels have caught up::

    s0   40 x  8 x  8 nm   (256, 512, 512) voxels, chunks 64^3
    s1   40 x 16 x 16      (256, 256, 256)   factor (1, 2, 2)
    s2   40 x 32 x 32      (256, 128, 128)   factor (1, 2, 2)
    s3   80 x 64 x 64      (128,  64,  64)   factor (2, 2, 2): z within 2x of y, x
    s4  160 x 64 x 64      ( 64,  64,  64)   factor (2, 1, 1): y, x fit in one chunk

Predictions are reduced by the mean, masks and instances by the most frequent value of
each 2 x 2 (x 2) window (a label-preserving reduction: no new ids appear; ties go to the
smaller value). The last window along an axis of odd length holds fewer voxels and is
reduced over those. Levels are written chunk by chunk through
:func:`innerdist.blockwise.run_blockwise`, so an interrupted pyramid resumes; the image's
``multiscales`` list all levels once the last one is written.

Level ``k`` with a total factor ``f`` to level 0 has the voxel size ``f * v0`` and the
translation ``t0 + (f - 1) * v0 / 2``: OME-NGFF places a voxel at its centre, and a coarse
voxel's centre is the middle of the fine voxels it covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi

__all__ = [
    "REDUCTIONS",
    "downsample",
    "level_factors",
    "write_pyramid",
]

#: ``"mean"`` (predictions, targets) and ``"mode"`` (masks, instances).
REDUCTIONS = ("mean", "mode")


def level_factors(
    voxel_size: Sequence[int], shape: Sequence[int], chunk_shape: Sequence[int]
) -> list[tuple[int, ...]]:
    """Per-level factors (each relative to the level before) of the pyramid of a volume.

    An axis is halved while it is longer than one chunk and its voxel is less than twice
    the finest voxel of the level.

    >>> level_factors((40, 8, 8), (256, 512, 512), (64, 64, 64))
    [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 1, 1)]
    """
    voxel = [int(v) for v in voxel_size]
    size = [int(s) for s in shape]
    chunks = [int(c) for c in chunk_shape]
    if not (len(voxel) == len(size) == len(chunks)) or min(voxel + chunks) < 1 or min(size) < 0:
        raise ValueError(
            f"voxel size {tuple(voxel_size)}, shape {tuple(shape)} and chunk shape "
            f"{tuple(chunk_shape)} must be equally long, positive (shape non-negative)"
        )
    factors: list[tuple[int, ...]] = []
    while True:
        long = [s > c for s, c in zip(size, chunks, strict=True)]
        if not any(long):
            return factors
        # The finest of the axes still to shrink: the others wait until it catches up.
        finest = min(v for v, is_long in zip(voxel, long, strict=True) if is_long)
        factor = tuple(
            2 if is_long and v < 2 * finest else 1 for v, is_long in zip(voxel, long, strict=True)
        )
        factors.append(factor)
        voxel = [v * f for v, f in zip(voxel, factor, strict=True)]
        size = [-(-s // f) for s, f in zip(size, factor, strict=True)]


def downsample(data: np.ndarray, factor: Sequence[int], reduction: str) -> np.ndarray:
    """Reduce each ``factor``-window of the trailing axes of ``data`` to one voxel.

    Leading axes beyond ``len(factor)`` (channels) are kept. ``"mean"`` averages (and
    rounds for integer types), ``"mode"`` takes the most frequent value.

    >>> downsample(np.array([[1, 1, 2], [3, 1, 2]]), (2, 2), "mode")
    array([[1, 2]])
    >>> downsample(np.array([[1., 2., 4.], [3., 2., 6.]]), (2, 2), "mean")
    array([[2., 5.]])
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    factor = tuple(int(f) for f in factor)
    if len(factor) > data.ndim or any(f < 1 for f in factor):
        raise ValueError(
            f"factor {factor} must be positive with at most {data.ndim} entries (data shape "
            f"{data.shape})"
        )
    lead = data.ndim - len(factor)
    spatial = data.shape[lead:]
    out_shape = tuple(-(-s // f) for s, f in zip(spatial, factor, strict=True))
    padded_shape = tuple(o * f for o, f in zip(out_shape, factor, strict=True))
    pad = [(0, 0)] * lead + [(0, p - s) for p, s in zip(padded_shape, spatial, strict=True)]
    valid = np.pad(np.ones(spatial, dtype=bool), pad[lead:])
    values = np.pad(data, pad)
    # Split every axis into (outer, window), then move the window axes last and flatten.
    split = data.shape[:lead] + tuple(
        x for o, f in zip(out_shape, factor, strict=True) for x in (o, f)
    )
    n = len(factor)
    order = (
        list(range(lead)) + [lead + 2 * i for i in range(n)] + [lead + 2 * i + 1 for i in range(n)]
    )
    windows = values.reshape(split).transpose(order).reshape(*data.shape[:lead], *out_shape, -1)
    vsplit = tuple(x for o, f in zip(out_shape, factor, strict=True) for x in (o, f))
    vorder = [2 * i for i in range(n)] + [2 * i + 1 for i in range(n)]
    ok = valid.reshape(vsplit).transpose(vorder).reshape(*out_shape, -1)
    ok = np.broadcast_to(ok, windows.shape)
    if reduction == "mean":
        total = np.where(ok, windows, 0).astype(np.float64).sum(axis=-1)
        mean = total / ok.sum(axis=-1)
        if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
            return np.rint(mean).astype(data.dtype)
        return mean.astype(data.dtype)
    # Mode: count, for each entry, the valid entries equal to it; keep the smallest of
    # the most frequent values.
    counts = ((windows[..., :, None] == windows[..., None, :]) & ok[..., None, :]).sum(axis=-1)
    counts = np.where(ok, counts, -1)
    is_best = counts == counts.max(axis=-1, keepdims=True)
    if np.issubdtype(data.dtype, np.floating):
        fill: Any = np.inf
    elif data.dtype == bool:
        fill = True
    else:
        fill = np.iinfo(data.dtype).max
    return np.where(is_best, windows, fill).min(axis=-1).astype(data.dtype)


def _level_shapes(shape: Sequence[int], factors: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    shapes = [tuple(int(s) for s in shape)]
    for f in factors:
        shapes.append(tuple(-(-s // g) for s, g in zip(shapes[-1], f, strict=True)))
    return shapes


def _reduce_block(
    src: str,
    dst: str,
    factor: tuple[int, ...],
    reduction: str,
    lead: int,
    read_roi: Roi,
    write_roi: Roi,
) -> None:
    """Write level ``dst``'s voxels ``write_roi`` (ROIs in voxels of ``dst``)."""
    import zarr

    source = zarr.open_array(src, mode="r")
    target = zarr.open_array(dst, mode="r+")
    spatial = source.shape[lead:]
    begin = [b * f for b, f in zip(write_roi.begin, factor, strict=True)]
    end = [min(e * f, s) for e, f, s in zip(write_roi.end, factor, spatial, strict=True)]
    data = source[(slice(None),) * lead + tuple(map(slice, begin, end))]
    out = downsample(np.asarray(data), factor, reduction)
    index = (slice(None),) * lead + tuple(map(slice, write_roi.begin, write_roi.end))
    target[index] = out


def write_pyramid(
    path: str | Path,
    *,
    reduction: str,
    tracking_dir: str | Path,
    num_workers: int = 1,
    progress: bool = True,
) -> list[str]:
    """Add pyramid levels ``s1, s2, ...`` to the OME-NGFF output ``path`` (from ``s0``).

    ``path`` is an image written by :func:`innerdist.volumes.create_volume` with
    ``ome=True``. Levels already written (a resumed job) are kept; finished blocks are
    recorded under ``tracking_dir``. Returns the level paths, ``["s0", "s1", ...]``; a
    volume that fits in one chunk per axis gets none beyond ``s0``.
    """
    import zarr

    from innerdist.blockwise import run_blockwise
    from innerdist.ome import locate_level, write_multiscales
    from innerdist.volumes import OUTPUT_LEVEL, split_volume_path

    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    container, dataset = split_volume_path(path)
    group = container / dataset
    base = locate_level(container, dataset, 0)
    if base is None or base.array_path.name != OUTPUT_LEVEL:
        raise ValueError(
            f"{str(path)!r} is not an OME-NGFF image written by innerdist (no level "
            f"{OUTPUT_LEVEL!r} in its multiscales)"
        )
    s0 = zarr.open_array(base.array_path, mode="r")
    lead = s0.ndim - len(base.voxel_size)
    spatial_chunks = tuple(int(c) for c in s0.chunks[lead:])
    spatial_shape = tuple(int(s) for s in s0.shape[lead:])
    factors = level_factors(base.voxel_size, spatial_shape, spatial_chunks)
    shapes = _level_shapes(spatial_shape, factors)
    names = [OUTPUT_LEVEL] + [f"s{k}" for k in range(1, len(shapes))]
    dims = [a.rstrip("^") for a in base.axis_names]
    voxels = [tuple(base.voxel_size)]
    offsets: list[tuple[float, ...]] = [tuple(float(o) for o in base.offset)]
    total = [1] * len(spatial_shape)
    for k, factor in enumerate(factors, start=1):
        total = [t * f for t, f in zip(total, factor, strict=True)]
        voxels.append(tuple(v * t for v, t in zip(base.voxel_size, total, strict=True)))
        offsets.append(
            tuple(
                o + (t - 1) * v / 2
                for o, t, v in zip(base.offset, total, base.voxel_size, strict=True)
            )
        )
        level_path = group / names[k]
        full_shape = tuple(s0.shape[:lead]) + shapes[k]
        if not (level_path / "zarr.json").exists():
            zarr.create_array(
                level_path,
                shape=full_shape,
                chunks=tuple(s0.chunks[:lead]) + spatial_chunks,
                dtype=s0.dtype,
                dimension_names=dims,
                fill_value=0,
            )
        run_blockwise(
            f"pyramid-{names[k]}",
            total_roi=Roi((0,) * len(shapes[k]), shapes[k]),
            block_shape=Coordinate(spatial_chunks),
            context=Coordinate((0,) * len(shapes[k])),
            process=partial(
                _reduce_block,
                str(group / names[k - 1]),
                str(level_path),
                tuple(factor),
                reduction,
                lead,
            ),
            tracking_dir=Path(tracking_dir),
            num_workers=num_workers,
            progress=progress,
        )
    if len(names) > 1:
        write_multiscales(
            group,
            names,
            voxels,
            offsets,
            unit=base.unit,
            num_channels=int(s0.shape[0]) if lead else None,
            label=base.is_label,
        )
    return names
