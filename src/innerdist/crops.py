"""Random training crops in world coordinates, with augmentation, targets and loss weights.

A training volume is described by a :class:`VolumeSource` (raw, labels, optional mask,
sampling weight). :class:`CropSampler` draws one crop at a time from a numpy ``Generator``;
:class:`TrainingDataset` wraps it for a torch ``DataLoader`` so that sample ``i`` depends
only on ``(seed, i)``.

Geometry of one crop (world units; every box is centred on the output ROI)::

    +------------------------------------------------------------+  read ROI: output ROI
    |  +------------------------------------------------------+  |  grown by
    |  |  raw input ROI = output ROI grown by the context      |  |  max(context, padding)
    |  |     +------------------------------------------+     |  |  + augmentation margin
    |  |     | labels ROI = output ROI grown by padding  |     |  |
    |  |     |        +------------------------+        |     |  |
    |  |     |        |  output ROI            |        |     |  |
    |  |     |        |  (target, weight, mask)|        |     |  |
    |  |     |        +------------------------+        |     |  |

Raw, labels and mask are read at the read ROI on the raw voxel grid and augmented together
(:func:`innerdist.augment.augment`); then raw is cut at the input ROI and the labels at the
output ROI grown by :meth:`InnerDistancePredictor.padding`, targets are computed from those
labels and cut at the output ROI. So a target near a crop edge equals the whole-volume
target (exactly where the distance is at most ``max_distance``, within ``epsilon``
elsewhere), before and after augmentation.

Where the read ROI leaves the data:

- raw is zero-padded (after normalisation, so 0 means "darkest");
- the mask is 0 there, so those voxels get no loss weight; the returned labels and targets
  are 0 there too;
- for computing targets, labels are extended by repeating their edge voxels. That makes the
  data border behave like a crop border: it is not an object boundary, and targets near it
  equal the whole-volume targets ``predictor.process(whole_labels)``. (Padding labels with 0
  instead would invent a boundary along the data border.)

The output ROI itself always lies inside the data (raw and labels overlap); only elastic
deformation can pull outside-the-data voxels into it, and those are masked.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from innerdist.arrays import NumpyArray
from innerdist.augment import AugmentConfig, required_margin
from innerdist.augment import augment as augment_crop
from innerdist.config import RoiConfig
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.normalize import check_normalization, measure_normalization, normalize_raw
from innerdist.volumes import num_channels, open_volume
from innerdist.volumes import read as _read
from innerdist.volumes import read_upsampled as _read_upsampled

__all__ = [
    "Crop",
    "CropSampler",
    "OpenedSource",
    "TrainingDataset",
    "VolumeSource",
    "open_sources",
]


class VolumeSource(BaseModel):
    """One training or validation volume.

    Labels come in one of two forms:

    - instance labels: ``labels`` is a list of dataset paths, one per predictor channel in
      the predictor's channel order (a single path is a one-channel list); 0 is background,
      other values are object ids;
    - semantic labels: ``labels`` is one dataset path and ``classes`` maps every channel
      name to the label values that make up its objects (``{"mito": [3], "er": [4, 5]}``).
      Each channel is then a binary mask, so touching objects of one class merge.

    Paths are ``container.zarr/dataset`` (see :func:`innerdist.volumes.open_volume`).
    ``mask`` (optional): 0 = do not train on this voxel; same voxel size as the labels.
    ``weight``: relative chance of drawing a crop from this volume. ``roi`` (optional,
    :class:`~innerdist.config.RoiConfig`, world units): the volume is used as if it were cut
    to this region; raw, labels and mask outside it are never read.
    """

    model_config = ConfigDict(extra="forbid")

    raw: str = Field(description="Raw intensity dataset path.")
    labels: str | list[str] = Field(description="Label dataset path(s), see above.")
    classes: dict[str, list[int]] | None = Field(
        default=None, description="Semantic labels: channel name -> label values of that class."
    )
    mask: str | None = Field(default=None, description="Optional mask dataset path (0 = ignore).")
    weight: float = Field(default=1.0, gt=0, description="Relative sampling weight.")
    roi: RoiConfig | None = Field(
        default=None, description="Use only this region (world units), as if cut to it."
    )

    @field_validator("raw", "mask", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("labels", mode="before")
    @classmethod
    def _paths_to_str(cls, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (list, tuple)):
            return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> VolumeSource:
        if isinstance(self.labels, list) and not self.labels:
            raise ValueError("labels must name at least one dataset, got []")
        if self.classes is not None:
            if not isinstance(self.labels, str):
                raise ValueError(
                    f"classes (semantic labels) need exactly one labels dataset, got {self.labels}"
                )
            if not self.classes:
                raise ValueError("classes must map at least one channel to label values, got {}")
            empty = [name for name, values in self.classes.items() if not values]
            if empty:
                raise ValueError(f"classes of channel(s) {empty} list no label values")
        if not math.isfinite(self.weight):
            raise ValueError(f"weight must be a finite positive number, got {self.weight}")
        return self

    @property
    def label_paths(self) -> list[str]:
        """The labels dataset path(s) as a list."""
        return [self.labels] if isinstance(self.labels, str) else list(self.labels)


@dataclass(frozen=True)
class OpenedSource:
    """A :class:`VolumeSource` whose datasets are open and checked (see :func:`open_sources`).

    ``roi`` (world units) is where raw and all labels overlap, within the source's ``roi``
    if it has one: output ROIs lie inside it. ``bounds`` is the region that may be read:
    the source's ``roi``, or ``None`` for the whole of every dataset.
    ``upsample`` is the labels voxel size divided by the raw voxel size, per axis.
    ``classes`` holds, per channel in predictor order, the label values of that channel
    (semantic labels) or is ``None`` (instance labels, one dataset per channel).
    """

    source: VolumeSource
    raw: Array
    labels: tuple[Array, ...]
    mask: Array | None
    classes: tuple[tuple[int, ...], ...] | None
    voxel_size: Coordinate
    upsample: Coordinate
    roi: Roi
    bounds: Roi | None = None

    def readable(self, array: Array) -> Roi:
        """The part of ``array`` that may be read (world units)."""
        return array.roi if self.bounds is None else array.roi.intersect(self.bounds)

    @property
    def num_raw_channels(self) -> int:
        """Channels of raw (1 when it has no channel axis)."""
        return num_channels(self.raw) or 1


def _grid_offset_ok(offset: Coordinate, reference: Coordinate, voxel: Coordinate) -> bool:
    return all((o - r) % v == 0 for o, r, v in zip(offset, reference, voxel, strict=True))


def _check_labels_not_empty(
    array: Array, path: str, classes: tuple[tuple[int, ...], ...] | None, roi: Roi
) -> None:
    """Raise unless ``array`` holds an object voxel in ``roi``; reads slab by slab,
    stopping early."""
    values = None if classes is None else np.unique(np.concatenate([list(c) for c in classes]))
    voxel = array.voxel_size
    step = 16 * voxel[0]
    begin = roi.begin[0]
    while begin < roi.end[0]:
        slab_shape = (min(step, roi.end[0] - begin), *roi.shape[1:])
        slab = _read(array, Roi((begin, *roi.begin[1:]), slab_shape))
        if values is None and slab.any():
            return
        if values is not None and np.isin(slab, values).any():
            return
        begin += step
    if values is None:
        raise ValueError(
            f"labels dataset {path!r} is empty: every voxel in {roi} is 0 (background); "
            "expected at least one object"
        )
    raise ValueError(
        f"labels dataset {path!r} contains none of the class values {values.tolist()} "
        f"anywhere in {roi}; expected at least one object"
    )


def open_sources(sources: Sequence[VolumeSource], channels: Sequence[str]) -> list[OpenedSource]:
    """Open every source and check it can give training crops for ``channels``.

    Checks, with errors naming the datasets and sizes involved: the datasets exist
    (:class:`FileNotFoundError`); raw has 2 or 3 spatial axes and at most one channel axis,
    labels and mask have none; all label datasets share one voxel size, which is raw's or
    an integer multiple of it per axis (e.g. raw ``(4, 4, 4)``, labels ``(8, 8, 8)``) and
    whose grid lines up with raw's; then the labels are upsampled to raw's grid by nearest
    neighbour: each label voxel is repeated ``labels_voxel // raw_voxel`` times per axis, so
    a raw voxel takes the label of the label voxel that contains it. The mask has the labels'
    voxel size and grid. Raw and labels overlap. No labels dataset is empty (for semantic
    labels: contains at least one class value). The channel count matches ``channels``
    (instance labels) or ``classes`` names exactly ``channels`` (semantic labels). All
    sources share raw's voxel size, spatial dimensions and channel count.
    """
    if isinstance(channels, str) or not all(isinstance(c, str) for c in channels):
        raise TypeError(f"channels must be a list of channel names, got {channels!r}")
    channels = list(channels)
    if isinstance(sources, VolumeSource) or not isinstance(sources, Sequence):
        raise TypeError(f"sources must be a list of VolumeSource, got {type(sources).__name__}")
    if not sources:
        raise ValueError("sources must contain at least one VolumeSource, got []")
    opened: list[OpenedSource] = []
    for source in sources:
        if not isinstance(source, VolumeSource):
            raise TypeError(f"sources must hold VolumeSource objects, got {type(source).__name__}")
        opened.append(_open_source(source, channels))
    first = opened[0]
    for other in opened[1:]:
        if other.voxel_size != first.voxel_size:
            raise ValueError(
                f"raw {other.source.raw!r} has voxel size {tuple(other.voxel_size)} but raw "
                f"{first.source.raw!r} has {tuple(first.voxel_size)}; all training volumes "
                "must share one voxel size"
            )
        if other.num_raw_channels != first.num_raw_channels:
            raise ValueError(
                f"raw {other.source.raw!r} has {other.num_raw_channels} channel(s) but raw "
                f"{first.source.raw!r} has {first.num_raw_channels}"
            )
    return opened


def _open_source(source: VolumeSource, channels: list[str]) -> OpenedSource:
    raw = open_volume(source.raw)
    dims = raw.spatial_dims
    if dims not in (2, 3):
        raise ValueError(
            f"raw {source.raw!r} has {dims} spatial axes {raw.axis_names}; expected 2 or 3"
        )
    num_channels(raw)  # raises on more than one channel axis or a channel axis not first
    voxel = Coordinate(raw.voxel_size)

    if source.classes is None:
        if len(source.label_paths) != len(channels):
            raise ValueError(
                f"source with raw {source.raw!r} lists {len(source.label_paths)} labels "
                f"dataset(s) {source.label_paths} but the predictor has {len(channels)} "
                f"channel(s) {channels}; give one instance-label dataset per channel, in order"
            )
        classes = None
    else:
        missing = [c for c in channels if c not in source.classes]
        unknown = [c for c in source.classes if c not in channels]
        if missing or unknown:
            raise ValueError(
                f"classes of source with raw {source.raw!r} name channels "
                f"{sorted(source.classes)}, expected exactly the predictor channels {channels} "
                f"(missing: {missing}, unknown: {unknown})"
            )
        classes = tuple(tuple(int(v) for v in source.classes[c]) for c in channels)

    labels: list[Array] = []
    for path in source.label_paths:
        array = open_volume(path)
        if array.channel_dims != 0:
            raise ValueError(
                f"labels {path!r} has axes {array.axis_names}; expected spatial axes only "
                "(one dataset per channel)"
            )
        if array.dtype != bool and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"labels {path!r} must be integer or bool, got dtype {array.dtype}")
        if array.spatial_dims != dims:
            raise ValueError(
                f"labels {path!r} has {array.spatial_dims} spatial axes but raw "
                f"{source.raw!r} has {dims}"
            )
        labels.append(array)
    labels_voxel = Coordinate(labels[0].voxel_size)
    for path, array in zip(source.label_paths[1:], labels[1:], strict=True):
        if Coordinate(array.voxel_size) != labels_voxel:
            raise ValueError(
                f"labels {path!r} has voxel size {tuple(array.voxel_size)} but labels "
                f"{source.label_paths[0]!r} has {tuple(labels_voxel)}; all label datasets of "
                "a source must share one voxel size"
            )
    if any(lv < v or lv % v != 0 for lv, v in zip(labels_voxel, voxel, strict=True)):
        raise ValueError(
            f"labels voxel size {tuple(labels_voxel)} ({source.label_paths[0]!r}) must equal "
            f"raw voxel size {tuple(voxel)} ({source.raw!r}) or be an integer multiple of it "
            "on every axis (labels are then upsampled by nearest neighbour)"
        )
    for path, array in zip(source.label_paths, labels, strict=True):
        if not _grid_offset_ok(array.roi.offset, raw.roi.offset, voxel):
            raise ValueError(
                f"labels {path!r} start at {tuple(array.roi.offset)}, which is not on the raw "
                f"voxel grid (raw {source.raw!r} starts at {tuple(raw.roi.offset)} with voxel "
                f"size {tuple(voxel)})"
            )

    roi = raw.roi
    for path, array in zip(source.label_paths, labels, strict=True):
        overlap = roi.intersect(array.roi)
        if overlap.empty:
            raise ValueError(
                f"raw {source.raw!r} covers {raw.roi} but labels {path!r} cover {array.roi} "
                "(world units): they do not overlap"
            )
        roi = overlap

    mask = None
    if source.mask is not None:
        mask = open_volume(source.mask)
        if mask.channel_dims != 0 or mask.spatial_dims != dims:
            raise ValueError(
                f"mask {source.mask!r} has axes {mask.axis_names}; expected {dims} spatial "
                "axes and no channel axis"
            )
        if Coordinate(mask.voxel_size) != labels_voxel:
            raise ValueError(
                f"mask {source.mask!r} has voxel size {tuple(mask.voxel_size)} but the labels "
                f"have {tuple(labels_voxel)}; they must match"
            )
        if not _grid_offset_ok(mask.roi.offset, labels[0].roi.offset, labels_voxel):
            raise ValueError(
                f"mask {source.mask!r} starts at {tuple(mask.roi.offset)}, which is not on the "
                f"labels voxel grid (offset {tuple(labels[0].roi.offset)}, voxel size "
                f"{tuple(labels_voxel)})"
            )

    bounds = None
    if source.roi is not None:
        bounds = _entry_roi(source.roi, source.raw, roi, voxel, labels_voxel,
                            labels[0].roi.offset)
        roi = bounds
    for path, array in zip(source.label_paths, labels, strict=True):
        # (On the labels' own grid: the entry's roi is checked to lie on it.)
        searched = array.roi if bounds is None else bounds.intersect(array.roi)
        _check_labels_not_empty(array, path, classes, searched)

    return OpenedSource(
        source=source,
        raw=raw,
        labels=tuple(labels),
        mask=mask,
        classes=classes,
        voxel_size=voxel,
        upsample=labels_voxel / voxel,
        roi=roi,
        bounds=bounds,
    )


def _entry_roi(
    entry: RoiConfig, raw: str, data: Roi, voxel: Coordinate, labels_voxel: Coordinate,
    labels_offset: Coordinate,
) -> Roi:
    """A source's ``roi`` as a checked :class:`Roi`: inside ``data`` (where raw and
    labels overlap) and on the voxel grids of raw and labels."""
    roi = entry.to_roi()
    where = f"roi {entry.begin}..{entry.end} of the source with raw {raw!r}"
    if roi.dims != data.dims:
        raise ValueError(f"{where} has {roi.dims} axes but the data has {data.dims}")
    for name, grid, origin in (("raw", voxel, data.offset), ("labels", labels_voxel,
                                                             labels_offset)):
        if not (
            (roi.begin - origin).is_multiple_of(grid) and roi.shape.is_multiple_of(grid)
        ):
            raise ValueError(
                f"{where} is not on the {name} voxel grid (voxel size {tuple(grid)}, "
                f"offset {tuple(origin)}); begin and end must be multiples of the voxel size "
                "from there"
            )
    if not data.contains(roi):
        raise ValueError(
            f"{where} (world units) is not inside the region {data.begin}..{data.end} where "
            "raw and labels overlap"
        )
    return roi


@dataclass(frozen=True)
class Crop:
    """One training sample, plus where it came from.

    ``raw`` float32 ``(C_in, *input_shape)``; ``target`` and ``weight`` float32 and
    ``labels`` int64, all ``(C, *output_shape)``; ``mask`` uint8 ``(1, *output_shape)``
    (1 = voxel inside the data and not masked out). ``output_roi`` is the world ROI of the
    output before augmentation, ``source`` the index of the volume, ``tries`` how many
    crops were drawn to meet ``min_foreground_fraction``.
    """

    raw: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    source: int
    output_roi: Roi
    tries: int

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays only: keys ``raw``, ``target``, ``weight``, ``labels``, ``mask``."""
        return {
            "raw": self.raw,
            "target": self.target,
            "weight": self.weight,
            "labels": self.labels,
            "mask": self.mask,
        }


