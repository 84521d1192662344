import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from innerdist.augment import AugmentConfig, augment, required_margin


def blobs(shape, n, seed, anisotropy=None):
    """Labels with ``n`` random ellipsoid-ish blobs (ids 1..n; later ones overwrite)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float64)
    scale = np.ones(len(shape)) if anisotropy is None else np.asarray(anisotropy, float)
    labels = np.zeros(shape, np.int64)
    for i in range(1, n + 1):
        centre = rng.uniform(0, shape)
        radius = rng.uniform(2, max(3, min(shape) / 3))
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, scale, strict=True))
        labels[d2 < radius**2] = i
    return labels


def geometric_only(**update):
    return AugmentConfig.disabled().model_copy(update=update)


def elastic_only(jitter_sigma, spacing=80.0):
    return AugmentConfig.disabled().model_copy(
        update={
            "elastic": {
                "enabled": True,
                "probability": 1.0,
                "jitter_sigma": jitter_sigma,
                "control_point_spacing": spacing,
            }
        }
    )


def elastic_config(jitter_sigma, spacing=80.0, **update):
    data = {
        "flip": False,
        "transpose": False,
        "elastic": {
            "enabled": True,
            "probability": 1.0,
            "jitter_sigma": jitter_sigma,
            "control_point_spacing": spacing,
        },
        "intensity": {"probability": 0.0},
        "gamma": {"probability": 0.0},
        "noise": {"probability": 0.0},
    }
    data.update(update)
    return AugmentConfig.model_validate(data)


# ---- configuration ---------------------------------------------------------------------


def test_defaults_are_valid_and_round_trip_through_json():
    cfg = AugmentConfig()
    assert cfg.flip and cfg.transpose
    assert not cfg.elastic.enabled
    text = json.dumps(cfg.model_dump(mode="json"))
    assert AugmentConfig.model_validate(json.loads(text)) == cfg
    custom = elastic_config([0, 16, 16], spacing=[400, 320, 320])
    again = AugmentConfig.model_validate_json(custom.model_dump_json())
    assert again == custom


@pytest.mark.parametrize(
    "data, key",
    [
        ({"flips": True}, "flips"),
        ({"elastic": {"sigma": 3}}, "sigma"),
        ({"intensity": {"scale": [1, 2]}}, "scale"),
        ({"gamma": {"gamma_range": [1, 2]}}, "gamma_range"),
        ({"noise": {"std": 0.1}}, "std"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(data, key):
    with pytest.raises(ValueError, match=key):
        AugmentConfig.model_validate(data)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"intensity": {"scale_range": [1.2, 1.1]}}, "low <= high"),
        ({"intensity": {"shift_range": [0.1, -0.1]}}, "low <= high"),
        ({"intensity": {"scale_range": [0.0, 1.0]}}, "scale_range must be > 0"),
        ({"gamma": {"range": [0.0, 2.0]}}, "gamma.range must be > 0"),
        ({"gamma": {"range": [2.0, 1.0]}}, "low <= high"),
        ({"noise": {"sigma_range": [-0.1, 0.1]}}, "sigma_range must be >= 0"),
        ({"noise": {"probability": 1.5}}, "probability"),
        ({"elastic": {"probability": -0.1}}, "probability"),
        ({"elastic": {"control_point_spacing": 0}}, "control_point_spacing must be positive"),
        ({"elastic": {"control_point_spacing": [10, -1]}}, "control_point_spacing"),
        ({"elastic": {"control_point_spacing": []}}, "control_point_spacing"),
        ({"elastic": {"jitter_sigma": -1}}, "jitter_sigma must be >= 0"),
        ({"elastic": {"jitter_sigma": [1, float("nan")]}}, "jitter_sigma"),
    ],
)
def test_invalid_values_are_rejected(data, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig.model_validate(data)


def test_required_margin():
    cfg = elastic_config([0, 16, 16])
    assert required_margin(cfg, (40, 8, 8)) == (0, 6, 6)
    # 3 sigma = 30 nm = 0.75 z voxels -> one voxel; 30 / 8 = 3.75 -> 4.
    assert required_margin(elastic_config(10), (40, 8, 8)) == (1, 4, 4)
    assert required_margin(elastic_config(10), (5, 5)) == (6, 6)
    assert required_margin(AugmentConfig(), (40, 8, 8)) == (0, 0, 0)  # elastic off
    never = elastic_config(10).model_copy(
        update={"elastic": elastic_config(10).elastic.model_copy(update={"probability": 0.0})}
    )
    assert required_margin(never, (8, 8)) == (0, 0)


def test_required_margin_errors():
    with pytest.raises(TypeError, match="AugmentConfig"):
        required_margin({"flip": True}, (8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 or 3 entries"):
        required_margin(AugmentConfig(), (8,))
    with pytest.raises(ValueError, match="positive"):
        required_margin(AugmentConfig(), (8, 0))
    with pytest.raises(TypeError, match="sequence"):
        required_margin(AugmentConfig(), "88")
    with pytest.raises(ValueError, match="2 entries .* but the data has 3 spatial axes"):
        required_margin(elastic_config([1, 2]), (8, 8, 8))


# ---- geometry ---------------------------------------------------------------------------


def test_disabled_config_changes_nothing_and_returns_copies():
    labels = blobs((12, 14), 4, seed=0)
    raw = np.random.default_rng(0).random((2, 12, 14), dtype=np.float32)
    mask = (labels > 1).astype(np.uint8)
    r, lab, m = augment(
        raw, labels, mask, (8, 8), AugmentConfig.disabled(), np.random.default_rng(1)
    )
    np.testing.assert_array_equal(r, raw)
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_array_equal(m, mask)
    assert r.dtype == np.float32 and lab.dtype == labels.dtype and m.dtype == mask.dtype
    assert not np.shares_memory(lab, labels) and not np.shares_memory(m, mask)
    assert not np.shares_memory(r, raw)


def all_axis_transforms(array, axes):
    """Every combination of mirroring and permuting ``axes`` of ``array``."""
    results = []
    for perm in itertools.permutations(axes):
        order = list(range(array.ndim))
        for src, dst in zip(axes, perm, strict=True):
            order[src] = dst
        moved = np.transpose(array, order)
        for flips in itertools.product([False, True], repeat=array.ndim):
            axes_to_flip = tuple(a for a, f in enumerate(flips) if f)
            results.append(np.flip(moved, axes_to_flip) if axes_to_flip else moved)
    return results


def test_flips_and_transposes_move_raw_labels_and_mask_together():
    labels = blobs((10, 10), 5, seed=1)
    k = 0.1
    raw = (labels * k + 0.5).astype(np.float32)
    mask = (labels % 2).astype(np.uint8)
    candidates = all_axis_transforms(labels, [0, 1])
    seen = set()
    cfg = geometric_only(flip=True, transpose=True)
    for seed in range(40):
        r, lab, m = augment(raw, labels, mask, (8, 8), cfg, np.random.default_rng(seed))
        np.testing.assert_allclose(r, lab * k + 0.5, atol=1e-6)
        np.testing.assert_array_equal(m, lab % 2)
        matches = [i for i, c in enumerate(candidates) if np.array_equal(c, lab)]
        assert matches, "result is not a mirror/transpose of the input"
        seen.add(matches[0])
    assert len(seen) == 8  # all eight symmetries of the square turn up in 40 draws


def test_transposes_never_swap_axes_of_different_voxel_size():
    shape = (6, 6, 6)
    z = np.broadcast_to(np.arange(6).reshape(6, 1, 1), shape).copy()
    cfg = geometric_only(flip=True, transpose=True)
    for seed in range(30):
        _, lab, _ = augment(
            z.astype(np.float32), z, None, (40, 8, 8), cfg, np.random.default_rng(seed)
        )
        # z stays along axis 0: constant across y and x, a (possibly mirrored) ramp along z.
        assert (lab == lab[:, :1, :1]).all()
        assert sorted(lab[:, 0, 0].tolist()) == list(range(6))
    # With isotropic voxels the same data does get its z axis swapped sometimes.
    swapped = 0
    for seed in range(30):
        _, lab, _ = augment(
            z.astype(np.float32), z, None, (8, 8, 8), cfg, np.random.default_rng(seed)
        )
        swapped += not (lab == lab[:, :1, :1]).all()
    assert swapped > 0


def test_transposes_skip_axes_of_different_extent():
    labels = np.arange(6 * 8).reshape(6, 8)
    cfg = geometric_only(flip=False, transpose=True)
    for seed in range(20):
        _, lab, _ = augment(labels / 48, labels, None, (8, 8), cfg, np.random.default_rng(seed))
        np.testing.assert_array_equal(lab, labels)


def test_elastic_ramps_reveal_a_bounded_smooth_displacement_and_nearest_labels():
    """raw = index along an axis is interpolated exactly, so raw_out - index is the
    displacement; nearest-neighbour labels must equal round(raw_out) there."""
    shape = (40, 44)
    voxel = (8, 8)
    cfg = elastic_config(16.0, spacing=80.0)  # 2 voxels sigma, control points 10 voxels apart
    margin = required_margin(cfg, voxel)
    assert margin == (6, 6)
    centre = tuple(slice(m, s - m) for m, s in zip(margin, shape, strict=True))
    for axis in range(2):
        index = np.indices(shape)[axis]
        for seed in range(3):
            r, lab, _ = augment(
                index.astype(np.float32), index, None, voxel, cfg, np.random.default_rng(seed)
            )
            displacement = (r - index)[centre]
            assert np.abs(displacement).max() <= margin[axis] + 1e-4
            assert np.abs(displacement).max() > 0.5  # it really moved
            # smooth: neighbouring voxels move nearly alike (spacing 10 voxels, sigma 2)
            assert np.abs(np.diff(displacement, axis=0)).max() < 1.5
            assert np.abs(np.diff(displacement, axis=1)).max() < 1.5
            not_tie = np.abs((r % 1) - 0.5) > 1e-3
            np.testing.assert_array_equal(lab[not_tie], np.floor(r[not_tie] + 0.5))


def test_elastic_respects_zero_sigma_axes():
    shape = (8, 30, 30)
    z = np.indices(shape)[0]
    cfg = elastic_config([0, 16, 16], spacing=[200, 80, 80])
    r, lab, _ = augment(z.astype(np.float32), z, None, (40, 8, 8), cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(r, z)
    np.testing.assert_array_equal(lab, z)
    y = np.indices(shape)[1]
    r, _, _ = augment(y.astype(np.float32), y, None, (40, 8, 8), cfg, np.random.default_rng(0))
    assert not np.allclose(r, y)


def linear_interpolation(image, points):
    """Slow reference: multilinear interpolation of ``image`` at ``points`` (dims, N)."""
    dims = image.ndim
    base = np.floor(points).astype(int)
    frac = points - base
    result = np.zeros(points.shape[1])
    for corner in itertools.product([0, 1], repeat=dims):
        weight = np.ones(points.shape[1])
        index = []
        for a, c in enumerate(corner):
            weight *= frac[a] if c else 1 - frac[a]
            index.append(np.clip(base[a] + c, 0, image.shape[a] - 1))
        result += weight * image[tuple(index)]
    return result


def test_elastic_keeps_raw_and_labels_aligned_and_ids_original():
    """Coordinate ramps ride along as extra raw channels, so the source position of every
    output voxel is known exactly; labels must be the nearest voxel there and raw the
    multilinear interpolation there."""
    shape = (12, 30, 30)
    labels = blobs(shape, 10, seed=3, anisotropy=(5, 1, 1))
    k = 0.05
    grid = np.indices(shape).astype(np.float32)
    raw = np.concatenate([(labels * k + 0.5).astype(np.float32)[np.newaxis], grid])
    mask = (labels != 0).astype(np.uint8)
    cfg = elastic_config([40, 16, 16], spacing=[200, 80, 80], flip=True, transpose=True)
    for seed in range(3):
        r, lab, m = augment(raw, labels, mask, (40, 8, 8), cfg, np.random.default_rng(seed))
        assert set(np.unique(lab)) <= set(np.unique(labels))
        assert not np.array_equal(lab, labels)
        np.testing.assert_array_equal(m, lab != 0)  # moved by the same nearest lookup
        points = r[1:].reshape(3, -1).astype(np.float64)
        nearest = np.floor(points + 0.5).astype(int)
        tie = (np.abs(points % 1 - 0.5) < 1e-3).any(axis=0)
        expected_labels = labels[tuple(nearest)]
        np.testing.assert_array_equal(lab.ravel()[~tie], expected_labels[~tie])
        reference = linear_interpolation(raw[0], points)
        np.testing.assert_allclose(r[0].ravel(), reference, atol=1e-5)
        # The brief's relation: away from id boundaries raw is still labels * k + 0.5.
        base = np.floor(points).astype(int)
        corners = [
            labels[tuple(np.clip(base[a] + c[a], 0, shape[a] - 1) for a in range(3))]
            for c in itertools.product([0, 1], repeat=3)
        ]
        one_id = np.all([c == corners[0] for c in corners], axis=0) & ~tie
        assert one_id.mean() > 0.5
        np.testing.assert_allclose(r[0].ravel()[one_id], lab.ravel()[one_id] * k + 0.5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    labels=arrays(
        np.int64, st.tuples(st.integers(3, 9), st.integers(3, 9)), elements=st.integers(0, 5)
    ),
    seed=st.integers(0, 2**32 - 1),
    elastic=st.booleans(),
)
def test_property_geometric_augmentation_never_invents_or_mixes_ids(labels, seed, elastic):
    cfg = (
        elastic_config(8.0, spacing=24.0, flip=True, transpose=True)
        if elastic
        else (geometric_only(flip=True, transpose=True))
    )
    mask = (labels % 2).astype(np.uint8)
    raw = labels.astype(np.float32) / 5
    r, lab, m = augment(raw, labels, mask, (4, 4), cfg, np.random.default_rng(seed))
    assert lab.shape == labels.shape and r.shape == labels.shape
    assert set(np.unique(lab)) <= set(np.unique(labels))
    np.testing.assert_array_equal(m, lab % 2)
    assert r.min() >= raw.min() - 1e-6 and r.max() <= raw.max() + 1e-6
    if not elastic:
        # mirrors and transposes only permute voxels
        np.testing.assert_array_equal(np.sort(lab, axis=None), np.sort(labels, axis=None))
        np.testing.assert_allclose(r, lab / 5, atol=1e-6)


# ---- intensity ---------------------------------------------------------------------------


def intensity_config(**update):
    return AugmentConfig.model_validate(
        {
            "flip": False,
            "transpose": False,
            "intensity": {"probability": 0.0},
            "gamma": {"probability": 0.0},
            "noise": {"probability": 0.0},
            **update,
        }
    )


def test_intensity_scale_and_shift():
    raw = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    labels = np.arange(30).reshape(5, 6)
    cfg = intensity_config(
        intensity={"scale_range": [2, 2], "shift_range": [0.5, 0.5], "probability": 1}
    )
    r, lab, _ = augment(raw, labels, None, (4, 4), cfg, np.random.default_rng(0))
    np.testing.assert_allclose(r, raw * 2 + 0.5, rtol=1e-6)
    np.testing.assert_array_equal(lab, labels)


def test_gamma_with_odd_extension_for_negative_values():
    raw = np.array([[-0.5, 0.0, 0.25, 0.5, 1.0, 2.0]], np.float32)
    cfg = intensity_config(gamma={"range": [2, 2], "probability": 1})
    r, _, _ = augment(raw, np.zeros(raw.shape, int), None, (4, 4), cfg, np.random.default_rng(0))
    np.testing.assert_allclose(r, [[-0.25, 0.0, 0.0625, 0.25, 1.0, 4.0]], rtol=1e-6)


def test_noise_has_the_drawn_sigma():
    raw = np.full((1, 100, 100), 0.5, np.float32)
    cfg = intensity_config(noise={"sigma_range": [0.1, 0.1], "probability": 1})
    r, _, _ = augment(raw, np.zeros((100, 100), int), None, (4, 4), cfg, np.random.default_rng(0))
    assert r.shape == (1, 100, 100)
    assert abs(float(np.std(r - raw)) - 0.1) < 0.005
    assert abs(float(np.mean(r - raw))) < 0.005


def test_probabilities_decide_how_often_transforms_apply():
    raw = np.full((4, 4), 0.5, np.float32)
    cfg = intensity_config(
        intensity={"scale_range": [2, 2], "shift_range": [0, 0], "probability": 0.3}
    )
    applied = [
        bool(
            augment(raw, np.zeros((4, 4), int), None, (4, 4), cfg, np.random.default_rng(s))[0][
                0, 0
            ]
            != 0.5
        )
        for s in range(400)
    ]
    assert 0.22 < np.mean(applied) < 0.38


def test_same_generator_state_gives_same_result():
    labels = blobs((16, 20, 20), 6, seed=4)
    raw = np.random.default_rng(0).random(labels.shape, dtype=np.float32)
    cfg = elastic_config([40, 16, 16], spacing=[200, 80, 80], flip=True, transpose=True)
    cfg = cfg.model_copy(update={"noise": cfg.noise.model_copy(update={"probability": 1.0})})
    a = augment(raw, labels, None, (40, 8, 8), cfg, np.random.default_rng(7))
    b = augment(raw, labels, None, (40, 8, 8), cfg, np.random.default_rng(7))
    c = augment(raw, labels, None, (40, 8, 8), cfg, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_large_label_ids_survive_exactly():
    labels = np.full((12, 12), 2**60 + 1, np.uint64)
    labels[:6] = 2**60 + 3
    cfg = elastic_config(8.0, spacing=24.0)
    _, lab, _ = augment(
        labels.astype(np.float32), labels, None, (4, 4), cfg, np.random.default_rng(0)
    )
    assert set(np.unique(lab)) == {2**60 + 1, 2**60 + 3}
    assert lab.dtype == np.uint64


# ---- input errors ----------------------------------------------------------------------


def test_augment_input_errors():
    raw = np.zeros((4, 4), np.float32)
    labels = np.zeros((4, 4), np.int32)
    rng = np.random.default_rng(0)
    cfg = AugmentConfig()
    with pytest.raises(TypeError, match="AugmentConfig"):
        augment(raw, labels, None, (4, 4), {"flip": True}, rng)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        augment(raw, labels, None, (4, 4), cfg, np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 or 3 entries"):
        augment(raw, labels, None, (4, 4, 4, 4), cfg, rng)
    with pytest.raises(ValueError, match="positive"):
        augment(raw, labels, None, (4, -4), cfg, rng)
    with pytest.raises(TypeError, match="integer or bool"):
        augment(raw, labels.astype(np.float32), None, (4, 4), cfg, rng)
    with pytest.raises(TypeError, match="raw must hold numbers"):
        augment(raw.astype(str), labels, None, (4, 4), cfg, rng)
    with pytest.raises(ValueError, match=r"raw has shape \(4,\)"):
        augment(np.zeros(4, np.float32), labels, None, (4, 4), cfg, rng)
    with pytest.raises(
        ValueError, match=r"labels have spatial shape \(4, 5\) but raw has \(4, 4\)"
    ):
        augment(raw, np.zeros((4, 5), np.int32), None, (4, 4), cfg, rng)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 4, 4\)"):
        augment(raw, labels, np.zeros((2, 4, 4), np.uint8), (4, 4), cfg, rng)
    with pytest.raises(ValueError, match="3 entries .* but the data has 2 spatial axes"):
        augment(raw, labels, None, (4, 4), elastic_config([1, 2, 3]), rng)
