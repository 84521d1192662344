import json
import warnings

import numpy as np
import pytest
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import prepare_ds

from innerdist.augment import AugmentConfig, ElasticConfig
from innerdist.crops import CropSampler, TrainingDataset, VolumeSource, open_sources
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.volumes import create_volume, mark_complete

VOXEL = (4, 4)
SCALE = 8.0  # max_distance = 8 * atanh(0.95) = 14.7 nm -> padding 5 voxels of 4 nm


def write(path, data, voxel=VOXEL, offset=None, channels=False):
    """Write ``data`` as a complete volume at ``path`` (``offset`` in world units)."""
    data = np.asarray(data)
    spatial = data.shape[1:] if channels else data.shape
    offset = offset or (0,) * len(spatial)
    roi = Roi(offset, tuple(s * v for s, v in zip(spatial, voxel, strict=True)))
    array = create_volume(
        str(path),
        roi=roi,
        voxel_size=voxel,
        dtype=data.dtype,
        num_channels=data.shape[0] if channels else None,
    )
    array[array.roi] = data
    mark_complete(array)
    return str(path)


def blobs(shape, n, seed):
    """Labels with ``n`` random round blobs (ids 1..n, later ones overwrite)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float64)
    labels = np.zeros(shape, np.uint64)
    for i in range(1, n + 1):
        centre = rng.uniform(0, shape)
        radius = rng.uniform(3, 9)
        d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
        labels[d2 < radius**2] = i
    return labels


def roi_slices(roi, voxel=VOXEL, offset=(0, 0)):
    """Index of ``roi`` (world units) in an array starting at ``offset``."""
    begin = (roi.begin - Coordinate(offset)) / Coordinate(voxel)
    shape = roi.shape / Coordinate(voxel)
    return tuple(slice(b, b + s) for b, s in zip(begin, shape, strict=True))


def padded_read(data, roi, voxel=VOXEL):
    """``data`` (starting at the origin) inside ``roi``, zero where ``roi`` leaves it."""
    data_roi = Roi((0,) * data.ndim, tuple(s * v for s, v in zip(data.shape, voxel, strict=True)))
    result = np.zeros(roi.shape / Coordinate(voxel), data.dtype)
    inside = roi.intersect(data_roi)
    result[roi_slices(inside, voxel, offset=roi.begin)] = data[roi_slices(inside, voxel)]
    return result


@pytest.fixture
def volume(tmp_path):
    labels = blobs((48, 56), 14, seed=0)
    raw = (labels % 5).astype(np.float32) / 5 + 0.1
    return {
        "labels": labels,
        "raw": raw,
        "raw_path": write(tmp_path / "d.zarr" / "raw", raw),
        "labels_path": write(tmp_path / "d.zarr" / "labels", labels),
        "tmp": tmp_path,
    }


def predictor(channels=("obj",)):
    return InnerDistancePredictor(list(channels), SCALE)


def sampler(volume, input_shape=(32, 32), output_shape=(24, 24), **kwargs):
    kwargs.setdefault("augment", AugmentConfig.disabled())
    kwargs.setdefault("normalization", {"min": 0, "max": 1})  # raw as it is
    source = VolumeSource(raw=volume["raw_path"], labels=volume["labels_path"])
    return CropSampler([source], predictor(), input_shape, output_shape, **kwargs)


# ---- placement, shapes, targets ---------------------------------------------------------


def test_sample_keys_shapes_and_dtypes(volume):
    s = sampler(volume)
    sample = s.sample(np.random.default_rng(0))
    assert set(sample) == {"raw", "target", "weight", "labels", "mask"}
    assert sample["raw"].shape == (1, 32, 32) and sample["raw"].dtype == np.float32
    assert sample["target"].shape == (1, 24, 24) and sample["target"].dtype == np.float32
    assert sample["weight"].shape == (1, 24, 24) and sample["weight"].dtype == np.float32
    assert sample["labels"].shape == (1, 24, 24) and sample["labels"].dtype == np.int64
    assert sample["mask"].shape == (1, 24, 24) and sample["mask"].dtype == np.uint8
    assert s.num_in_channels == 1 and s.num_channels == 1
    assert s.context == (4, 4) and s.target_padding == (5, 5)


@pytest.mark.parametrize("input_shape", [(32, 32), (44, 40)])  # context below/above padding
def test_targets_near_crop_edges_equal_whole_volume_targets(volume, input_shape):
    pred = predictor()
    whole_target = pred.process(volume["labels"], VOXEL, "tanh", SCALE)
    whole_distance = pred.process(volume["labels"], VOXEL)
    s = sampler(volume, input_shape=input_shape)
    touched_border = False
    for seed in range(20):
        crop = s.sample_crop(np.random.default_rng(seed))
        cut = roi_slices(crop.output_roi)
        touched_border |= any(c.start == 0 for c in cut) or cut[0].stop == 48
        np.testing.assert_array_equal(crop.labels[0], volume["labels"][cut])
        context = s.context * Coordinate(VOXEL)
        input_roi = crop.output_roi.grow(context, context)
        np.testing.assert_array_equal(crop.raw[0], padded_read(volume["raw"], input_roi))
        exact = whole_distance[cut] <= pred.max_distance
        error = np.abs(crop.target[0] - whole_target[cut])
        assert error[exact].max(initial=0) <= 1e-5
        assert error.max() <= pred.epsilon
        assert (crop.mask == 1).all()
        assert crop.tries == 1 and crop.source == 0
    assert touched_border  # crops at the data border agree too (its edge is no boundary)


def test_weights_are_balanced_per_crop(volume):
    """Each crop is balanced on its own (no moving counts): per the spec, a class with
    ``num`` of the ``n`` voxels gets ``1 / (2 * clip(num / (1 + n), 0.05, 0.95))``."""
    s = sampler(volume)
    for seed in range(3):
        crop = s.sample_crop(np.random.default_rng(seed))
        fg = crop.labels[0] != 0
        n = fg.size
        w_fg = 1 / (2 * np.clip(fg.sum() / (n + 1), 0.05, 0.95))
        w_bg = 1 / (2 * np.clip((~fg).sum() / (n + 1), 0.05, 0.95))
        np.testing.assert_allclose(crop.weight[0], np.where(fg, w_fg, w_bg), rtol=1e-6)


def test_crops_land_only_where_the_mask_allows(volume):
    mask = np.zeros((48, 56), np.uint8)
    mask[:, 28:] = 1  # right half
    mask_path = write(volume["tmp"] / "d.zarr" / "mask", mask)
    source = VolumeSource(raw=volume["raw_path"], labels=volume["labels_path"], mask=mask_path)
    s = CropSampler([source], predictor(), (32, 32), (24, 24), augment=AugmentConfig.disabled())
    xs = set()
    for seed in range(50):
        crop = s.sample_crop(np.random.default_rng(seed))
        centre = crop.output_roi.begin + Coordinate(12, 12) * Coordinate(VOXEL)
        index = tuple(c // v for c, v in zip(centre, VOXEL, strict=True))
        assert mask[index] == 1
        xs.add(index[1])
        np.testing.assert_array_equal(crop.mask[0], mask[roi_slices(crop.output_roi)])
        assert (crop.weight[0][crop.mask[0] == 0] == 0).all()
    assert min(xs) == 28 and len(xs) > 10  # the allowed region is used, to its edge


def test_elastic_deformation_masks_what_it_pulls_in_from_outside_the_data(volume):
    labels = volume["labels"]
    cfg = AugmentConfig.disabled().model_copy(
        update={
            "elastic": ElasticConfig(
                enabled=True, probability=1.0, jitter_sigma=12.0, control_point_spacing=40.0
            )
        }
    )
    s = sampler(volume, augment=cfg)
    assert s.margin == (9, 9)
    pred = predictor()
    outside_seen = False
    checked = 0
    for seed in range(12):
        crop = s.sample_crop(np.random.default_rng(seed))
        assert set(np.unique(crop.labels)) <= set(np.unique(labels))
        masked = crop.mask[0] == 0
        outside_seen |= bool(masked.any())
        assert (crop.labels[0][masked] == 0).all() and (crop.target[0][masked] == 0).all()
        assert (crop.weight[0][masked] == 0).all()
        assert ((crop.target[0] > 0) == (crop.labels[0] != 0)).all()
        if masked.any():
            continue  # zeroed labels there would add boundaries the targets never saw
        checked += 1
        # Targets come from the deformed labels: where the crop-only distance is shorter
        # than the way to the crop edge, no boundary outside the crop can be nearer.
        own = pred.process(crop.labels[0], VOXEL)
        ys, xs = np.indices(own.shape)
        to_edge = 4 * (np.minimum.reduce([ys, xs, 23 - ys, 23 - xs]) + 0.5)
        sure = (own <= to_edge) & (own > 0)
        assert sure.sum() > 20
        np.testing.assert_allclose(crop.target[0][sure], np.tanh(own[sure] / SCALE), atol=1e-5)
    assert outside_seen and checked >= 3


def test_flips_and_transposes_keep_targets_exact(volume):
    """With mirror/transpose augmentation, find which symmetry a crop got from its labels;
    raw and targets must have had the same one applied."""
    pred = predictor()
    whole_target = pred.process(volume["labels"], VOXEL, "tanh", SCALE)
    cfg = AugmentConfig.disabled().model_copy(update={"flip": True, "transpose": True})
    s = sampler(volume, augment=cfg)
    context = s.context * Coordinate(VOXEL)
    seen = set()
    for seed in range(30):
        crop = s.sample_crop(np.random.default_rng(seed))
        cut = roi_slices(crop.output_roi)
        raw_in = padded_read(volume["raw"], crop.output_roi.grow(context, context))
        found = None
        for transpose in (False, True):
            for flips in [(), (0,), (1,), (0, 1)]:

                def move(a, transpose=transpose, flips=flips):
                    a = a.T if transpose else a
                    return np.flip(a, flips) if flips else a

                if np.array_equal(move(volume["labels"][cut]), crop.labels[0]):
                    found = (transpose, flips)
                    np.testing.assert_array_equal(move(raw_in), crop.raw[0])
                    assert np.abs(move(whole_target[cut]) - crop.target[0]).max() <= pred.epsilon
                    break
            if found:
                break
        assert found is not None
        seen.add(found)
    assert len(seen) >= 6


def test_zero_padding_of_raw_outside_the_data(volume):
    # context 10 voxels: crops at the data border read raw beyond it
    s = sampler(volume, input_shape=(44, 44), output_shape=(24, 24))
    raw = volume["raw"]
    assert raw.min() > 0
    padded = False
    for seed in range(10):
        crop = s.sample_crop(np.random.default_rng(seed))
        input_roi = crop.output_roi.grow(Coordinate(40, 40), Coordinate(40, 40))
        expected = padded_read(raw, input_roi)
        assert expected.shape == (44, 44)
        np.testing.assert_array_equal(crop.raw[0], expected)
        padded |= bool((expected == 0).any())
    assert padded  # some crops did reach beyond the data


def test_labels_at_a_multiple_of_the_raw_voxel_size_are_upsampled(tmp_path):
    labels = blobs((24, 28), 8, seed=1)
    raw = np.random.default_rng(0).random((48, 56), dtype=np.float32)
    mask = np.ones((24, 28), np.uint8)
    mask[:, :3] = 0
    source = VolumeSource(
        raw=write(tmp_path / "d.zarr" / "raw", raw),
        labels=write(tmp_path / "d.zarr" / "labels", labels, voxel=(8, 8)),
        mask=write(tmp_path / "d.zarr" / "mask", mask, voxel=(8, 8)),
    )
    fine = np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1)
    fine_mask = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    s = CropSampler([source], predictor(), (32, 32), (24, 24), augment=AugmentConfig.disabled())
    whole = predictor().process(fine, VOXEL, "tanh", SCALE)
    for seed in range(5):
        crop = s.sample_crop(np.random.default_rng(seed))
        cut = roi_slices(crop.output_roi)
        np.testing.assert_array_equal(crop.labels[0], fine[cut])
        np.testing.assert_array_equal(crop.mask[0], fine_mask[cut])
        assert np.abs(crop.target[0] - whole[cut]).max() <= 0.05


def test_semantic_labels_with_classes_and_several_channels(tmp_path):
    semantic = np.zeros((40, 40), np.uint8)
    semantic[5:20, 5:20] = 3
    semantic[22:35, 10:30] = 4
    semantic[25:30, 0:8] = 5
    raw = write(tmp_path / "s.zarr" / "raw", np.full((40, 40), 0.5, np.float32))
    source = VolumeSource(
        raw=raw,
        labels=write(tmp_path / "s.zarr" / "labels", semantic),
        classes={"b": [4, 5], "a": [3]},
    )
    pred = predictor(("a", "b"))
    s = CropSampler([source], pred, (28, 28), (20, 20), augment=AugmentConfig.disabled())
    for seed in range(5):
        crop = s.sample_crop(np.random.default_rng(seed))
        cut = roi_slices(crop.output_roi)
        assert crop.labels.shape == (2, 20, 20) and crop.target.shape == (2, 20, 20)
        np.testing.assert_array_equal(crop.labels[0], semantic[cut] == 3)
        np.testing.assert_array_equal(crop.labels[1], np.isin(semantic[cut], [4, 5]))
    # instance labels, one dataset per channel, in channel order
    other = write(tmp_path / "s.zarr" / "other", (semantic == 4).astype(np.uint32) * 7)
    first = write(tmp_path / "s.zarr" / "first", (semantic == 3).astype(np.uint32) * 2)
    source = VolumeSource(raw=raw, labels=[first, other])
    crop = CropSampler([source], pred, (28, 28), (20, 20), augment=AugmentConfig.disabled())
    crop = crop.sample_crop(np.random.default_rng(0))
    cut = roi_slices(crop.output_roi)
    np.testing.assert_array_equal(crop.labels[0], (semantic[cut] == 3) * 2)
    np.testing.assert_array_equal(crop.labels[1], (semantic[cut] == 4) * 7)


def test_raw_with_channels_and_normalization(tmp_path):
    labels = blobs((30, 30), 5, seed=2)
    raw = np.stack([np.full((30, 30), 51, np.uint8), np.full((30, 30), 204, np.uint8)])
    source = VolumeSource(
        raw=write(tmp_path / "c.zarr" / "raw", raw, channels=True),
        labels=write(tmp_path / "c.zarr" / "labels", labels),
    )
    pred = predictor()
    off = AugmentConfig.disabled()
    s = CropSampler(
        [source], pred, (24, 24), (20, 20), augment=off, normalization={"min": 0, "max": 255}
    )
    sample = s.sample(np.random.default_rng(0))
    assert s.num_in_channels == 2 and sample["raw"].shape == (2, 24, 24)
    means = sample["raw"][:, 2:-2, 2:-2].mean(axis=(1, 2))
    np.testing.assert_allclose(means, [0.2, 0.8], rtol=1e-6)
    s = CropSampler(
        [source], pred, (20, 20), (20, 20), augment=off, normalization={"min": 51, "max": 204}
    )
    np.testing.assert_allclose(
        s.sample(np.random.default_rng(0))["raw"].mean(axis=(1, 2)), [0, 1], atol=1e-6
    )
    # Without one, the range is measured on the data: half the voxels are 51, half 204, so
    # both percentiles (1 %, 99.8 %) fall on those two values.
    s = CropSampler([source], pred, (20, 20), (20, 20), augment=off)
    assert (s.normalization["min"], s.normalization["max"]) == (51.0, 204.0)
    assert s.normalization["method"] == "percentiles"
    np.testing.assert_allclose(
        s.sample(np.random.default_rng(0))["raw"].mean(axis=(1, 2)), [0, 1], atol=1e-6
    )


def test_3d_anisotropic_crops_never_swap_z(tmp_path):
    shape = (10, 24, 24)
    labels = np.zeros(shape, np.uint32)
    labels[2:8, 4:20, 6:18] = 1
    z_ramp = np.broadcast_to(np.arange(1, 11, dtype=np.float32).reshape(10, 1, 1) / 10, shape)
    source = VolumeSource(
        raw=write(tmp_path / "a.zarr" / "raw", z_ramp.copy(), voxel=(40, 8, 8)),
        labels=write(tmp_path / "a.zarr" / "labels", labels, voxel=(40, 8, 8)),
    )
    cfg = AugmentConfig.disabled().model_copy(update={"flip": True, "transpose": True})
    pred = InnerDistancePredictor(["obj"], 40.0)
    s = CropSampler([source], pred, (6, 16, 16), (4, 12, 12), augment=cfg)
    for seed in range(10):
        sample = s.sample(np.random.default_rng(seed))
        raw = sample["raw"][0]
        assert raw.shape == (6, 16, 16)
        # z values vary along axis 0 only (0 is padding beyond the data)
        for z_slice in raw:
            assert len(set(np.unique(z_slice)) - {0}) <= 1
        assert len(set(np.unique(raw)) - {0}) > 1
        assert sample["target"].shape == (1, 4, 12, 12)


def test_sources_are_drawn_by_weight(volume, tmp_path):
    second = VolumeSource(raw=volume["raw_path"], labels=volume["labels_path"], weight=3.0)
    first = VolumeSource(raw=volume["raw_path"], labels=volume["labels_path"])
    s = CropSampler(
        [first, second], predictor(), (24, 24), (24, 24), augment=AugmentConfig.disabled()
    )
    counts = np.bincount([s.sample_crop(np.random.default_rng(i)).source for i in range(120)])
    assert 0.6 < counts[1] / counts.sum() < 0.9


def test_min_foreground_fraction_retries_then_warns(tmp_path):
    labels = np.zeros((40, 40), np.uint8)
    labels[:12, :12] = 1
    raw = write(tmp_path / "f.zarr" / "raw", np.zeros((40, 40), np.float32))
    source = VolumeSource(raw=raw, labels=write(tmp_path / "f.zarr" / "labels", labels))
    off = AugmentConfig.disabled()
    s = CropSampler(
        [source], predictor(), (16, 16), (16, 16), augment=off, min_foreground_fraction=0.2
    )
    for seed in range(10):
        crop = s.sample_crop(np.random.default_rng(seed))
        assert (crop.labels != 0).mean() >= 0.2
    s = CropSampler(
        [source],
        predictor(),
        (16, 16),
        (16, 16),
        augment=off,
        min_foreground_fraction=0.9,
        max_tries=4,
    )
    with pytest.warns(RuntimeWarning, match="no crop with foreground fraction >= 0.9 in 4 tries"):
        crop = s.sample_crop(np.random.default_rng(0))
    assert crop.tries == 4


# ---- determinism ----------------------------------------------------------------------


def test_training_dataset_is_a_function_of_seed_and_index(volume):
    cfg = AugmentConfig(
        elastic={"enabled": True, "jitter_sigma": 8.0, "control_point_spacing": 40.0}
    )
    ds = TrainingDataset(sampler(volume, augment=cfg), seed=5, length=64)
    again = TrainingDataset(sampler(volume, augment=cfg), seed=5, length=64)
    assert len(ds) == 64
    item = ds[3]
    assert isinstance(item["raw"], torch.Tensor) and item["raw"].dtype == torch.float32
    for other in (ds[3], again[3]):
        for key in item:
            assert torch.equal(item[key], other[key])
    assert not torch.equal(item["raw"], ds[4]["raw"])
    assert not torch.equal(item["raw"], TrainingDataset(ds.sampler, seed=6, length=64)[3]["raw"])

    def batches(workers):
        # "spawn", as the trainer asks for (see TrainingDataset). A timeout turns a worker
        # deadlock into an error.
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=4,
            num_workers=workers,
            multiprocessing_context="spawn" if workers else None,
            timeout=120 if workers else 0,
        )
        out = []
        for i, batch in enumerate(loader):
            out.append(batch)
            if i == 1:
                break
        return out

    for a, b in zip(batches(0), batches(2), strict=True):
        assert a["raw"].shape == (4, 1, 32, 32)
        for key in a:
            assert torch.equal(a[key], b[key])


# ---- errors ---------------------------------------------------------------------------


def test_volume_source_validation(tmp_path):
    src = VolumeSource(raw=tmp_path / "a.zarr" / "raw", labels=[tmp_path / "a.zarr" / "l"])
    assert src.raw == str(tmp_path / "a.zarr" / "raw") and src.label_paths == [src.labels[0]]
    assert VolumeSource.model_validate_json(src.model_dump_json()) == src
    assert VolumeSource(raw="a.zarr/r", labels="a.zarr/l").label_paths == ["a.zarr/l"]
    with pytest.raises(ValueError, match="lables"):
        VolumeSource.model_validate({"raw": "a.zarr/r", "lables": "a.zarr/l"})
    with pytest.raises(ValueError, match="exactly one labels dataset"):
        VolumeSource(raw="a.zarr/r", labels=["a.zarr/l", "a.zarr/m"], classes={"a": [1]})
    with pytest.raises(ValueError, match="at least one dataset"):
        VolumeSource(raw="a.zarr/r", labels=[])
    with pytest.raises(ValueError, match="at least one channel"):
        VolumeSource(raw="a.zarr/r", labels="a.zarr/l", classes={})
    with pytest.raises(ValueError, match=r"channel\(s\) \['b'\] list no label values"):
        VolumeSource(raw="a.zarr/r", labels="a.zarr/l", classes={"a": [1], "b": []})
    with pytest.raises(ValueError, match="weight"):
        VolumeSource(raw="a.zarr/r", labels="a.zarr/l", weight=0)
    with pytest.raises(ValueError, match="finite"):
        VolumeSource(raw="a.zarr/r", labels="a.zarr/l", weight=float("inf"))


def open_one(tmp_path, name, raw=None, labels=None, raw_voxel=VOXEL, labels_voxel=VOXEL, **kwargs):
    raw = np.ones((20, 20), np.float32) if raw is None else raw
    labels = blobs((20, 20), 3, seed=0) if labels is None else labels
    source = VolumeSource(
        raw=write(tmp_path / f"{name}.zarr" / "raw", raw, voxel=raw_voxel),
        labels=write(tmp_path / f"{name}.zarr" / "labels", labels, voxel=labels_voxel, **kwargs),
    )
    return open_sources([source], ["obj"])


def test_mismatched_voxel_sizes_are_errors_naming_both(tmp_path):
    with pytest.raises(ValueError, match=r"labels voxel size \(6, 6\).*raw voxel size \(4, 4\)"):
        open_one(tmp_path, "e2", labels_voxel=(6, 6))
    with pytest.raises(ValueError, match=r"labels voxel size \(2, 4\).*raw voxel size \(4, 4\)"):
        open_one(tmp_path, "e3", labels_voxel=(2, 4))
    (opened,) = open_one(tmp_path, "e4", labels_voxel=(8, 4))
    assert opened.upsample == (2, 1) and opened.voxel_size == (4, 4)


def test_non_overlapping_raw_and_labels_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="do not overlap"):
        open_one(tmp_path, "e5", offset=(400, 0))
    (opened,) = open_one(tmp_path, "e6", offset=(40, 0))  # partial overlap is fine
    assert opened.roi == Roi((40, 0), (40, 80))


def test_empty_labels_are_an_error_naming_the_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"labels dataset '.*e\d.zarr/labels' is empty"):
        open_one(tmp_path, "e7", labels=np.zeros((20, 20), np.uint8))
    semantic = np.full((20, 20), 2, np.uint8)
    source = VolumeSource(
        raw=write(tmp_path / "s.zarr" / "raw", np.ones((20, 20), np.float32)),
        labels=write(tmp_path / "s.zarr" / "labels", semantic),
        classes={"obj": [1, 3]},
    )
    with pytest.raises(
        ValueError, match=r"s.zarr/labels' contains none of the class values \[1, 3\]"
    ):
        open_sources([source], ["obj"])


def test_open_sources_errors(tmp_path):
    good_raw = write(tmp_path / "g.zarr" / "raw", np.ones((20, 20), np.float32))
    good_labels = write(tmp_path / "g.zarr" / "labels", blobs((20, 20), 3, seed=0))
    with pytest.raises(FileNotFoundError, match="nope"):
        open_sources([VolumeSource(raw=good_raw, labels="g.zarr/nope")], ["obj"])
    with pytest.raises(TypeError, match="channel names"):
        open_sources([VolumeSource(raw=good_raw, labels=good_labels)], "obj")
    with pytest.raises(TypeError, match="list of VolumeSource"):
        open_sources(VolumeSource(raw=good_raw, labels=good_labels), ["obj"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one VolumeSource"):
        open_sources([], ["obj"])
    with pytest.raises(TypeError, match="VolumeSource objects"):
        open_sources([{"raw": good_raw}], ["obj"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"lists 1 labels dataset\(s\).*2 channel"):
        open_sources([VolumeSource(raw=good_raw, labels=good_labels)], ["a", "b"])
    with pytest.raises(ValueError, match=r"missing: \['b'\], unknown: \['c'\]"):
        open_sources(
            [VolumeSource(raw=good_raw, labels=good_labels, classes={"a": [1], "c": [2]})],
            ["a", "b"],
        )
    floats = write(tmp_path / "g.zarr" / "float_labels", np.ones((20, 20), np.float32))
    with pytest.raises(TypeError, match="integer or bool"):
        open_sources([VolumeSource(raw=good_raw, labels=floats)], ["obj"])
    three_d = write(
        tmp_path / "g.zarr" / "labels3d", np.ones((2, 20, 20), np.uint8), voxel=(4, 4, 4)
    )
    with pytest.raises(ValueError, match="3 spatial axes but raw"):
        open_sources([VolumeSource(raw=good_raw, labels=three_d)], ["obj"])
    with_channels = write(
        tmp_path / "g.zarr" / "labels_c", np.ones((1, 20, 20), np.uint8), channels=True
    )
    with pytest.raises(ValueError, match="spatial axes only"):
        open_sources([VolumeSource(raw=good_raw, labels=with_channels)], ["obj"])
    one_d = prepare_ds(
        tmp_path / "g.zarr" / "raw1d",
        shape=(20,),
        offset=(0,),
        voxel_size=(4,),
        axis_names=["x"],
        dtype=np.float32,
        mode="w",
    )
    del one_d
    with pytest.raises(ValueError, match="expected 2 or 3"):
        open_sources(
            [VolumeSource(raw=str(tmp_path / "g.zarr" / "raw1d"), labels=good_labels)], ["obj"]
        )
    # two label datasets with different voxel sizes
    coarse = write(tmp_path / "g.zarr" / "coarse", blobs((10, 10), 2, seed=1), voxel=(8, 8))
    with pytest.raises(ValueError, match=r"voxel size \(8, 8\) but labels .* has \(4, 4\)"):
        open_sources([VolumeSource(raw=good_raw, labels=[good_labels, coarse])], ["a", "b"])
    # labels whose grid is shifted against raw's
    shifted = prepare_ds(
        tmp_path / "g.zarr" / "shifted",
        shape=(20, 20),
        offset=(2, 0),
        voxel_size=(4, 4),
        axis_names=["y", "x"],
        dtype=np.uint8,
        mode="w",
    )
    shifted[shifted.roi] = np.ones((20, 20), np.uint8)
    with pytest.raises(ValueError, match="not on the raw voxel grid"):
        open_sources(
            [VolumeSource(raw=good_raw, labels=str(tmp_path / "g.zarr" / "shifted"))], ["obj"]
        )


def test_mask_errors(tmp_path):
    raw = write(tmp_path / "m.zarr" / "raw", np.ones((20, 20), np.float32))
    labels = write(tmp_path / "m.zarr" / "labels", blobs((20, 20), 3, seed=0))
    coarse = write(tmp_path / "m.zarr" / "coarse", np.ones((10, 10), np.uint8), voxel=(8, 8))
    with pytest.raises(
        ValueError, match=r"mask .* voxel size \(8, 8\) but the labels have \(4, 4\)"
    ):
        open_sources([VolumeSource(raw=raw, labels=labels, mask=coarse)], ["obj"])
    chan = write(tmp_path / "m.zarr" / "chan", np.ones((1, 20, 20), np.uint8), channels=True)
    with pytest.raises(ValueError, match="no channel axis"):
        open_sources([VolumeSource(raw=raw, labels=labels, mask=chan)], ["obj"])
    shifted = prepare_ds(
        tmp_path / "m.zarr" / "shifted",
        shape=(20, 20),
        offset=(0, 2),
        voxel_size=(4, 4),
        axis_names=["y", "x"],
        dtype=np.uint8,
        mode="w",
    )
    shifted[shifted.roi] = np.ones((20, 20), np.uint8)
    with pytest.raises(ValueError, match="not on the labels voxel grid"):
        open_sources(
            [VolumeSource(raw=raw, labels=labels, mask=str(tmp_path / "m.zarr" / "shifted"))],
            ["obj"],
        )
    empty = write(tmp_path / "m.zarr" / "empty", np.zeros((20, 20), np.uint8))
    source = VolumeSource(raw=raw, labels=labels, mask=empty)
    with pytest.raises(ValueError, match=r"mask '.*m.zarr/empty' is 0 at every voxel"):
        CropSampler([source], predictor(), (12, 12), (12, 12))


def test_sources_must_agree(tmp_path):
    labels = blobs((20, 20), 3, seed=0)
    a = VolumeSource(
        raw=write(tmp_path / "a.zarr" / "raw", np.ones((20, 20), np.float32)),
        labels=write(tmp_path / "a.zarr" / "labels", labels),
    )
    b = VolumeSource(
        raw=write(tmp_path / "b.zarr" / "raw", np.ones((20, 20), np.float32), voxel=(2, 2)),
        labels=write(tmp_path / "b.zarr" / "labels", labels, voxel=(2, 2)),
    )
    c = VolumeSource(
        raw=write(tmp_path / "c.zarr" / "raw", np.ones((2, 20, 20), np.float32), channels=True),
        labels=a.labels,
    )
    with pytest.raises(ValueError, match=r"voxel size \(2, 2\) .* has \(4, 4\)"):
        open_sources([a, b], ["obj"])
    with pytest.raises(ValueError, match=r"has 2 channel\(s\) but raw .* has 1"):
        open_sources([a, c], ["obj"])


def test_crop_sampler_errors(volume):
    source = VolumeSource(raw=volume["raw_path"], labels=volume["labels_path"])
    pred = predictor()
    with pytest.raises(ValueError, match=r"does not fit into the data .*\(48, 56\) voxels"):
        CropSampler([source], pred, (60, 60), (52, 52))
    with pytest.raises(TypeError, match="InnerDistancePredictor"):
        CropSampler([source], object(), (32, 32), (24, 24))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AugmentConfig"):
        CropSampler([source], pred, (32, 32), (24, 24), augment={"flip": True})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of VolumeSource"):
        CropSampler(source, pred, (32, 32), (24, 24))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one volume"):
        CropSampler([], pred, (32, 32), (24, 24))
    opened = open_sources([source], ["obj"])
    with pytest.raises(TypeError, match="all VolumeSource or all OpenedSource"):
        CropSampler([source, opened[0]], pred, (32, 32), (24, 24))
    with pytest.raises(ValueError, match=r"1 label channel\(s\) but the predictor has 2"):
        CropSampler(opened, predictor(("a", "b")), (32, 32), (24, 24))
    with pytest.raises(ValueError, match="3 axes but the data .* has 2 spatial axes"):
        CropSampler(opened, pred, (32, 32, 32), (24, 24, 24))
    with pytest.raises(ValueError, match="output_shape must have 2 entries"):
        CropSampler(opened, pred, (32, 32), (24, 24, 24))
    with pytest.raises(ValueError, match="must be even and >= 0"):
        CropSampler(opened, pred, (32, 32), (23, 24))
    with pytest.raises(ValueError, match="must be even and >= 0"):
        CropSampler(opened, pred, (24, 24), (32, 32))
    with pytest.raises(TypeError, match="integers"):
        CropSampler(opened, pred, (32.0, 32), (24, 24))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of integers"):
        CropSampler(opened, pred, 32, (24, 24))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1 voxel"):
        CropSampler(opened, pred, (0, 32), (0, 24))
    with pytest.raises(ValueError, match="min_foreground_fraction"):
        CropSampler(opened, pred, (32, 32), (24, 24), min_foreground_fraction=1.5)
    with pytest.raises(TypeError, match="max_tries must be an integer"):
        CropSampler(opened, pred, (32, 32), (24, 24), max_tries=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tries must be >= 1"):
        CropSampler(opened, pred, (32, 32), (24, 24), max_tries=0)
    for bad, error, match in [
        ({"lo": 0, "hi": 1}, ValueError, r"missing keys \['max', 'min'\]"),
        ({"min": 1, "max": 1}, ValueError, "min < max"),
        ({"mean": 1, "std": 2}, ValueError, "unknown keys"),
        ({"min": "a", "max": 1}, TypeError, "must be a number"),
    ]:
        with pytest.raises(error, match=match):
            CropSampler(opened, pred, (32, 32), (24, 24), normalization=bad)
    with pytest.raises(TypeError, match="normalization must be a dict"):
        CropSampler(opened, pred, (32, 32), (24, 24), normalization=[0, 1])  # type: ignore[arg-type]
    s = CropSampler(opened, pred, (32, 32), (24, 24))
    with pytest.raises(TypeError, match="Generator"):
        s.sample(0)  # type: ignore[arg-type]


def test_transposes_of_unequal_extent_warn(volume):
    with pytest.warns(RuntimeWarning, match="never transposed"):
        sampler(volume, (32, 36), (24, 28), augment=AugmentConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler(volume, (32, 36), (24, 28), augment=AugmentConfig(transpose=False))


def test_nan_raw_is_an_error_naming_volume_and_roi(tmp_path):
    raw = np.ones((30, 30), np.float32)
    raw[14:16, 14:16] = np.nan
    source = VolumeSource(
        raw=write(tmp_path / "n.zarr" / "raw", raw),
        labels=write(tmp_path / "n.zarr" / "labels", blobs((30, 30), 4, seed=0)),
    )
    with pytest.raises(ValueError, match=r"non-finite values .* in raw '.*n.zarr/raw'"):
        CropSampler([source], predictor(), (24, 24), (20, 20))  # measuring the range
    s = CropSampler(
        [source], predictor(), (24, 24), (20, 20), augment=AugmentConfig.disabled(),
        normalization={"min": 0, "max": 1},
    )
    with pytest.raises(ValueError, match=r"non-finite values .* in raw '.*n.zarr/raw' ROI \["):
        s.sample(np.random.default_rng(0))


def test_training_dataset_errors(volume):
    s = sampler(volume)
    with pytest.raises(TypeError, match="CropSampler"):
        TrainingDataset(object(), seed=0, length=4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be >= 0"):
        TrainingDataset(s, seed=-1, length=4)
    with pytest.raises(TypeError, match="length must be an integer"):
        TrainingDataset(s, seed=0, length=4.0)  # type: ignore[arg-type]
    ds = TrainingDataset(s, seed=0, length=4)
    with pytest.raises(IndexError, match="index 4 out of range for 4 samples"):
        ds[4]
    with pytest.raises(IndexError, match="out of range"):
        ds[-1]
    with pytest.raises(TypeError, match="index must be an integer"):
        ds["a"]  # type: ignore[index]


def test_volume_source_json_round_trip_in_a_list():
    sources = [
        VolumeSource(raw="a.zarr/raw", labels=["a.zarr/m", "a.zarr/n"], mask="a.zarr/mask"),
        VolumeSource(
            raw="b.zarr/raw", labels="b.zarr/sem", classes={"m": [1], "n": [2, 3]}, weight=2
        ),
    ]
    text = json.dumps([s.model_dump(mode="json") for s in sources])
    assert [VolumeSource.model_validate(d) for d in json.loads(text)] == sources


def test_direct_zarr_reads_match_funlib_reads(tmp_path):
    from funlib.persistence import Array

    from innerdist.crops import _read
    from innerdist.volumes import open_volume

    data = np.arange(2 * 12 * 10, dtype=np.float32).reshape(2, 12, 10)
    path = write(tmp_path / "r.zarr" / "raw", data, voxel=(4, 8), offset=(8, 16), channels=True)
    on_disk = open_volume(path)
    in_memory = Array(data, (8, 16), (4, 8), axis_names=["c^", "y", "x"])  # funlib path
    roi = Roi((12, 32), (20, 40))
    expected = data[:, 1:6, 2:7]
    np.testing.assert_array_equal(_read(on_disk, roi), expected)
    np.testing.assert_array_equal(_read(in_memory, roi), expected)


# ---- a region of a volume (roi per source) ----------------------------------------------


def test_a_source_roi_is_used_as_if_the_volume_were_cut_to_it(volume, tmp_path):
    # Cut region: rows 8..40, columns 12..48 (voxels) = world [32:160, 48:192].
    roi = {"begin": [32, 48], "end": [160, 192]}
    cut = (slice(8, 40), slice(12, 48))
    whole = VolumeSource(raw=volume["raw_path"], labels=volume["labels_path"])
    part = VolumeSource(raw=volume["raw_path"], labels=volume["labels_path"], roi=roi)
    # The same data as separate, cut volumes: the reference.
    offset = (32, 48)
    copy = VolumeSource(
        raw=write(tmp_path / "cut.zarr" / "raw", volume["raw"][cut], offset=offset),
        labels=write(tmp_path / "cut.zarr" / "labels", volume["labels"][cut], offset=offset),
    )
    (opened,) = open_sources([part], ["obj"])
    assert opened.roi == Roi((32, 48), (128, 144)) and opened.bounds == opened.roi
    assert open_sources([whole], ["obj"])[0].bounds is None
    kwargs = {"normalization": {"min": 0, "max": 1}, "augment": AugmentConfig.disabled()}
    a = CropSampler([part], predictor(), (32, 32), (24, 24), **kwargs)
    b = CropSampler([copy], predictor(), (32, 32), (24, 24), **kwargs)
    for seed in range(8):
        ca, cb = (s.sample_crop(np.random.default_rng(seed)) for s in (a, b))
        assert opened.roi.contains(ca.output_roi) and ca.output_roi == cb.output_roi
        for key in ("raw", "target", "weight", "labels", "mask"):
            np.testing.assert_array_equal(getattr(ca, key), getattr(cb, key), err_msg=key)
    # The measured normalisation looks at the region only.
    measured = CropSampler([part], predictor(), (32, 32), (24, 24)).normalization
    assert measured["max"] <= volume["raw"][cut].max()


def test_validation_volume_of_a_source_roi(volume):
    from innerdist.config import SourceConfig
    from innerdist.validate import load_validation_volumes

    roi = {"begin": [32, 48], "end": [160, 192]}
    source = SourceConfig(raw=volume["raw_path"], labels=volume["labels_path"], roi=roi)
    (v,) = load_validation_volumes([source], ["obj"], {"min": 0, "max": 1}, (4, 4))
    assert v.roi == v.read_roi == Roi((32, 48), (128, 144))  # no context beyond the region
    np.testing.assert_array_equal(v.raw[0], volume["raw"][8:40, 12:48])
    np.testing.assert_array_equal(v.labels[0], volume["labels"][8:40, 12:48])


def test_source_roi_errors(volume, tmp_path):
    def opening(roi, labels=volume["labels_path"]):
        return open_sources(
            [VolumeSource(raw=volume["raw_path"], labels=labels, roi=roi)], ["obj"]
        )

    with pytest.raises(ValueError, match=r"roi \[0, 0\]\.\.\[400, 80\] .* is not inside the "
                                         r"region"):
        opening({"begin": [0, 0], "end": [400, 80]})
    with pytest.raises(ValueError, match=r"roi \[2, 0\]\.\.\[40, 40\] .*not on the raw voxel "
                                         r"grid \(voxel size \(4, 4\)"):
        opening({"begin": [2, 0], "end": [40, 40]})
    with pytest.raises(ValueError, match="has 3 axes but the data has 2"):
        opening({"begin": [0, 0, 0], "end": [4, 4, 4]})
    coarse = write(tmp_path / "c.zarr" / "labels", volume["labels"][::2, ::2], voxel=(8, 8))
    with pytest.raises(ValueError, match=r"not on the labels voxel grid \(voxel size \(8, 8\)"):
        opening({"begin": [4, 0], "end": [40, 40]}, labels=coarse)
    labels = np.zeros((48, 56), np.uint32)
    labels[40:, :] = 1  # objects only outside the region
    only_outside = write(tmp_path / "o.zarr" / "labels", labels)
    with pytest.raises(ValueError, match="is empty"):
        opening({"begin": [0, 0], "end": [80, 80]}, labels=only_outside)
