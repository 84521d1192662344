import math

import numpy as np
import pytest
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import prepare_ds
from hypothesis import given, settings
from hypothesis import strategies as st
from labelgen import random_instances

from innerdist import DistanceArray, InnerDistancePredictor, NumpyArray, UNet
from innerdist.predictor import Predictor


def target(labels, scale, voxel_size=None):
    labels = np.asarray(labels)
    voxel_size = voxel_size or (1,) * labels.ndim
    return InnerDistancePredictor(["x"], scale).process(labels, voxel_size, "tanh", scale)


# ---- the spec's worked examples ---------------------------------------------------------


def test_spec_example_single_object_1d_row():
    np.testing.assert_allclose(
        target([[0, 0, 1, 1, 1, 1, 1, 1, 0, 0]], 2),
        [[0, 0, 0.2449, 0.6351, 0.8483, 0.8483, 0.6351, 0.2449, 0, 0]],
        atol=1e-4,
    )


def test_spec_example_touching_ids_and_border():
    np.testing.assert_allclose(
        target([[1, 1, 1, 2, 2, 2]], 1), [[0.9866, 0.9051, 0.4621, 0.4621, 0.9051, 0.9866]],
        atol=1e-4,
    )


def test_spec_example_block_in_zeros():
    labels = np.zeros((5, 5), np.int32)
    labels[1:4, 1:4] = 1
    expected = np.zeros((5, 5))
    expected[1:4, 1:4] = 0.4621
    expected[2, 2] = 0.9051
    np.testing.assert_allclose(target(labels, 1), expected, atol=1e-4)


def test_spec_example_no_boundary():
    np.testing.assert_allclose(target(np.ones((4, 6), np.uint8), 4), np.full((4, 6), 0.4621),
                               atol=1e-4)


def test_spec_example_anisotropic():
    labels = np.zeros((3, 7), np.int64)
    labels[:, 2:6] = 3
    out = target(labels, 8, (4, 2))
    np.testing.assert_allclose(out, np.tile([0, 0, 0.1244, 0.3584, 0.3584, 0.1244, 0], (3, 1)),
                               atol=1e-4)


def test_spec_example_all_zeros():
    assert not target(np.zeros((4, 5), np.uint64), 3).any()


def test_raw_distances_and_not_scaled_by_label_value():
    p = InnerDistancePredictor(["x"], 1.0)
    d = p.process(np.array([[0, 7, 7, 7, 0]]), (1, 1))
    np.testing.assert_allclose(d, [[0, 0.5, 1.5, 0.5, 0]])
    # DaCapo multiplied by the label value: 7 * tanh would exceed 1.
    t = p.process(np.array([[0, 7, 7, 7, 0]]), (1, 1), "tanh", 1.0)
    assert t.max() < 1 and t.dtype == np.float32


def test_bool_uint64_and_3d_labels():
    rng = np.random.default_rng(0)
    labels = random_instances(rng, (6, 7, 8))
    p = InnerDistancePredictor(["x"], 2.0)
    out64 = p.process(labels, (2, 1, 1), "tanh", 2.0)
    out_bool = p.process(labels != 0, (2, 1, 1), "tanh", 2.0)
    assert out64.shape == labels.shape and out64.dtype == np.float32
    assert np.all((out64 > 0) == (labels != 0))
    assert np.all((out64 >= 0) & (out64 < 1))
    # bool labels merge touching instances: distances can only grow.
    assert np.all(out_bool >= out64 - 1e-6)


# ---- predictor attributes and API ------------------------------------------------------


def test_attributes():
    p = InnerDistancePredictor(["mito", "er"], 10.0, epsilon=0.05, threshold=0.8)
    assert p.channels == ["mito", "er"]
    assert p.norm == "tanh"
    assert p.dt_scale_factor == 10.0
    assert p.embedding_dims == 2
    assert p.max_distance == pytest.approx(10 * math.atanh(0.95))
    assert p.epsilon == 0.05 and p.threshold == 0.8
    assert p.output_array_type == DistanceArray({0: "mito", 1: "er"}, max=1.0)
    assert p.output_array_type.interpolatable
    assert isinstance(p, Predictor)
    assert InnerDistancePredictor(**p.to_dict()).to_dict() == p.to_dict()


