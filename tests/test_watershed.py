"""Instances from a prediction in memory: level seeds, dynamic seeds (h-maxima) and the
tie rule (restriction consistency, agreement with skimage where values are distinct)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage.segmentation import watershed

import innerdist.watershed as ws
from innerdist.watershed import instances, threshold_mask


def slow_canonical(labels):
    """Relabel 1..N in the raster order of first voxels, one label at a time."""
    out = np.zeros(labels.shape, np.uint64)
    flat = labels.ravel()
    seen = {}
    for v in flat:
        if v and v not in seen:
            seen[v] = len(seen) + 1
    for old, new in seen.items():
        out[labels == old] = new
    return out


# --- in memory ------------------------------------------------------------------------------


def test_threshold_mask_hand_computed():
    pred = np.array([[0.0, 0.05, 0.0501], [0.5, 0.99, np.nan]], np.float32)
    got = threshold_mask(pred, 0.05)
    np.testing.assert_array_equal(got, [[0, 0, 1], [1, 1, 0]])
    assert got.dtype == np.uint8


def test_instances_hand_computed_saddle_and_unseeded_region():
    pred = np.array(
        [[0.1, 0.5, 0.9, 0.95, 0.6, 0.3, 0.6, 0.85, 0.5, 0.02, 0.3, 0.6, 0.3]], np.float32
    )
    got = instances(pred, foreground_level=0.05, seed_level=0.8)
    # The .3 saddle is claimed from the left: both .6 reach it, the left one was queued
    # first (its seed .95 is deeper than .85). The last bump has no seed and stays 0.
    np.testing.assert_array_equal(got, [[1, 1, 1, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0]])
    assert got.dtype == np.uint64


def test_plateau_between_equal_seeds_is_split_deterministically():
    # Equal seeds: the raster-first seed is flooded first, so it takes the middle voxel.
    pred = np.array([[0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9]], np.float32)
    np.testing.assert_array_equal(
        instances(pred, foreground_level=0.05, seed_level=0.8), [[1, 1, 1, 1, 2, 2, 2]]
    )
    pred = np.array([[0.9, 0.5, 0.5, 0.5, 0.5, 0.9]], np.float32)
    np.testing.assert_array_equal(
        instances(pred, foreground_level=0.05, seed_level=0.8), [[1, 1, 1, 2, 2, 2]]
    )


def test_seeds_are_face_connected_and_ids_follow_raster_order():
    pred = np.zeros((5, 5), np.float32)
    pred[1, 3] = pred[2, 2] = 0.9  # diagonal neighbours: two seeds, not one
    pred[3, 0] = 0.95
    got = instances(pred, foreground_level=0.05, seed_level=0.8)
    np.testing.assert_array_equal(np.unique(got), [0, 1, 2, 3])
    assert got[1, 3] == 1 and got[2, 2] == 2 and got[3, 0] == 3


def test_min_size_voxels_removes_small_objects_and_keeps_ids_consecutive():
    pred = np.zeros((1, 12), np.float32)
    pred[0, 0:2] = 0.9  # 2 voxels
    pred[0, 3:6] = 0.9  # 3 voxels
    pred[0, 7:11] = 0.9  # 4 voxels
    got = instances(pred, foreground_level=0.05, seed_level=0.8, min_size_voxels=3)
    np.testing.assert_array_equal(got, [[0, 0, 0, 1, 1, 1, 0, 2, 2, 2, 2, 0]])
    got = instances(pred, foreground_level=0.05, seed_level=0.8, min_size_voxels=3.5)
    np.testing.assert_array_equal(got, [[0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]])


def test_skimage_orders_markers_by_their_value():
    # What _flood relies on: skimage pops markers by their image value. (The development
    # version gives every marker -inf; then this fails and the tie-breaking needs redoing.)
    image = -np.array([[0.9, 0.5, 0.95]])
    markers = np.array([[1, 0, 2]], np.int32)
    np.testing.assert_array_equal(watershed(image, markers, mask=image < 0), [[1, 2, 2]])


def test_plain_skimage_is_not_restriction_consistent_but_flood_is():
    # Equal-valued markers every other voxel: skimage's heap pops them in an order that
    # depends on the whole heap, so a sub-box disagrees with the whole row. _flood doesn't.
    pred = np.full((1, 30), 0.5)
    markers = np.zeros((1, 30), np.int32)
    markers[0, ::2] = np.arange(1, 16)
    pred[0, ::2] = 0.9
    whole = watershed(-pred, markers, mask=pred > 0)
    part = watershed(-pred[:, :9], markers[:, :9], mask=pred[:, :9] > 0)
    assert not np.array_equal(whole[:, :8], part[:, :8])
    whole = ws._flood(pred, markers, pred > 0)
    part = ws._flood(pred[:, :9], markers[:, :9], pred[:, :9] > 0)
    np.testing.assert_array_equal(whole[:, :8], part[:, :8])
    np.testing.assert_array_equal(whole[0], np.repeat(np.arange(1, 16), 2))


quantized = st.integers(2, 3).flatmap(
    lambda dims: arrays(
        np.float32,
        st.tuples(*[st.integers(2, 9)] * dims),
        elements=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9, 0.95]),
    )
)


@settings(max_examples=60, deadline=None)
@given(pred=quantized)
def test_flooding_one_component_on_its_box_equals_flooding_everything(pred):
    """The claim the blockwise exact path rests on, on inputs full of ties."""
    seeds, _ = ws._components(pred > 0.8)
    mask = pred > 0.05
    whole = ws._flood(pred, seeds.astype(np.int32), mask)
    comps, n = ws._components(mask)
    for k, box in enumerate(ndimage.find_objects(comps), start=1):
        alone = comps[box] == k
        part = ws._flood(pred[box], np.where(alone, seeds[box], 0).astype(np.int32), alone)
        np.testing.assert_array_equal(part[alone], whole[box][alone])


@settings(max_examples=40, deadline=None)
@given(
    pred=arrays(np.float64, (7, 8), elements=st.floats(0, 1, exclude_max=True)),
    levels=st.tuples(st.floats(0, 0.5), st.floats(0.5, 1, exclude_min=True)),
)
def test_instances_equal_plain_skimage_when_seeds_have_distinct_values(pred, levels):
    fg, seed = levels
    seeds = pred > seed
    values = pred[seeds]
    if len(np.unique(values)) != len(values):
        return  # ties among seed voxels: skimage's own order is arbitrary there
    markers, _ = ws._components(seeds)
    want = slow_canonical(watershed(-pred, markers.astype(np.int32), mask=pred > fg))
    np.testing.assert_array_equal(
        instances(pred, foreground_level=fg, seed_level=seed), want
    )


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: threshold_mask(np.zeros(3, np.float32), 1.5), ValueError, "in [0, 1]"),
        (lambda: threshold_mask(np.zeros(3, np.float32), "a"), TypeError, "number"),
        (lambda: threshold_mask(np.zeros(3, np.uint8), 0.5), TypeError, "float array"),
        (lambda: instances(np.zeros(3, np.float32), foreground_level=0.1, seed_level=0.8),
         ValueError, "2-D or 3-D"),
        (lambda: instances(np.zeros((2, 2), int), foreground_level=0.1, seed_level=0.8),
         TypeError, "dtype int64"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.8, seed_level=0.8),
         ValueError, "below seed_level"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=-0.1, seed_level=0.8),
         ValueError, "foreground_level must be in [0, 1]"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=1.2),
         ValueError, "seed_level must be in [0, 1]"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=None, seed_level=0.8),
         TypeError, "foreground_level must be a number"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=0.8,
                           min_size_voxels=-1), ValueError, "min_size_voxels"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=0.8,
                           min_size_voxels="3"), TypeError, "min_size_voxels"),
    ],
)
def test_in_memory_errors(call, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()




def test_too_many_voxels_for_one_watershed(monkeypatch):
    monkeypatch.setattr(ws, "_MAX_FLOOD_VOXELS", 100)
    with pytest.raises(ValueError, match="has 1600 voxels, more than the 100"):
        instances(np.zeros((40, 40), np.float32), foreground_level=0.05, seed_level=0.8)


# --- dynamic seeds ----------------------------------------------------------------------------


def slow_dynamic_seeds(relief, mask, h, floor):
    """h-maxima by brute force, straight from the definition. Peaks are the voxels with no
    face neighbour in ``mask`` that comes before them in the total order (higher value,
    then earlier in raster order). A peak's saddle is the highest level ``t`` at which it
    is connected, within ``mask & (relief >= t)``, to a voxel before it; without one its
    saddle is ``floor``. Seeds: peaks rising ``h`` above their saddle, each with the
    connected voxels less than ``h`` below it, numbered in the order of their peaks."""
    flat = relief.ravel()
    inside = mask.ravel()
    order = sorted(np.flatnonzero(inside), key=lambda i: (-flat[i], i))
    position = {v: k for k, v in enumerate(order)}
    before = np.zeros(relief.shape, bool)
    labels = np.zeros(relief.shape, np.int32)
    n = 0
    for k, p in enumerate(order):
        coords = np.unravel_index(p, relief.shape)
        is_peak = True
        for axis in range(relief.ndim):
            for step in (-1, 1):
                q = list(coords)
                q[axis] += step
                if 0 <= q[axis] < relief.shape[axis] and mask[tuple(q)]:
                    if position[np.ravel_multi_index(q, relief.shape)] < k:
                        is_peak = False
        if is_peak:
            saddle = floor
            for t in sorted({t for t in flat[inside] if t <= flat[p]}, reverse=True):
                comps, _ = ndimage.label(mask & (relief >= t))
                if (comps == comps[coords]).ravel()[order[:k]].any():
                    saddle = t
                    break
            if flat[p] - saddle >= h:
                n += 1
                comps, _ = ndimage.label(mask & (flat[p] - relief < h))
                labels[(comps == comps[coords]) & (labels == 0)] = n
        before.ravel()[p] = True
    return labels, n


def test_dynamic_seeds_hand_computed():
    # peaks 4 (first in the total order), 3 (saddle 0.5 to 4) and 2.5 (saddle 2 to 3)
    relief = np.array([[1.0, 3.0, 2.0, 2.5, 0.5, 4.0]])
    mask = relief > 0.2
    labels, n = ws.dynamic_seeds(relief, mask, h=0.6, floor=0.0)
    np.testing.assert_array_equal(labels, [[0, 2, 0, 0, 0, 1]])  # 2.5 rises only 0.5
    assert n == 2
    labels, n = ws.dynamic_seeds(relief, mask, h=0.5, floor=0.0)  # at least h: kept
    np.testing.assert_array_equal(labels, [[0, 2, 0, 3, 0, 1]])
    # a seed region is everything less than h below its peak, connected to it
    labels, _ = ws.dynamic_seeds(relief, mask, h=1.2, floor=0.0)
    np.testing.assert_array_equal(labels, [[0, 2, 2, 2, 0, 1]])
    # the highest peak must rise h above the floor; a component below it gets no seed
    labels, n = ws.dynamic_seeds(relief, mask, h=3.9, floor=0.2)
    assert n == 0 and not labels.any()
    # two components do not see each other: each gets its own peak
    labels, n = ws.dynamic_seeds(relief, relief > 0.6, h=2.0, floor=0.0)
    np.testing.assert_array_equal(labels, [[0, 2, 2, 2, 0, 1]])


def test_equal_peaks_tie_to_the_raster_first():
    relief = np.array([[2.0, 1.0, 2.0, 1.5, 2.0]])
    labels, n = ws.dynamic_seeds(relief, relief > 0, h=0.5, floor=0.0)
    # all three rise 0.5..1 above their saddles; the first is the highest by the tie rule
    np.testing.assert_array_equal(labels, [[1, 0, 2, 0, 3]])
    labels, n = ws.dynamic_seeds(relief, relief > 0, h=0.75, floor=0.0)
    np.testing.assert_array_equal(labels, [[1, 0, 2, 2, 2]])


tied = st.integers(2, 3).flatmap(
    lambda dims: arrays(
        np.float64,
        st.tuples(*[st.integers(1, 7)] * dims),
        elements=st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]),
    )
)


@settings(max_examples=80, deadline=None)
@given(relief=tied, h=st.sampled_from([0.25, 0.5, 1.0, 1.7]), floor=st.sampled_from([-1.0, 0.0]))
def test_dynamic_seeds_equal_the_slow_definition_with_ties(relief, h, floor):
    mask = relief > floor
    got, n = ws.dynamic_seeds(relief, mask, h, floor)
    want, m = slow_dynamic_seeds(relief, mask, h, floor)
    assert n == m
    np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(
    relief=arrays(np.float64, (6, 7), elements=st.floats(0, 4)),
    h=st.floats(0.01, 2),
)
def test_dynamic_seeds_equal_the_slow_definition(relief, h):
    mask = relief > 0.3
    got, n = ws.dynamic_seeds(relief, mask, h, 0.3)
    want, m = slow_dynamic_seeds(relief, mask, h, 0.3)
    assert n == m
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(relief=tied)
def test_single_candidate_plateau_means_single_peak(relief):
    """What the blockwise engine's shortcut relies on: a component whose candidate peaks
    form one plateau has exactly one peak (with any h, its seed is the whole top)."""
    mask = relief > 0
    comps, n = ws._components(mask)
    plateaus, _ = ws._components(ws.candidate_peaks(relief, mask))
    for k in range(1, n + 1):
        inside = comps == k
        count = len(np.unique(plateaus[inside & (plateaus > 0)]))
        assert count >= 1
        _, peaks = ws._hmaxima_regions(relief, inside, 1e-9, -1.0)
        assert count >= len(peaks)  # every peak lies on its own candidate plateau
        assert len(np.unique(plateaus.ravel()[peaks])) == len(peaks)
        if count == 1:
            assert len(peaks) == 1


def test_small_object_touching_a_big_one_gets_its_own_seed():
    # A disc of radius 3 touching one of radius 12: the level seeds (0.8 of a tanh scale of
    # 6 voxels) miss the small one and it is flooded by its neighbour; dynamic seeds don't.
    grid = np.indices((40, 40))
    big = ((grid[0] - 20) ** 2 + (grid[1] - 14) ** 2) <= 12**2
    small = (((grid[0] - 20) ** 2 + (grid[1] - 29) ** 2) <= 3.5**2) & ~big
    labels = big + 2 * small
    from innerdist.inner_distance import InnerDistancePredictor

    pred = InnerDistancePredictor(["x"], 6.0).process(labels, (1, 1), "tanh", 6.0)
    level = instances(pred, foreground_level=0.05, seed_level=0.8)
    assert len(np.unique(level[labels > 0])) == 1  # merged
    dynamic = instances(pred, foreground_level=0.05, seed_level=0.8, seed_dynamic=1, scale=6)
    np.testing.assert_array_equal(dynamic, labels)


@settings(max_examples=60, deadline=None)
@given(pred=quantized, h=st.sampled_from([0.05, 0.2, 0.6]))
def test_dynamic_seeds_and_flood_are_restriction_consistent(pred, h):
    """Seeds and flood of one component on its box equal those of the whole volume: the
    blockwise engine's exactness, on inputs full of ties."""
    mask = pred > 0.05
    relief = ws.seed_relief(pred, 0.8, 1.0)
    floor = np.arctanh(0.05)
    seeds, _ = ws.dynamic_seeds(relief, mask, h, floor)
    whole = ws._flood(pred, seeds, mask)
    comps, n = ws._components(mask)
    for k, box in enumerate(ndimage.find_objects(comps), start=1):
        alone = comps[box] == k
        part_seeds, _ = ws.dynamic_seeds(relief[box], alone, h, floor)
        # the same regions (numbered within the box)
        assert len(np.unique(part_seeds[alone])) == len(np.unique(seeds[box][alone]))
        np.testing.assert_array_equal(part_seeds[alone] > 0, seeds[box][alone] > 0)
        part = ws._flood(pred[box], part_seeds, alone)
        pairs = np.unique(np.stack([part[alone], whole[box][alone]]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@settings(max_examples=40, deadline=None)
@given(
    # Distinct values everywhere: where the flooded voxels tie (a plateau), skimage's order
    # is its queue's, not a rule; distinct seed values alone are not enough (found: a 0.25
    # plateau between seeds 0.75 and 0.5 split one column differently).
    pred=arrays(np.float64, (7, 8), elements=st.floats(0, 1, exclude_max=True), unique=True),
    h=st.floats(0.01, 1),
)
def test_dynamic_instances_equal_skimage_with_seeds_placed_first(pred, h):
    # The documented rule, built independently: seed voxels raised above every other value
    # (so skimage places them all first, by value), then the flood by value. (Plain
    # skimage on -pred differs where a dynamic seed lies below a neighbour's flank; found:
    # a voxel between a 0.66 flank and a 0.50 seed.)
    mask = pred > 0.05
    markers, _ = ws.dynamic_seeds(ws.seed_relief(pred, 0.8, 1.0), mask, h, np.arctanh(0.05))
    seeds_first = np.where(markers > 0, 1.0 + pred, pred)
    want = slow_canonical(watershed(-seeds_first, markers, mask=mask, connectivity=1))
    got = instances(pred, foreground_level=0.05, seed_level=0.8, seed_dynamic=h)
    np.testing.assert_array_equal(got, want)


def test_seed_relief_is_the_capped_distance():
    pred = np.array([[0.0, 0.5, 0.8, 0.95, 1.0]], np.float32)
    got = ws.seed_relief(pred, 0.8, 10.0)
    want = 10 * np.arctanh(np.minimum(pred.astype(np.float64), 0.8))
    np.testing.assert_allclose(got, want)
    assert got.dtype == np.float64
    assert np.isfinite(ws.seed_relief(pred, 1.0, 1.0)).all()  # a stray 1.0 stays finite


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=0.8,
                           seed_dynamic=-1), ValueError, "seed_dynamic must be a finite"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=0.8,
                           seed_dynamic=float("nan")), ValueError, "seed_dynamic"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=0.8,
                           seed_dynamic="1"), TypeError, "seed_dynamic must be a number"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=0.8,
                           seed_dynamic=True), TypeError, "seed_dynamic must be a number"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=0.8,
                           seed_dynamic=1, scale=0), ValueError, "scale must be a finite"),
        (lambda: instances(np.zeros((2, 2)), foreground_level=0.1, seed_level=0.8,
                           seed_dynamic=1, scale=None), TypeError, "scale must be a number"),
        (lambda: ws.dynamic_seeds(np.zeros((2, 2)), np.zeros((2, 3), bool), 1, 0),
         ValueError, "must be one 2-D or 3-D shape"),
        (lambda: ws.dynamic_seeds(np.zeros(2), np.zeros(2, bool), 1, 0),
         ValueError, "must be one 2-D or 3-D shape"),
        (lambda: ws.dynamic_seeds(np.zeros((2, 2)), np.zeros((2, 2), bool), 0, 0),
         ValueError, "h must be a finite number > 0"),
    ],
)
def test_dynamic_seed_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_seed_relief_is_finite_below_minus_one() -> None:
    from innerdist.watershed import seed_relief

    pred = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 0.99, 1.0], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'invalid value in arctanh'
        relief = seed_relief(pred, seed_level=0.9, scale=10.0)
    assert np.isfinite(relief).all()
    # Values in (-1, 1) are the plain formula, capped at the seed level.
    np.testing.assert_allclose(relief[2:5], 10 * np.arctanh([-0.5, 0.0, 0.5]))
    assert relief[5] == relief[6] == 10 * np.arctanh(np.float64(0.9))
    assert relief[0] == relief[1] < relief[2]
