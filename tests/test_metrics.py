"""Tests of innerdist.metrics: hand-computed scores on drawn shapes, brute-force and
scikit-image references, StarDist's own matching code, the counters' errors."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import skimage.metrics
from hypothesis import given, settings
from hypothesis import strategies as st

import innerdist.metrics as me
from innerdist.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    DistanceCounter,
    OverlapCounter,
    binary_scores,
    check_iou_thresholds,
    instance_scores,
    match_instances,
)

# --------------------------------------------------------------------------------------
# helpers

def disc(shape: tuple[int, ...], center: tuple[float, ...], radius: float) -> np.ndarray:
    """Bool disc (2-D) or ball (3-D) of voxels whose centres are within ``radius``."""
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2


def at(scores: dict[str, Any], threshold: float) -> dict[str, Any]:
    (m,) = [m for m in scores["matching"] if m["iou_threshold"] == threshold]
    return m


def brute_force_binary(pred, gt, voxel_size, tol, clip, mask=None) -> dict[str, float]:
    """Distance scores by comparing every false voxel with every foreground voxel."""
    pf, gf = pred != 0, gt != 0
    if mask is not None:
        pf, gf = pf & (mask != 0), gf & (mask != 0)
    vs = np.asarray(voxel_size, dtype=float)
    idx = np.indices(pred.shape).reshape(pred.ndim, -1).T * vs

    def dists(false: np.ndarray, sites: np.ndarray) -> np.ndarray:
        a, b = idx[false.ravel()], idx[sites.ravel()]
        if len(b) == 0:
            return np.full(len(a), np.inf)
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)

    d_fp = dists(pf & ~gf, gf)
    d_fn = dists(gf & ~pf, pf)
    c_fp, c_fn = np.minimum(d_fp, clip), np.minimum(d_fn, clip)
    p, g = pf.sum(), gf.sum()
    return {
        "false_positives_with_tolerance": int((d_fp > tol).sum()),
        "false_negatives_with_tolerance": int((d_fn > tol).sum()),
        "mean_false_positive_distance": c_fp.mean() if len(c_fp) else 0.0,
        "mean_false_negative_distance": c_fn.mean() if len(c_fn) else 0.0,
        "hausdorff_distance": max(c_fp.max(initial=0.0), c_fn.max(initial=0.0)),
        "mean_false_distance_clipped": 0.5
        * ((c_fp.sum() / p if p else 0.0) + (c_fn.sum() / g if g else 0.0)),
    }


# --------------------------------------------------------------------------------------
# instance scores on drawn shapes


def split_scene() -> tuple[np.ndarray, np.ndarray]:
    """Two gt squares; one predicted exactly, one split 60/40, plus one false object."""
    gt = np.zeros((20, 40), np.uint64)
    pred = np.zeros((20, 40), np.uint64)
    gt[2:8, 2:8] = 1  # A, 36 voxels
    pred[2:8, 2:8] = 10  # exact copy of A
    gt[2:12, 15:25] = 2  # B, 100 voxels
    pred[2:8, 15:25] = 20  # 60 voxels of B: IoU 0.6
    pred[8:12, 15:25] = 21  # 40 voxels of B: IoU 0.4
    pred[14:18, 30:36] = 30  # false object in the background
    return pred, gt


def test_split_and_false_object_hand_computed() -> None:
    pred, gt = split_scene()
    s = instance_scores(pred, gt)
    assert s["num_predicted"] == 4 and s["num_ground_truth"] == 2
    # A matches at every threshold; B matches its 60% piece while IoU 0.6 >= t (a tie at 0.6
    # counts, as in StarDist).
    for t in DEFAULT_IOU_THRESHOLDS:
        tp = 2 if t <= 0.6 else 1
        m = at(s, t)
        assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (
            tp,
            4 - tp,
            2 - tp,
        ), t
        assert m["precision"] == pytest.approx(tp / 4)
        assert m["recall"] == pytest.approx(tp / 2)
        assert m["f1_score"] == pytest.approx(2 * tp / 6)
        assert m["accuracy"] == pytest.approx(tp / (tp + (4 - tp) + (2 - tp)))
    assert s["mean_matched_iou"] == pytest.approx((1.0 + 0.6) / 2)
    assert s["segmentation_quality"] == pytest.approx(0.8)
    assert s["recognition_quality"] == pytest.approx(2 / 3)
    assert s["panoptic_quality"] == pytest.approx(0.8 * 2 / 3)

    b = binary_scores(pred, gt, (1, 1))
    assert (b["true_positives"], b["false_positives"], b["false_negatives"]) == (136, 24, 0)
    assert b["true_negatives"] == 800 - 160
    assert b["dice"] == pytest.approx(2 * 136 / (2 * 136 + 24))
    assert b["precision"] == pytest.approx(136 / 160) and b["recall"] == 1.0
    # The false object's far corner (17, 35) is farthest from B's corner (11, 24).
    assert b["hausdorff_distance"] == pytest.approx(math.sqrt(6**2 + 11**2))


def test_overlapping_squares_iou_by_hand() -> None:
    gt = np.zeros((20, 20), np.uint16)
    pred = np.zeros((20, 20), np.uint16)
    gt[0:10, 0:10] = 1
    pred[5:15, 5:15] = 7
    counter = OverlapCounter()
    counter.add(pred, gt)
    pred_ids, gt_ids, counts = counter.table()
    assert list(zip(pred_ids.tolist(), gt_ids.tolist(), counts.tolist(), strict=True)) == [
        (0, 0, 400 - 175),
        (0, 1, 75),
        (7, 0, 75),
        (7, 1, 25),
    ]
    s = counter.instance_scores([0.1, 1 / 7 - 1e-9, 1 / 7, 0.2])
    # IoU = 25 / 175 = 1/7: matched at thresholds up to and including 1/7.
    assert [m["true_positives"] for m in s["matching"]] == [1, 1, 1, 0]
    assert [m["panoptic_quality"] for m in s["matching"]] == [
        pytest.approx(1 / 7), pytest.approx(1 / 7), pytest.approx(1 / 7), 0.0
    ]
    assert s["mean_matched_iou"] == 0.0  # nothing matched at 0.5
    assert s["panoptic_quality"] == 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_perfect_prediction_scores_perfectly(dims: int) -> None:
    shape = (24, 30) if dims == 2 else (12, 16, 14)
    centers = [(6, 7), (15, 20), (18, 6)] if dims == 2 else [(4, 5, 4), (8, 10, 9), (6, 4, 10)]
    gt = np.zeros(shape, np.uint32)
    pred = np.zeros(shape, np.uint64)
    for i, (c, new_id) in enumerate(zip(centers, [9, 5, 1_000_000_007], strict=True)):
        gt[disc(shape, c, 3.5)] = i + 1
        pred[disc(shape, c, 3.5)] = new_id  # other ids, same objects
    s = instance_scores(pred, gt)
    assert all(m["f1_score"] == 1.0 and m["true_positives"] == 3 for m in s["matching"])
    assert (s["voi_split"], s["voi_merge"], s["adapted_rand_error"]) == (0.0, 0.0, 0.0)
    assert s["panoptic_quality"] == 1.0 and s["mean_matched_iou"] == 1.0
    b = binary_scores(pred, gt, (4,) * dims)
    assert b["hausdorff_distance"] == 0.0 and b["dice"] == 1.0 and b["voi"] == 0.0
    assert b["f1_score_with_tolerance"] == 1.0 and b["mean_false_distance"] == 0.0


def test_merge_is_penalised_as_voi_merge() -> None:
    gt = np.zeros((10, 20), np.uint64)
    gt[2:8, 2:8], gt[2:8, 10:16] = 1, 2
    pred = (gt != 0).astype(np.uint64) * 5  # both objects one id
    s = instance_scores(pred, gt)
    assert s["voi_split"] == 0.0
    # Within the merged id the two halves are equally likely: 1 bit over 72 of 200 voxels.
    assert s["voi_merge"] == pytest.approx(72 / 200 * 1.0)
    assert at(s, 0.4)["true_positives"] == 1  # IoU 0.5 with either object


# --------------------------------------------------------------------------------------
# matching


def test_matching_prefers_more_matches_over_higher_iou() -> None:
    # One big IoU, or two small ones: at 0.1 two matches win.
    assert match_instances([0, 0, 1], [0, 1, 0], [0.9, 0.15, 0.15], 0.1).tolist() == [
        False,
        True,
        True,
    ]
    # At 0.2 only the big one qualifies.
    assert match_instances([0, 0, 1], [0, 1, 0], [0.9, 0.15, 0.15], 0.2).tolist() == [
        True,
        False,
        False,
    ]
    # Same number of matches: the larger total IoU wins.
    assert match_instances([0, 0, 1, 1], [0, 1, 0, 1], [0.3, 0.2, 0.2, 0.4], 0.1).tolist() == [
        True,
        False,
        False,
        True,
    ]
    assert match_instances([], [], [], 0.5).tolist() == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 3),
            # Exact threshold values too: ties at t qualify.
            st.floats(0.01, 1.0) | st.sampled_from([0.1, 0.25, 0.5, 0.6]),
        ),
        max_size=12,
        unique_by=lambda e: (e[0], e[1]),
    ),
    st.sampled_from([0.1, 0.25, 0.5, 0.6]),
)
def test_matching_is_a_maximum_matching(edges, threshold) -> None:
    p = np.array([e[0] for e in edges], dtype=np.int64)
    g = np.array([e[1] for e in edges], dtype=np.int64)
    w = np.array([e[2] for e in edges])
    matched = match_instances(p, g, w, threshold)
    # A matching: no object twice, only qualifying pairs.
    assert len(set(p[matched])) == matched.sum() == len(set(g[matched]))
    assert (w[matched] >= threshold).all()
    # Brute force: the largest number of pairs, then the largest total IoU.
    best = (0, 0.0)
    ok = [k for k in range(len(edges)) if w[k] >= threshold]
    for r in range(1, 5):
        for subset in itertools.combinations(ok, r):
            if len(set(p[list(subset)])) == r == len(set(g[list(subset)])):
                best = max(best, (r, float(w[list(subset)].sum())))
    assert matched.sum() == best[0]
    assert float(w[matched].sum()) == pytest.approx(best[1])


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([0, 1], [0], [0.5, 0.5], 0.5), ValueError, "1-D of one length"),
        (([0.5], [0], [0.5], 0.5), TypeError, "must be integers"),
        (([0], [0], [0.5], 1.1), ValueError, r"threshold must be in \(0, 1\]"),
        (([0], [0], [0.5], 0.0), ValueError, r"threshold must be in \(0, 1\]"),
    ],
)
def test_match_instances_rejects_bad_input(args, error, match) -> None:
    with pytest.raises(error, match=match):
        match_instances(*args)


# --------------------------------------------------------------------------------------
# empty cases


def test_both_empty_is_perfect() -> None:
    z = np.zeros((6, 7), np.uint64)
    s = instance_scores(z, z)
    assert all(
        (m["precision"], m["recall"], m["f1_score"], m["accuracy"]) == (1.0, 1.0, 1.0, 1.0)
        for m in s["matching"]
    )
    assert (s["panoptic_quality"], s["voi"], s["adapted_rand_error"]) == (1.0, 0.0, 0.0)
    b = binary_scores(z, z, (3, 5))
    for key in (
        "precision",
        "recall",
        "f1_score",
        "dice",
        "jaccard",
        "precision_with_tolerance",
        "recall_with_tolerance",
        "f1_score_with_tolerance",
    ):
        assert b[key] == 1.0, key
    for key in (
        "hausdorff_distance",
        "mean_false_distance",
        "mean_false_distance_clipped",
        "false_positive_rate",
        "false_negative_rate",
        "voi",
    ):
        assert b[key] == 0.0, key


@pytest.mark.parametrize("empty_side", ["predicted", "ground_truth"])
def test_one_side_empty_scores_zero_and_distances_hit_the_clip(empty_side: str) -> None:
    labels = np.zeros((6, 7), np.uint64)
    labels[1:3, 1:4] = 4
    empty = np.zeros_like(labels)
    pred, gt = (empty, labels) if empty_side == "predicted" else (labels, empty)
    s = instance_scores(pred, gt)
    m = at(s, 0.5)
    assert (m["precision"], m["recall"], m["f1_score"], m["accuracy"]) == (0.0, 0.0, 0.0, 0.0)
    assert s["panoptic_quality"] == 0.0 and s["mean_matched_iou"] == 0.0
    b = binary_scores(pred, gt, (2, 2), tol_distance=3, clip_distance=10)
    assert (b["precision"], b["recall"], b["dice"], b["f1_score_with_tolerance"]) == (0, 0, 0, 0)
    # The distance to an empty foreground is infinite, so clipped: Hausdorff reads ">= 10".
    assert b["hausdorff_distance"] == 10.0
    assert b["mean_false_distance"] == pytest.approx(5.0)  # one side 10, the other none
    assert b["mean_false_distance_clipped"] == pytest.approx(5.0)
    false_tol = b["false_negatives_with_tolerance"] + b["false_positives_with_tolerance"]
    assert false_tol == 6
    if empty_side == "predicted":
        assert (b["false_negative_rate"], b["false_positive_rate"]) == (1.0, 0.0)
        assert s["adapted_rand_error"] == 0.0  # all gt voxels share one pred label (0)
    else:
        assert (b["false_negative_rate"], b["false_positive_rate"]) == (0.0, 6 / 42)
        assert s["adapted_rand_error"] == 0.0  # no ground-truth foreground to judge


def test_mask_ignores_voxels() -> None:
    pred, gt = split_scene()
    mask = np.ones(pred.shape, np.uint8)
    mask[14:18, 30:36] = 0  # hide the false object
    s = instance_scores(pred, gt, mask=mask)
    assert s["num_predicted"] == 3 and at(s, 0.5)["false_positives"] == 1
    b = binary_scores(pred, gt, (1, 1), mask=mask)
    assert b["false_positives"] == 0 and b["hausdorff_distance"] == 0.0
    assert b["true_negatives"] == 800 - 160
    # Masked-out ground truth is not a nearest foreground either.
    gt2 = np.zeros((1, 9), np.uint8)
    gt2[0, 0] = gt2[0, 8] = 1
    pred2 = np.zeros_like(gt2)
    pred2[0, 6] = 1
    m2 = np.ones_like(gt2)
    m2[0, 8] = 0
    assert binary_scores(pred2, gt2, (1, 1), mask=m2, tol_distance=1, clip_distance=20)[
        "mean_false_positive_distance"
    ] == pytest.approx(6.0)


# --------------------------------------------------------------------------------------
# distances


def test_anisotropic_distances_hand_computed() -> None:
    # voxel size (4, 2): one gt voxel; FPs 3 voxels along x (6 nm) and 1 along y (4 nm).
    gt = np.zeros((3, 7), np.uint8)
    gt[1, 1] = 1
    pred = gt.copy()
    pred[1, 4] = 1
    pred[2, 1] = 1
    b = binary_scores(pred, gt, (4, 2), tol_distance=5, clip_distance=10)
    assert b["false_positives"] == 2 and b["false_negatives"] == 0
    assert b["false_positives_with_tolerance"] == 1  # 6 > 5, 4 is within
    assert b["mean_false_positive_distance"] == pytest.approx(5.0)
    assert b["mean_false_negative_distance"] == 0.0
    assert b["mean_false_distance"] == pytest.approx(2.5)
    assert b["mean_false_distance_clipped"] == pytest.approx(0.5 * (10 / 3))
    assert b["hausdorff_distance"] == pytest.approx(6.0)
    assert b["precision"] == pytest.approx(1 / 3)
    assert b["precision_with_tolerance"] == pytest.approx(2 / 3)
    assert b["recall_with_tolerance"] == 1.0
    assert b["f1_score_with_tolerance"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    # Clipping at 5.5 caps the 6 nm error.
    c = binary_scores(pred, gt, (4, 2), tol_distance=5, clip_distance=5.5)
    assert c["mean_false_positive_distance"] == pytest.approx((5.5 + 4) / 2)
    assert c["hausdorff_distance"] == pytest.approx(5.5)


def test_anisotropic_3d_diagonal() -> None:
    gt = np.zeros((3, 4, 6), np.uint8)
    gt[0, 1, 1] = 1
    pred = np.zeros_like(gt)
    pred[1, 1, 4] = 1  # one slice (40 nm) and 3 voxels along x (24 nm) away
    b = binary_scores(pred, gt, (40, 8, 8))
    assert b["mean_false_positive_distance"] == pytest.approx(math.hypot(40, 24))
    assert b["mean_false_negative_distance"] == pytest.approx(math.hypot(40, 24))
    assert b["false_positives_with_tolerance"] == 1


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    dims=st.sampled_from([2, 3]),
    use_mask=st.booleans(),
)
def test_distances_match_brute_force(data, dims, use_mask) -> None:
    shape = tuple(data.draw(st.integers(2, 7 if dims == 2 else 4)) for _ in range(dims))
    vs = tuple(data.draw(st.integers(1, 5)) for _ in range(dims))
    clip = data.draw(st.floats(0.5, 20))
    tol = data.draw(st.floats(0, clip))
    seed = data.draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    pred = (rng.random(shape) < data.draw(st.floats(0, 1))).astype(np.uint8)
    gt = (rng.random(shape) < data.draw(st.floats(0, 1))).astype(np.uint8)
    mask = (rng.random(shape) < 0.8).astype(np.uint8) if use_mask else None
    b = binary_scores(pred, gt, vs, mask=mask, tol_distance=tol, clip_distance=clip)
    ref = brute_force_binary(pred, gt, vs, tol, clip, mask)
    for key, value in ref.items():
        assert b[key] == pytest.approx(value, abs=1e-9), key


# --------------------------------------------------------------------------------------
# references: skimage VOI / adapted Rand error


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    k_pred=st.integers(1, 6),
    k_gt=st.integers(1, 6),
    shape=st.tuples(st.integers(2, 9), st.integers(2, 9)),
    use_mask=st.booleans(),
)
def test_voi_and_are_match_skimage(seed, k_pred, k_gt, shape, use_mask) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, k_pred, shape).astype(np.uint64)
    gt = rng.integers(0, k_gt, shape).astype(np.int32)
    mask = rng.random(shape) < 0.7 if use_mask else np.ones(shape, bool)
    s = instance_scores(pred, gt, mask=mask if use_mask else None)
    p, g = pred[mask].astype(np.int64), gt[mask].astype(np.int64)
    if p.size == 0:
        return
    split, merge = skimage.metrics.variation_of_information(g, p)
    assert s["voi_split"] == pytest.approx(split, abs=1e-9)
    assert s["voi_merge"] == pytest.approx(merge, abs=1e-9)
    with np.errstate(all="ignore"):
        are, sk_precision, sk_recall = skimage.metrics.adapted_rand_error(g, p)
    if np.isfinite(are):
        assert s["adapted_rand_error"] == pytest.approx(are, abs=1e-9)
    # skimage's "precision" divides by the true-pair count: our recall, and vice versa.
    if np.isfinite(sk_precision):
        assert s["rand_recall"] == pytest.approx(sk_precision, abs=1e-9)
    if np.isfinite(sk_recall):
        assert s["rand_precision"] == pytest.approx(sk_recall, abs=1e-9)
    b = binary_scores(pred, gt, (1, 1), mask=mask if use_mask else None)
    bsplit, bmerge = skimage.metrics.variation_of_information(
        (g != 0).astype(np.int64), (p != 0).astype(np.int64)
    )
    assert b["voi_split"] == pytest.approx(bsplit, abs=1e-9)
    assert b["voi_merge"] == pytest.approx(bmerge, abs=1e-9)


# --------------------------------------------------------------------------------------
# OverlapCounter / DistanceCounter


def test_counter_accumulates_blocks_and_ids_of_any_width(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    big = np.array([0, 3, 2**40 + 1, 2**63 + 5], dtype=np.uint64)
    pred = big[rng.integers(0, 4, (12, 10))]
    gt = rng.integers(-2, 3, (12, 10)).astype(np.int16)  # signed ids
    whole = OverlapCounter()
    whole.add(pred, gt)
    monkeypatch.setattr(me, "_CONSOLIDATE_AT", 3)  # force merging while adding
    parts, other = OverlapCounter(), OverlapCounter()
    for i in range(0, 12, 4):
        parts.add(pred[i : i + 4], gt[i : i + 4])
    other.add(pred[:0], gt[:0])  # empty block: no-op
    parts.merge(other)
    for a, b in zip(whole.table(), parts.table(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert parts.num_voxels == 120
    # Reference table from a dict.
    ref: dict[tuple[int, int], int] = {}
    for p, g in zip(pred.ravel().tolist(), gt.astype(np.int64).ravel().tolist(), strict=True):
        key = (p, g % 2**64)
        ref[key] = ref.get(key, 0) + 1
    pi, gi, n = whole.table()
    assert dict(zip(zip(pi.tolist(), gi.tolist(), strict=True), n.tolist(), strict=True)) == ref
    tp, fp, fn, tn = whole.binary_counts()
    assert tp == int(((pred != 0) & (gt != 0)).sum()) and tn == int(((pred == 0) & (gt == 0)).sum())


@pytest.mark.parametrize(
    ("pred", "gt", "mask", "error", "match"),
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), None, ValueError, "same shape"),
        (np.zeros((2, 3), float), np.zeros((2, 3), int), None, TypeError, "dtype float64"),
        (np.zeros((2, 3), int), np.zeros((2, 3), int), np.ones((2,)), ValueError, "mask shape"),
    ],
)
def test_overlap_counter_rejects_bad_input(pred, gt, mask, error, match) -> None:
    with pytest.raises(error, match=match):
        OverlapCounter().add(pred, gt, mask)


def test_counter_merge_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="expected an OverlapCounter"):
        OverlapCounter().merge(DistanceCounter((1, 1)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected a DistanceCounter"):
        DistanceCounter((1, 1)).merge(OverlapCounter())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot merge"):
        DistanceCounter((1, 1)).merge(DistanceCounter((1, 2)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"voxel_size": (1,)}, ValueError, "2 or 3 positive"),
        ({"voxel_size": (1, 0)}, ValueError, "2 or 3 positive"),
        (
            {"voxel_size": (1, 1), "tol_distance": 50, "clip_distance": 40},
            ValueError,
            "must not exceed",
        ),
        ({"voxel_size": (1, 1), "tol_distance": -1}, ValueError, ">= 0"),
        ({"voxel_size": (1, 1), "clip_distance": float("inf")}, ValueError, "finite"),
        ({"voxel_size": (1, 1), "clip_distance": 0}, ValueError, "> 0"),
        ({"voxel_size": (1, 1), "tol_distance": "40"}, TypeError, "must be a number"),
    ],
)
def test_distance_counter_rejects_bad_settings(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        DistanceCounter(**kwargs)


def test_distance_counter_rejects_bad_blocks() -> None:
    d = DistanceCounter((1, 1))
    with pytest.raises(ValueError, match="same 2-D shape"):
        d.add(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mask shape"):
        d.add(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="inner must have 2 slices"):
        d.add(np.zeros((2, 2)), np.zeros((2, 2)), inner=(slice(0, 1),))
    assert d.context_voxels() == (200, 200)
    assert DistanceCounter((40, 8, 8), 40, 200).context_voxels() == (5, 25, 25)


def test_in_memory_functions_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="one axis per voxel_size entry"):
        binary_scores(np.zeros((2, 2), int), np.zeros((2, 2), int), (1, 1, 1))
    with pytest.raises(TypeError, match="integer ids or a bool mask"):
        binary_scores(np.zeros((2, 2)), np.zeros((2, 2), int), (1, 1))
    with pytest.raises(ValueError, match="iou_thresholds"):
        instance_scores(np.zeros((2, 2), int), np.zeros((2, 2), int), iou_thresholds=[0.0])
    with pytest.raises(ValueError, match="iou_thresholds"):
        instance_scores(np.zeros((2, 2), int), np.zeros((2, 2), int), iou_thresholds=[])
    with pytest.raises(TypeError, match="iou_thresholds"):
        instance_scores(np.zeros((2, 2), int), np.zeros((2, 2), int), iou_thresholds=["a"])


def test_inconsistent_counters_are_a_bug_not_a_score() -> None:
    with pytest.raises(RuntimeError, match="voxel counts disagree"):
        me._binary_scores(me.BinaryCounts(1, 1, 0, 0), DistanceCounter((1, 1)))


# --------------------------------------------------------------------------------------
# StarDist's own matching code: the reference for the IoU >= t convention


def random_rectangles(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """Label image of ``count`` axis-aligned rectangles drawn in order (later ones on top);
    small integer sides make IoUs of small rationals (1/2, 2/3, 3/4...) common."""
    labels = np.zeros(shape, np.int32)
    for i in range(1, count + 1):
        h, w = rng.integers(1, 7, size=2)
        y, x = rng.integers(0, shape[0] - h + 1), rng.integers(0, shape[1] - w + 1)
        labels[y : y + h, x : x + w] = i
    return labels


def assert_agrees_with_stardist(pred: np.ndarray, gt: np.ndarray, thresholds: list[float]) -> int:
    """Compare every count and score; returns how many pairs sat exactly on a threshold."""
    matching = pytest.importorskip("stardist.matching")
    ours = instance_scores(pred, gt, iou_thresholds=thresholds)
    for m in ours["matching"]:
        ref = matching.matching(gt, pred, thresh=m["iou_threshold"], criterion="iou")
        assert (m["true_positives"], m["false_positives"], m["false_negatives"]) == (
            ref.tp, ref.fp, ref.fn
        ), m["iou_threshold"]
        names = [
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1_score", "f1"),
            ("accuracy", "accuracy"),
        ]
        if m["iou_threshold"] >= 0.5:
            # Below 0.5 several maximum matchings may exist: ours keeps the one with the
            # largest matched IoU, StarDist's tie-break also weighs pairs below t.
            names += [("panoptic_quality", "panoptic_quality"),
                      ("mean_matched_iou", "mean_matched_score")]
        for ours_name, ref_name in names:
            assert m[ours_name] == pytest.approx(float(getattr(ref, ref_name)), abs=1e-6), (
                ours_name, m["iou_threshold"]
            )
    counter = OverlapCounter()
    counter.add(pred, gt)
    p, g, n = counter.table()
    sizes_p = {int(i): int(n[p == i].sum()) for i in np.unique(p)}
    sizes_g = {int(i): int(n[g == i].sum()) for i in np.unique(g)}
    ious = [
        c / (sizes_p[int(a)] + sizes_g[int(b)] - c)
        for a, b, c in zip(p, g, n, strict=True)
        if a and b
    ]
    return sum(1 for iou in ious for t in thresholds if iou == t)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k_gt=st.integers(1, 8), k_pred=st.integers(0, 8))
def test_matching_agrees_with_stardist_on_random_labels(seed: int, k_gt: int, k_pred: int) -> None:
    rng = np.random.default_rng(seed)
    gt = random_rectangles(rng, (14, 14), k_gt)
    if not gt.any():
        gt[0, 0] = 1
    pred = random_rectangles(rng, (14, 14), k_pred)
    thresholds = [0.1, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 0.9, 1.0]
    assert_agrees_with_stardist(pred, gt, thresholds)


def test_matching_agrees_with_stardist_on_ties_at_the_threshold() -> None:
    rng = np.random.default_rng(7)
    ties = 0
    for _ in range(60):
        gt = random_rectangles(rng, (16, 16), 6)
        if not gt.any():
            continue
        # The truth shifted and cropped: IoUs such as 1/2, 2/3 or 3/4 exactly.
        pred = np.roll(gt, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
        pred[rng.integers(0, 16), :] = 0
        ties += assert_agrees_with_stardist(pred, gt, [0.25, 1 / 3, 0.5, 2 / 3, 0.75])
    # Two hand-made ties at 0.5: one prediction covers half of each of two objects.
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[0, 3, 3, 0]])  # IoU 1/3 with each
    ties += assert_agrees_with_stardist(pred, gt, [1 / 3, 0.5])
    gt = np.array([[1, 2]])
    pred = np.array([[3, 3]])  # IoU exactly 0.5 with both: one of them matches
    ties += assert_agrees_with_stardist(pred, gt, [0.5])
    assert instance_scores(pred, gt, iou_thresholds=[0.5])["matching"][0]["true_positives"] == 1
    assert ties > 20  # the random scenes did test ties, not only the hand-made ones


def test_check_iou_thresholds() -> None:
    assert check_iou_thresholds((0.5, 1)) == [0.5, 1.0]
    with pytest.raises(TypeError, match="sequence of numbers"):
        check_iou_thresholds("0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        check_iou_thresholds([0.5, 0.0])
