"""Validation during training: predict, sweep post-processing, score, pick the best.

Every ``validation_interval`` iterations the trainer predicts each validation volume in
memory (:func:`innerdist.predict.predict_array`), turns the prediction into instances for
points of the post-processing sweep (:func:`innerdist.segment.instances`: seeds above the
seed level, grown within the foreground level, objects below ``min_size`` dropped) and
scores them against the ground truth (:mod:`innerdist.metrics`). One row per (iteration,
volume, point) goes to ``validation.csv``; :func:`select_best` then reads those rows and
names, per criterion, the best iteration and post-processing::

    iteration  volume  foreground_level  seed_level  min_size  instances.f1_score@0.5:0.9
    1000       v.zarr  0.05              0.6         0         0.61
    1000       v.zarr  0.1               0.6         0         0.66
    1000       v.zarr  0.075             0.6         0         0.64   <- refined
    2000       v.zarr  0.1               0.6         0         0.74   <- best

How the sweep and the choice work (one iteration; the first criterion steers):

1. **Grid.** Every admissible point of the configured grid
   (:meth:`innerdist.config.ValidationConfig.sweep`; ``foreground_level < seed_level``).
2. **Refinement** (``refine`` rounds). Around the best point so far, each swept axis gets
   the midpoints to the nearest values tried below and above; at the edge of what was
   tried, one step beyond it (within the parameter's range: levels in ``[0, 1)``, sizes
   ``>= 0``). One coordinate changes at a time, so a round costs at most two points per
   axis. A best value on the edge of the *configured* grid raises a ``RuntimeWarning``.
3. **Smoothing over levels** (``smooth_levels``). A point's selection score weighs its
   own score 2 and those of its nearest tried neighbours along each axis 1 (same
   iteration, other coordinates equal; see :func:`smoothed_scores`): on a small
   validation set one lucky point must not win against a broad plateau.
4. **Smoothing over checkpoints** (``smooth_checkpoints = w``). An iteration's selection
   score is the mean, over it and the ``w - 1`` validations before it, of each one's best
   level-smoothed score. Trailing, so a later validation never moves the choice back to
   an older checkpoint (whose weights may be pruned already).

A criterion's value for one (iteration, point) is the mean over channels and validation
volumes. Ties go to the earlier iteration, then to the earlier point in row order, so the
choice is deterministic.

The whole validation volume is held in memory (that is what "validation volume" means
here: a few hundred megavoxels at most); the network sees real raw data as context where
the raw extends beyond the labels, mirrored data beyond the raw's edge (as in prediction).

Adding a swept parameter: add it to :data:`SWEPT` (and its range to ``_RANGES``), to
:meth:`~innerdist.config.ValidationConfig.sweep`, and make it a keyword of
:func:`innerdist.segment.instances`; every parameter but ``min_size`` is passed there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from funlib.geometry import Coordinate, Roi

from innerdist.config import (
    SourceConfig,
    ValidationConfig,
    criterion_direction,
    criterion_iou_thresholds,
)

if TYPE_CHECKING:

    from innerdist.model import Model

__all__ = [
    "ROW_KEYS",
    "SWEPT",
    "Best",
    "ValidationVolume",
    "criterion_value",
    "edge_warnings",
    "grid_points",
    "load_validation_volumes",
    "min_size_voxels",
    "refinement",
    "score_prediction",
    "scores_per_iteration",
    "select_best",
    "smoothed_scores",
    "validate",
]

#: The swept post-processing parameters, in column order.
SWEPT = ("foreground_level", "seed_level", "min_size", "seed_dynamic")

#: The leading columns of a validation row; the criteria follow.
ROW_KEYS = ("iteration", "volume", *SWEPT)

# Where refinement may go: (lowest allowed, first value not allowed) per parameter.
_RANGES: dict[str, tuple[float, float]] = {
    "foreground_level": (0.0, 1.0),
    "seed_level": (0.0, 1.0),
    "min_size": (0.0, math.inf),
    "seed_dynamic": (0.0, math.inf),
}

Point = tuple[float, ...]


@dataclass(frozen=True)
class Best:
    """The best (iteration, post-processing) for one criterion.

    ``score`` is the criterion's mean over the volumes at that point (what was measured);
    ``selection_score`` the smoothed value it was chosen by. ``params`` holds the swept
    parameters, ``min_size`` in world units.
    """

    criterion: str
    iteration: int
    score: float
    params: Mapping[str, float] = field(default_factory=dict)
    selection_score: float | None = None

    @property
    def foreground_level(self) -> float:
        return float(self.params["foreground_level"])

    @property
    def seed_level(self) -> float:
        return float(self.params["seed_level"])

    @property
    def min_size(self) -> float:
        return float(self.params.get("min_size", 0.0))

    def postprocessing(self, voxel_size: Sequence[int]) -> dict[str, float | int]:
        """Post-processing params for a checkpoint: the levels, and ``min_size`` in voxels
        (the smallest kept object, see :func:`min_size_voxels`)."""
        out: dict[str, float | int] = {k: v for k, v in self.params.items() if k != "min_size"}
        out["min_size"] = min_size_voxels(self.min_size, voxel_size)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "score": self.score,
            **self.params,
            "selection_score": self.selection_score,
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


# --- the sweep ---------------------------------------------------------------------------


def _names(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The swept parameters present in the rows (all of :data:`SWEPT` in a training run)."""
    return tuple(p for p in SWEPT if rows and p in rows[0])


