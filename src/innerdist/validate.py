"""Validation during training: predict, sweep post-processing levels, score, pick the best.

Every ``validation_interval`` iterations the trainer predicts each validation volume in
memory (:func:`innerdist.predict.predict_array`), turns the prediction into instances for
every swept pair of levels and every ``min_size`` (:func:`innerdist.segment.instances`:
seeds above the seed level, grown within the foreground level, objects below ``min_size``
dropped) and scores them against the ground truth (:mod:`innerdist.evaluate`). One row
per (iteration, volume, levels, min_size) goes to ``validation.csv``; :func:`select_best`
then reads those rows and names, per criterion, the best iteration and post-processing::

    iteration  volume  foreground_level  seed_level  min_size  instances.f1_score@0.5
    1000       v.zarr  0.05              0.6         0         0.71
    1000       v.zarr  0.05              0.8         0         0.64
    2000       v.zarr  0.05              0.6         0         0.83   <- best

A criterion's value for one (iteration, levels, min_size) is the mean over the channels
and validation volumes. Ties go to the earlier iteration, then to the earlier entry of the
sweep, so the choice is deterministic.

The whole validation volume is held in memory (that is what "validation volume" means
here: a few hundred megavoxels at most); the network sees real raw data as context where
the raw extends beyond the labels, mirrored data beyond the raw's edge (as in prediction).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from funlib.geometry import Coordinate, Roi

from innerdist.config import (
    SourceConfig,
    ValidationConfig,
    criterion_direction,
    criterion_iou_threshold,
)

if TYPE_CHECKING:

    from innerdist.model import Model

__all__ = [
    "ROW_KEYS",
    "Best",
    "ValidationVolume",
    "criterion_value",
    "load_validation_volumes",
    "min_size_voxels",
    "score_prediction",
    "scores_per_iteration",
    "select_best",
    "validate",
]

#: The leading columns of a validation row; the criteria follow.
ROW_KEYS = ("iteration", "volume", "foreground_level", "seed_level", "min_size", "seed_dynamic")


@dataclass(frozen=True)
class Best:
    """The best (iteration, levels) for one criterion; ``min_size`` in world units."""

    criterion: str
    iteration: int
    score: float
    foreground_level: float
    seed_level: float
    min_size: float
    seed_dynamic: float = 0.0  # world units; 0: level seeds

    def postprocessing(self, voxel_size: Sequence[int]) -> dict[str, float | int]:
        """Post-processing params for a checkpoint: levels, ``min_size`` in voxels (the
        smallest kept object, see :func:`min_size_voxels`) and ``seed_dynamic`` (world
        units)."""
        return {
            "foreground_level": self.foreground_level,
            "seed_level": self.seed_level,
            "min_size": min_size_voxels(self.min_size, voxel_size),
            "seed_dynamic": self.seed_dynamic,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "score": self.score,
            "foreground_level": self.foreground_level,
            "seed_level": self.seed_level,
            "min_size": self.min_size,
            "seed_dynamic": self.seed_dynamic,
        }


def min_size_voxels(min_size: float, voxel_size: Sequence[int]) -> int:
    """Objects of fewer voxels than this are smaller than ``min_size`` world units
    (nm^3 in 3-D, nm^2 in 2-D): ``ceil(min_size / prod(voxel_size))``.

    >>> min_size_voxels(1000, (10, 5, 5)), min_size_voxels(0, (4, 4))
    (4, 0)
    """
    if not min_size >= 0:
        raise ValueError(f"min_size must be >= 0 (world units), got {min_size}")
    return int(math.ceil(min_size / math.prod(int(v) for v in voxel_size) - 1e-9))


# --- picking the best ------------------------------------------------------------------


_Key = tuple[int, float, float, float, float]


def _key(row: Mapping[str, Any]) -> _Key:
    return (
        int(row["iteration"]),
        float(row["foreground_level"]),
        float(row["seed_level"]),
        float(row["min_size"]),
        float(row.get("seed_dynamic", 0.0)),
    )


def _means(rows: Sequence[Mapping[str, Any]], criterion: str) -> list[tuple[_Key, float]]:
    """Mean of ``criterion`` over the volumes of each (iteration, levels), in row order."""
    sums: dict[_Key, list[float]] = {}
    for row in rows:
        if criterion not in row:
            raise ValueError(f"validation row {dict(row)} has no value for {criterion!r}")
        value = float(row[criterion])
        if math.isnan(value):
            continue
        sums.setdefault(_key(row), []).append(value)
    return [(k, float(np.mean(v))) for k, v in sums.items()]


def select_best(
    rows: Sequence[Mapping[str, Any]], criteria: Sequence[str]
) -> dict[str, Best]:
    """Per criterion, the (iteration, levels) with the best mean score over the volumes.

    ``rows`` are validation rows (keys :data:`ROW_KEYS` plus one per criterion). Larger is
    better unless the criterion is an error (see :func:`innerdist.config.criterion_direction`).
    Ties go to the earliest iteration, then to the first level pair in row order. A
    criterion without rows is left out.

    >>> rows = [
    ...     {"iteration": 10, "volume": "a", "foreground_level": 0.1, "seed_level": 0.5,
    ...      "min_size": 0, "binary.dice": 0.7},
    ...     {"iteration": 20, "volume": "a", "foreground_level": 0.1, "seed_level": 0.5,
    ...      "min_size": 0, "binary.dice": 0.9},
    ... ]
    >>> select_best(rows, ["binary.dice"])["binary.dice"].iteration
    20
    """
    best: dict[str, Best] = {}
    for criterion in criteria:
        sign = 1.0 if criterion_direction(criterion) == "max" else -1.0
        means = _means(rows, criterion)
        if not means:
            continue
        # Stable: among equal scores, the earliest iteration, then the earliest row wins.
        order = sorted(range(len(means)), key=lambda i: (-sign * means[i][1], means[i][0][0], i))
        (iteration, fg, seed, min_size, dynamic), score = means[order[0]]
        best[criterion] = Best(criterion, iteration, score, fg, seed, min_size, dynamic)
    return best


def scores_per_iteration(
    rows: Sequence[Mapping[str, Any]], criterion: str
) -> tuple[list[int], list[float]]:
    """For plotting: each validated iteration and its score at its own best levels."""
    sign = 1.0 if criterion_direction(criterion) == "max" else -1.0
    per: dict[int, float] = {}
    for (iteration, *_), value in _means(rows, criterion):
        if iteration not in per or sign * value > sign * per[iteration]:
            per[iteration] = value
    its = sorted(per)
    return its, [per[i] for i in its]


# --- scoring one prediction -------------------------------------------------------------


def criterion_value(
    criterion: str, binary: Mapping[str, Any] | None, instances: Mapping[str, Any] | None
) -> float:
    """Read a criterion (``binary.dice``, ``instances.f1_score@0.5``, ...) from the dicts
    returned by :func:`innerdist.evaluate.binary_scores` / ``instance_scores``."""
    family, _, name = criterion.partition(".")
    threshold = criterion_iou_threshold(criterion)
    if family == "binary":
        if binary is None:
            raise ValueError(f"criterion {criterion!r} needs binary scores")
        return float(binary[name])
    if instances is None:
        raise ValueError(f"criterion {criterion!r} needs instance scores")
    if threshold is None:
        return float(instances[name])
    score = name.partition("@")[0]
    for m in instances["matching"]:
        if math.isclose(float(m["iou_threshold"]), threshold):
            return float(m[score])
    raise ValueError(f"instance scores have no matching at IoU {threshold} for {criterion!r}")


def score_prediction(
    prediction: np.ndarray,
    labels: np.ndarray,
    voxel_size: Sequence[int],
    config: ValidationConfig,
    *,
    mask: np.ndarray | None = None,
    scale: float | None = None,
) -> list[dict[str, float]]:
    """Score one prediction for every swept level pair and seed dynamic.

    ``prediction`` (float, ``(C, *spatial)``, values in [0, 1)) and ``labels`` (instance
    ids, same shape) cover the same region; ``mask`` (spatial, 0 = ignore) is optional.
    Returns one dict per :meth:`ValidationConfig.level_pairs` entry, ``min_size``
    (world units) and seed dynamic (world units, see
    :meth:`ValidationConfig.seed_dynamics_for`), in that order, with the levels, the
    ``min_size``, the ``seed_dynamic`` and the mean over channels of every criterion.
    ``scale`` is the prediction's tanh scale (world units); without it only level seeds
    (``seed_dynamic`` 0) are tried.
    """
    from innerdist.evaluate import binary_scores, instance_scores
    from innerdist.watershed import instances, threshold_mask

    pred = np.asarray(prediction)
    gt = np.asarray(labels)
    if pred.shape != gt.shape or pred.ndim != len(voxel_size) + 1:
        raise ValueError(
            f"prediction {pred.shape} and labels {gt.shape} must both be (C, *spatial) with "
            f"{len(voxel_size)} spatial axes"
        )
    if mask is not None and np.asarray(mask).shape != pred.shape[1:]:
        raise ValueError(f"mask shape {np.shape(mask)} must be the spatial shape {pred.shape[1:]}")
    criteria = config.criteria
    want_binary = any(c.startswith("binary.") for c in criteria)
    want_instances = any(c.startswith("instances.") for c in criteria)
    thresholds = sorted(
        {t for c in criteria if (t := criterion_iou_threshold(c)) is not None} | {0.5}
    )
    min_sizes = config.min_sizes
    dynamics = config.seed_dynamics_for(voxel_size) if scale is not None else [0.0]

    binary_cache: dict[tuple[int, float], dict[str, Any]] = {}
    values: dict[tuple[float, float, float, float], dict[str, list[float]]] = {
        (fg, seed, m, h): {c: [] for c in criteria}
        for fg, seed in config.level_pairs()
        for m in min_sizes
        for h in dynamics
    }
    for c in range(pred.shape[0]):
        for fg, seed in config.level_pairs():
            binary = None
            if want_binary:
                if (c, fg) not in binary_cache:
                    # The thresholded foreground depends on the foreground level only.
                    binary_cache[(c, fg)] = binary_scores(
                        threshold_mask(pred[c], fg), gt[c], tuple(voxel_size), mask=mask
                    )
                binary = binary_cache[(c, fg)]
            for h in dynamics:
                segmentation = (
                    instances(pred[c], foreground_level=fg, seed_level=seed, seed_dynamic=h,
                              scale=scale or 1.0)
                    if want_instances
                    else None
                )
                for m in min_sizes:
                    inst = None
                    if segmentation is not None:
                        # Dropping small objects afterwards equals instances(min_size_voxels=)
                        # up to the numbering of the ids, which no score depends on.
                        sizes = np.bincount(segmentation.ravel().astype(np.intp))
                        small = sizes < min_size_voxels(m, voxel_size)
                        small[0] = False
                        kept = np.where(small[segmentation], 0, segmentation)
                        inst = instance_scores(kept, gt[c], mask=mask, iou_thresholds=thresholds)
                    for criterion in criteria:
                        values[(fg, seed, m, h)][criterion].append(
                            criterion_value(criterion, binary, inst)
                        )
    rows: list[dict[str, float]] = []
    for (fg, seed, m, h), per_criterion in values.items():
        row: dict[str, float] = {
            "foreground_level": fg, "seed_level": seed, "min_size": m, "seed_dynamic": h
        }
        row.update({k: float(np.mean(v)) for k, v in per_criterion.items()})
        rows.append(row)
    return rows


# --- validation volumes -----------------------------------------------------------------


@dataclass(frozen=True)
class ValidationVolume:
    """A validation volume held in memory.

    ``raw``: normalised float32 ``(C_in, *spatial)`` covering ``read_roi``; ``labels``:
    uint64 instance ids ``(C, *spatial)`` and ``mask`` (bool, spatial, or ``None``)
    covering ``roi``, the region that is scored (where raw and labels overlap). ROIs and
    ``voxel_size`` are in world units.
    """

    name: str
    raw: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None
    roi: Roi
    read_roi: Roi
    voxel_size: Coordinate

    def crop(self) -> tuple[slice, ...]:
        """Where ``roi`` lies in ``raw`` (spatial slices, voxels)."""
        begin = (self.roi.begin - self.read_roi.begin) / self.voxel_size
        shape = self.roi.shape / self.voxel_size
        return tuple(slice(b, b + s) for b, s in zip(begin, shape, strict=True))


def load_validation_volumes(
    sources: Sequence[SourceConfig],
    channels: Sequence[str],
    normalization: Mapping[str, Any],
    context: Sequence[int],
) -> list[ValidationVolume]:
    """Open, check and read every validation volume into memory.

    The checks are those of training data (:func:`innerdist.crops.open_sources`: datasets
    exist, voxel sizes fit, raw and labels overlap, labels not empty). Raw is read where
    raw and labels overlap, grown by ``context`` (voxels) as far as the raw reaches (within
    the source's ``roi`` if it has one), and
    normalised as training crops are (:func:`innerdist.normalize.normalize_raw`:
    ``(x - min) / (max - min)``; NaN raises ``ValueError``). Semantic labels
    become instances: each face-connected region of a channel's classes is one object.
    """
    import cc3d

    from innerdist.crops import VolumeSource, open_sources
    from innerdist.normalize import normalize_raw
    from innerdist.volumes import read_upsampled

    if not sources:
        return []
    opened = open_sources(
        [VolumeSource.model_validate(s.model_dump(exclude_none=True)) for s in sources],
        list(channels),
    )
    volumes: list[ValidationVolume] = []
    for s in opened:
        voxel = Coordinate(s.voxel_size)
        grow = Coordinate(context) * voxel
        read_roi = s.roi.grow(grow, grow).intersect(s.readable(s.raw))
        raw = normalize_raw(
            np.asarray(s.raw[read_roi]), normalization, where=f"{s.source.raw!r} {read_roi}"
        )
        if s.raw.channel_dims == 0:
            raw = raw[np.newaxis]
        if s.classes is None:
            labels = np.stack(
                [read_upsampled(a, s.roi, s.upsample).astype(np.uint64) for a in s.labels]
            )
        else:
            semantic = read_upsampled(s.labels[0], s.roi, s.upsample)
            connectivity: Literal[4, 6] = 6 if semantic.ndim == 3 else 4
            labels = np.stack(
                [
                    cc3d.connected_components(
                        np.isin(semantic, values), connectivity=connectivity
                    ).astype(np.uint64)
                    for values in s.classes
                ]
            )
        mask = None
        if s.mask is not None:
            mask = read_upsampled(s.mask, s.roi, s.upsample) != 0
        volumes.append(
            ValidationVolume(
                name=s.source.raw,
                raw=raw,
                labels=labels,
                mask=mask,
                roi=s.roi,
                read_roi=read_roi,
                voxel_size=voxel,
            )
        )
    return volumes


def validate(
    model: Model,
    volumes: Sequence[ValidationVolume],
    config: ValidationConfig,
    *,
    iteration: int,
    device: Any = None,
    scale: float | None = None,
) -> list[dict[str, Any]]:
    """Validation rows (keys :data:`ROW_KEYS` plus the criteria) for one iteration.

    The model is run in eval mode (its mode is restored afterwards) on ``device``.
    ``scale`` (the task's tanh scale, world units) enables the sweep over dynamic seeds.
    """
    from innerdist.predict import predict_array

    rows: list[dict[str, Any]] = []
    for volume in volumes:
        prediction = predict_array(model, volume.raw, device=device)
        prediction = prediction[(slice(None), *volume.crop())]
        for row in score_prediction(
            prediction, volume.labels, volume.voxel_size, config, mask=volume.mask,
            scale=scale,
        ):
            rows.append({"iteration": int(iteration), "volume": volume.name, **row})
    return rows