class _CentreGrid:
    """Uniform draws of output-ROI positions (voxel index on the grid of allowed positions).

    Without a mask every position in ``counts`` is allowed. With one, a position is drawn
    uniformly among the allowed ones without listing them all: pick a rank among the
    allowed positions, find its slice along the first axis from per-slice counts, then its
    place within that slice.
    """

    def __init__(self, counts: Coordinate, allowed: np.ndarray | None) -> None:
        self.counts = counts
        self.allowed = allowed
        if allowed is not None:
            self._cumulative = np.cumsum(allowed.reshape(allowed.shape[0], -1).sum(axis=1))

    def draw(self, rng: np.random.Generator) -> Coordinate:
        if self.allowed is None:
            return Coordinate(int(rng.integers(0, n)) for n in self.counts)
        rank = int(rng.integers(0, int(self._cumulative[-1])))
        first = int(np.searchsorted(self._cumulative, rank, side="right"))
        within = rank - (int(self._cumulative[first - 1]) if first > 0 else 0)
        flat = int(np.flatnonzero(self.allowed[first])[within])
        rest = np.unravel_index(flat, self.allowed.shape[1:])
        return Coordinate((first, *(int(r) for r in rest)))


def _shape(value: Sequence[int], what: str, dims: int | None = None) -> Coordinate:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise TypeError(f"{what} must be a sequence of integers (voxels), got {value!r}")
    values = list(value)
    if dims is not None and len(values) != dims:
        raise ValueError(f"{what} must have {dims} entries (voxels per axis), got {values}")
    if len(values) not in (2, 3):
        raise ValueError(f"{what} must have 2 or 3 entries (voxels per axis), got {values}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{what} entries must be integers (voxels), got {values}")
        if v < 1:
            raise ValueError(f"{what} entries must be >= 1 voxel, got {values}")
    return Coordinate(int(v) for v in values)


