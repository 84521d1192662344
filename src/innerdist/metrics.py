"""Pure segmentation metrics: binary and instance scores of label arrays.

Two families of scores are computed per channel:

**Binary** (foreground = ``label != 0``; what DaCapo reports for binary segmentation):
voxel counts, dice, jaccard, precision, recall, error rates, the Hausdorff distance, the
variation of information of the two masks and the distance-tolerant scores. Every distance
is in world units (each axis scaled by its voxel size).

**Instances** (ids ``!= 0`` are objects, ``0`` is background): one-to-one matching of
predicted and ground-truth objects by IoU at several thresholds (TP/FP/FN, precision,
recall, F1, accuracy), panoptic quality, VOI split/merge and the adapted Rand error.

Every instance score and every binary count is a function of the *contingency table*: the
number of voxels carrying each (predicted id, ground-truth id) pair. The table is small
(one entry per overlapping pair), so :class:`OverlapCounter` accumulates it block by block;
:class:`DistanceCounter` does the same for the distance scores of blocks read with context.
Both are used by :mod:`innerdist.evaluate` (volumes, blockwise) and
:mod:`innerdist.validate` (model selection, in memory).

Definitions
-----------
Counts are over the voxels of the evaluated ROI where the mask is non-zero ("counted
voxels"); masked-out voxels are ignored entirely (they are neither counted nor used as
the nearest foreground of a distance). ``P``/``G`` are the numbers of predicted / true
foreground voxels, ``TP = |pred & gt|``, ``FP = |pred & ~gt|``, ``FN = |~pred & gt|``,
``TN = |~pred & ~gt|``.

Binary scores:

- ``dice = f1_score = 2 TP / (2 TP + FP + FN)``, ``jaccard = TP / (TP + FP + FN)``,
  ``precision = TP / P``, ``recall = TP / G``,
  ``false_positive_rate = FP / (FP + TN)``, ``false_negative_rate = FN / G``.
- ``d_fp(x)``: distance from a false-positive voxel to the nearest true foreground voxel;
  ``d_fn(x)``: from a false-negative voxel to the nearest predicted voxel (world units,
  ``scipy.ndimage.distance_transform_edt`` with ``sampling=voxel_size``; infinite when there
  is no such voxel). ``clip(d) = min(d, clip_distance)``.
- ``false_positives_with_tolerance = #{FP voxels: d_fp > tol_distance}``, same for FN.
- ``precision_with_tolerance = (P - false_positives_with_tolerance) / P``,
  ``recall_with_tolerance = (G - false_negatives_with_tolerance) / G`` (errors within the
  tolerance count as correct), ``f1_score_with_tolerance`` their harmonic mean.
- ``mean_false_positive_distance = mean of clip(d_fp) over FP voxels`` (FN likewise),
  ``mean_false_distance`` = the average of the two.
- ``mean_false_distance_clipped``: DaCapo's score of that name, kept so numbers can be
  compared: ``(sum clip(d_fp) / P + sum clip(d_fn) / G) / 2`` -- the same distances averaged
  over *all* predicted / true voxels, where correct voxels count as distance 0.
- ``hausdorff_distance``: the symmetric Hausdorff distance between the two foregrounds,
  ``max(max d_fp, max d_fn)``, **capped at ``clip_distance``**: a value equal to
  ``clip_distance`` means "at least ``clip_distance``" (pass a larger ``clip_distance`` to
  measure larger distances; it also grows the block margin).
- ``voi_split = H(pred | gt)``, ``voi_merge = H(gt | pred)``, ``voi`` their sum: conditional
  entropies in bits of the two binary masks (background is one of the two labels).

Instance scores:

- ``IoU(p, g) = |p & g| / |p | g|`` over counted voxels. For each threshold ``t`` in
  ``(0, 1]`` objects are matched one to one, a pair qualifying when **``IoU >= t``** (the
  convention of StarDist's ``stardist.matching.matching``, whose TP/FP/FN, F1 and accuracy
  these agree with at every threshold, ties at exactly ``t`` included, and its panoptic
  quality for ``t >= 0.5``: below 0.5 several maximum matchings may exist, and StarDist's
  tie-break also weighs the IoU of pairs under ``t``); the matching
  has the largest possible number of pairs, ties broken by the largest total IoU
  (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``). ``TP`` = matched
  pairs, ``FP = #pred objects - TP``, ``FN = #gt objects - TP``;
  ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
  ``f1_score = 2 TP / (2 TP + FP + FN)``, ``accuracy = TP / (TP + FP + FN)`` (StarDist's
  "AP"), and per threshold ``mean_matched_iou`` = mean IoU of the matched pairs and
  ``panoptic_quality = sum of matched IoU / (TP + FP / 2 + FN / 2)``.
- ``mean_matched_iou`` = ``segmentation_quality`` (SQ) = mean IoU of the pairs matched at
  0.5; ``recognition_quality`` (RQ) = F1 at 0.5; ``panoptic_quality = SQ * RQ`` (the
  per-threshold values at ``t = 0.5``, whichever thresholds are listed).
- ``voi_split = H(pred | gt)``, ``voi_merge = H(gt | pred)`` in bits, **background
  included** as a label on both sides (as ``skimage.metrics.variation_of_information``
  with its default ``ignore_labels=()``).
- ``adapted_rand_error``: as ``skimage.metrics.adapted_rand_error(gt, pred)`` (CREMI),
  over the voxels where the ground truth is not background. ``rand_precision`` = of the
  voxel pairs the prediction puts together, the fraction that the ground truth puts
  together; ``rand_recall`` the converse; ``adapted_rand_error = 1 - F`` of the two.
  (skimage returns these two in the opposite order.)

Empty cases (nothing to divide by), one convention everywhere:

- Agreement scores (precision, recall, F1/dice, jaccard, accuracy, SQ, RQ, PQ, the
  tolerance variants, mean matched IoU) are ``1`` when prediction and ground truth are
  *both* empty (a perfect answer) and ``0`` when only one of them is (as StarDist's
  matching and scikit-learn's ``zero_division=0``).
- Error scores (error rates, VOI, adapted Rand error, mean distances) are ``0`` when there
  is nothing that could be wrong; Rand precision and recall are then ``1``.
- Distances to an empty foreground are infinite, so clipped to ``clip_distance``: a
  prediction with objects against an empty ground truth has ``hausdorff_distance ==
  clip_distance`` (read ">= clip").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "BinaryCounts",
    "DistanceCounter",
    "OverlapCounter",
    "binary_scores",
    "check_iou_thresholds",
    "instance_scores",
    "match_instances",
]

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)

# Pairs accumulated before the table is merged into one sorted list (bounds memory).
_CONSOLIDATE_AT = 1_000_000


# --------------------------------------------------------------------------------------
# small helpers


def _score(num: float, den: float, both_empty: bool) -> float:
    """An agreement score ``num / den``; 1 if there is nothing and both sides agree, else 0."""
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


def _error(num: float, den: float) -> float:
    """An error score ``num / den``; 0 when there is nothing that could be wrong."""
    return float(num) / float(den) if den > 0 else 0.0


def _as_ids(values: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """Integer/bool labels as uint64 ids, bijectively (negative ids wrap, 0 stays 0)."""
    if values.dtype == np.bool_:
        return values.astype(np.uint64)
    if np.issubdtype(values.dtype, np.signedinteger):
        return values.astype(np.int64).view(np.uint64)
    return values.astype(np.uint64, copy=False)


def _check_labels(name: str, values: npt.NDArray[Any]) -> None:
    if not (values.dtype == np.bool_ or np.issubdtype(values.dtype, np.integer)):
        raise TypeError(
            f"{name} must hold integer ids or a bool mask, got dtype {values.dtype} "
            "(threshold or segment a prediction before scoring it)"
        )


def _entropies(
    nij: npt.NDArray[np.int64],
    row_sizes: npt.NDArray[np.int64],
    col_sizes: npt.NDArray[np.int64],
) -> tuple[float, float]:
    """``(H(row | col), H(col | row))`` in bits from table entries and their marginals.

    ``row_sizes[k]`` / ``col_sizes[k]`` are the sizes of the row / column label of entry k.
    """
    total = float(nij.sum())
    if total == 0:
        return 0.0, 0.0
    p = nij / total
    h_row_given_col = float(-(p * np.log2(nij / col_sizes)).sum())
    h_col_given_row = float(-(p * np.log2(nij / row_sizes)).sum())
    # -0.0 and tiny negative rounding noise read badly in a report.
    return max(h_row_given_col, 0.0) + 0.0, max(h_col_given_row, 0.0) + 0.0


def _sizes(ids: npt.NDArray[np.uint64], counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For each table entry, the total count of its id (the marginal), aligned to entries."""
    _, inverse = np.unique(ids, return_inverse=True)
    totals = np.bincount(inverse, weights=counts).astype(np.int64)
    return totals[inverse]


