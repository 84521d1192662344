"""Tests of innerdist.distance: the spec's worked examples, a brute-force reference,
property tests of the fast kernel against the 2x-grid reference, layouts and errors."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import innerdist.distance as dist
from innerdist.distance import boundary_distance, boundary_distance_2x_grid

BOTH = pytest.mark.parametrize(
    "fn", [boundary_distance, boundary_distance_2x_grid], ids=["fast", "2x_grid"]
)


def brute_force(labels: np.ndarray, voxel_size) -> np.ndarray:
    """Enumerate every boundary point (face centre between differing neighbours) and take
    the nearest, straight from the definition. Tiny arrays only."""
    vs = np.asarray(voxel_size, dtype=np.float64)
    points = []
    for axis in range(labels.ndim):
        for x in itertools.product(*(range(n) for n in labels.shape)):
            y = list(x)
            y[axis] += 1
            if y[axis] < labels.shape[axis] and labels[x] != labels[tuple(y)]:
                p = np.array(x, dtype=np.float64)
                p[axis] += 0.5
                points.append(p)
    if not points:
        return np.full(labels.shape, min(labels.shape * vs / 2), dtype=np.float64)
    pts = np.array(points) * vs
    out = np.empty(labels.shape)
    for x in itertools.product(*(range(n) for n in labels.shape)):
        out[x] = np.sqrt((((np.array(x) * vs) - pts) ** 2).sum(axis=1).min())
    return out


def inner(labels: np.ndarray, d: np.ndarray, scale: float) -> np.ndarray:
    return np.tanh(d / scale) * (labels != 0)


def assert_same_distances(actual: np.ndarray, expected: np.ndarray) -> None:
    # float32 precision on raw distances, and the spec's 1e-5 after tanh for a few scales
    # (small scales make the comparison sensitive near boundaries, large ones far away).
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=2e-6, atol=1e-6)
    for scale in (0.3, 1.0, 10.0, 300.0):
        np.testing.assert_allclose(np.tanh(actual / scale), np.tanh(expected / scale), atol=1e-5)


# --------------------------------------------------------------------------------------
# The spec's worked examples


@BOTH
def test_spec_example_line_with_background(fn):
    labels = np.array([[0, 0, 1, 1, 1, 1, 1, 1, 0, 0]])
    got = inner(labels, fn(labels, (1, 1)), 2)
    want = [[0, 0, 0.2449, 0.6351, 0.8483, 0.8483, 0.6351, 0.2449, 0, 0]]
    np.testing.assert_allclose(got, want, atol=1e-4)


@BOTH
def test_spec_example_touching_ids_and_border_is_not_a_boundary(fn):
    labels = np.array([[1, 1, 1, 2, 2, 2]])
    d = fn(labels, (1, 1))
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d, [[2.5, 1.5, 0.5, 0.5, 1.5, 2.5]])
    want = [[0.9866, 0.9051, 0.4621, 0.4621, 0.9051, 0.9866]]
    np.testing.assert_allclose(inner(labels, d, 1), want, atol=1e-4)


@BOTH
def test_spec_example_block_in_background(fn):
    labels = np.zeros((5, 5), dtype=np.int32)
    labels[1:4, 1:4] = 1
    got = inner(labels, fn(labels, (1, 1)), 1)
    want = np.zeros((5, 5))
    want[1:4, 1:4] = 0.4621
    want[2, 2] = 0.9051
    np.testing.assert_allclose(got, want, atol=1e-4)


@BOTH
def test_spec_example_no_boundary_uses_half_the_smallest_extent(fn):
    labels = np.ones((4, 6), dtype=np.uint8)
    d = fn(labels, (1, 1))
    np.testing.assert_array_equal(d, np.full((4, 6), 2.0, np.float32))
    np.testing.assert_allclose(inner(labels, d, 4), 0.4621, atol=1e-4)


@BOTH
def test_spec_example_anisotropic(fn):
    labels = np.zeros((3, 7), dtype=np.int64)
    labels[:, 2:6] = 3
    d = fn(labels, (4, 2))
    # Faces at x = 1.5 and 5.5 (voxels) along the second axis, 2 nm per voxel.
    np.testing.assert_allclose(d, np.tile([3.0, 1, 1, 3, 3, 1, 1], (3, 1)), rtol=1e-6)
    want = np.tile([0, 0, 0.1244, 0.3584, 0.3584, 0.1244, 0], (3, 1))
    np.testing.assert_allclose(inner(labels, d, 8), want, atol=1e-4)


@BOTH
def test_spec_example_all_zeros(fn):
    labels = np.zeros((3, 4, 5), dtype=np.uint16)
    d = fn(labels, (1, 1, 1))
    np.testing.assert_array_equal(d, np.full((3, 4, 5), 1.5, np.float32))
    np.testing.assert_array_equal(inner(labels, d, 1), 0)


# --------------------------------------------------------------------------------------
# Hand-computed raw distances


@BOTH
def test_single_voxel_in_3d_anisotropic(fn):
    labels = np.zeros((3, 3, 3), dtype=bool)
    labels[1, 1, 1] = True
    d = fn(labels, (2, 1, 1))
    # Boundary points: the six face centres of the middle voxel.
    assert d[1, 1, 1] == pytest.approx(0.5)  # in-plane faces are 0.5 nm away
    assert d[0, 1, 1] == pytest.approx(1.0)  # face (0.5, 1, 1) is half a 2 nm voxel away
    assert d[1, 0, 1] == pytest.approx(0.5)
    assert d[0, 0, 0] == pytest.approx(math.sqrt(3))  # (0.5,1,1): 1^2 + 1^2 + 1^2
    assert d[1, 0, 0] == pytest.approx(math.sqrt(1.25))  # (1,0.5,1): 0 + .25 + 1
    np.testing.assert_allclose(d, brute_force(labels, (2, 1, 1)), rtol=1e-6)


@BOTH
def test_boundary_only_between_some_rows(fn):
    labels = np.array([[1, 1], [1, 1], [2, 2], [2, 2], [2, 2]])
    d = fn(labels, (3, 1))
    np.testing.assert_allclose(d, [[4.5] * 2, [1.5] * 2, [1.5] * 2, [4.5] * 2, [7.5] * 2])


def test_every_voxel_differs_from_its_neighbours():
    labels = np.arange(12).reshape(3, 4)
    d = boundary_distance(labels, (1, 1))
    np.testing.assert_array_equal(d, np.full((3, 4), 0.5, np.float32))


def test_brute_force_reference_on_hand_examples():
    labels = np.array([[1, 1, 1, 2, 2, 2]])
    np.testing.assert_allclose(brute_force(labels, (1, 1)), [[2.5, 1.5, 0.5, 0.5, 1.5, 2.5]])
    np.testing.assert_allclose(brute_force(np.ones((4, 6)), (1, 1)), 2.0)


# --------------------------------------------------------------------------------------
# Properties: fast == 2x-grid reference == brute force


@st.composite
def label_volumes(draw, max_side: int = 9, dtypes=("bool", "uint64", "int8", "int32")):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    if dtype == np.bool_:
        values = st.booleans()
    else:
        info = np.iinfo(dtype)
        ids = [0, 1, 2, 3, info.max, info.min]
        values = st.sampled_from(ids)
    labels = draw(hnp.arrays(dtype, shape, elements=values))
    if draw(st.booleans()):
        # Blocky objects (runs of equal ids) next to each other, not just salt and pepper.
        block = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        coarse = labels[tuple(slice(0, -(-n // b)) for n, b in zip(shape, block, strict=True))]
        labels = np.kron(coarse, np.ones(block, dtype=dtype)).astype(dtype)
        labels = labels[tuple(slice(0, n) for n in shape)]
    voxel_size = tuple(
        draw(st.floats(0.25, 8.0, allow_nan=False, allow_infinity=False)) for _ in range(ndim)
    )
    return labels, voxel_size


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_volumes())
def test_fast_matches_2x_grid_reference(case):
    labels, voxel_size = case
    assert_same_distances(
        boundary_distance(labels, voxel_size), boundary_distance_2x_grid(labels, voxel_size)
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_volumes(max_side=5))
def test_both_match_brute_force(case):
    labels, voxel_size = case
    want = brute_force(labels, voxel_size)
    assert_same_distances(boundary_distance(labels, voxel_size), want)
    assert_same_distances(boundary_distance_2x_grid(labels, voxel_size), want)


@st.composite
def sparse_volumes(draw):
    # Few boundaries in long lines: distances beyond the windowed search's reach
    # (dist._CAP voxels) send tiles to the lower-envelope fallback, in every pass.
    ndim = draw(st.sampled_from([2, 3]))
    if ndim == 2:
        shape = (draw(st.integers(1, 90)), draw(st.integers(1, 90)))
    else:
        shape = tuple(draw(st.integers(1, 45)) for _ in range(3))
    labels = np.zeros(shape, dtype=np.int16)
    for _ in range(draw(st.integers(0, 3))):
        lo = [draw(st.integers(0, n - 1)) for n in shape]
        size = [draw(st.integers(1, n)) for n in shape]
        labels[tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))] = draw(
            st.integers(1, 3)
        )
    voxel_size = tuple(draw(st.sampled_from([0.5, 1.0, 3.0, 40.0])) for _ in range(ndim))
    return labels, voxel_size


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sparse_volumes())
def test_fast_matches_reference_with_far_boundaries(case):
    labels, voxel_size = case
    assert_same_distances(
        boundary_distance(labels, voxel_size), boundary_distance_2x_grid(labels, voxel_size)
    )


FAR = 2 * dist._CAP + 30  # further than the windowed search goes


@pytest.mark.parametrize(
    ("shape", "corner"),
    [
        # A small object in a corner of a long array: the pass along the long axis
        # needs candidates up to FAR voxels away, so tiles take the lower envelope
        # (with finite values), and lines without any site stay inf through it.
        ((4, FAR), (slice(2, None), slice(0, 5))),  # 2-D rows
        ((FAR, 4), (slice(0, 5), slice(2, None))),  # 2-D columns
        ((FAR, 3, 4), (slice(0, 5), slice(None), slice(2, None))),  # 3-D axis 0
        ((3, FAR, 4), (slice(None), slice(0, 5), slice(2, None))),  # 3-D in-plane columns
        ((3, 4, FAR), (slice(None), slice(2, None), slice(0, 5))),  # 3-D in-plane rows
    ],
)
def test_far_boundaries_take_the_lower_envelope_path(shape, corner):
    labels = np.zeros(shape, dtype=np.uint8)
    labels[corner] = 1
    voxel_size = (1.5, 0.5, 2.0)[: len(shape)]
    assert_same_distances(
        boundary_distance(labels, voxel_size), boundary_distance_2x_grid(labels, voxel_size)
    )


def min_plus_reference(f: np.ndarray, w: float, axis: int) -> np.ndarray:
    f = np.moveaxis(f.astype(np.float64), axis, -1)
    n = f.shape[-1]
    x = np.arange(n)
    out = (f[..., None, :] + w * (x[:, None] - x[None, :]) ** 2).min(axis=-1)
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("far", [False, True])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_passes_match_brute_force_min_plus(far, mode):
    # The two pass kernels on their own, both for short searches and (far=True) for
    # values only at one end of long lines, which must go to the lower envelope.
    rng = np.random.default_rng(mode + 3 * far)
    n = FAR if far else 40
    w = 2.25
    f = (rng.random((3, n, 150)) * 30 * w).astype(np.float32)
    f[rng.random(f.shape) < 0.2] = np.inf
    if far:
        f[:, 3:, :] = np.inf  # rows: only the first three have values
        f[1, :, 3:] = np.inf  # plane 1: only the first three columns have values
    costs, bits = dist._tables(w)
    recip = np.zeros(max(f.shape) + 1)
    recip[1:] = 1.0 / np.arange(1, max(f.shape) + 1)
    m = max(f.shape)
    scratch = dict(
        acc=np.empty((2, dist._TILE), np.float32),
        line=np.empty(m, np.float32),
        v=np.empty(m + 1, np.int64),
        av=np.empty(m + 1),
        z=np.empty(m + 2),
    )
    before = (rng.random(f.shape) * 50 * w).astype(np.float32)

    def combine(result):
        if mode == 0:
            return result
        low = np.minimum(before.astype(np.float64), result)
        return low if mode == 1 else np.sqrt(low)

    # Columns within each plane (axis 1) and along axis 0 for each slab.
    for axis0 in (False, True):
        dst = before.copy()
        buf = dist._column_buffer(f.shape[0] if axis0 else f.shape[1])
        for s in range(f.shape[1] if axis0 else f.shape[0]):
            dist._pass_cols(
                f, dst, s, s, axis0, 0, f.shape[2], mode, w, costs, bits, recip, buf, **scratch
            )
        want = combine(min_plus_reference(f, w, 0 if axis0 else 1))
        np.testing.assert_allclose(dst, want, rtol=1e-6, err_msg=f"axis0={axis0}")
    # Rows (axis 2).
    dst = before.copy()
    rowbuf = dist._row_buffer(f.shape[2])
    for i in range(f.shape[0]):
        dist._pass_rows(f, dst, i, 0, f.shape[1], mode, w, costs, bits, recip, rowbuf, **scratch)
    np.testing.assert_allclose(dst, combine(min_plus_reference(f, w, 2)), rtol=1e-6)


def test_lower_envelope_matches_brute_force_min_plus():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        for w in (1.0, 0.3, 1600.0):
            f = (rng.random(n) * 20 * w).astype(np.float32)
            f[rng.random(n) < 0.3] = np.inf
            if n > 2:
                f[:2] = np.inf
            want = np.array(
                [
                    min((float(f[q]) + w * (x - q) ** 2 for q in range(n)), default=np.inf)
                    for x in range(n)
                ]
            )
            got = f.copy()
            recip = np.zeros(n + 1)
            recip[1:] = 1 / np.arange(1, n + 1)
            dist._envelope(
                got, n, w, recip, np.empty(n + 1, np.int64), np.empty(n + 1), np.empty(n + 2)
            )
            np.testing.assert_allclose(got, want, rtol=1e-6)
    got = np.full(5, np.inf, np.float32)
    dist._envelope(got, 5, 1.0, np.ones(6), np.empty(6, np.int64), np.empty(6), np.empty(7))
    assert np.isinf(got).all()  # a line without sites stays empty


@pytest.mark.parametrize("ndim", [2, 3])
def test_dense_instances_and_threads_agree(ndim):
    rng = np.random.default_rng(1)
    # Touching boxes of random ids plus background: a small version of the benchmark,
    # big enough to be cut into chunks for the threads.
    if ndim == 3:
        labels = np.kron(rng.integers(0, 50, (6, 7, 5)), np.ones((6, 5, 9), np.int64))[:33]
        voxel_size: tuple[float, ...] = (40.0, 8.0, 8.0)
    else:
        labels = np.kron(rng.integers(0, 50, (30, 25)), np.ones((7, 11), np.int64))[:, :270]
        voxel_size = (8.0, 6.0)
    labels[rng.random(labels.shape) < 0.02] = 0
    assert labels.size >= 4 * dist._MIN_CHUNK_VOXELS
    want = boundary_distance_2x_grid(labels, voxel_size)
    previous = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            assert_same_distances(boundary_distance(labels, voxel_size), want)
    finally:
        numba.set_num_threads(previous)


# --------------------------------------------------------------------------------------
# Dtypes and memory layouts


def test_dtypes_compare_ids_not_values_modulo_anything():
    # Negative ids, ids that differ only in high bits, and a big-endian array.
    base = np.array([[5, 5, -3, -3, -3], [5, 5, 5, -3, -3]])
    want = boundary_distance(base.astype(np.int64), (1, 2))
    for dtype in (np.int8, np.int16, np.int32, ">i4", ">u8"):
        np.testing.assert_array_equal(boundary_distance(base.astype(dtype), (1, 2)), want)
    high = base.astype(np.uint64) + np.uint64(2**63)  # ids equal in their low 63 bits
    np.testing.assert_array_equal(boundary_distance(high, (1, 2)), want)
    big = np.array([[2**63, 2**63 + 1]], dtype=np.uint64)
    np.testing.assert_array_equal(boundary_distance(big, (1, 1)), [[0.5, 0.5]])
    np.testing.assert_array_equal(
        boundary_distance(base != 5, (1, 2)), want
    )  # bool: two regions, same boundary


def test_layouts_give_the_same_result():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (7, 9, 11)).astype(np.uint32)
    vs = (1.0, 2.0, 3.0)
    want = boundary_distance(labels, vs)
    assert_same_distances(want, boundary_distance_2x_grid(labels, vs))
    got = boundary_distance(np.asfortranarray(labels), vs)
    np.testing.assert_array_equal(got, want)
    assert got.flags.f_contiguous  # no copy: computed on the transposed view
    np.testing.assert_array_equal(boundary_distance(labels[::-1, :, ::-1], vs), want[::-1, :, ::-1])
    views = [
        (labels[::2, :, ::3], vs),  # strided: copied once
        (labels[::-1, 3:, ::-2], vs),  # negative strides
        (labels.transpose(2, 0, 1), (3.0, 1.0, 2.0)),  # neither C nor F order
    ]
    for view, view_vs in views:
        got = boundary_distance(view, view_vs)
        np.testing.assert_array_equal(got, boundary_distance(np.ascontiguousarray(view), view_vs))
        assert got.flags.c_contiguous


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (7, 1), (1, 1, 1), (1, 5, 6), (4, 1, 6), (4, 6, 1), (1, 1, 8)]
)
def test_size_one_axes(shape):
    rng = np.random.default_rng(sum(shape))
    labels = rng.integers(0, 2, shape)
    vs = tuple(rng.uniform(0.5, 3.0, len(shape)))
    got = boundary_distance(labels, vs)
    assert got.shape == shape
    assert_same_distances(got, brute_force(labels, vs))


# --------------------------------------------------------------------------------------
# Validation


@BOTH
@pytest.mark.parametrize(
    ("labels", "voxel_size", "error", "match"),
    [
        ([[1, 2]], (1, 1), TypeError, "numpy.ndarray, got list"),
        (np.zeros((3, 3), np.float32), (1, 1), TypeError, "integer dtype, got dtype float32"),
        (np.zeros((3, 3), np.complex64), (1, 1), TypeError, "got dtype complex64"),
        (np.zeros((3, 3), object), (1, 1), TypeError, "got dtype object"),
        (np.zeros(5, np.int32), (1,), ValueError, r"2-D or 3-D .* got 1-D array of shape \(5,\)"),
        (np.zeros((2, 2, 2, 2), np.int32), (1, 1, 1, 1), ValueError, "got 4-D"),
        (np.zeros((0, 3), np.int32), (1, 1), ValueError, r"must not be empty, got shape \(0, 3\)"),
        (np.zeros((3, 3), np.int32), (1, 1, 1), ValueError, r"one entry per axis .* \(1, 1, 1\)"),
        (np.zeros((3, 3), np.int32), 2.0, ValueError, "one entry per axis"),
        (np.zeros((3, 3), np.int32), (1, 0), ValueError, r"positive and finite, got \(1, 0\)"),
        (np.zeros((3, 3), np.int32), (1, -2), ValueError, "positive and finite"),
        (np.zeros((3, 3), np.int32), (1, float("nan")), ValueError, "positive and finite"),
        (np.zeros((3, 3), np.int32), (float("inf"), 1), ValueError, "positive and finite"),
        (np.zeros((3, 3), np.int32), ("a", 1), TypeError, "sequence of numbers, got"),
        (np.zeros((3, 3), np.int32), "ab", TypeError, "sequence of numbers, got 'ab'"),
    ],
)
def test_invalid_input(fn, labels, voxel_size, error, match):
    with pytest.raises(error, match=match):
        fn(labels, voxel_size)


@pytest.mark.parametrize("voxel_size", [(1e-16, 1.0), (1e17, 1.0)])
def test_voxel_sizes_beyond_float32_squared_distances(voxel_size):
    labels = np.zeros((20, 3), np.uint8)
    labels[5:] = 1
    with pytest.raises(ValueError, match="outside what float32 squared distances can hold"):
        boundary_distance(labels, voxel_size)
    # The float64 reference has no such limit.
    assert np.isfinite(boundary_distance_2x_grid(labels, voxel_size)).all()


# --------------------------------------------------------------------------------------
# Benchmark smoke test


def test_benchmark_script_runs_a_tiny_case(tmp_path: Path):
    path = Path(__file__).resolve().parents[1] / "bench" / "targets.py"
    spec = importlib.util.spec_from_file_location("bench_targets", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_targets"] = bench
    try:
        spec.loader.exec_module(bench)
        rows = bench.run_case(
            bench.Case("smoke", (20, 24, 28), (40.0, 8.0, 8.0)),
            methods=("innerdist", "2x_grid"),
            threads=(1,),
            repeats=1,
            subprocess_memory=False,
        )
    finally:
        del sys.modules["bench_targets"]
    by_method = {r["method"]: r for r in rows}
    assert by_method["2x_grid"]["max_abs_diff_tanh"] == 0.0
    assert by_method["innerdist"]["max_abs_diff_tanh"] < 1e-5
    assert by_method["innerdist"]["mvox_per_s"] > 0


def _distance_in_child(labels, queue):
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    queue.put(boundary_distance(labels, (1.0, 2.0, 3.0)))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_threads_work_in_a_forked_child():
    # The thread pool of the parent does not survive fork; the child must make its own
    # (a DataLoader worker computing targets, say) instead of waiting forever.
    import multiprocessing

    labels = np.kron(np.arange(24).reshape(2, 3, 4) % 5, np.ones((12, 12, 12), np.int64))
    assert labels.size >= 4 * dist._MIN_CHUNK_VOXELS  # big enough to be split
    previous = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        want = boundary_distance(labels, (1.0, 2.0, 3.0))  # creates the parent's pool
    finally:
        numba.set_num_threads(previous)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_distance_in_child, args=(labels, queue))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    np.testing.assert_array_equal(got, want)