class CropSampler:
    """Draw random training crops (see the module docstring for the geometry).

    Parameters
    ----------
    sources:
        :class:`VolumeSource` objects (opened and checked with :func:`open_sources`) or
        already :class:`OpenedSource` ones.
    predictor:
        Makes targets and weights; its channels fix the label channels.
    input_shape, output_shape:
        Network input and output shapes in voxels (e.g. ``unet.input_shape`` and
        ``unet.output_shape(unet.input_shape)``); ``input - output`` must be even: the
        context is half of it on each side.
    augment:
        Augmentation settings; :meth:`AugmentConfig.disabled` for none (validation).
    normalization:
        ``{"min": a, "max": b}`` (raw units) -> ``(x - a) / (b - a)``, by
        :func:`innerdist.normalize.normalize_raw`; ``None`` measures it on the sources
        (:func:`innerdist.normalize.measure_normalization`: the data's own percentiles).
    min_foreground_fraction:
        Redraw a crop (up to ``max_tries`` crops in all) until at least this fraction of its
        output voxels is object in some channel (counted before augmentation); if none
        qualifies, the last crop is used and a ``RuntimeWarning`` is issued.

    Crop placement: a volume is picked with probability proportional to its ``weight``,
    then an output ROI uniformly among those on the raw voxel grid that lie inside the
    volume's :attr:`OpenedSource.roi` and, with a mask, have mask > 0 at their centre voxel
    (``output_roi.begin + (output_shape // 2) * voxel_size``).

    Attributes (all in voxels of the raw grid, per axis): ``context`` (input minus output,
    halved), ``target_padding`` (``predictor.padding`` in voxels), ``margin`` (elastic
    deformation margin, :func:`innerdist.augment.required_margin`) and ``read_growth``
    (``max(context, target_padding) + margin``: how far the read ROI extends beyond the
    output ROI on each side); ``voxel_size`` (world units).

    Loss weights are balanced per crop (``create_weight`` with ``moving_class_counts=None``):
    running counts would make every sample depend on all samples drawn before it, in
    whichever worker drew them, so a sample would no longer be a function of
    ``(seed, index)`` and a resumed run would see different weights.
    """

    sources: list[OpenedSource]
    predictor: InnerDistancePredictor
    augment: AugmentConfig
    normalization: dict[str, Any]
    input_shape: Coordinate
    output_shape: Coordinate
    voxel_size: Coordinate
    context: Coordinate
    target_padding: Coordinate
    margin: Coordinate
    read_growth: Coordinate
    min_foreground_fraction: float
    max_tries: int
    _probabilities: np.ndarray
    _centres: list[_CentreGrid]

    def __init__(
        self,
        sources: Sequence[VolumeSource | OpenedSource],
        predictor: InnerDistancePredictor,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        *,
        augment: AugmentConfig | None = None,
        normalization: Mapping[str, Any] | None = None,
        min_foreground_fraction: float = 0.0,
        max_tries: int = 50,
    ) -> None:
        if not isinstance(predictor, InnerDistancePredictor):
            raise TypeError(
                f"predictor must be an InnerDistancePredictor, got {type(predictor).__name__}"
            )
        if augment is None:
            augment = AugmentConfig()
        if not isinstance(augment, AugmentConfig):
            raise TypeError(f"augment must be an AugmentConfig, got {type(augment).__name__}")
        if isinstance(sources, (VolumeSource, OpenedSource)) or not isinstance(sources, Sequence):
            raise TypeError(f"sources must be a list of VolumeSource, got {sources!r}")
        if not sources:
            raise ValueError("sources must contain at least one volume, got []")
        if all(isinstance(s, OpenedSource) for s in sources):
            opened = [s for s in sources if isinstance(s, OpenedSource)]
        elif all(isinstance(s, VolumeSource) for s in sources):
            opened = open_sources(
                [s for s in sources if isinstance(s, VolumeSource)], predictor.channels
            )
        else:
            raise TypeError(
                "sources must be all VolumeSource or all OpenedSource objects, got "
                f"{[type(s).__name__ for s in sources]}"
            )
        for s in opened:
            if s.classes is None and len(s.labels) != predictor.embedding_dims:
                raise ValueError(
                    f"source with raw {s.source.raw!r} has {len(s.labels)} label channel(s) "
                    f"but the predictor has {predictor.embedding_dims}"
                )
        dims = opened[0].raw.spatial_dims
        self.input_shape = _shape(input_shape, "input_shape")
        if self.input_shape.dims != dims:
            raise ValueError(
                f"input_shape {tuple(self.input_shape)} has {self.input_shape.dims} axes but "
                f"the data ({opened[0].source.raw!r}) has {dims} spatial axes"
            )
        self.output_shape = _shape(output_shape, "output_shape", dims)
        growth = self.input_shape - self.output_shape
        if any(g < 0 or g % 2 for g in growth):
            raise ValueError(
                f"input_shape {tuple(self.input_shape)} minus output_shape "
                f"{tuple(self.output_shape)} must be even and >= 0 on every axis (the context "
                "is half of it on each side)"
            )
        if (
            isinstance(min_foreground_fraction, bool)
            or not isinstance(min_foreground_fraction, numbers.Real)
            or not 0.0 <= float(min_foreground_fraction) <= 1.0
        ):
            raise ValueError(
                f"min_foreground_fraction must be a number in [0, 1], got "
                f"{min_foreground_fraction!r}"
            )
        if isinstance(max_tries, bool) or not isinstance(max_tries, numbers.Integral):
            raise TypeError(f"max_tries must be an integer, got {max_tries!r}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")

        self.sources = opened
        self.predictor = predictor
        self.augment = augment
        if normalization is None:
            normalization = measure_normalization(
                [(s.raw, s.roi, s.source.raw) for s in opened]
            )
        self.normalization = check_normalization(normalization, require_dtype=False)
        self.min_foreground_fraction = float(min_foreground_fraction)
        self.max_tries = int(max_tries)
        self.voxel_size = opened[0].voxel_size
        self.context = growth / 2
        self.target_padding = predictor.padding(self.voxel_size) / self.voxel_size
        self.margin = Coordinate(required_margin(augment, self.voxel_size))
        # Raw needs the context, labels need the target padding: read the larger of the two
        # for all three arrays so one augmentation moves them all the same way.
        self.read_growth = Coordinate(
            max(c, p) + m
            for c, p, m in zip(self.context, self.target_padding, self.margin, strict=True)
        )

        output_world = self.output_shape * self.voxel_size
        for s in opened:
            if any(o > r for o, r in zip(output_world, s.roi.shape, strict=True)):
                raise ValueError(
                    f"output crop of {tuple(self.output_shape)} voxels = {tuple(output_world)} "
                    f"world units does not fit into the data of {s.source.raw!r}, where raw "
                    f"and labels overlap in {s.roi} ({tuple(s.roi.shape / s.voxel_size)} "
                    "voxels); use a smaller network output or a bigger volume"
                )
        weights = np.array([s.source.weight for s in opened], dtype=np.float64)
        self._probabilities = weights / weights.sum()
        self._centres = [self._allowed_centres(s) for s in opened]

        read_shape = self.output_shape + self.read_growth * 2
        if augment.transpose:
            for a in range(dims):
                for b in range(a + 1, dims):
                    same_voxel = self.voxel_size[a] == self.voxel_size[b]
                    if same_voxel and read_shape[a] != read_shape[b]:
                        warnings.warn(
                            f"axes {a} and {b} share voxel size {self.voxel_size[a]} but the "
                            f"crop is {read_shape[a]} vs {read_shape[b]} voxels along them, so "
                            "they are never transposed; use equal input/output sizes there",
                            RuntimeWarning,
                            stacklevel=2,
                        )

    @property
    def num_in_channels(self) -> int:
        """Channels of the raw input."""
        return self.sources[0].num_raw_channels

    @property
    def num_channels(self) -> int:
        """Channels of targets, weights and labels (the predictor's channels)."""
        return self.predictor.embedding_dims

    def _allowed_centres(self, s: OpenedSource) -> _CentreGrid:
        """The output-ROI positions of ``s``, and with a mask which of them may be used."""
        counts = (s.roi.shape - self.output_shape * s.voxel_size) / s.voxel_size + 1
        if s.mask is None:
            return _CentreGrid(counts, None)
        centre_roi = Roi(
            s.roi.begin + (self.output_shape // 2) * s.voxel_size, counts * s.voxel_size
        )
        allowed = _read_upsampled(s.mask, centre_roi, s.upsample, "zero", s.bounds) != 0
        if not allowed.any():
            raise ValueError(
                f"mask {s.source.mask!r} is 0 at every voxel of {centre_roi} where an output "
                f"crop of {tuple(self.output_shape)} voxels can be centred"
            )
        return _CentreGrid(counts, allowed)

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One training sample as a dict of arrays (see :class:`Crop` for keys and shapes)."""
        return self.sample_crop(rng).as_dict()

    def sample_crop(self, rng: np.random.Generator) -> Crop:
        """One training sample with its origin; every random choice is drawn from ``rng``."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                f"rng must be a numpy Generator (np.random.default_rng(...)), got "
                f"{type(rng).__name__}"
            )
        index, output_roi, labels, tries = self._place(rng)
        s = self.sources[index]
        voxel = s.voxel_size
        read_roi = output_roi.grow(self.read_growth * voxel, self.read_growth * voxel)
        raw = self._read_raw(s, read_roi)
        inside = _inside(read_roi, s.roi, voxel)
        mask = inside.copy()
        if s.mask is not None:
            mask &= _read_upsampled(s.mask, read_roi, s.upsample, "zero", s.bounds) != 0
        # The "inside the data" indicator rides along as an extra label channel, so it is
        # moved exactly like the labels (nearest neighbour).
        stacked = np.concatenate([labels, inside[np.newaxis].astype(labels.dtype)])
        raw, stacked, moved_mask = augment_crop(
            raw, stacked, mask.view(np.uint8), voxel, self.augment, rng
        )
        mask = mask if moved_mask is None else moved_mask != 0  # never None: we passed one
        labels, inside = stacked[:-1], stacked[-1] != 0

        growth = self.read_growth
        pad = self.target_padding
        raw = raw[_centre(growth - self.context, self.input_shape, channels=True)]
        padded = labels[_centre(growth - pad, self.output_shape + pad * 2, channels=True)]
        axes = ["c^", *["z", "y", "x"][3 - len(self.output_shape) :]]
        padded_roi = output_roi.grow(pad * voxel, pad * voxel)
        target_array = self.predictor.create_target(
            NumpyArray.from_np_array(padded, padded_roi, voxel, axes)
        )
        target = np.array(target_array.data[_centre(pad, self.output_shape, channels=True)])
        out = _centre(growth, self.output_shape)
        inside_out = inside[out]
        labels_out = np.where(inside_out, labels[_centre(growth, self.output_shape, True)], 0)
        mask_out = mask[out] & inside_out
        target *= inside_out
        weight, _ = self.predictor.create_weight(
            NumpyArray.from_np_array(labels_out, output_roi, voxel, axes),
            NumpyArray.from_np_array(target, output_roi, voxel, axes),
            mask_out,
            moving_class_counts=None,
        )
        return Crop(
            raw=np.ascontiguousarray(raw, dtype=np.float32),
            target=target.astype(np.float32, copy=False),
            weight=np.ascontiguousarray(weight.data, dtype=np.float32),
            labels=labels_out.astype(np.int64, copy=False),
            mask=mask_out.astype(np.uint8)[np.newaxis],
            source=index,
            output_roi=output_roi,
            tries=tries,
        )

    def _place(self, rng: np.random.Generator) -> tuple[int, Roi, np.ndarray, int]:
        """Pick volume and output ROI, redrawing for ``min_foreground_fraction``.

        Returns the volume index, the output ROI, the labels at the read ROI and the
        number of tries.
        """
        tries = 0
        while tries < self.max_tries:
            tries += 1
            index = int(rng.choice(len(self.sources), p=self._probabilities))
            s = self.sources[index]
            position = self._centres[index].draw(rng)
            output_roi = Roi(
                s.roi.begin + position * s.voxel_size, self.output_shape * s.voxel_size
            )
            read_roi = output_roi.grow(
                self.read_growth * s.voxel_size, self.read_growth * s.voxel_size
            )
            labels = self._read_labels(s, read_roi)
            fraction = self._foreground_fraction(labels)
            if fraction >= self.min_foreground_fraction:
                break
        else:
            warnings.warn(
                f"no crop with foreground fraction >= {self.min_foreground_fraction} in "
                f"{self.max_tries} tries; using the last one ({fraction:.3f}, raw "
                f"{s.source.raw!r}, output roi {output_roi})",
                RuntimeWarning,
                stacklevel=3,
            )
        return index, output_roi, labels, tries

    def _read_labels(self, s: OpenedSource, roi: Roi) -> np.ndarray:
        """``(C, *shape)`` int64 labels on the raw grid, edge-extended outside the data."""
        if s.classes is None:
            channels = [
                _read_upsampled(a, roi, s.upsample, "edge", s.bounds) for a in s.labels
            ]
            return np.stack([c.astype(np.int64, copy=False) for c in channels])
        semantic = _read_upsampled(s.labels[0], roi, s.upsample, "edge", s.bounds)
        return np.stack([np.isin(semantic, values).astype(np.int64) for values in s.classes])

    def _foreground_fraction(self, labels: np.ndarray) -> float:
        if self.min_foreground_fraction <= 0:
            return 1.0
        out = labels[_centre(self.read_growth, self.output_shape, channels=True)]
        return float(np.mean(np.any(out != 0, axis=0)))

    def _read_raw(self, s: OpenedSource, roi: Roi) -> np.ndarray:
        """``(C_in, *shape)`` normalised float32 raw, zero outside the data."""
        inside = roi.intersect(s.readable(s.raw))
        data = normalize_raw(
            _read(s.raw, inside),
            self.normalization,
            where=f"raw {s.source.raw!r} ROI {inside} (world units)",
        )
        if s.raw.channel_dims == 0:
            data = data[np.newaxis]
        before = (inside.begin - roi.begin) / s.voxel_size
        after = (roi.end - inside.end) / s.voxel_size
        if any(before) or any(after):
            data = np.pad(data, [(0, 0), *zip(before, after, strict=True)], mode="constant")
        return data


