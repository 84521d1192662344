"""The predictor interface: what a network learns to predict, and from what.

Ground truth and target are different things. The *ground truth* is what an annotator
made (instance labels, say). The *target* is what the network is trained to output, made
from the ground truth by :meth:`Predictor.create_target` (for inner distances: the
tanh-normalised distance of each object voxel to its object's boundary). The *weights*
say how much each target voxel counts in the loss.

A target voxel can depend on ground truth around it: the distance to the nearest boundary
needs the boundary. :meth:`Predictor.padding` is that context (world units, per axis) and
:meth:`Predictor.gt_region_for_roi` grows a requested target ROI by it, so that a crop of
ground truth read there yields correct targets in the requested ROI::

    +-----------------------------+   gt_region_for_roi(roi): the ground truth to read
    |   padding                   |
    |     +-----------------+     |
    |     | roi: targets    |     |
    |     | wanted here     |     |
    |     +-----------------+     |
    +-----------------------------+
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from funlib.geometry import Coordinate, Roi

from innerdist.arrays import ArrayType, NumpyArray

if TYPE_CHECKING:
    from innerdist.architecture import Architecture
    from innerdist.model import Model
    from innerdist.weights import MovingCounts

__all__ = ["Predictor"]


class Predictor(ABC):
    """Turns ground truth into targets and weights, and builds the matching model."""

    @abstractmethod
    def create_model(self, architecture: Architecture) -> Model:
        """A :class:`~innerdist.model.Model`: ``architecture`` plus a head producing the
        target's channels."""

    @abstractmethod
    def create_target(self, gt: Any) -> NumpyArray:
        """The target for ground truth ``gt`` (a NumpyArray or funlib.persistence.Array)."""

    @abstractmethod
    def create_weight(
        self,
        gt: Any,
        target: Any,
        mask: Any,
        moving_class_counts: MovingCounts | None = None,
    ) -> tuple[NumpyArray, MovingCounts]:
        """Per-voxel loss weights for ``target``, and the updated running class counts."""

    @property
    @abstractmethod
    def output_array_type(self) -> ArrayType:
        """What the model's output holds (and so how it may be resampled)."""

    def padding(self, gt_voxel_size: Coordinate) -> Coordinate:
        """Ground-truth context needed on each side of a target ROI, in world units.

        Default: none (each target voxel depends only on the ground truth at that voxel).
        """
        return Coordinate((0,) * len(gt_voxel_size))

    def gt_region_for_roi(self, target_spec: Any, voxel_size: Coordinate | None = None) -> Any:
        """The ground truth region needed for correct targets in ``target_spec``.

        ``target_spec`` is a :class:`~funlib.geometry.Roi` (then pass ``voxel_size``) or a
        spec object with ``.roi`` and ``.voxel_size`` (a gunpowder ``ArraySpec``), which is
        returned as a copy with its ROI grown. The ROI grows by :meth:`padding` on every
        side and is snapped outwards to the voxel grid.
        """
        if isinstance(target_spec, Roi):
            if voxel_size is None:
                raise ValueError("gt_region_for_roi(roi) needs the voxel size of the ground truth")
            return self._grow(target_spec, Coordinate(voxel_size))
        if hasattr(target_spec, "roi") and hasattr(target_spec, "voxel_size"):
            spec = copy.deepcopy(target_spec)
            size = Coordinate(voxel_size if voxel_size is not None else spec.voxel_size)
            spec.roi = self._grow(spec.roi, size)
            return spec
        raise TypeError(
            f"expected a Roi or a spec with .roi and .voxel_size, got {type(target_spec).__name__}"
        )

    def _grow(self, roi: Roi, voxel_size: Coordinate) -> Roi:
        if roi.dims != voxel_size.dims:
            raise ValueError(f"roi {roi} and voxel size {voxel_size} have different dimensions")
        pad = self.padding(voxel_size)
        return roi.grow(pad, pad).snap_to_grid(voxel_size, mode="grow")