# --------------------------------------------------------------------------------------
# contingency table


def _pair_counts(
    pred: npt.NDArray[np.uint64], gt: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Distinct ``(pred, gt)`` pairs of two flat id arrays and how often each occurs."""
    pmax, gmax = int(pred.max()), int(gt.max())
    if pmax < 256 and gmax < 256:
        # Binary masks and small label sets: a histogram, no sort.
        hist = np.bincount((pred << 8 | gt).astype(np.intp), minlength=1 << 16)
        found = np.flatnonzero(hist)
        keys = found.astype(np.uint64)
        hist_pred: npt.NDArray[np.uint64] = keys >> np.uint64(8)
        hist_gt: npt.NDArray[np.uint64] = keys & np.uint64(0xFF)
        return hist_pred, hist_gt, hist[found].astype(np.int64)
    if pmax < 1 << 32 and gmax < 1 << 32:
        # Both ids fit in one 64-bit key: one sort instead of three.
        keys, counts = np.unique(pred << 32 | gt, return_counts=True)
        return keys >> 32, keys & 0xFFFFFFFF, counts.astype(np.int64)
    pred_ids, pred_inv = np.unique(pred, return_inverse=True)
    gt_ids, gt_inv = np.unique(gt, return_inverse=True)
    keys, counts = np.unique(pred_inv.astype(np.int64) * len(gt_ids) + gt_inv, return_counts=True)
    pair_pred: npt.NDArray[np.uint64] = pred_ids[keys // len(gt_ids)]
    pair_gt: npt.NDArray[np.uint64] = gt_ids[keys % len(gt_ids)]
    return pair_pred, pair_gt, counts.astype(np.int64)


class BinaryCounts(NamedTuple):
    """Voxel counts of a binary comparison (foreground = id != 0), counted voxels only."""

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int


class OverlapCounter:
    """The contingency table of two label volumes, accumulated block by block.

    ``add`` takes any pair of same-shaped label arrays (a block); the table holds, for every
    (predicted id, ground-truth id) pair, the number of voxels carrying it. Blocks must not
    overlap (each voxel counted once). Background (0) is kept in the table, so the table
    also gives object sizes and binary counts.

    >>> c = OverlapCounter()
    >>> c.add(np.array([[0, 1, 1, 2]]), np.array([[0, 5, 5, 5]]))
    >>> c.table()
    (array([0, 1, 2], dtype=uint64), array([0, 5, 5], dtype=uint64), array([1, 2, 1]))
    """

    def __init__(self) -> None:
        self._pred: list[npt.NDArray[np.uint64]] = []
        self._gt: list[npt.NDArray[np.uint64]] = []
        self._counts: list[npt.NDArray[np.int64]] = []
        self._pending = 0

    def add(
        self,
        predicted: npt.ArrayLike,
        ground_truth: npt.ArrayLike,
        mask: npt.ArrayLike | None = None,
    ) -> None:
        """Count the id pairs of one block; voxels where ``mask == 0`` are skipped."""
        pred = np.asarray(predicted)
        gt = np.asarray(ground_truth)
        _check_labels("predicted", pred)
        _check_labels("ground_truth", gt)
        if pred.shape != gt.shape:
            raise ValueError(
                f"predicted and ground_truth must have the same shape, got {pred.shape} "
                f"and {gt.shape}"
            )
        p = _as_ids(pred).ravel()
        g = _as_ids(gt).ravel()
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != pred.shape:
                raise ValueError(f"mask shape {m.shape} differs from the label shape {pred.shape}")
            keep = m.ravel() != 0
            p, g = p[keep], g[keep]
        if p.size == 0:
            return
        self._append(*_pair_counts(p, g))

    def merge(self, other: OverlapCounter) -> None:
        """Add the counts of another counter (e.g. from a worker process)."""
        if not isinstance(other, OverlapCounter):
            raise TypeError(f"expected an OverlapCounter, got {type(other).__name__}")
        self._append(*other.table())

    def _append(
        self,
        pred: npt.NDArray[np.uint64],
        gt: npt.NDArray[np.uint64],
        counts: npt.NDArray[np.int64],
    ) -> None:
        self._pred.append(pred)
        self._gt.append(gt)
        self._counts.append(counts)
        self._pending += len(counts)
        if self._pending > _CONSOLIDATE_AT and len(self._counts) > 1:
            self._consolidate()

    def _consolidate(self) -> None:
        if len(self._counts) <= 1:
            return
        pred = np.concatenate(self._pred)
        gt = np.concatenate(self._gt)
        counts = np.concatenate(self._counts)
        order = np.lexsort((gt, pred))
        pred, gt, counts = pred[order], gt[order], counts[order]
        first = np.ones(len(pred), dtype=bool)
        first[1:] = (pred[1:] != pred[:-1]) | (gt[1:] != gt[:-1])
        starts = np.flatnonzero(first)
        self._pred = [pred[starts]]
        self._gt = [gt[starts]]
        self._counts = [np.add.reduceat(counts, starts)]
        self._pending = len(starts)

    def table(
        self,
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        """``(pred_ids, gt_ids, counts)``: every distinct pair once, sorted by (pred, gt).

        Ids are uint64 (signed ids appear as their two's complement).
        """
        if not self._counts:
            empty = np.zeros(0, dtype=np.uint64)
            return empty, empty.copy(), np.zeros(0, dtype=np.int64)
        # One block's pairs come out of _pair_counts unique and sorted already.
        self._consolidate()
        return self._pred[0].copy(), self._gt[0].copy(), self._counts[0].copy()

    @property
    def num_voxels(self) -> int:
        """Number of voxels counted so far."""
        return int(sum(int(c.sum()) for c in self._counts))

    def binary_counts(self) -> BinaryCounts:
        """TP/FP/FN/TN voxel counts with foreground = id != 0."""
        pred, gt, counts = self.table()
        pf, gf = pred != 0, gt != 0
        return BinaryCounts(
            int(counts[pf & gf].sum()),
            int(counts[pf & ~gf].sum()),
            int(counts[~pf & gf].sum()),
            int(counts[~pf & ~gf].sum()),
        )

    def instance_scores(
        self, iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS
    ) -> dict[str, Any]:
        """Instance scores of the accumulated table (definitions in the module docstring)."""
        thresholds = check_iou_thresholds(iou_thresholds)
        pred, gt, counts = self.table()
        pred_sizes = _sizes(pred, counts)
        gt_sizes = _sizes(gt, counts)
        num_pred = len(np.unique(pred[pred != 0]))
        num_gt = len(np.unique(gt[gt != 0]))
        both_empty = num_pred == 0 and num_gt == 0

        # Objects overlapping each other: the only pairs that can match.
        pair = (pred != 0) & (gt != 0)
        inter = counts[pair]
        iou = inter / (pred_sizes[pair] + gt_sizes[pair] - inter)
        _, pred_index = np.unique(pred[pair], return_inverse=True)
        _, gt_index = np.unique(gt[pair], return_inverse=True)

        matching: list[dict[str, Any]] = []
        for t in thresholds:
            matched = match_instances(pred_index, gt_index, iou, t)
            tp = int(matched.sum())
            fp, fn = num_pred - tp, num_gt - tp
            matched_iou = float(iou[matched].sum())
            matching.append(
                {
                    "iou_threshold": t,
                    "true_positives": tp,
                    "false_positives": fp,
                    "false_negatives": fn,
                    "precision": _score(tp, tp + fp, both_empty),
                    "recall": _score(tp, tp + fn, both_empty),
                    "f1_score": _score(2 * tp, 2 * tp + fp + fn, both_empty),
                    "accuracy": _score(tp, tp + fp + fn, both_empty),
                    "mean_matched_iou": _score(matched_iou, tp, both_empty),
                    "panoptic_quality": _score(matched_iou, tp + 0.5 * (fp + fn), both_empty),
                }
            )
        matched_half = match_instances(pred_index, gt_index, iou, 0.5)
        tp_half = int(matched_half.sum())
        sq = _score(float(iou[matched_half].sum()), tp_half, both_empty)
        rq = _score(2 * tp_half, num_pred + num_gt, both_empty)

        # Rows are predicted ids: (H(pred | gt), H(gt | pred)) = (split, merge).
        voi_split, voi_merge = _entropies(counts, pred_sizes, gt_sizes)
        are, rand_precision, rand_recall = _adapted_rand(pred, gt, counts)
        return {
            "num_predicted": num_pred,
            "num_ground_truth": num_gt,
            "matching": matching,
            "mean_matched_iou": sq,
            "segmentation_quality": sq,
            "recognition_quality": rq,
            "panoptic_quality": sq * rq,
            "voi_split": voi_split,
            "voi_merge": voi_merge,
            "voi": voi_split + voi_merge,
            "adapted_rand_error": are,
            "rand_precision": rand_precision,
            "rand_recall": rand_recall,
        }


def _adapted_rand(
    pred: npt.NDArray[np.uint64], gt: npt.NDArray[np.uint64], counts: npt.NDArray[np.int64]
) -> tuple[float, float, float]:
    """Adapted Rand error, Rand precision, Rand recall over the ground-truth foreground."""
    keep = gt != 0
    p, g, nij = pred[keep], gt[keep], counts[keep].astype(np.float64)
    total = nij.sum()
    # Ordered pairs of distinct voxels: n^2 - n per group, summed.
    together_both = float((nij**2).sum() - total)
    _, p_inv = np.unique(p, return_inverse=True)
    _, g_inv = np.unique(g, return_inverse=True)
    pred_groups = np.bincount(p_inv, weights=nij) if len(p) else np.zeros(0)
    gt_groups = np.bincount(g_inv, weights=nij) if len(g) else np.zeros(0)
    together_pred = float((pred_groups**2).sum() - total)
    together_gt = float((gt_groups**2).sum() - total)
    if together_pred + together_gt == 0:
        return 0.0, 1.0, 1.0
    f = 2 * together_both / (together_pred + together_gt)
    precision = together_both / together_pred if together_pred > 0 else 1.0
    recall = together_both / together_gt if together_gt > 0 else 1.0
    return 1.0 - f, precision, recall


def check_iou_thresholds(iou_thresholds: Sequence[float]) -> list[float]:
    """The IoU thresholds as floats, each in ``(0, 1]`` (a pair matches at ``t`` when
    ``IoU >= t``; ``t = 0`` would match objects that do not touch)."""
    if isinstance(iou_thresholds, str | bytes):
        raise TypeError(f"iou_thresholds must be a sequence of numbers, got {iou_thresholds!r}")
    try:
        thresholds = [float(t) for t in iou_thresholds]
    except (TypeError, ValueError):
        raise TypeError(
            f"iou_thresholds must be a sequence of numbers, got {iou_thresholds!r}"
        ) from None
    if not thresholds or any(not (0.0 < t <= 1.0) for t in thresholds):
        raise ValueError(
            f"iou_thresholds must be a non-empty list of numbers in (0, 1], got {thresholds}"
        )
    return thresholds


def match_instances(
    pred_index: npt.ArrayLike,
    gt_index: npt.ArrayLike,
    iou: npt.ArrayLike,
    threshold: float,
) -> npt.NDArray[np.bool_]:
    """One-to-one matching of objects from a sparse list of overlapping pairs.

    Pair ``k`` joins predicted object ``pred_index[k]`` and true object ``gt_index[k]``
    (any integer labels, each pair listed once) with ``iou[k]``. Only pairs with
    ``iou >= threshold`` may match (StarDist's convention). Returns a bool per pair: whether
    it is matched, in a matching with the largest number of pairs, ties broken by the
    largest total IoU.

    For ``threshold > 0.5`` the qualifying pairs never share an object (two objects that
    each cover more than half of their union with a third would overlap) and are all
    matched; at exactly 0.5 two pairs may tie for one object. Otherwise each connected
    group of competing pairs is solved with the Hungarian algorithm on weights
    ``1 + iou / (k + 1)`` (``k`` = the group's smaller side), so one more match always
    outweighs any IoU gain.

    >>> match_instances([0, 0, 1], [0, 1, 0], [0.9, 0.15, 0.15], 0.1).tolist()
    [False, True, True]
    """
    p = np.asarray(pred_index)
    g = np.asarray(gt_index)
    w = np.asarray(iou, dtype=np.float64)
    if not (p.shape == g.shape == w.shape) or p.ndim != 1:
        raise ValueError(
            f"pred_index, gt_index and iou must be 1-D of one length, got shapes "
            f"{p.shape}, {g.shape}, {w.shape}"
        )
    if not (np.issubdtype(p.dtype, np.integer) or p.size == 0) or not (
        np.issubdtype(g.dtype, np.integer) or g.size == 0
    ):
        raise TypeError(f"pred_index and gt_index must be integers, got {p.dtype}, {g.dtype}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    matched = np.zeros(len(w), dtype=bool)
    candidates = np.flatnonzero(w >= threshold)
    if len(candidates) == 0:
        return matched
    _, cp = np.unique(p[candidates], return_inverse=True)
    _, cg = np.unique(g[candidates], return_inverse=True)
    n_pred, n_gt = int(cp.max()) + 1, int(cg.max()) + 1
    if n_pred == len(candidates) and n_gt == len(candidates):
        matched[candidates] = True
        return matched
    # Connected groups of pairs sharing objects (pred nodes 0.., gt nodes n_pred..).
    nodes = n_pred + n_gt
    graph = coo_array((np.ones(len(candidates)), (cp, cg + n_pred)), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    edge_component = component[cp]
    order = np.argsort(edge_component, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_component[order])) + 1
    for group in np.split(order, bounds):
        if len(group) == 1:
            matched[candidates[group[0]]] = True
            continue
        rows, row_of = np.unique(cp[group], return_inverse=True)
        cols, col_of = np.unique(cg[group], return_inverse=True)
        k = min(len(rows), len(cols))
        weights = np.zeros((len(rows), len(cols)))
        weights[row_of, col_of] = 1.0 + w[candidates[group]] / (k + 1)
        r, c = linear_sum_assignment(weights, maximize=True)
        edge_at = np.full((len(rows), len(cols)), -1)
        edge_at[row_of, col_of] = candidates[group]
        chosen = edge_at[r, c]
        matched[chosen[chosen >= 0]] = True
    return matched


# --------------------------------------------------------------------------------------
# distances


def _check_distances(tol_distance: float, clip_distance: float) -> tuple[float, float]:
    for name, value in (("tol_distance", tol_distance), ("clip_distance", clip_distance)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise TypeError(f"{name} must be a number (world units), got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0 (world units), got {value}")
    if clip_distance <= 0:
        raise ValueError(f"clip_distance must be > 0 (world units), got {clip_distance}")
    if tol_distance > clip_distance:
        raise ValueError(
            f"tol_distance ({tol_distance}) must not exceed clip_distance ({clip_distance}): "
            "distances are only known up to clip_distance"
        )
    return float(tol_distance), float(clip_distance)


def _distance_to(sites: npt.NDArray[np.bool_], voxel_size: Sequence[float]) -> npt.NDArray[Any]:
    """World distance from every voxel to the nearest ``True`` voxel (inf if there is none)."""
    if not sites.any():
        return np.full(sites.shape, np.inf)
    return np.asarray(ndimage.distance_transform_edt(~sites, sampling=voxel_size))


@dataclass
class DistanceCounter:
    """Distances of false positives / negatives to the other foreground, block by block.

    ``add`` takes a block *with its context*: the arrays cover the read region and
    ``inner`` (slices into them) the voxels to count. Distances are searched in the whole
    read region, so they are exact up to ``clip_distance`` when the context is at least
    :meth:`context_voxels` on every side (or reaches the edge of the evaluated volume).
    ``voxel_size`` and both distances are in world units.
    """

    voxel_size: tuple[float, ...]
    tol_distance: float = 40.0
    clip_distance: float = 200.0
    false_positives: int = 0
    false_negatives: int = 0
    false_positives_with_tolerance: int = 0
    false_negatives_with_tolerance: int = 0
    false_positive_distance_sum: float = 0.0
    false_negative_distance_sum: float = 0.0
    max_false_positive_distance: float = 0.0
    max_false_negative_distance: float = 0.0

    def __post_init__(self) -> None:
        vs = tuple(self.voxel_size)
        if len(vs) not in (2, 3) or any(
            isinstance(v, bool) or not isinstance(v, int | float | np.number) or not v > 0
            for v in vs
        ):
            raise ValueError(
                f"voxel_size must be 2 or 3 positive numbers (world units), got {self.voxel_size}"
            )
        self.voxel_size = tuple(float(v) for v in vs)
        self.tol_distance, self.clip_distance = _check_distances(
            self.tol_distance, self.clip_distance
        )

    def context_voxels(self) -> tuple[int, ...]:
        """Margin per axis, in voxels, that makes clipped distances exact."""
        return tuple(math.ceil(self.clip_distance / v) for v in self.voxel_size)

    def add(
        self,
        predicted: npt.ArrayLike,
        ground_truth: npt.ArrayLike,
        mask: npt.ArrayLike | None = None,
        *,
        inner: Sequence[slice] | None = None,
    ) -> None:
        """Add the false voxels of ``inner`` (default: all) of one block."""
        pred = np.asarray(predicted)
        gt = np.asarray(ground_truth)
        if pred.shape != gt.shape or pred.ndim != len(self.voxel_size):
            raise ValueError(
                f"predicted and ground_truth must have the same {len(self.voxel_size)}-D "
                f"shape, got {pred.shape} and {gt.shape}"
            )
        pf = pred != 0
        gf = gt != 0
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != pred.shape:
                raise ValueError(f"mask shape {m.shape} differs from the label shape {pred.shape}")
            # Masked-out voxels are unknown: neither counted nor nearest foreground.
            pf &= m != 0
            gf &= m != 0
        region = tuple(inner) if inner is not None else tuple(slice(None) for _ in pred.shape)
        if len(region) != pred.ndim:
            raise ValueError(f"inner must have {pred.ndim} slices, got {len(region)}")
        fp = pf[region] & ~gf[region]
        fn = gf[region] & ~pf[region]
        self.false_positives += int(fp.sum())
        self.false_negatives += int(fn.sum())
        if fp.any():
            d = _distance_to(gf, self.voxel_size)[region][fp]
            self._add_distances(d, positive=True)
        if fn.any():
            d = _distance_to(pf, self.voxel_size)[region][fn]
            self._add_distances(d, positive=False)

    def _add_distances(self, d: npt.NDArray[Any], *, positive: bool) -> None:
        # Tolerance on the raw distances: exact for tol <= clip (a raw distance beyond the
        # clip may be an overestimate, but then it exceeds tol either way).
        beyond = int((d > self.tol_distance).sum())
        clipped = np.minimum(d, self.clip_distance)
        if positive:
            self.false_positives_with_tolerance += beyond
            self.false_positive_distance_sum += float(clipped.sum())
            self.max_false_positive_distance = max(
                self.max_false_positive_distance, float(clipped.max())
            )
        else:
            self.false_negatives_with_tolerance += beyond
            self.false_negative_distance_sum += float(clipped.sum())
            self.max_false_negative_distance = max(
                self.max_false_negative_distance, float(clipped.max())
            )

    def merge(self, other: DistanceCounter) -> None:
        """Add the counts of another counter with the same settings."""
        if not isinstance(other, DistanceCounter):
            raise TypeError(f"expected a DistanceCounter, got {type(other).__name__}")
        mine = (self.voxel_size, self.tol_distance, self.clip_distance)
        theirs = (other.voxel_size, other.tol_distance, other.clip_distance)
        if mine != theirs:
            raise ValueError(f"cannot merge distance counters with settings {theirs} into {mine}")
        self.false_positives += other.false_positives
        self.false_negatives += other.false_negatives
        self.false_positives_with_tolerance += other.false_positives_with_tolerance
        self.false_negatives_with_tolerance += other.false_negatives_with_tolerance
        self.false_positive_distance_sum += other.false_positive_distance_sum
        self.false_negative_distance_sum += other.false_negative_distance_sum
        self.max_false_positive_distance = max(
            self.max_false_positive_distance, other.max_false_positive_distance
        )
        self.max_false_negative_distance = max(
            self.max_false_negative_distance, other.max_false_negative_distance
        )


def _binary_scores(counts: BinaryCounts, dist: DistanceCounter) -> dict[str, Any]:
    tp, fp, fn, tn = counts
    if (fp, fn) != (dist.false_positives, dist.false_negatives):
        raise RuntimeError(
            f"voxel counts disagree: table FP/FN {fp}/{fn}, distance FP/FN "
            f"{dist.false_positives}/{dist.false_negatives} (were all blocks added to both?)"
        )
    pos, true = tp + fp, tp + fn
    both_empty = pos == 0 and true == 0
    fp_tol, fn_tol = dist.false_positives_with_tolerance, dist.false_negatives_with_tolerance
    mean_fp = _error(dist.false_positive_distance_sum, fp)
    mean_fn = _error(dist.false_negative_distance_sum, fn)
    precision_tol = _score(pos - fp_tol, pos, both_empty)
    recall_tol = _score(true - fn_tol, true, both_empty)
    f1_tol = (
        2 * precision_tol * recall_tol / (precision_tol + recall_tol)
        if precision_tol + recall_tol > 0
        else 0.0
    )
    # The 2x2 table of the masks as (pred, gt, count) entries.
    nij = np.array([tn, fn, fp, tp], dtype=np.int64)
    rows = np.array([tn + fn, tn + fn, fp + tp, fp + tp], dtype=np.int64)
    cols = np.array([tn + fp, fn + tp, tn + fp, fn + tp], dtype=np.int64)
    keep = nij > 0
    voi_split, voi_merge = _entropies(nij[keep], rows[keep], cols[keep])
    dice = _score(2 * tp, 2 * tp + fp + fn, both_empty)
    return {
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "true_negatives": tn,
        "dice": dice,
        "jaccard": _score(tp, tp + fp + fn, both_empty),
        "precision": _score(tp, pos, both_empty),
        "recall": _score(tp, true, both_empty),
        "f1_score": dice,
        "false_positive_rate": _error(fp, fp + tn),
        "false_negative_rate": _error(fn, true),
        "hausdorff_distance": max(
            dist.max_false_positive_distance, dist.max_false_negative_distance
        ),
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "voi": voi_split + voi_merge,
        "false_positives_with_tolerance": fp_tol,
        "false_negatives_with_tolerance": fn_tol,
        "precision_with_tolerance": precision_tol,
        "recall_with_tolerance": recall_tol,
        "f1_score_with_tolerance": f1_tol,
        "mean_false_positive_distance": mean_fp,
        "mean_false_negative_distance": mean_fn,
        "mean_false_distance": 0.5 * (mean_fp + mean_fn),
        "mean_false_distance_clipped": 0.5
        * (
            _error(dist.false_positive_distance_sum, pos)
            + _error(dist.false_negative_distance_sum, true)
        ),
    }


# --------------------------------------------------------------------------------------
# in-memory scores of one channel


def binary_scores(
    predicted: npt.ArrayLike,
    ground_truth: npt.ArrayLike,
    voxel_size: Sequence[float],
    *,
    mask: npt.ArrayLike | None = None,
    tol_distance: float = 40.0,
    clip_distance: float = 200.0,
) -> dict[str, Any]:
    """Binary scores of one channel held in memory (spatial arrays, foreground = ``!= 0``).

    ``voxel_size``, ``tol_distance`` and ``clip_distance`` are in world units. Definitions
    and empty-case conventions are in the module docstring.

    >>> s = binary_scores([[0, 1, 1, 0]], [[0, 1, 0, 0]], (1, 1))
    >>> s["precision"], s["recall"], s["hausdorff_distance"]
    (0.5, 1.0, 1.0)
    """
    pred = np.asarray(predicted)
    gt = np.asarray(ground_truth)
    _check_labels("predicted", pred)
    _check_labels("ground_truth", gt)
    dist = DistanceCounter(tuple(voxel_size), tol_distance, clip_distance)
    if pred.shape != gt.shape or pred.ndim != len(dist.voxel_size):
        raise ValueError(
            f"predicted and ground_truth must have the same {len(dist.voxel_size)}-D shape "
            f"(one axis per voxel_size entry), got {pred.shape} and {gt.shape}"
        )
    overlap = OverlapCounter()
    overlap.add(pred != 0, gt != 0, mask)
    dist.add(pred, gt, mask)
    return _binary_scores(overlap.binary_counts(), dist)


def instance_scores(
    predicted: npt.ArrayLike,
    ground_truth: npt.ArrayLike,
    *,
    mask: npt.ArrayLike | None = None,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, Any]:
    """Instance scores of one channel held in memory (ids ``!= 0`` are objects).

    >>> s = instance_scores([[1, 1, 2, 2]], [[3, 3, 3, 3]], iou_thresholds=[0.4])
    >>> s["matching"][0]["true_positives"], s["voi_split"], s["voi_merge"]
    (1, 1.0, 0.0)
    """
    overlap = OverlapCounter()
    overlap.add(predicted, ground_truth, mask)
    return overlap.instance_scores(iou_thresholds)
