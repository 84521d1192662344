"""Masks and instances from inner-distance predictions, in memory and blockwise.

The blockwise result must be the in-memory result: the tests compare them exactly (same
ids) and, as the weaker property users rely on, check that the pair histogram of the two
labelings is a bijection.
"""

import numpy as np
import pytest
from funlib.geometry import Roi
from funlib.persistence import prepare_ds
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from labelgen import grown_cells, packed_balls
from scipy import ndimage
from typer.testing import CliRunner

import innerdist.segment as seg
from innerdist.blockwise import tracking_dir_for
from innerdist.cli import app
from innerdist.segment import (
    ApproximateSeamsWarning,
    instances,
    segment_volume,
)
from innerdist.volumes import create_volume, is_complete, mark_complete, open_volume

# --- helpers --------------------------------------------------------------------------------


def write_prediction(path, pred, voxel_size=None, offset=None, attrs=None, complete=True):
    """Write ``pred`` (C, *spatial) as a prediction volume (chunks unrelated to blocks)."""
    dims = pred.ndim - 1
    voxel_size = voxel_size or (1,) * dims
    offset = offset or (0,) * dims
    roi = Roi(offset, tuple(s * v for s, v in zip(pred.shape[1:], voxel_size)))
    array = create_volume(path, roi=roi, voxel_size=voxel_size, dtype=pred.dtype,
                          num_channels=pred.shape[0], chunk_shape=(5,) * dims, attrs=attrs)
    array[roi] = pred
    if complete:
        mark_complete(array)
    return str(path)


def read(path):
    array = open_volume(path)
    return array[array.roi]


def tanh_distance(labels, scale, sampling=None):
    """A prediction as a network would make it: tanh of each object's distance to its
    boundary (touching objects bound each other), 0 in background."""
    pred = np.zeros(labels.shape, np.float64)
    for i in np.unique(labels[labels > 0]):
        inside = labels == i
        pred[inside] = np.tanh(ndimage.distance_transform_edt(inside, sampling)[inside] / scale)
    return pred.astype(np.float32)


def balls(shape, spheres):
    """Label volume with balls ``(centre, radius)``; earlier balls win where they overlap."""
    grid = np.indices(shape)
    labels = np.zeros(shape, np.uint32)
    for i, (centre, radius) in enumerate(spheres, start=1):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
        labels[inside & (labels == 0)] = i
    return labels


def scene_3d():
    """24^3 (blocks of 8^3): a ball on a block corner, two touching balls (one foreground
    component, two seeds), a U that leaves block (0, 0, 0) and re-enters it, a rod through
    three blocks touching a second rod, and a faint blob without seed."""
    shape = (24, 24, 24)
    labels = balls(shape, [((8, 8, 8), 5), ((17, 6, 17), 4), ((17, 14, 17), 4)])
    u = np.zeros(shape, bool)
    u[1:5, 1:12, 1:4] = u[1:5, 1:12, 5:8] = u[1:5, 9:12, 1:8] = True  # arms meet at y 9..11
    labels[u & (labels == 0)] = 4
    labels[20:23, 18:21, :] = 5
    labels[20:23, 21:24, 2:22] = 6
    pred = tanh_distance(labels, scale=1.5)
    faint = balls(shape, [((20, 4, 4), 3)]) > 0
    pred[faint] = 0.5 * tanh_distance(faint.astype(np.uint32), scale=1.5)[faint]
    return pred


def scene_2d():
    """40x40 (blocks of 8x8): a disk on a block corner, touching disks, a U whose arms are
    apart in block (0, 3) and meet in block (1, 3), a faint blob."""
    shape = (40, 40)
    labels = balls(shape, [((16, 16), 6), ((30, 8), 5), ((30, 17), 5)])
    labels[2:12, 24:27] = labels[2:12, 28:31] = labels[9:12, 24:31] = 4
    pred = tanh_distance(labels, scale=1.5)
    faint = balls(shape, [((34, 33), 4)]) > 0
    pred[faint] = 0.5 * tanh_distance(faint.astype(np.uint32), scale=1.5)[faint]
    return pred


def noisy(pred, seed=0, amount=0.15):
    """Noise inside objects: extra seeds and many multi-seed components."""
    rng = np.random.default_rng(seed)
    out = pred + rng.uniform(-amount, amount, pred.shape) * (pred > 0)
    return np.clip(out, 0, 0.999).astype(np.float32)