def _centre(border: Coordinate, shape: Coordinate, channels: bool = False) -> tuple[slice, ...]:
    """Slices cutting ``shape`` voxels after ``border`` voxels on every spatial axis.

    ``channels=True`` adds a leading ``slice(None)`` for a channel axis.
    """
    lead: tuple[slice, ...] = (slice(None),) if channels else ()
    return lead + tuple(slice(b, b + s) for b, s in zip(border, shape, strict=True))


def _inside(roi: Roi, data_roi: Roi, voxel: Coordinate) -> np.ndarray:
    """Boolean array over ``roi``: True on voxels inside ``data_roi``."""
    shape = tuple(roi.shape / voxel)
    result = np.zeros(shape, dtype=bool)
    overlap = roi.intersect(data_roi)
    if not overlap.empty:
        begin = (overlap.begin - roi.begin) / voxel
        result[_centre(begin, overlap.shape / voxel)] = True
    return result


class TrainingDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """A map-style torch dataset of random crops: item ``i`` is global sample ``i``.

    Item ``i`` is drawn with ``np.random.default_rng([seed, i])``, so the sample stream is
    the same whatever the number of loader workers, whatever order items are fetched in, and
    after resuming at any iteration (fetch indices ``iteration * batch_size + b``).
    ``length`` is the number of samples, e.g. ``iterations * batch_size``. Items are dicts of
    tensors with the keys of :meth:`CropSampler.sample`.

    Any ``DataLoader`` start method works: items hold only plain arrays, and the threads a
    forked worker inherits half-copied (zarr's event loop, the thread pool of
    :mod:`innerdist.distance`) are reset in the child by their owners. The trainer still
    asks for ``"spawn"``: it does not depend on every library in the process being
    fork-safe, and it is what macOS and Windows use anyway. (daisy 2 always spawns its
    block workers; its scheduler runs threads that a fork cannot copy.)
    """

    def __init__(self, sampler: CropSampler, seed: int, length: int) -> None:
        if not isinstance(sampler, CropSampler):
            raise TypeError(f"sampler must be a CropSampler, got {type(sampler).__name__}")
        for what, value in (("seed", seed), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{what} must be an integer, got {value!r}")
            if value < 0:
                raise ValueError(f"{what} must be >= 0, got {value}")
        self.sampler = sampler
        self.seed = int(seed)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"index must be an integer, got {index!r}")
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, int(index)])
        return {k: torch.from_numpy(v) for k, v in self.sampler.sample(rng).items()}
