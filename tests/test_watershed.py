"""Instances from a prediction in memory: level seeds, dynamic seeds (h-maxima) and the
tie rule (restriction consistency, agreement with skimage where values are distinct)."""

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