def assert_bijection(a, b):
    """The pair histogram of two labelings is a bijection (0 <-> 0 included)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "a label of a maps to several of b"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "a label of b maps to several of a"
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all(), "background maps to an object"


def assert_same(got, want):
    assert_bijection(got, want)
    np.testing.assert_array_equal(got, want)  # stronger: the ids are the same too


def reference(pred, fg=0.05, seed=0.8, min_size_voxels=0):
    return np.stack(
        [instances(p, foreground_level=fg, seed_level=seed, min_size_voxels=min_size_voxels)
         for p in pred]
    )


# --- blockwise: equality with the in-memory reference -----------------------------------


@pytest.mark.parametrize("block", [(8, 8, 8), (7, 10, 24)])
def test_blockwise_instances_equal_in_memory_3d(tmp_path, block):
    pred = noisy(scene_3d())[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    out = segment_volume(path, tmp_path / "s.zarr" / "seg", block_shape=block, progress=False)
    got = read(out)
    want = reference(pred)
    assert_same(got, want)
    assert len(np.unique(want)) > 8  # the noise made several multi-seed components
    result = open_volume(out)
    assert is_complete(result) and result.dtype == np.uint64
    assert result.axis_names == ["c^", "z", "y", "x"]
    assert result._source_data.chunks == (1, *block)
    # Intermediates and block tracking are gone.
    assert sorted(p.name for p in (tmp_path / "s.zarr").iterdir()) == [".innerdist-blocks", "seg"]
    assert not tracking_dir_for(out).exists()


def test_blockwise_clean_scene_objects_3d(tmp_path):
    pred = scene_3d()[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    got = read(segment_volume(path, tmp_path / "p.zarr" / "seg", block_shape=(8, 8, 8),
                              progress=False))
    want = reference(pred)
    assert_same(got, want)
    # corner ball, two touching balls split, U as one object, two rods; faint blob is 0
    assert want.max() == 6
    assert got[0, 20, 4, 4] == 0 and pred[0, 20, 4, 4] > 0.05
    assert got[0, 3, 2, 2] == got[0, 3, 2, 6] != 0  # the U's arms are one object


def test_blockwise_instances_2d_anisotropic_with_offset(tmp_path):
    pred = noisy(scene_2d(), seed=1)[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred, voxel_size=(4, 2),
                            offset=(40, 20))
    out = segment_volume(path, tmp_path / "p.zarr" / "seg", block_shape=(8, 8), progress=False)
    result = open_volume(out)
    assert result.roi == Roi((40, 20), (160, 80)) and result.voxel_size == (4, 2)
    assert_same(read(out), reference(pred))


def test_quantized_uint8_prediction_with_many_ties(tmp_path):
    stored = np.rint(noisy(scene_3d(), seed=2) * 20).astype(np.uint8)  # 21 distinct levels
    attrs = {"innerdist_quantization": {"scale": 0.05, "offset": 0.0}}
    path = write_prediction(tmp_path / "p.zarr" / "pred", stored[None], attrs=attrs)
    got = read(segment_volume(path, tmp_path / "p.zarr" / "seg", block_shape=(8, 8, 8),
                              progress=False))
    pred = stored.astype(np.float32) * np.float32(0.05)
    assert_same(got, reference(pred[None]))


def test_two_channels_are_segmented_independently(tmp_path):
    pred = np.stack([noisy(scene_2d(), seed=3), noisy(scene_2d()[::-1].copy(), seed=4)])
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    got = read(segment_volume(path, tmp_path / "p.zarr" / "seg", block_shape=(16, 8),
                              progress=False))
    want = reference(pred)
    assert_same(got, want)
    assert want[0].max() > 1 and want[1].max() > 1  # ids start at 1 in every channel


def test_n5_prediction_is_read_through_funlib(tmp_path):
    from test_n5 import write_n5

    pred = noisy(scene_2d(), seed=12)[None]
    write_n5(tmp_path / "p.n5", "pred", pred, (1, 7, 7),
             attrs={"voxel_size": [2, 2], "offset": [0, 0], "axis_names": ["c^", "y", "x"]})
    out = segment_volume(tmp_path / "p.n5" / "pred", tmp_path / "o.zarr" / "seg",
                         block_shape=(16, 16), progress=False)
    assert open_volume(out).voxel_size == (2, 2)
    assert_same(read(out), reference(pred))


@settings(max_examples=6, deadline=None)
@given(
    pred=arrays(np.float32, (12, 13), elements=st.sampled_from([0.0, 0.3, 0.6, 0.9, 0.95])),
    block=st.tuples(st.integers(2, 6), st.integers(2, 6)),
)
def test_random_blockwise_equals_in_memory(tmp_path_factory, pred, block):
    tmp = tmp_path_factory.mktemp("random")
    path = write_prediction(tmp / "p.zarr" / "pred", pred[None])
    got = read(segment_volume(path, tmp / "p.zarr" / "seg", block_shape=block, progress=False))
    assert_same(got, reference(pred[None]))


def test_two_workers(tmp_path):
    pred = noisy(scene_3d(), seed=5)[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    got = read(segment_volume(path, tmp_path / "p.zarr" / "seg", block_shape=(12, 12, 12),
                              num_workers=2, progress=False))
    assert_same(got, reference(pred))


# --- threshold mode, min_size, defaults -------------------------------------------------------


def test_threshold_mode_is_exact(tmp_path):
    pred = noisy(scene_3d())[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    out = segment_volume(path, tmp_path / "p.zarr" / "mask", mode="threshold",
                         foreground_level=0.3, block_shape=(8, 8, 8), progress=False)
    result = open_volume(out)
    assert result.dtype == np.uint8 and is_complete(result)
    np.testing.assert_array_equal(result[result.roi], (pred > 0.3).astype(np.uint8))


def test_min_size_in_world_units_with_anisotropic_voxels(tmp_path):
    pred = noisy(scene_3d(), seed=6)[None]
    voxel = (4, 2, 2)  # 16 nm^3 per voxel
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred, voxel_size=voxel)
    full = reference(pred)
    sizes = np.bincount(full.ravel())[1:]
    cut = int(np.sort(sizes)[len(sizes) // 2])  # keep the larger half
    kwargs = dict(block_shape=(12, 12, 12), progress=False)
    got = read(segment_volume(path, tmp_path / "p.zarr" / "a", min_size=cut * 16, **kwargs))
    assert_same(got, reference(pred, min_size_voxels=cut))
    assert 1 < got.max() < full.max()
    assert (np.bincount(got.ravel())[1:] >= cut).all()
    # one nm^3 more and the objects of exactly `cut` voxels go too
    got = read(segment_volume(path, tmp_path / "p.zarr" / "b", min_size=cut * 16 + 1, **kwargs))
    assert_same(got, reference(pred, min_size_voxels=cut + 1 / 16))
    assert (np.bincount(got.ravel())[1:] > cut).all()


def test_defaults_come_from_postprocessing_attrs(tmp_path):
    pred = noisy(scene_2d(), seed=7)[None]
    attrs = {"innerdist_postprocessing": {"foreground_level": 0.3, "seed_level": 0.9,
                                          "min_size": 6}}
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred, voxel_size=(2, 3), attrs=attrs)
    kwargs = dict(block_shape=(20, 20), progress=False)
    got = read(segment_volume(path, tmp_path / "p.zarr" / "a", **kwargs))
    assert_same(got, reference(pred, fg=0.3, seed=0.9, min_size_voxels=6))  # min_size: voxels
    assert open_volume(tmp_path / "p.zarr" / "a").attrs["innerdist_segmentation"] == {
        "mode": "instances", "foreground_level": 0.3, "seed_level": 0.9, "seed_dynamic": 0.0,
        "min_size": 36.0,
    }
    # Explicit arguments win over the attrs (min_size in nm^2 here).
    got = read(segment_volume(path, tmp_path / "p.zarr" / "b", seed_level=0.85, min_size=0,
                              **kwargs))
    assert_same(got, reference(pred, fg=0.3, seed=0.85))
    # Without attrs: the predictor's epsilon and threshold.
    plain = write_prediction(tmp_path / "p.zarr" / "plain", pred)
    got = read(segment_volume(plain, tmp_path / "p.zarr" / "c", **kwargs))
    assert_same(got, reference(pred, fg=0.05, seed=0.8))


# --- dynamic seeds: blockwise equals in memory ----------------------------------------------


def predictor_attrs(scale, **more):
    """The attrs ``predict`` and ``targets`` write: the predictor, whose scale turns the
    prediction back into distances (and so switches on dynamic seeds by default)."""
    predictor = {"channels": ["x"], "scale_factor": scale, "epsilon": 0.05, "threshold": 0.8}
    return {"innerdist_predictor": predictor, **more}


def dynamic_reference(pred, scale, h, fg=0.05, seed=0.8, min_size_voxels=0):
    return np.stack(
        [instances(p, foreground_level=fg, seed_level=seed, min_size_voxels=min_size_voxels,
                   seed_dynamic=h, scale=scale) for p in pred]
    )


def f1_at_half(seg, labels):
    from innerdist.evaluate import instance_scores

    return instance_scores(seg, labels, iou_thresholds=[0.5])["matching"][0]["f1_score"]


def exact_prediction(labels, voxel_size, scale):
    from innerdist.inner_distance import InnerDistancePredictor

    return InnerDistancePredictor(["x"], scale).process(labels, voxel_size, "tanh", scale)


DYNAMIC_SCENES = {
    "balls-2d": (lambda rng: packed_balls(rng, (96, 96), radii=(3, 20)), (8, 8)),
    "cells-2d": (lambda rng: grown_cells(rng, (96, 96), radii=(3, 20)), (8, 8)),
    "cells-3d": (lambda rng: grown_cells(rng, (36, 36, 36), radii=(3, 12)), (8, 8, 8)),
    "balls-3d-aniso": (lambda rng: packed_balls(rng, (24, 40, 40), radii=(3, 12)), (40, 8, 8)),
}


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("scene", "block", "noise"),
    [("balls-2d", (17, 40), 0.15), ("cells-3d", (7, 20, 36), 0.15),
     pytest.param("balls-2d", (17, 40), 0.0, marks=SLOW),
     pytest.param("balls-3d-aniso", (8, 16, 16), 0.15, marks=SLOW),
     pytest.param("balls-2d", (32, 32), 0.15, marks=SLOW),
     pytest.param("cells-2d", (24, 24), 0.0, marks=SLOW),
     pytest.param("cells-2d", (24, 24), 0.15, marks=SLOW),
     pytest.param("cells-3d", (12, 12, 12), 0.0, marks=SLOW),
     pytest.param("cells-3d", (12, 12, 12), 0.15, marks=SLOW),
     pytest.param("balls-3d-aniso", (8, 16, 16), 0.0, marks=SLOW),
     pytest.param("balls-3d-aniso", (24, 13, 9), 0.15, marks=SLOW)],
)
def test_blockwise_dynamic_seeds_equal_in_memory(tmp_path, scene, block, noise):
    make, voxel_size = DYNAMIC_SCENES[scene]
    labels = make(np.random.default_rng(3))
    pred = exact_prediction(labels, voxel_size, 50.0)
    if noise:
        pred = noisy(pred, seed=4, amount=noise)
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred[None], voxel_size=voxel_size,
                            attrs=predictor_attrs(50.0))
    out = segment_volume(path, tmp_path / "s.zarr" / "seg", block_shape=block, progress=False)
    # default: dynamic seeds of one voxel (the finest axis), the scale from the attrs
    assert open_volume(out).attrs["innerdist_segmentation"]["seed_dynamic"] == 8.0
    want = dynamic_reference(pred[None], 50.0, 8.0)
    assert_same(read(out), want)
    if not noise:
        assert f1_at_half(want[0], labels) == 1.0  # exact targets: every object back


def test_dynamic_seeds_split_objects_that_level_seeds_merge(tmp_path):
    labels = packed_balls(np.random.default_rng(5), (96, 96), radii=(3, 20))
    pred = exact_prediction(labels, (8, 8), 50.0)
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred[None], voxel_size=(8, 8),
                            attrs=predictor_attrs(50.0))
    level = read(segment_volume(path, tmp_path / "s.zarr" / "level", seed_dynamic=0,
                                block_shape=(32, 32), progress=False))
    assert_same(level, reference(pred[None]))
    assert level.max() < labels.max()  # small objects lost or merged
    dynamic = read(segment_volume(path, tmp_path / "s.zarr" / "dyn", seed_dynamic=8,
                                  block_shape=(32, 32), progress=False))
    assert f1_at_half(dynamic[0], labels) == 1.0


def test_dynamic_seeds_on_quantized_ties_and_two_channels(tmp_path):
    # uint8 quantisation makes plateaus and equal peaks everywhere; two channels differ.
    a = noisy(scene_3d(), seed=1)
    b = noisy(scene_3d()[::-1].copy(), seed=2)
    stored = np.round(np.stack([a, b]) * 255).astype(np.uint8)
    attrs = predictor_attrs(2.0, innerdist_quantization={"scale": 1 / 255, "offset": 0.0})
    path = write_prediction(tmp_path / "p.zarr" / "pred", stored, attrs=attrs)
    values = stored.astype(np.float32) * np.float32(1 / 255)
    for block in [(8, 8, 8), (5, 24, 11)]:
        out = segment_volume(path, tmp_path / "s.zarr" / f"seg{block[0]}", block_shape=block,
                             seed_dynamic=0.3, progress=False)
        assert_same(read(out), dynamic_reference(values, 2.0, 0.3))


@settings(max_examples=5, deadline=None)
@given(
    pred=arrays(np.float32, (12, 13), elements=st.sampled_from([0.0, 0.3, 0.6, 0.9, 0.95])),
    block=st.tuples(st.integers(2, 6), st.integers(2, 6)),
    h=st.sampled_from([0.1, 0.4, 1.0]),
)
def test_random_blockwise_dynamic_seeds_equal_in_memory(tmp_path_factory, pred, block, h):
    tmp = tmp_path_factory.mktemp("random-dynamic")
    path = write_prediction(tmp / "p.zarr" / "pred", pred[None], attrs=predictor_attrs(1.0))
    got = read(segment_volume(path, tmp / "p.zarr" / "seg", block_shape=block, seed_dynamic=h,
                              progress=False))
    assert_same(got, dynamic_reference(pred[None], 1.0, h))


@SLOW
def test_dynamic_seeds_with_two_workers(tmp_path):
    pred = noisy(scene_3d(), seed=12)[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred, voxel_size=(2, 1, 1),
                            attrs=predictor_attrs(3.0))
    got = read(segment_volume(path, tmp_path / "p.zarr" / "a", block_shape=(12, 12, 12),
                              num_workers=2, progress=False))
    assert_same(got, dynamic_reference(pred, 3.0, 1.0))


def test_dynamic_seeds_with_min_size_and_the_fallback(tmp_path):
    pred = noisy(scene_3d(), seed=12)[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred, voxel_size=(2, 1, 1),
                            attrs=predictor_attrs(3.0))
    got = read(segment_volume(path, tmp_path / "p.zarr" / "a", block_shape=(12, 12, 12),
                              min_size=40, progress=False))
    assert_same(got, dynamic_reference(pred, 3.0, 1.0, min_size_voxels=20))
    with pytest.warns(ApproximateSeamsWarning):
        out = segment_volume(path, tmp_path / "p.zarr" / "b", block_shape=(12, 12, 12),
                             max_watershed_voxels=8, fallback_context=(24, 24, 24),
                             progress=False)
    assert_same(read(out), dynamic_reference(pred, 3.0, 1.0))
    with pytest.warns(ApproximateSeamsWarning):
        out = segment_volume(path, tmp_path / "p.zarr" / "c", block_shape=(8, 8, 8),
                             max_watershed_voxels=8, fallback_context=(1, 1, 1),
                             progress=False)
    assert ((read(out)[0] != 0) <= (pred[0] > 0.05)).all()  # approximate, but valid


def test_seed_dynamic_from_postprocessing_attrs_and_level_seeds_without_a_scale(tmp_path):
    pred = noisy(scene_2d(), seed=3)[None]
    attrs = predictor_attrs(1.5, innerdist_postprocessing={
        "foreground_level": 0.1, "seed_level": 0.9, "seed_dynamic": 0.5, "min_size": 0})
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred, attrs=attrs)
    got = read(segment_volume(path, tmp_path / "p.zarr" / "a", block_shape=(16, 16),
                              progress=False))
    assert_same(got, dynamic_reference(pred, 1.5, 0.5, fg=0.1, seed=0.9))
    # no predictor attrs: the scale is unknown, so level seeds (as before dynamic seeds)
    plain = write_prediction(tmp_path / "p.zarr" / "plain", pred)
    out = segment_volume(plain, tmp_path / "p.zarr" / "b", block_shape=(16, 16), progress=False)
    assert open_volume(out).attrs["innerdist_segmentation"]["seed_dynamic"] == 0.0
    assert_same(read(out), reference(pred))


# --- the perfect-information round trip -------------------------------------------------------


ROUND_TRIPS = [
    ("cells", (128, 128), (8, 8), (3, 30)),
    ("cells", (24, 48, 48), (40, 8, 8), (3, 12)),
    pytest.param("balls", (160, 160), (8, 8), (3, 30), marks=SLOW),
    pytest.param("cells", (40, 40, 40), (8, 8, 8), (3, 12), marks=SLOW),
    pytest.param("balls", (384, 384), (8, 8), (3, 30), marks=SLOW),
    pytest.param("cells", (384, 384), (8, 8), (3, 30), marks=SLOW),
    pytest.param("balls", (112, 112, 112), (8, 8, 8), (3, 30), marks=SLOW),
    pytest.param("cells", (112, 112, 112), (8, 8, 8), (3, 30), marks=SLOW),
    pytest.param("balls", (64, 144, 144), (40, 8, 8), (3, 30), marks=SLOW),
    pytest.param("cells", (64, 144, 144), (40, 8, 8), (3, 30), marks=SLOW),
]


@pytest.mark.parametrize(("kind", "shape", "voxel_size", "radii"), ROUND_TRIPS)
def test_round_trip_with_default_settings(tmp_path, kind, shape, voxel_size, radii):
    """labels -> exact targets -> segment_volume with defaults: every object comes back
    (F1@0.5 >= 0.99), the goal for touching objects of radii 3..30 voxels."""
    from innerdist.targets import compute_targets

    make = {"balls": packed_balls, "cells": grown_cells}[kind]
    labels = make(np.random.default_rng(11), shape, radii=radii)
    path = write_prediction(tmp_path / "l.zarr" / "labels", labels[None].astype(np.uint32),
                            voxel_size=voxel_size)
    compute_targets(path, tmp_path / "l.zarr" / "pred", scale_factor=50, progress=False)
    out = segment_volume(tmp_path / "l.zarr" / "pred", tmp_path / "l.zarr" / "seg",
                         progress=False)
    assert open_volume(out).attrs["innerdist_segmentation"]["seed_dynamic"] == min(voxel_size)
    assert labels.max() > 10
    assert f1_at_half(read(out)[0], labels) >= 0.99


# --- resuming ---------------------------------------------------------------------------------


def interrupt_on_call(monkeypatch, name, call_number):
    """Make ``seg.<name>`` raise KeyboardInterrupt (a user's Ctrl-C) once, on its n-th call."""
    original = getattr(seg, name)
    calls = {"n": 0, "interrupted": False}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call_number and not calls["interrupted"]:
            calls["interrupted"] = True
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(seg, name, flaky)
    return calls


def count_calls(monkeypatch, name):
    original = getattr(seg, name)
    calls = {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(seg, name, counted)
    return calls


RESUMED_STEPS = ("_pass_fragments", "_flood_batch", "_pass_write")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run, counting the units of work of the steps interrupted below."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    pred = noisy(scene_3d(), seed=8)[None]
    path = write_prediction(tmp / "p.zarr" / "pred", pred)
    with pytest.MonkeyPatch.context() as m:
        counts = {step: count_calls(m, step) for step in RESUMED_STEPS}
        out = segment_volume(path, tmp / "p.zarr" / "seg", block_shape=(12, 12, 12),
                             progress=False)
    return pred, {step: c["n"] for step, c in counts.items()}, read(out)


@pytest.mark.parametrize(("step", "call_number"), list(zip(RESUMED_STEPS, (3, 2, 6))))
def test_resume_after_interruption(tmp_path, monkeypatch, uninterrupted, step, call_number):
    pred, total, want = uninterrupted
    assert total["_pass_fragments"] == total["_pass_write"] == 8 and total["_flood_batch"] >= 2
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    out = tmp_path / "p.zarr" / "seg"
    calls = interrupt_on_call(monkeypatch, step, call_number)
    with pytest.raises(KeyboardInterrupt):
        segment_volume(path, out, block_shape=(12, 12, 12), progress=False)
    assert not is_complete(open_volume(out))
    calls["n"] = 0
    segment_volume(path, out, block_shape=(12, 12, 12), progress=False)
    # The units finished before the interruption are not done again.
    assert calls["n"] == total[step] - (call_number - 1)
    assert is_complete(open_volume(out))
    assert_same(read(out), want)
    assert_same(read(out), reference(pred))


def test_failing_block_is_reported_and_resumed(tmp_path, monkeypatch):
    pred = noisy(scene_2d(), seed=9)[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    out = tmp_path / "p.zarr" / "seg"
    original = seg._pass_faces

    def broken(job, read_roi, write_roi):
        if job.locate(write_roi)[0] == 3:
            raise OSError("disk full")
        return original(job, read_roi, write_roi)

    monkeypatch.setattr(seg, "_pass_faces", broken)
    with pytest.raises(OSError, match="disk full"):  # serial: the block's own error
        segment_volume(path, out, block_shape=(16, 16), progress=False)
    monkeypatch.setattr(seg, "_pass_faces", original)
    # A different job may not take over the unfinished output ...
    with pytest.raises(FileExistsError, match="different job"):
        segment_volume(path, out, block_shape=(16, 16), seed_level=0.7, progress=False)
    # ... the same job resumes it.
    segment_volume(path, out, block_shape=(16, 16), progress=False)
    assert_same(read(out), reference(pred))


def test_an_existing_output_keeps_its_blocks(tmp_path, monkeypatch):
    """Planned blocks depend on the workers and the machine: an unfinished output written
    with other blocks is resumed with them (not refused as another job, not started
    afresh), and a finished one stays the same job, a no-op, with other workers."""
    pred = noisy(scene_2d(), seed=9)[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)  # 40 x 40, chunks of 5
    out = tmp_path / "p.zarr" / "seg"
    planned = seg._planned_block_shape((40, 40), channels=1, stored_chunks=(5, 5), workers=1,
                                       cluster=False)
    assert planned == (40, 40)  # one block, unlike the (16, 16) below
    interrupt_on_call(monkeypatch, "_pass_write", 3)
    with pytest.raises(KeyboardInterrupt):
        segment_volume(path, out, block_shape=(16, 16), progress=False)
    fragments = count_calls(monkeypatch, "_pass_fragments")
    written = count_calls(monkeypatch, "_pass_write")
    segment_volume(path, out, progress=False)
    assert (fragments["n"], written["n"]) == (0, 9 - 2)  # 2 of the 9 blocks were written
    result = open_volume(out)
    assert is_complete(result) and result.attrs["innerdist_job"]["block_shape"] == [16, 16]
    assert_same(read(out), reference(pred))
    segment_volume(path, out, num_workers=2, progress=False)  # complete: nothing to do
    assert fragments["n"] == 0
    # --overwrite starts afresh, with planned blocks.
    segment_volume(path, out, overwrite=True, progress=False)
    assert open_volume(out).attrs["innerdist_job"]["block_shape"] == [40, 40]
    assert_same(read(out), reference(pred))


# --- the fallback for components too large to flood whole ---------------------------------------


def test_fallback_with_context_covering_everything_is_exact(tmp_path):
    pred = noisy(scene_3d(), seed=10)[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    with pytest.warns(ApproximateSeamsWarning, match="max_watershed_voxels=8"):
        out = segment_volume(path, tmp_path / "p.zarr" / "seg", block_shape=(12, 12, 12),
                             max_watershed_voxels=8, fallback_context=(24, 24, 24),
                             progress=False)
    assert_same(read(out), reference(pred))


def test_fallback_with_small_context_is_a_valid_segmentation(tmp_path):
    pred = noisy(scene_3d(), seed=11)[None]
    path = write_prediction(tmp_path / "p.zarr" / "pred", pred)
    with pytest.warns(ApproximateSeamsWarning):
        out = segment_volume(path, tmp_path / "p.zarr" / "seg", block_shape=(8, 8, 8),
                             max_watershed_voxels=8, fallback_context=(1, 1, 1),
                             progress=False)
    got, want = read(out)[0], reference(pred)[0]
    assert ((got != 0) <= (pred[0] > 0.05)).all()  # only foreground is labelled
    seeds = pred[0] > 0.8
    # every seed keeps its own id (what can differ is the split between seeds)
    assert_bijection(got[seeds], want[seeds])
    np.testing.assert_array_equal(np.unique(got), np.arange(want.max() + 1))


# --- errors -----------------------------------------------------------------------------------


@pytest.fixture
def prediction(tmp_path):
    return write_prediction(tmp_path / "p.zarr" / "pred", scene_2d()[None])


def make_bad_input(tmp_path, kind):
    path = tmp_path / "bad.zarr" / "pred"
    pred = scene_2d()[None]
    if kind == "no channel axis":
        create_volume(path, roi=Roi((0, 0), (40, 40)), voxel_size=(1, 1), dtype=np.float32)
        mark_complete(open_volume(path, "r+"))
    elif kind == "one spatial axis":
        prepare_ds(path, shape=(1, 40), axis_names=["c^", "x"], dtype=np.float32, mode="w")
    elif kind == "two channel axes":
        prepare_ds(path, shape=(1, 1, 40, 40), axis_names=["c^", "d^", "y", "x"],
                   dtype=np.float32, mode="w")
    elif kind == "incomplete":
        write_prediction(path, pred, complete=False)
    elif kind == "uint8 without mapping":
        write_prediction(path, (pred * 255).astype(np.uint8))
    elif kind == "bad mapping":
        write_prediction(path, pred, attrs={"innerdist_quantization": {"scale": 0}})
    elif kind == "zero scale":
        write_prediction(path, pred, attrs={"innerdist_quantization": {"scale": 0, "offset": 0}})
    elif kind == "bad postprocessing":
        write_prediction(path, pred, attrs={"innerdist_postprocessing": {"level": 1}})
    elif kind == "bool with mapping":
        write_prediction(path, pred > 0.5, attrs={"innerdist_quantization": {"scale": 1,
                                                                              "offset": 0}})
    elif kind == "non-finite mapping":
        write_prediction(path, pred, attrs={"innerdist_quantization": {"scale": "a",
                                                                       "offset": 0}})
    elif kind == "bad tuned min_size":
        write_prediction(path, pred, attrs={"innerdist_postprocessing": {"min_size": -2}})
    elif kind == "no channels":
        prepare_ds(path, shape=(0, 40, 40), axis_names=["c^", "y", "x"], dtype=np.float32,
                   mode="w")
    elif kind == "bad tuned seed_dynamic":
        write_prediction(path, pred, attrs={"innerdist_postprocessing": {"seed_dynamic": -1}})
    elif kind == "bad predictor scale":
        write_prediction(path, pred, attrs={"innerdist_predictor": {"scale_factor": 0}})
    elif kind == "predictor without scale":
        write_prediction(path, pred, attrs={"innerdist_predictor": ["x"]})
    elif kind == "bad tuned level":
        write_prediction(path, pred, attrs={"innerdist_postprocessing": {"seed_level": 3}})
    return str(path)


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("no channel axis", ValueError, "without a channel axis"),
        ("one spatial axis", ValueError, "2 or 3 spatial axes"),
        ("two channel axes", ValueError, "at most one channel axis"),
        ("incomplete", ValueError, "incomplete"),
        ("uint8 without mapping", TypeError, "innerdist_quantization"),
        ("bad mapping", ValueError, "'scale': s, 'offset': o"),
        ("zero scale", ValueError, "must be > 0"),
        ("bad postprocessing", ValueError, "innerdist_postprocessing"),
        ("bad tuned level", ValueError, "seed_level"),
        ("bool with mapping", TypeError, "expected float or integer"),
        ("non-finite mapping", ValueError, r"\['scale'\] .* must be finite"),
        ("bad tuned min_size", ValueError, "min_size"),
        ("no channels", ValueError, "has no channels"),
        ("bad tuned seed_dynamic", ValueError, r"\['seed_dynamic'\] .* finite number >= 0"),
        ("bad predictor scale", ValueError, "must hold a 'scale_factor' > 0"),
        ("predictor without scale", ValueError, "must hold a 'scale_factor' > 0"),
    ],
)
def test_bad_inputs_are_refused(tmp_path, kind, error, message):
    path = make_bad_input(tmp_path, kind)
    with pytest.raises(error, match=message):
        segment_volume(path, tmp_path / "o.zarr" / "seg", progress=False)
    assert not (tmp_path / "o.zarr" / "seg").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(mode="watershed"), ValueError, "mode must be"),
        (dict(foreground_level=0.9), ValueError, "below seed_level"),
        (dict(seed_level=1.5), ValueError, "seed_level must be in"),
        (dict(foreground_level="low"), TypeError, "must be a number"),
        (dict(min_size=-4), ValueError, "min_size"),
        (dict(mode="threshold", seed_level=0.5), ValueError, "instances' only"),
        (dict(mode="threshold", seed_dynamic=1), ValueError, "instances' only"),
        (dict(seed_dynamic=1), ValueError, "needs the prediction's tanh scale"),
        (dict(seed_dynamic=-1), ValueError, "seed_dynamic must be a finite number"),
        (dict(seed_dynamic="1"), TypeError, "seed_dynamic must be a number"),
        (dict(block_shape=(8,)), ValueError, "block_shape must be 2"),
        (dict(block_shape=(8, 0)), ValueError, "block_shape"),
        (dict(num_workers=0), ValueError, "num_workers"),
        (dict(max_watershed_voxels=0), ValueError, "max_watershed_voxels"),
        (dict(fallback_context=(1, -1)), ValueError, "fallback_context"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, prediction, kwargs, error, message):
    with pytest.raises(error, match=message):
        segment_volume(prediction, tmp_path / "o.zarr" / "seg", progress=False, **kwargs)


def test_too_many_voxels_or_blocks_for_the_id_layout(tmp_path, prediction, monkeypatch):
    monkeypatch.setattr(seg, "_LOCAL_BITS", 6)  # ids with 6 bits per part: 64 blocks at most
    with pytest.raises(ValueError, match="2\\*\\*32 blocks or more"):
        segment_volume(prediction, tmp_path / "o.zarr" / "s", block_shape=(4, 4))
    with pytest.raises(ValueError, match="blocks of 2\\*\\*32 voxels"):
        segment_volume(prediction, tmp_path / "o.zarr" / "s", block_shape=(10, 10))
    assert not (tmp_path / "o.zarr" / "s").exists()


def test_missing_and_existing_paths(tmp_path, prediction):
    with pytest.raises(FileNotFoundError, match="no container"):
        segment_volume(tmp_path / "nope.zarr" / "pred", tmp_path / "o.zarr" / "s")
    with pytest.raises(FileNotFoundError, match="'predd' not found.*'pred'"):
        segment_volume(tmp_path / "p.zarr" / "predd", tmp_path / "o.zarr" / "s")
    with pytest.raises(ValueError, match="no container component"):
        segment_volume(prediction, tmp_path / "seg")
    with pytest.raises(ValueError, match="is the prediction itself"):
        segment_volume(prediction, prediction, overwrite=True)
    out = tmp_path / "o.zarr" / "s"
    segment_volume(prediction, out, mode="threshold", progress=False)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        segment_volume(prediction, out, progress=False)
    segment_volume(prediction, out, overwrite=True, progress=False)
    assert open_volume(out).dtype == np.uint64


# --- command line -----------------------------------------------------------------------------


def test_cli_segment(tmp_path, prediction):
    out = str(tmp_path / "p.zarr" / "seg")
    result = CliRunner().invoke(
        app, ["segment", prediction, out, "--block-shape", "8,8", "--seed-level", "0.85",
              "--min-size", "3"]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    assert_same(read(out), reference(scene_2d()[None], seed=0.85, min_size_voxels=3))
    result = CliRunner().invoke(app, ["segment", prediction, str(tmp_path / "p.zarr" / "m"),
                                      "--mode", "threshold", "--foreground-level", "0.5"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read(tmp_path / "p.zarr" / "m"), scene_2d()[None] > 0.5)
    scaled = write_prediction(tmp_path / "p.zarr" / "scaled", scene_2d()[None],
                              attrs=predictor_attrs(1.5))
    result = CliRunner().invoke(app, ["segment", scaled, str(tmp_path / "p.zarr" / "d"),
                                      "--seed-dynamic", "0.4"])
    assert result.exit_code == 0, result.output
    assert_same(read(tmp_path / "p.zarr" / "d"), dynamic_reference(scene_2d()[None], 1.5, 0.4))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nope.zarr/pred", "{tmp}/o.zarr/s"], "no container"),
        (["{pred}", "{pred}2", "--foreground-level", "0.9"], "below seed_level"),
        (["{pred}", "{tmp}/o.zarr/s", "--mode", "fancy"], "mode must be"),
        (["{pred}", "{tmp}/o.zarr/s", "--block-shape", "8,x"], "comma-separated integers"),
        (["{pred}", "{pred}"], "is the prediction itself"),
        (["{pred}", "{tmp}/p.zarr/existing"], "already exists and was not written by an "
         "innerdist job"),
        (["{tmp}/incomplete.zarr/pred", "{tmp}/o.zarr/s"], "is incomplete"),
        (["{pred}", "{tmp}/o.zarr/s", "--seed-dynamic", "8"], "needs the prediction's tanh"),
        (["{pred}", "{tmp}/o.zarr/s", "--seed-dynamic", "-1"], "seed_dynamic must be"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, prediction, args, message):
    create_volume(tmp_path / "p.zarr" / "existing", roi=Roi((0, 0), (40, 40)), voxel_size=(1, 1),
                  dtype=np.uint64, num_channels=1)
    mark_complete(open_volume(tmp_path / "p.zarr" / "existing", "r+"))
    write_prediction(tmp_path / "incomplete.zarr" / "pred", scene_2d()[None], complete=False)
    argv = ["segment"] + [a.format(tmp=tmp_path, pred=prediction) for a in args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("innerdist segment: error:"), result.stderr
    assert message in lines[0]