def test_padding_is_max_distance_in_whole_voxels_plus_one():
    p = InnerDistancePredictor(["x"], 10.0)  # max_distance = 18.32
    assert p.padding(Coordinate((40, 8, 8))) == Coordinate((80, 32, 32))
    assert p.padding(Coordinate((1, 1))) == Coordinate((20, 20))
    with pytest.raises(ValueError, match="positive"):
        p.padding(Coordinate((0, 1)))


def test_gt_region_for_roi():
    p = InnerDistancePredictor(["x"], 10.0)
    roi = Roi((400, 80, 80), (400, 160, 160))
    grown = p.gt_region_for_roi(roi, Coordinate((40, 8, 8)))
    assert grown == Roi((320, 48, 48), (560, 224, 224))

    class Spec:
        def __init__(self):
            self.roi, self.voxel_size = roi, Coordinate((40, 8, 8))

    spec = Spec()
    grown_spec = p.gt_region_for_roi(spec)
    assert grown_spec.roi == grown and spec.roi == roi  # a copy, not modified in place
    with pytest.raises(ValueError, match="needs the voxel size"):
        p.gt_region_for_roi(roi)
    with pytest.raises(TypeError, match="expected a Roi"):
        p.gt_region_for_roi("roi")


def test_base_predictor_defaults():
    class Identity(Predictor):
        def create_model(self, architecture):
            raise NotImplementedError

        def create_target(self, gt):
            return gt

        def create_weight(self, gt, target, mask, moving_class_counts=None):
            raise NotImplementedError

        @property
        def output_array_type(self):
            return DistanceArray()

    p = Identity()
    assert p.padding(Coordinate((4, 4))) == Coordinate((0, 0))
    roi = Roi((3, 5), (10, 10))
    assert p.gt_region_for_roi(roi, Coordinate((1, 1))) == roi


def _gt(data, voxel=(2, 2), axes=("y", "x"), offset=(10, 20)):
    spatial = data.shape[-len(voxel):]
    return NumpyArray.from_np_array(
        data, Roi(offset, tuple(s * v for s, v in zip(spatial, voxel))), voxel, list(axes)
    )


def test_create_target_with_and_without_channel_axis():
    labels = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 0, 0]], np.uint16)
    p = InnerDistancePredictor(["x"], 4.0)
    t = p.create_target(_gt(labels))
    assert t.axes == ["c^", "y", "x"] and t.data.shape == (1, 1, 10)
    assert t.roi == Roi((10, 20), (2, 20)) and t.voxel_size == (2, 2)
    np.testing.assert_allclose(t.data[0], target(labels, 4.0, (2, 2)))
    t2 = p.create_target(_gt(labels[np.newaxis], axes=("c^", "y", "x")))
    np.testing.assert_array_equal(t.data, t2.data)