def _admissible(params: Mapping[str, float]) -> bool:
    fg, seed = params.get("foreground_level"), params.get("seed_level")
    return fg is None or seed is None or fg < seed


def grid_points(sweep: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every admissible point of a grid (``foreground_level < seed_level``), in sweep order
    (the last parameter varies fastest).

    >>> points = grid_points({"foreground_level": [0.1, 0.5], "seed_level": [0.3, 0.7]})
    >>> [(p["foreground_level"], p["seed_level"]) for p in points]
    [(0.1, 0.3), (0.1, 0.7), (0.5, 0.7)]
    """
    import itertools

    names = list(sweep)
    points = [
        dict(zip(names, (float(v) for v in values), strict=True))
        for values in itertools.product(*(sweep[n] for n in names))
    ]
    return [p for p in points if _admissible(p)]


def _step_beyond(best: float, inner: float, low: float, high: float) -> float | None:
    """One step from ``best`` away from ``inner`` (the nearest value tried on the other
    side), kept inside ``[low, high)``; ``None`` when there is no room."""
    candidate = best + (best - inner)
    if low <= candidate < high:
        return candidate
    bound = low if candidate < low else high
    if math.isinf(bound):
        return None
    middle = (best + bound) / 2
    return middle if low <= middle < high and middle != best else None


def refinement(
    best: Mapping[str, float], tried: Iterable[Mapping[str, float]]
) -> list[dict[str, float]]:
    """The points one refinement round tries around ``best``: per swept axis, the midpoints
    to the nearest values tried below and above (or one step beyond the edge of what was
    tried), other coordinates as in ``best``. Points tried already, inadmissible ones and
    axes with a single value tried are left out; values are rounded to 6 decimals.

    >>> refinement({"foreground_level": 0.2, "seed_level": 0.6},
    ...            [{"foreground_level": f, "seed_level": 0.6} for f in (0.05, 0.1, 0.2)])
    [{'foreground_level': 0.15, 'seed_level': 0.6}, {'foreground_level': 0.3, 'seed_level': 0.6}]
    """
    tried = [dict(t) for t in tried]
    seen = {tuple(sorted(t.items())) for t in tried}
    out: list[dict[str, float]] = []
    for name, value in best.items():
        values = sorted({float(t[name]) for t in tried})
        if len(values) < 2:
            continue
        below = [v for v in values if v < value]
        above = [v for v in values if v > value]
        low, high = _RANGES.get(name, (0.0, math.inf))
        candidates = [
            (below[-1] + value) / 2 if below else _step_beyond(value, above[0], low, high),
            (value + above[0]) / 2 if above else _step_beyond(value, below[-1], low, high),
        ]
        for c in candidates:
            if c is None:
                continue
            point = {**best, name: round(c, 6)}
            key = tuple(sorted(point.items()))
            if point[name] != value and key not in seen and _admissible(point):
                seen.add(key)
                out.append(point)
    return out


def edge_warnings(
    best: Mapping[str, float], sweep: Mapping[str, Sequence[float]]
) -> list[str]:
    """One line per parameter whose best value is on (or beyond) the edge of its grid.

    >>> edge_warnings({"foreground_level": 0.2, "seed_level": 0.6},
    ...               {"foreground_level": [0.05, 0.1, 0.2], "seed_level": [0.4, 0.6, 0.8]})
    ['foreground_level: the best value 0.2 is at the top of the swept grid [0.05, 0.1, 0.2]']
    """
    lines = []
    for name, value in best.items():
        grid = sorted(float(v) for v in sweep.get(name, ()))
        if len(grid) < 2:
            continue
        where = "top" if value >= grid[-1] else "bottom" if value <= grid[0] else None
        if where is not None:
            beyond = "" if value in grid else " (refinement went beyond it)"
            lines.append(
                f"{name}: the best value {value:g} is at the {where} of the swept grid "
                f"{[float(f'{g:g}') for g in grid]}{beyond}"
            )
    return lines


# --- picking the best ------------------------------------------------------------------


def _means(
    rows: Sequence[Mapping[str, Any]], criterion: str, names: Sequence[str]
) -> dict[int, dict[Point, float]]:
    """Per iteration, the mean of ``criterion`` over the volumes of each point (row order)."""
    sums: dict[int, dict[Point, list[float]]] = {}
    for row in rows:
        if criterion not in row:
            raise ValueError(f"validation row {dict(row)} has no value for {criterion!r}")
        value = float(row[criterion])
        if math.isnan(value):
            continue
        point = tuple(float(row[n]) for n in names)
        sums.setdefault(int(row["iteration"]), {}).setdefault(point, []).append(value)
    return {
        it: {p: float(np.mean(v)) for p, v in points.items()} for it, points in sums.items()
    }


def smoothed_scores(scores: Mapping[Point, float]) -> dict[Point, float]:
    """Each point's score smoothed with its nearest neighbours, points of one iteration.

    Along every axis on which more than one value was tried, the point and its nearest
    neighbours below and above (differing in that coordinate only) are weighted 1, 2, 1;
    a missing neighbour (at an edge, or a pair ``foreground_level >= seed_level``) counts
    as the point itself, so edge points are not favoured by averaging fewer values. The
    axes are averaged.

    >>> smoothed_scores({(0.1,): 0.5, (0.2,): 0.9, (0.3,): 0.4, (0.4,): 0.8})
    {(0.1,): 0.6, (0.2,): 0.675, (0.3,): 0.625, (0.4,): 0.7}
    """
    points = list(scores)
    if not points:
        return {}
    axes = [a for a in range(len(points[0])) if len({p[a] for p in points}) > 1]
    out: dict[Point, float] = {}
    for p in points:
        if not axes:
            out[p] = scores[p]
            continue
        total = 0.0
        for axis in axes:
            line = [
                q for q in points if all(q[i] == p[i] for i in range(len(p)) if i != axis)
            ]
            below = [q for q in line if q[axis] < p[axis]]
            above = [q for q in line if q[axis] > p[axis]]
            low = scores[max(below, key=lambda q: q[axis])] if below else scores[p]
            high = scores[min(above, key=lambda q: q[axis])] if above else scores[p]
            total += (low + 2 * scores[p] + high) / 4
        out[p] = round(total / len(axes), 12)
    return out


def _best_point(
    scores: Mapping[Point, float], sign: float, smooth: bool
) -> tuple[Point, float]:
    """The point with the best (smoothed) score; ties to the first in row order."""
    selection = smoothed_scores(scores) if smooth else dict(scores)
    best = max(selection, key=lambda p: sign * selection[p])  # max keeps the first of ties
    return best, selection[best]


def select_best(
    rows: Sequence[Mapping[str, Any]],
    criteria: Sequence[str],
    *,
    smooth_levels: bool = True,
    smooth_checkpoints: int = 2,
) -> dict[str, Best]:
    """Per criterion, the iteration and post-processing chosen from validation rows.

    ``rows`` are validation rows (keys :data:`ROW_KEYS` plus one per criterion). Larger is
    better unless the criterion is an error (see :func:`innerdist.config.criterion_direction`).
    The smoothing is described in the module docstring (``smooth_levels=False,
    smooth_checkpoints=1``: the plain best mean). Ties go to the earliest iteration, then
    to the first point in row order. A criterion without rows is left out.

    >>> rows = [
    ...     {"iteration": 10, "volume": "a", "foreground_level": 0.1, "seed_level": 0.5,
    ...      "min_size": 0, "binary.dice": 0.7},
    ...     {"iteration": 20, "volume": "a", "foreground_level": 0.1, "seed_level": 0.5,
    ...      "min_size": 0, "binary.dice": 0.9},
    ... ]
    >>> best = select_best(rows, ["binary.dice"])["binary.dice"]
    >>> best.iteration, best.score, best.selection_score
    (20, 0.9, 0.8)
    """
    if isinstance(smooth_checkpoints, bool) or not isinstance(smooth_checkpoints, int) or (
        smooth_checkpoints < 1
    ):
        raise ValueError(f"smooth_checkpoints must be an integer >= 1, got {smooth_checkpoints!r}")
    names = _names(rows)
    best: dict[str, Best] = {}
    for criterion in criteria:
        sign = 1.0 if criterion_direction(criterion) == "max" else -1.0
        means = _means(rows, criterion, names)
        if not means:
            continue
        iterations = sorted(means)
        per_iteration = {it: _best_point(means[it], sign, smooth_levels) for it in iterations}
        choice: tuple[float, int] | None = None
        for k, it in enumerate(iterations):
            window = iterations[max(0, k - smooth_checkpoints + 1) : k + 1]
            value = float(np.mean([per_iteration[j][1] for j in window]))
            if choice is None or sign * value > sign * choice[0]:
                choice = (value, it)
        assert choice is not None
        selection, iteration = choice
        point = per_iteration[iteration][0]
        best[criterion] = Best(
            criterion,
            iteration,
            means[iteration][point],
            dict(zip(names, point, strict=True)),
            round(selection, 12),
        )
    return best


def scores_per_iteration(
    rows: Sequence[Mapping[str, Any]], criterion: str
) -> tuple[list[int], list[float]]:
    """For plotting: each validated iteration and its score at its own best point."""
    sign = 1.0 if criterion_direction(criterion) == "max" else -1.0
    means = _means(rows, criterion, _names(rows))
    its = sorted(means)
    return its, [max(means[i].values(), key=lambda v: sign * v) for i in its]


# --- scoring one prediction -------------------------------------------------------------


def criterion_value(
    criterion: str, binary: Mapping[str, Any] | None, instances: Mapping[str, Any] | None
) -> float:
    """Read a criterion (``binary.dice``, ``instances.f1_score@0.5``, the mean over a range
    ``instances.f1_score@0.5:0.9``...) from the dicts returned by
    :func:`innerdist.metrics.binary_scores` / ``instance_scores``."""
    family, _, name = criterion.partition(".")
    thresholds = criterion_iou_thresholds(criterion)
    if family == "binary":
        if binary is None:
            raise ValueError(f"criterion {criterion!r} needs binary scores")
        return float(binary[name])
    if instances is None:
        raise ValueError(f"criterion {criterion!r} needs instance scores")
    if not thresholds:
        return float(instances[name])
    score = name.partition("@")[0]
    values = []
    for t in thresholds:
        found = [m for m in instances["matching"] if math.isclose(float(m["iou_threshold"]), t)]
        if not found:
            raise ValueError(f"instance scores have no matching at IoU {t} for {criterion!r}")
        values.append(float(found[0][score]))
    return float(np.mean(values))


def score_prediction(
    prediction: np.ndarray,
    labels: np.ndarray,
    voxel_size: Sequence[int],
    config: ValidationConfig,
    *,
    mask: np.ndarray | None = None,
    points: Sequence[Mapping[str, float]] | None = None,
    scale: float | None = None,
) -> list[dict[str, float]]:
    """Score one prediction at points of the post-processing sweep.

    ``prediction`` (float, ``(C, *spatial)``, values in [0, 1)) and ``labels`` (instance
    ids, same shape) cover the same region; ``mask`` (spatial, 0 = ignore) is optional.
    ``points`` are dicts of the swept parameters (default: the configured grid,
    :func:`grid_points`). Returns one dict per point, in that order, with the parameters
    and the mean over channels of every criterion. ``scale`` is the prediction's tanh
    scale (world units), which dynamic seeds (``seed_dynamic`` > 0) need; without it the
    default grid has level seeds only.
    """
    from innerdist.metrics import binary_scores, instance_scores
    from innerdist.segment import instances, threshold_mask

    pred = np.asarray(prediction)
    gt = np.asarray(labels)
    if pred.shape != gt.shape or pred.ndim != len(voxel_size) + 1:
        raise ValueError(
            f"prediction {pred.shape} and labels {gt.shape} must both be (C, *spatial) with "
            f"{len(voxel_size)} spatial axes"
        )
    if mask is not None and np.asarray(mask).shape != pred.shape[1:]:
        raise ValueError(f"mask shape {np.shape(mask)} must be the spatial shape {pred.shape[1:]}")
    if points is None:
        points = grid_points(config.sweep(voxel_size if scale is not None else None))
    if scale is None and any(float(p.get("seed_dynamic", 0.0)) > 0 for p in points):
        raise ValueError("dynamic seeds (seed_dynamic > 0) need the prediction's tanh scale")
    criteria = config.criteria
    want_binary = any(c.startswith("binary.") for c in criteria)
    want_instances = any(c.startswith("instances.") for c in criteria)
    thresholds = sorted({t for c in criteria for t in criterion_iou_thresholds(c)} | {0.5})

    binary_cache: dict[tuple[int, float], dict[str, Any]] = {}
    # The last segmentation per channel: points differing in min_size only (adjacent in
    # grid order) share it, and memory stays at one segmentation per channel.
    segment_cache: dict[int, tuple[tuple[tuple[str, float], ...], np.ndarray]] = {}
    rows: list[dict[str, float]] = []
    for point in points:
        per_criterion: dict[str, list[float]] = {c: [] for c in criteria}
        segment_params = tuple((k, float(v)) for k, v in point.items() if k != "min_size")
        fg = float(point["foreground_level"])
        for c in range(pred.shape[0]):
            binary = None
            if want_binary:
                if (c, fg) not in binary_cache:
                    # The thresholded foreground depends on the foreground level only.
                    binary_cache[(c, fg)] = binary_scores(
                        threshold_mask(pred[c], fg), gt[c], tuple(voxel_size), mask=mask
                    )
                binary = binary_cache[(c, fg)]
            inst = None
            if want_instances:
                if c not in segment_cache or segment_cache[c][0] != segment_params:
                    segment_cache[c] = (
                        segment_params,
                        instances(pred[c], **dict(segment_params), scale=scale or 1.0),
                    )
                segmentation = segment_cache[c][1]
                # Dropping small objects afterwards equals instances(min_size_voxels=) up
                # to the numbering of the ids, which no score depends on.
                sizes = np.bincount(segmentation.ravel().astype(np.intp))
                small = sizes < min_size_voxels(float(point.get("min_size", 0.0)), voxel_size)
                small[0] = False
                kept = np.where(small[segmentation], 0, segmentation)
                inst = instance_scores(kept, gt[c], mask=mask, iou_thresholds=thresholds)
            for criterion in criteria:
                per_criterion[criterion].append(criterion_value(criterion, binary, inst))
        row: dict[str, float] = {k: float(v) for k, v in point.items()}
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
    """Validation rows (keys :data:`ROW_KEYS` plus the criteria) for one iteration: the
    configured grid, then ``config.refine`` rounds of refinement around the best point of
    the first criterion (see the module docstring). Warns (``RuntimeWarning``) when that
    best point sits on the edge of the configured grid.

    The model is run in eval mode (its mode is restored afterwards) on ``device``.
    ``scale`` (the task's tanh scale, world units) enables the sweep over dynamic seeds.
    """
    from innerdist.predict import predict_array

    predictions = [
        predict_array(model, volume.raw, device=device)[(slice(None), *volume.crop())]
        for volume in volumes
    ]
    rows: list[dict[str, Any]] = []

    def score(points: Sequence[Mapping[str, float]]) -> None:
        for volume, prediction in zip(volumes, predictions, strict=True):
            for row in score_prediction(
                prediction,
                volume.labels,
                volume.voxel_size,
                config,
                mask=volume.mask,
                points=points,
                scale=scale,
            ):
                rows.append({"iteration": int(iteration), "volume": volume.name, **row})

    if not volumes:
        return rows
    sweep = config.sweep(volumes[0].voxel_size if scale is not None else None)
    names = tuple(sweep)
    tried = grid_points(sweep)
    score(tried)
    primary = config.criteria[0]
    sign = 1.0 if criterion_direction(primary) == "max" else -1.0
    for _ in range(config.refine):
        scores = _means(rows, primary, names).get(iteration)
        if not scores:
            break  # every value NaN: nothing to refine around
        point, _ = _best_point(scores, sign, config.smooth_levels)
        new = refinement(dict(zip(names, point, strict=True)), tried)
        if not new:
            break
        tried += new
        score(new)
    means = _means(rows, primary, names).get(iteration)
    if means:
        point, _ = _best_point(means, sign, config.smooth_levels)
        for line in edge_warnings(dict(zip(names, point, strict=True)), sweep):
            warnings.warn(
                f"validation at iteration {iteration}, {primary}: {line}; consider extending "
                "the grid in the validation config",
                RuntimeWarning,
                stacklevel=2,
            )
    return rows
