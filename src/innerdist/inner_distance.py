"""Inner-distance targets: how far inside its object each voxel is, squashed by tanh.

For every object voxel the target is ``tanh(d / scale_factor)``, where ``d`` is the
Euclidean distance (world units) from the voxel centre to the nearest boundary point of
its object; background is 0. Boundary points are the centres of faces between
face-adjacent voxels with different labels, so touching objects are separated and the
edge of the crop is not a boundary (see ``docs/targets.md``)::

    labels   0   0   1   1   1   1   1   1   0   0      (voxel size 1, scale 2)
    d            .   .5  1.5 2.5 2.5 1.5 .5
    target   0   0  .24 .64 .85 .85 .64 .24  0   0

Near saturation the target stops carrying information: at ``max_distance =
scale * atanh(1 - epsilon)`` it is within ``epsilon`` of 1. That is why a crop of ground
truth grown by :meth:`InnerDistancePredictor.padding` gives exact targets wherever the
distance is below ``max_distance`` (and within ``epsilon`` elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from funlib.geometry import Coordinate

from innerdist.arrays import DistanceArray, NumpyArray, as_numpy_array, is_channel_axis
from innerdist.predictor import Predictor
from innerdist.weights import MovingCounts, balance_weights

if TYPE_CHECKING:
    from innerdist.architecture import Architecture
    from innerdist.model import Model

__all__ = ["InnerDistancePredictor"]


class InnerDistancePredictor(Predictor):
    """Predict, per channel, the tanh-normalised distance to the object boundary.

    Parameters
    ----------
    channels:
        One name per output channel (e.g. ``["mito", "nucleus"]``); the ground truth has
        one instance-label channel per entry.
    scale_factor:
        The tanh scale in world units (nm): distances well below it map linearly, well
        above it saturate towards 1.
    epsilon:
        Saturation tolerance that defines :attr:`max_distance` (and so :meth:`padding`);
        also a typical foreground level for post-processing.
    threshold:
        A typical seed level for instance post-processing (swept on validation data).
    """

    norm = "tanh"

    def __init__(
        self,
        channels: Sequence[str],
        scale_factor: float,
        *,
        epsilon: float = 0.05,
        threshold: float = 0.8,
    ) -> None:
        if isinstance(channels, str) or not all(isinstance(c, str) for c in channels):
            raise TypeError(f"channels must be a list of names, got {channels!r}")
        channels = list(channels)
        if not channels:
            raise ValueError("channels must name at least one channel")
        if len(set(channels)) != len(channels):
            raise ValueError(f"channel names must be unique, got {channels}")
        if not (isinstance(scale_factor, int | float) and math.isfinite(scale_factor)):
            raise ValueError(f"scale_factor must be a finite number, got {scale_factor!r}")
        if scale_factor <= 0:
            raise ValueError(f"scale_factor must be positive (world units), got {scale_factor}")
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        self.channels = channels
        self.dt_scale_factor = float(scale_factor)
        self.epsilon = float(epsilon)
        self.threshold = float(threshold)
        self.max_distance = self.dt_scale_factor * math.atanh(1.0 - self.epsilon)

    def __repr__(self) -> str:
        return (
            f"InnerDistancePredictor(channels={self.channels}, scale_factor="
            f"{self.dt_scale_factor}, epsilon={self.epsilon}, threshold={self.threshold})"
        )

    @property
    def embedding_dims(self) -> int:
        """Number of output channels."""
        return len(self.channels)

    @property
    def output_array_type(self) -> DistanceArray:
        return DistanceArray(dict(enumerate(self.channels)), max=1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able configuration (inverse: ``InnerDistancePredictor(**d)``)."""
        return {
            "channels": list(self.channels),
            "scale_factor": self.dt_scale_factor,
            "epsilon": self.epsilon,
            "threshold": self.threshold,
        }

    def create_model(self, architecture: Architecture) -> Model:
        """``architecture`` followed by a 1x1 convolution to one channel per class."""
        import torch

        from innerdist.model import Model

        dims = architecture.dims
        conv: type[torch.nn.Module]
        if dims == 2:
            conv = torch.nn.Conv2d
        elif dims == 3:
            conv = torch.nn.Conv3d
        else:
            raise ValueError(f"InnerDistancePredictor supports 2-D and 3-D models, got {dims}-D")
        head = conv(architecture.num_out_channels, self.embedding_dims, kernel_size=1)
        return Model(architecture, head)

    # ---- targets -----------------------------------------------------------------------

    def padding(self, gt_voxel_size: Coordinate) -> Coordinate:
        """``max_distance`` rounded up to whole voxels plus one voxel, per axis (world units).

        The extra voxel is there because a boundary point lies half a voxel from the
        voxels on either side of it.
        """
        voxel = Coordinate(gt_voxel_size)
        if any(v <= 0 for v in voxel):
            raise ValueError(f"voxel size must be positive, got {tuple(voxel)}")
        return Coordinate(
            (math.ceil(self.max_distance / v) + 1) * v for v in voxel
        )

    def create_target(self, gt: Any) -> NumpyArray:
        """Targets for instance labels ``gt`` (NumpyArray, funlib or gunpowder array).

        ``gt`` holds one label channel per entry of :attr:`channels`; with one channel the
        channel axis may be left out. The result is float32 of shape ``(C, *spatial)``.
        """
        labels, array = self._labels_with_channels(gt)
        data = self.process(labels, array.voxel_size, self.norm, self.dt_scale_factor)
        return NumpyArray.from_np_array(
            data, array.roi, array.voxel_size, ["c^", *array.spatial_axes]
        )

    def create_weight(
        self,
        gt: Any,
        target: Any,
        mask: Any,
        moving_class_counts: MovingCounts | None = None,
    ) -> tuple[NumpyArray, MovingCounts]:
        """Loss weights balancing object vs background voxels, each channel on its own.

        ``mask`` (same spatial extent as ``gt``, 0 = ignore, or ``None``) zeroes weights
        and keeps masked-out voxels out of the class counts. Returns the weights, float32
        of shape ``(C, *spatial)``, and the running counts to pass to the next call.
        """
        labels, array = self._labels_with_channels(gt)
        target_array = as_numpy_array(target)
        if target_array.data.shape != labels.shape:
            raise ValueError(
                f"target has shape {target_array.data.shape}, expected {labels.shape} "
                "(the ground truth's shape with its channel axis)"
            )
        masks: list[np.ndarray] = []
        if mask is not None:
            mask_data = mask if isinstance(mask, np.ndarray) else as_numpy_array(mask).data
            mask_data = np.asarray(mask_data)
            if mask_data.shape == labels.shape[1:]:
                mask_data = np.broadcast_to(mask_data, labels.shape)
            if mask_data.shape != labels.shape:
                raise ValueError(
                    f"mask has shape {mask_data.shape}, expected {labels.shape[1:]} or "
                    f"{labels.shape} (the ground truth's spatial shape)"
                )
            masks.append(mask_data)
        weights, counts = balance_weights(
            (labels != 0).view(np.uint8),
            2,
            masks=masks,
            slab=(1,) + (-1,) * (labels.ndim - 1),
            moving_counts=moving_class_counts,
        )
        out = NumpyArray.from_np_array(
            weights, array.roi, array.voxel_size, ["c^", *array.spatial_axes]
        )
        return out, counts

    def _labels_with_channels(self, gt: Any) -> tuple[np.ndarray, NumpyArray]:
        """The label data as ``(C, *spatial)`` with ``C == len(channels)``, and its array."""
        array = as_numpy_array(gt)
        data = np.asarray(array.data)
        channel_axes = [i for i, name in enumerate(array.axes) if is_channel_axis(name)]
        if len(channel_axes) > 1 or (channel_axes and channel_axes[0] != 0):
            raise ValueError(f"expected at most one channel axis, first; got axes {array.axes}")
        if not channel_axes:
            data = data[np.newaxis]
        if data.shape[0] != self.embedding_dims:
            raise ValueError(
                f"ground truth has {data.shape[0]} label channel(s) but the predictor has "
                f"{self.embedding_dims} channel(s) {self.channels}"
            )
        return data, array

    def process(
        self,
        labels: np.ndarray,
        voxel_size: Sequence[float],
        normalize: str | None = None,
        normalize_args: float | None = None,
    ) -> np.ndarray:
        """Inner distances of ``labels`` (``(C, *spatial)`` or just ``spatial``).

        ``voxel_size`` (world units) has one entry per spatial axis and so tells whether
        ``labels`` has a channel axis. With ``normalize=None`` the result is the raw
        distance in world units; with ``normalize="tanh"`` it is ``tanh(d /
        normalize_args)``. Background voxels are 0 either way. float32, shape of
        ``labels``.
        """
        from innerdist.distance import boundary_distance

        labels = np.asarray(labels)
        voxel = tuple(float(v) for v in voxel_size)
        if len(voxel) not in (2, 3):
            raise ValueError(
                f"voxel_size must have 2 or 3 entries (spatial axes), got {len(voxel)}: {voxel}"
            )
        if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be bool or integer, got dtype {labels.dtype}")
        if labels.ndim == len(voxel):
            stacked = labels[np.newaxis]
        elif labels.ndim == len(voxel) + 1:
            stacked = labels
        else:
            raise ValueError(
                f"labels of shape {labels.shape} do not fit a voxel size with {len(voxel)} "
                f"axes; expected {len(voxel)} spatial axes and at most one channel axis"
            )
        if normalize not in (None, "tanh"):
            raise ValueError(f"normalize must be None or 'tanh', got {normalize!r}")
        scale = 0.0
        if normalize == "tanh":
            if normalize_args is None or not float(normalize_args) > 0:
                raise ValueError(
                    f"normalize='tanh' needs a positive scale in normalize_args, got "
                    f"{normalize_args!r}"
                )
            scale = float(normalize_args)
        out = np.empty(stacked.shape, dtype=np.float32)
        for c in range(stacked.shape[0]):
            d = boundary_distance(stacked[c], voxel)
            if normalize == "tanh":
                np.divide(d, np.float32(scale), out=d)
                np.tanh(d, out=d)
            np.multiply(d, stacked[c] != 0, out=out[c])
        return out if labels.ndim == stacked.ndim else out[0]