def test_create_target_two_channels_from_funlib_array(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.stack([random_instances(rng, (12, 10)), random_instances(rng, (12, 10))])
    ds = prepare_ds(tmp_path / "gt.zarr" / "labels", shape=labels.shape, offset=(4, 8),
                    voxel_size=(4, 8), axis_names=["c^", "y", "x"], dtype=np.uint64, mode="w")
    ds[ds.roi] = labels
    p = InnerDistancePredictor(["a", "b"], 12.0)
    t = p.create_target(ds)
    assert t.data.shape == labels.shape and t.roi == ds.roi
    for c in range(2):
        np.testing.assert_allclose(t.data[c], target(labels[c], 12.0, (4, 8)), atol=1e-6)


def test_create_target_channel_count_mismatch():
    p = InnerDistancePredictor(["a", "b"], 1.0)
    with pytest.raises(ValueError, match=r"1 label channel\(s\) but the predictor has 2"):
        p.create_target(_gt(np.zeros((3, 3), np.uint8)))
    with pytest.raises(TypeError, match="float32"):
        InnerDistancePredictor(["a"], 1.0).create_target(_gt(np.zeros((3, 3), np.float32)))


def test_create_weight_balances_each_channel():
    labels = np.zeros((2, 4, 5), np.uint64)
    labels[0, :2, :] = 5  # 10 of 20 foreground
    labels[1, 0, 0] = 9  # 1 of 20 foreground
    p = InnerDistancePredictor(["a", "b"], 1.0)
    gt = _gt(labels, axes=("c^", "y", "x"))
    t = p.create_target(gt)
    w, counts = p.create_weight(gt, t, None)
    assert w.data.shape == labels.shape and w.data.dtype == np.float32
    assert counts[0] == {0: (10, 21), 1: (10, 21)}
    assert counts[1] == {0: (19, 21), 1: (1, 21)}
    np.testing.assert_allclose(w.data[0], 1 / (2 * 10 / 21), rtol=1e-6)
    # 1/21 = 0.048 is below clipmin 0.05: the rare class's weight is capped at 1/(2*0.05).
    np.testing.assert_allclose(w.data[1, 0, 0], 10.0, rtol=1e-6)
    np.testing.assert_allclose(w.data[1, 1, 1], 1 / (2 * 19 / 21), rtol=1e-6)
    # moving counts carry over
    _, counts2 = p.create_weight(gt, t, None, counts)
    assert counts2[0] == {0: (20, 41), 1: (20, 41)}


def test_create_weight_mask():
    labels = np.array([[0, 1, 1, 0]], np.int32)
    mask = np.array([[1, 1, 0, 0]], np.uint8)
    p = InnerDistancePredictor(["a"], 1.0)
    gt = _gt(labels)
    w, counts = p.create_weight(gt, p.create_target(gt), _gt(mask))
    assert counts[0] == {0: (1, 3), 1: (1, 3)}
    np.testing.assert_allclose(w.data[0], [[1.5, 1.5, 0, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
        p.create_weight(gt, p.create_target(gt), np.ones((2, 2)))
    with pytest.raises(ValueError, match="target has shape"):
        p.create_weight(gt, _gt(np.zeros((1, 3), np.float32)), None)


def test_create_model_2d_and_3d():
    p = InnerDistancePredictor(["a", "b"], 1.0)
    for shape, conv in (((20, 20), torch.nn.Conv2d), ((20, 20, 20), torch.nn.Conv3d)):
        unet = UNet(shape, num_fmaps=2, downsample_factors=[(2,) * len(shape)])
        model = p.create_model(unet)
        head = list(model.chain.children())[-1]
        assert isinstance(head, conv) and head.kernel_size == (1,) * len(shape)
        assert head.out_channels == 2 and model.num_out_channels == 2
        out = model(torch.zeros((1, 1, *shape)))
        assert out.shape[:2] == (1, 2)


def test_create_model_rejects_other_dims():
    class FourD:
        dims = 4
        num_out_channels = 3

    with pytest.raises(ValueError, match="2-D and 3-D.*4-D"):
        InnerDistancePredictor(["a"], 1.0).create_model(FourD())


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("mito", 1.0), {}, TypeError, "list of names"),
        (([], 1.0), {}, ValueError, "at least one"),
        ((["a", "a"], 1.0), {}, ValueError, "unique"),
        ((["a"], 0.0), {}, ValueError, "positive"),
        ((["a"], float("nan")), {}, ValueError, "finite"),
        ((["a"], 1.0), {"epsilon": 1.0}, ValueError, "epsilon"),
        ((["a"], 1.0), {"threshold": 0.0}, ValueError, "threshold"),
    ],
)
def test_constructor_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        InnerDistancePredictor(*args, **kwargs)


@pytest.mark.parametrize(
    ("labels", "voxel", "kwargs", "error", "match"),
    [
        (np.zeros((3, 3)), (1, 1), {}, TypeError, "bool or integer"),
        (np.zeros((3, 3), int), (1,), {}, ValueError, "2 or 3 entries"),
        (np.zeros((2, 2, 3, 3), int), (1, 1), {}, ValueError, "at most one channel axis"),
        (np.zeros((3, 3), int), (1, 1), {"normalize": "sigmoid"}, ValueError, "normalize"),
        (np.zeros((3, 3), int), (1, 1), {"normalize": "tanh"}, ValueError, "positive scale"),
    ],
)
def test_process_errors(labels, voxel, kwargs, error, match):
    with pytest.raises(error, match=match):
        InnerDistancePredictor(["a"], 1.0).process(labels, voxel, **kwargs)


# ---- the context guarantee ---------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dims=st.sampled_from([2, 3]),
    scale=st.floats(0.5, 3.0),
    data=st.data(),
)
def test_crop_grown_by_padding_matches_whole_volume(seed, dims, scale, data):
    rng = np.random.default_rng(seed)
    shape = (40, 40) if dims == 2 else (18, 20, 22)
    voxel = tuple(int(v) for v in rng.integers(1, 4, size=dims))
    labels = random_instances(rng, shape, num_seeds=10 if dims == 2 else 14)
    p = InnerDistancePredictor(["x"], scale * max(voxel))
    whole = p.process(labels, voxel, "tanh", p.dt_scale_factor)
    whole_d = p.process(labels, voxel)
    crop_begin = [data.draw(st.integers(0, s - 4)) for s in shape]
    crop_shape = [data.draw(st.integers(1, s - b)) for s, b in zip(shape, crop_begin)]
    roi = Roi([b * v for b, v in zip(crop_begin, voxel)],
              [s * v for s, v in zip(crop_shape, voxel)])
    grown = p.gt_region_for_roi(roi, Coordinate(voxel))
    g0 = [o // v for o, v in zip(grown.offset, voxel)]
    g1 = [e // v for e, v in zip(grown.end, voxel)]
    # Where the grown region leaves the volume, labels are extended by repeating their edge
    # voxels, as training crops do: the volume's border is no boundary. (Clipping instead
    # would break the guarantee for a crop without any boundary: the no-boundary rule would
    # then see a region smaller than the context.)
    inside = tuple(slice(max(a, 0), min(b, s)) for a, b, s in zip(g0, g1, shape))
    outside = [(max(0, -a), max(0, b - s)) for a, b, s in zip(g0, g1, shape)]
    crop_labels = np.pad(labels[inside], outside, mode="edge")
    crop_target = p.process(crop_labels, voxel, "tanh", p.dt_scale_factor)
    inner = tuple(slice(b - a, b - a + s) for b, a, s in zip(crop_begin, g0, crop_shape))
    got = crop_target[inner]
    want_index = tuple(slice(b, b + s) for b, s in zip(crop_begin, crop_shape))
    want = whole[want_index]
    assert np.abs(got - want).max(initial=0) <= p.epsilon
    close = whole_d[want_index] <= p.max_distance
    np.testing.assert_allclose(got[close], want[close], atol=1e-6)


def test_crop_without_boundary_at_the_volume_corner_saturates():
    # A found counter-example to clipping the context at the volume: a 1x1 crop in the
    # corner of an object whose nearest boundary is 22.5 nm away. With the context clipped
    # to the volume, the no-boundary rule saw an 8 x 12 nm region (d = 4, target 0.87);
    # extended by its edge voxels as crops do, the target saturates like the whole volume's.
    labels = np.full((40, 40), 2, np.uint64)
    labels[30:, :] = 1  # the nearest boundary: 22.5 voxels of 1 nm below the corner
    voxel = (1, 3)
    p = InnerDistancePredictor(["x"], 3.0)
    whole = p.process(labels, voxel, "tanh", p.dt_scale_factor)
    pad = p.padding(Coordinate(voxel)) / Coordinate(voxel)
    grown = np.pad(labels[: 1 + pad[0], : 1 + pad[1]], [(pad[0], 0), (pad[1], 0)], mode="edge")
    crop = p.process(grown, voxel, "tanh", p.dt_scale_factor)
    assert whole[0, 0] > 1 - p.epsilon
    assert abs(crop[pad[0], pad[1]] - whole[0, 0]) <= p.epsilon
