import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from innerdist.weights import balance_weights


def slow_balance(labels, num_classes, mask, slab_axis0, counts, clipmin=0.05, clipmax=0.95):
    """The spec's algorithm, spelled out voxel by voxel (slab 1 on axis 0 or whole array)."""
    slabs = [(i,) for i in range(labels.shape[0])] if slab_axis0 else [()]
    weights = np.zeros(labels.shape, np.float64)
    new_counts = []
    for k, s in enumerate(slabs):
        lab, m = labels[s], mask[s]
        masked_in = m.sum()
        cur = dict(counts[k]) if counts else {c: (0, 1) for c in range(num_classes)}
        for c in range(num_classes):
            num, den = cur[c]
            cur[c] = (num + int(((lab == c) & (m != 0)).sum()), den + int(masked_in))
        w = {c: 1 / (num_classes * min(max(n / d, clipmin), clipmax)) for c, (n, d) in cur.items()}
        for idx in np.ndindex(lab.shape):
            weights[s + idx] = m[idx] * w[int(lab[idx])]
        new_counts.append(cur)
    return weights, new_counts


def test_spec_example_first_call():
    labels = np.array([[0, 1, 2]] * 3)
    weights, counts = balance_weights(labels, 3)
    assert counts == [{0: (3, 10), 1: (3, 10), 2: (3, 10)}]
    np.testing.assert_allclose(weights, np.full((3, 3), 1 / (3 * 0.3)), rtol=1e-6)
    assert weights.dtype == np.float32


def test_counts_carry_over_between_calls():
    labels = np.array([[0, 1, 2]] * 3)
    _, counts = balance_weights(labels, 3)
    # Second call sees only background: class 0 becomes common, 1 and 2 rarer.
    weights, counts = balance_weights(np.zeros((3, 3), int), 3, moving_counts=counts)
    assert counts == [{0: (12, 19), 1: (3, 19), 2: (3, 19)}]
    np.testing.assert_allclose(weights, 1 / (3 * (12 / 19)), rtol=1e-6)


def test_mask_excludes_voxels_from_counts_and_zeroes_weights():
    labels = np.array([[0, 0, 1, 1]])
    mask = np.array([[1, 0, 1, 1]])
    weights, counts = balance_weights(labels, 2, masks=[mask])
    # masked_in = 3: background 1 of 3 (+ den 1), foreground 2.
    assert counts == [{0: (1, 4), 1: (2, 4)}]
    np.testing.assert_allclose(weights, [[1 / (2 * 0.25), 0, 1 / (2 * 0.5), 1 / (2 * 0.5)]])


def test_clipping_of_absent_and_dominant_classes():
    labels = np.zeros((10,), int)
    weights, counts = balance_weights(labels, 2)
    assert counts == [{0: (10, 11), 1: (0, 11)}]
    # frac 10/11 = 0.909 is below clipmax, so it is used as it is.
    np.testing.assert_allclose(weights, 1 / (2 * 10 / 11), rtol=1e-6)
    weights, _ = balance_weights(np.zeros((100,), int), 2)
    np.testing.assert_allclose(weights, 1 / (2 * 0.95), rtol=1e-6)


def test_slabs_are_balanced_independently():
    labels = np.array([[0, 0, 0, 1], [1, 1, 1, 0]])
    weights, counts = balance_weights(labels, 2, slab=(1, -1))
    assert counts == [{0: (3, 5), 1: (1, 5)}, {0: (1, 5), 1: (3, 5)}]
    np.testing.assert_allclose(weights[0], [1 / 1.2, 1 / 1.2, 1 / 1.2, 1 / 0.4], rtol=1e-6)
    # Row 1 is row 0 with the classes swapped, so the weights per position are the same.
    np.testing.assert_allclose(weights[1], [1 / 1.2, 1 / 1.2, 1 / 1.2, 1 / 0.4], rtol=1e-6)


def test_bool_labels_are_two_classes():
    weights, counts = balance_weights(np.array([True, False, False, False]), 2)
    assert counts == [{0: (3, 5), 1: (1, 5)}]
    np.testing.assert_allclose(weights, [1 / 0.4, 1 / 1.2, 1 / 1.2, 1 / 1.2], rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    labels=arrays(np.int64, st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
                  elements=st.integers(0, 2)),
    data=st.data(),
    slab_axis0=st.booleans(),
    calls=st.integers(1, 3),
)
def test_matches_voxel_by_voxel_reference(labels, data, slab_axis0, calls):
    mask = data.draw(arrays(np.uint8, labels.shape, elements=st.integers(0, 1)))
    slab = (1, -1, -1) if slab_axis0 else None
    counts = ref_counts = None
    for _ in range(calls):
        weights, counts = balance_weights(labels, 3, masks=[mask], slab=slab, moving_counts=counts)
        ref, ref_counts = slow_balance(labels, 3, mask, slab_axis0, ref_counts)
        np.testing.assert_allclose(weights, ref, rtol=1e-5)
        assert counts == ref_counts


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"label_data": np.array([0, 3]), "num_classes": 3}, ValueError, r"\[0, 3\).*\[0, 3\]"),
        ({"label_data": np.array([-1, 0]), "num_classes": 2}, ValueError, r"\[-1, 0\]"),
        ({"label_data": np.zeros(3), "num_classes": 2}, TypeError, "float64"),
        ({"label_data": np.zeros(3, int), "num_classes": 0}, ValueError, "num_classes"),
        (
            {"label_data": np.zeros((2, 3), int), "num_classes": 2, "masks": [np.ones((3, 2))]},
            ValueError,
            r"mask 0 has shape \(3, 2\), expected .*\(2, 3\)",
        ),
        (
            {"label_data": np.zeros((2, 3), int), "num_classes": 2, "slab": (1, -1, -1)},
            ValueError,
            "slab .* 3 entries",
        ),
        ({"label_data": np.zeros(3, int), "num_classes": 2, "slab": (0,)}, ValueError, "slab"),
        (
            {"label_data": np.zeros(3, int), "num_classes": 2, "clipmin": 0.9, "clipmax": 0.1},
            ValueError,
            "clipmin",
        ),
        (
            {"label_data": np.zeros(3, int), "num_classes": 2, "moving_counts": [{}, {}]},
            ValueError,
            "moving_counts has 2 slabs, expected 1",
        ),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        balance_weights(**kwargs)
