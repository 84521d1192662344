"""Blockwise inner-distance targets for label volumes larger than memory.

Each write block reads its labels grown by the predictor's :meth:`padding` (clipped to the
data: the edge of the volume is not a boundary, so nothing is lost there), computes targets
on that crop and keeps the write block. By the spec's context guarantee the result equals
the whole-volume computation wherever the distance is at most ``max_distance`` and is within
``epsilon`` of it elsewhere.

One more case needs care: a read region with no boundary at all. The spec gives a voxel of
a boundary-free *array* the distance ``min_d(shape_d * voxel_size_d / 2)``; for a block that
is the value of the whole volume's shape (exact when the whole volume has no boundary; when
it has one further away than the padding, the true distance exceeds ``max_distance``, and
so does this value whenever every axis of the volume spans ``2 * max_distance``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi

from innerdist.attrs import LABELS_ATTR, PREDICTOR_ATTR
from innerdist.blockwise import (
    finish_output,
    open_or_create_output,
    run_blockwise,
    tracking_dir_for,
)
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.safety import check_input_complete
from innerdist.units import world_unit
from innerdist.volumes import is_complete, num_channels, open_volume, split_volume_path
from innerdist.workers import BlockFunction, resolve_worker_command

__all__ = ["compute_targets"]

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_VOXELS = 64


def _has_boundary(labels: np.ndarray) -> bool:
    """Whether any two face-adjacent voxels (spatial axes of one channel) differ."""
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        if np.any(a[1:] != a[:-1]):
            return True
    return False


def target_block_function(
    *,
    labels: str,
    out: str,
    predictor: dict[str, Any],
    has_channel_axis: bool,
    saturated: float,
) -> Callable[[Roi, Roi], None]:
    """The per-block work of :func:`compute_targets`, rebuilt from JSON parameters (so a
    cluster worker can build it from the job file)."""
    target_predictor = InnerDistancePredictor(**predictor)
    tanh_saturated = np.float32(saturated)

    def process(read_roi: Roi, write_roi: Roi) -> None:
        src = open_volume(labels)
        voxel_size = Coordinate(src.voxel_size)
        read_roi = read_roi.intersect(src.roi)
        data = np.asarray(src[read_roi])
        if not has_channel_axis:
            data = data[np.newaxis]
        target = target_predictor.process(
            data, voxel_size, "tanh", target_predictor.dt_scale_factor
        )
        for c in range(data.shape[0]):
            if not _has_boundary(data[c]):
                target[c] = np.where(data[c] != 0, tanh_saturated, np.float32(0))
        begin = (write_roi.begin - read_roi.begin) / voxel_size
        end = begin + write_roi.shape / voxel_size
        index = (slice(None),) + tuple(slice(b, e) for b, e in zip(begin, end, strict=True))
        dst = open_volume(out, mode="r+")
        dst[write_roi] = target[index]

    return process


def compute_targets(
    labels: str | Path,
    out: str | Path,
    *,
    scale_factor: float,
    channels: Sequence[str] | None = None,
    epsilon: float = 0.05,
    block_shape: Sequence[int] | None = None,
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    pyramid: bool = True,
    worker_command: str | None = None,
) -> str:
    """Write tanh-normalised inner-distance targets of ``labels`` to ``out``.

    Parameters
    ----------
    labels:
        Integer or bool label volume (``container/dataset``), ``(C, *spatial)`` or spatial
        only for one channel; 2-D or 3-D.
    out:
        Output volume: float32 ``(C, *spatial)``, same ROI, voxel size and offset.
    scale_factor:
        tanh scale, world units.
    channels:
        Channel names (default: the label dataset's name, or ``channel_<i>``).
    block_shape:
        Write block shape in voxels (default 64 per axis); also the output chunk shape.
    num_workers:
        daisy worker processes (1: serial, in this process).
    pyramid:
        Also write the multiscale levels ``s1, s2, ...`` (mean; :mod:`innerdist.pyramid`).
    worker_command:
        Start each worker through this template, e.g. ``'srun {command}'`` (default:
        ``$INNERDIST_WORKER_COMMAND``; unset: local processes); see
        :mod:`innerdist.workers`.

    Returns the output path, an OME-NGFF image whose level ``s0`` holds the targets.
    Re-running an interrupted job resumes it.
    """
    worker_command = resolve_worker_command(worker_command)
    source = open_volume(labels)
    check_input_complete(source.attrs, labels, "labels", allow_incomplete=None)
    dtype = np.dtype(source.dtype)
    if dtype.kind != "b" and not np.issubdtype(dtype, np.integer):
        raise TypeError(
            f"labels {str(labels)!r} have dtype {dtype}; expected integer instance ids or bool"
        )
    dims = len(source.voxel_size)
    if dims not in (2, 3):
        raise ValueError(
            f"labels {str(labels)!r} have {dims} spatial axes ({source.axis_names}); "
            "expected 2 or 3"
        )
    n_channels = num_channels(source)
    has_channel_axis = n_channels is not None
    n_channels = n_channels or 1
    if channels is None:
        if n_channels == 1:
            channels = [split_volume_path(labels)[1].rsplit("/", 1)[-1]]
        else:
            channels = [f"channel_{i}" for i in range(n_channels)]
    channels = list(channels)
    if len(channels) != n_channels:
        raise ValueError(
            f"got {len(channels)} channel names {channels} for labels with {n_channels} channel(s)"
        )
    predictor = InnerDistancePredictor(channels, scale_factor, epsilon=epsilon)
    voxel_size = Coordinate(source.voxel_size)
    if block_shape is None:
        block_shape = (DEFAULT_BLOCK_VOXELS,) * dims
    if len(block_shape) != dims or any(int(b) <= 0 for b in block_shape):
        raise ValueError(
            f"block shape {tuple(block_shape)} must have {dims} positive entries (voxels)"
        )
    block_voxels = Coordinate(int(b) for b in block_shape)
    context = predictor.padding(voxel_size)
    total_roi: Roi = source.roi
    whole_shape = total_roi.shape / voxel_size
    no_boundary_distance = min(s * v / 2 for s, v in zip(whole_shape, voxel_size, strict=True))

    job = {
        "command": "targets",
        "labels": str(Path(labels).resolve()),
        "predictor": predictor.to_dict(),
        "block_shape": list(block_voxels),
    }
    out_array = open_or_create_output(
        out,
        job=job,
        overwrite=overwrite,
        inputs={"labels": labels},
        roi=total_roi,
        voxel_size=voxel_size,
        dtype=np.float32,
        num_channels=n_channels,
        chunk_shape=tuple(block_voxels),
        attrs={PREDICTOR_ATTR: predictor.to_dict(), LABELS_ATTR: str(labels)},
        ome=True,
        units=world_unit(source.units),
    )
    if is_complete(out_array):
        return str(out)  # the same job finished before: nothing to do
    saturated = math.tanh(no_boundary_distance / predictor.dt_scale_factor)
    block_function = BlockFunction(
        "innerdist.targets:target_block_function",
        {
            "labels": os.path.abspath(labels),
            "out": os.path.abspath(out),
            "predictor": predictor.to_dict(),
            "has_channel_axis": has_channel_axis,
            "saturated": saturated,
        },
    )
    run_blockwise(
        "targets",
        total_roi=total_roi,
        block_shape=block_voxels * voxel_size,
        context=context,
        process=block_function.build(),
        tracking_dir=tracking_dir_for(out),
        num_workers=num_workers,
        progress=progress,
        worker_command=worker_command,
        worker_job=block_function,
    )
    if pyramid:
        from innerdist.pyramid import write_pyramid

        write_pyramid(
            out,
            reduction="mean",
            tracking_dir=tracking_dir_for(out) / "pyramid",
            num_workers=num_workers,
            progress=progress,
        )
    finish_output(out_array, out)
    return str(out)
