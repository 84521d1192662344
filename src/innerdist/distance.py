"""Exact distance from every voxel to the nearest label boundary, in world units.

This is the kernel behind the inner-distance targets (``docs/targets.md``):

* a *boundary point* is the centre of a face shared by two face-adjacent voxels whose
  labels differ; the outer border of the array is not a boundary;
* ``d(x)`` is the Euclidean distance (each axis scaled by its voxel size) from the centre
  of voxel ``x`` to the nearest boundary point, for every voxel, background included;
* with no boundary point at all, ``d = min_d(shape_d * voxel_size_d / 2)`` everywhere.

::

    labels   1    1    1  | 2    2    2        | = boundary point (face centre)
    d       2.5  1.5  0.5   0.5  1.5  2.5      (voxel size 1; the array ends are
                                                not boundaries)

>>> import numpy as np
>>> boundary_distance(np.array([[1, 1, 1, 2, 2, 2]]), voxel_size=(1, 1))
array([[2.5, 1.5, 0.5, 0.5, 1.5, 2.5]], dtype=float32)

Two implementations are provided. :func:`boundary_distance_2x_grid` is the executable
form of the definition (DaCapo's method): draw the boundary points on a grid of twice
the resolution and run a Euclidean distance transform there. It costs 4x (2-D) or 8x
(3-D) the voxels and about 400 bytes of memory per voxel in 3-D.
:func:`boundary_distance` computes the same numbers on the original grid with 9 bytes
per voxel (two float32 buffers, one of them the output, and one byte of boundary flags)
and is 40-150x faster on densely packed instance labels (``bench/targets.py``).

How the fast version works
--------------------------
Every boundary point lies half a voxel off the grid along exactly one axis ``a`` (its
face is normal to ``a``). Group the points by that axis into sets ``S_a``. Then
``d(x)^2 = min_a D_a(x)`` where ``D_a`` is the squared distance to ``S_a``, and each
``D_a`` is separable:

1. ``f_a``: along axis ``a``, the squared distance to the nearest site of the same line
   (sites at ``i + 0.5`` wherever voxels ``i`` and ``i + 1`` differ). Two linear sweeps.
2. One min-plus pass ``P_b g(x) = min_y g(y) + w_b (x_b - y_b)^2`` along each other axis
   ``b`` (``w_b = voxel_size_b^2``).

The passes commute and distribute over ``min``, so in 3-D (axes 0, 1, 2)::

    d^2 = min( P_1 P_2 f_0 ,  P_0 min( P_2 f_1 , P_1 f_2 ) )

which is five passes with nothing computed twice; 2-D needs two. The first term and
the inner ``min`` are computed plane by plane while the plane is in cache; ``P_0``
then runs across planes.

Each pass is an exact windowed search over a tile of ``_TILE`` neighbouring lines at
once: a candidate ``d`` voxels away costs at least ``w d^2``, so once ``w d^2`` reaches
the largest current value in the tile, no lane can improve and the tile is done. With
densely packed objects that happens after a few steps of plain vector min/add. A tile
that would need more than ``_CAP`` steps (large objects, far boundaries) switches to the
Felzenszwalb-Huttenlocher lower envelope of parabolas, O(n) per line. Both give the
exact minimum up to float32 rounding.

Threads: labels are first reduced to one byte of "differs from the next voxel" flags
per voxel, and the work is cut into chunks of planes, rows or column tiles that
``numba.get_num_threads()`` threads take in turn. The kernels are numba functions that
release the GIL; they are compiled on first use (about 20 s, then cached on disk).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit
from scipy import ndimage

__all__ = ["boundary_distance", "boundary_distance_2x_grid"]

# Windowed search: the most steps (voxels) a tile may take before it switches to the
# lower-envelope algorithm (a step costs ~1/100 of that algorithm per voxel), and the
# number of lines searched together (a multiple of the SIMD width).
_CAP = 96
_TILE = 128
# Padding (rows of inf) around the data in the search buffers: the search looks at
# offsets d and d + 1 in one sweep, so up to _CAP + 1 voxels away.
_PAD = _CAP + 2

# How a pass combines its result r with what is already in the destination.
_WRITE = 0  # dst = r
_MIN = 1  # dst = min(dst, r)
_MIN_SQRT = 2  # dst = sqrt(min(dst, r))


# --------------------------------------------------------------------------------------
# Public API


def boundary_distance(labels: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """Distance from every voxel centre to the nearest label boundary, in world units.

    Parameters
    ----------
    labels
        2-D or 3-D array of spatial axes only, bool or any integer dtype. Every value is
        an object id (0 included); touching objects with different ids have a boundary
        between them.
    voxel_size
        One positive, finite size per axis in world units (e.g. nm), such as
        ``(40, 8, 8)``.

    Returns
    -------
    numpy.ndarray
        float32 array of ``labels.shape`` holding ``d(x)`` for every voxel, background
        included (mask it with ``labels != 0`` for inner distances). If the array has no
        boundary at all, every voxel gets ``min_d(shape_d * voxel_size_d / 2)``.
        C-contiguous, or Fortran-contiguous when ``labels`` is (no copy of the labels is
        made for either; other layouts are copied once).

    Notes
    -----
    Exact up to float32 rounding: it matches :func:`boundary_distance_2x_grid` to a
    relative 1e-6. Memory: 9 bytes per voxel (the output, one float32 work buffer and
    one byte of boundary flags) plus small per-thread buffers. Runs on
    ``numba.get_num_threads()`` threads. The first call in a fresh environment compiles
    the kernels (about 20 s); they are cached on disk after that.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((3, 7), dtype=np.uint64)
    >>> labels[:, 2:6] = 3
    >>> boundary_distance(labels, voxel_size=(4, 2))[0]
    array([3., 1., 1., 3., 3., 1., 1.], dtype=float32)
    """
    labels, vs = _validate(labels, voxel_size)
    # Squared distances in world units are held in float32.
    extent = float(np.max(np.asarray(labels.shape) * vs))
    if extent > 1e18 or float(vs.min()) < 1e-15:
        raise ValueError(
            f"voxel_size {voxel_size!r} is outside what float32 squared distances can "
            f"hold for shape {labels.shape}: need voxel sizes >= 1e-15 and extents "
            f"<= 1e18 world units (use other units)"
        )
    no_boundary = float(min(n * s / 2 for n, s in zip(labels.shape, vs, strict=True)))

    # Equality is all the kernels need: bool -> uint8, signed -> unsigned of the same
    # width are free views, and they keep the number of compiled variants at four.
    if labels.dtype == np.bool_:
        labels = labels.view(np.uint8)
    elif not labels.dtype.isnative:
        labels = labels.astype(labels.dtype.newbyteorder("="))
    if labels.dtype.kind == "i":
        labels = labels.view(f"u{labels.dtype.itemsize}")

    if labels.flags.c_contiguous:
        return _boundary_distance_c(labels, vs, no_boundary)
    if labels.flags.f_contiguous:
        # The transform is symmetric in the axes: run on the transposed (C-ordered) view.
        return _boundary_distance_c(labels.T, vs[::-1], no_boundary).T
    return _boundary_distance_c(np.ascontiguousarray(labels), vs, no_boundary)


def boundary_distance_2x_grid(labels: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """The same distances as :func:`boundary_distance`, computed the slow, obvious way.

    This is the executable form of the definition and the reference the fast version is
    tested and benchmarked against (it is DaCapo's method). The boundary points are
    drawn on a grid of shape ``2 * n - 1`` per axis, where voxel ``x`` sits at ``2 x``
    and the face between ``x`` and ``x + e_a`` at ``2 x + e_a``;
    ``scipy.ndimage.distance_transform_edt`` with sampling ``voxel_size / 2`` then gives
    the distance to the nearest boundary point, read back at the even positions.

    Memory: a bool grid of 8x (3-D) the voxels plus SciPy's float64 distances and
    feature transform on it, about 400 bytes per input voxel in 3-D (a 256^3 volume
    needs about 6.4 GB). Single-threaded. Same inputs, validation and output as
    :func:`boundary_distance` (without its float32 range limit).
    """
    labels, vs = _validate(labels, voxel_size)
    ndim = labels.ndim
    # True = not a boundary point; distance_transform_edt measures to the nearest False.
    grid = np.ones(tuple(2 * n - 1 for n in labels.shape), dtype=bool)
    found = False
    for axis in range(ndim):
        lo = [slice(None)] * ndim
        hi = [slice(None)] * ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        differs = labels[tuple(lo)] != labels[tuple(hi)]
        faces = [slice(0, None, 2)] * ndim
        faces[axis] = slice(1, None, 2)
        grid[tuple(faces)] = ~differs
        found = found or bool(differs.any())
    if not found:
        value = min(n * s / 2 for n, s in zip(labels.shape, vs, strict=True))
        return np.full(labels.shape, value, dtype=np.float32)
    dist = ndimage.distance_transform_edt(grid, sampling=vs / 2)
    return np.ascontiguousarray(dist[(slice(None, None, 2),) * ndim], dtype=np.float32)


def _validate(labels: np.ndarray, voxel_size: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have a bool or integer dtype, got dtype {labels.dtype}")
    if labels.ndim not in (2, 3):
        raise ValueError(
            f"labels must be 2-D or 3-D (spatial axes only), got {labels.ndim}-D "
            f"array of shape {labels.shape}"
        )
    if labels.size == 0:
        raise ValueError(f"labels must not be empty, got shape {labels.shape}")
    if isinstance(voxel_size, (str, bytes)):
        raise TypeError(f"voxel_size must be a sequence of numbers, got {voxel_size!r}")
    try:
        vs = np.array(voxel_size, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"voxel_size must be a sequence of numbers, got {voxel_size!r}") from None
    if vs.shape != (labels.ndim,):
        raise ValueError(
            f"voxel_size must have one entry per axis of labels (shape {labels.shape}), "
            f"got {voxel_size!r}"
        )
    if not (np.all(np.isfinite(vs)) and np.all(vs > 0)):
        raise ValueError(f"voxel_size must be positive and finite, got {voxel_size!r}")
    return labels, vs


def _boundary_distance_c(labels: np.ndarray, vs: np.ndarray, no_boundary: float) -> np.ndarray:
    """Dispatch a C-contiguous, unsigned-integer labels array to the kernels."""
    # A size-1 axis carries no boundary and its passes are the identity: drop it.
    spatial = [a for a in range(labels.ndim) if labels.shape[a] > 1]
    if labels.ndim == 3 and len(spatial) < 3:
        keep = spatial + [a for a in range(3) if a not in spatial][: 2 - len(spatial)]
        keep.sort()
        drop = next(a for a in range(3) if a not in keep)
        sub = _boundary_distance_c(labels.squeeze(drop), vs[keep], no_boundary)
        return np.expand_dims(sub, drop)

    nthreads = numba.get_num_threads()
    recip = np.zeros(max(labels.shape) + 1)
    recip[1:] = 1.0 / np.arange(1, max(labels.shape) + 1)
    out = np.empty(labels.shape, dtype=np.float32)
    lab3 = labels if labels.ndim == 3 else labels[None]
    codes = np.empty(lab3.shape, dtype=np.uint8)
    _run(
        lambda lo, hi: _edge_codes(lab3, codes, lo, hi),
        lab3.shape[0] * lab3.shape[1],
        labels.size,
        nthreads,
    )
    if labels.ndim == 2:
        _kernel_2d(codes, out[None], vs, recip, nthreads)
    else:
        _kernel_3d(codes, out, vs, recip, nthreads)
    if not np.isfinite(out.flat[0]):
        # Any boundary point makes every distance finite, so one inf means none at all.
        out.fill(no_boundary)
    return out


def _tables(w: float) -> tuple[np.ndarray, np.ndarray]:
    """``w d^2`` for the windowed search as float32, and the same as int32 bit patterns."""
    d = np.arange(_CAP + 3, dtype=np.float64)
    costs = (w * d * d).astype(np.float32)
    return costs, costs.view(np.int32).copy()


# --------------------------------------------------------------------------------------
# Kernels. Arrays are 3-D and C-contiguous (2-D inputs get a leading axis of size 1), so
# that every row slice below is typed as contiguous and its loops vectorise.


@njit(cache=True, nogil=True)
def _envelope(f, n, w, recip, v, av, z):  # pragma: no cover - compiled
    # In place on a contiguous line: f[x] <- min_q f[q] + w (x - q)^2, by the lower
    # envelope of parabolas (Felzenszwalb & Huttenlocher). inf entries are not sites.
    # A site is kept as a = f + w q^2 (float64), so two parabolas q > p cross at
    # (a_q - a_p) / (2 w (q - p)): a multiply by the table recip[k] = 1 / k.
    inv2w = 0.5 / w
    k = -1
    ak = 0.0
    vk = 0
    zk = 0.0
    qf = -1.0
    for q in range(n):
        qf += 1.0
        fq = f[q]
        if fq == np.inf:
            continue
        aq = fq + w * qf * qf
        if k >= 0:
            while True:
                s = (aq - ak) * inv2w * recip[q - vk]
                if s > zk:
                    break
                k -= 1
                if k < 0:
                    break
                vk = v[k]
                ak = av[k]
                zk = z[k]
            if k >= 0:
                k += 1
                vk = q
                ak = aq
                zk = s
                v[k] = q
                av[k] = aq
                z[k] = s
                continue
        k = 0
        vk = q
        ak = aq
        zk = -np.inf
        v[0] = q
        av[0] = aq
        z[0] = -np.inf
    if k < 0:
        return  # no site: the line stays inf
    z[k + 1] = np.inf
    j = 0
    vj = np.float64(v[0])
    aj = av[0]
    zn = z[1]
    xf = 0.0
    for x in range(n):
        while zn < xf:
            j += 1
            vj = np.float64(v[j])
            aj = av[j]
            zn = z[j + 1]
        f[x] = aj + w * xf * (xf - 2.0 * vj)
        xf += 1.0


@njit(cache=True, nogil=True, inline="always")
def _store(dst, res, nt, mode):  # pragma: no cover - compiled
    # One loop per mode so that each vectorises.
    if mode == _WRITE:
        for t in range(nt):
            dst[t] = res[t]
    elif mode == _MIN:
        for t in range(nt):
            a = res[t]
            o = dst[t]
            dst[t] = a if a < o else o
    else:
        for t in range(nt):
            a = res[t]
            o = dst[t]
            dst[t] = np.sqrt(a if a < o else o)


@njit(cache=True, nogil=True, inline="always")
def _max_bits(bits, nt):  # pragma: no cover - compiled
    # Largest of nt non-negative float32 values, compared as their int32 bit patterns
    # (same order, inf included): an integer max reduction vectorises, a float one not.
    mx = np.int32(0)
    for t in range(nt):
        b = bits[t]
        mx = mx if mx > b else b
    return mx


@njit(cache=True, nogil=True, inline="always")
def _relax(cur, res, lo, hi, lo2, hi2, cost, cost2, nt):  # pragma: no cover - compiled
    # res <- min(cur, min(lo, hi) + cost, min(lo2, hi2) + cost2): two search offsets per
    # sweep over the tile. Writing to a second buffer rather than back into cur keeps
    # the store unconditional (a masked store is slow on some CPUs).
    for t in range(nt):
        a = cur[t]
        b = lo[t]
        e = hi[t]
        b = (b if b < e else e) + cost
        a = a if a < b else b
        b = lo2[t]
        e = hi2[t]
        b = (b if b < e else e) + cost2
        res[t] = a if a < b else b


@njit(cache=True, nogil=True)
def _column_buffer(m):  # pragma: no cover - compiled
    # Scratch for _pass_cols on columns of length m: _PAD rows of inf, m rows, _PAD rows
    # of inf. The padding is written once here, not per call (it dwarfs small planes).
    buf = np.empty((m + 2 * _PAD, _TILE), np.float32)
    buf[:_PAD] = np.inf
    buf[_PAD + m :] = np.inf
    return buf


@njit(cache=True, nogil=True)
def _row_buffer(n):  # pragma: no cover - compiled
    # Scratch for _pass_rows on rows of length n, padded with inf like _column_buffer.
    rowbuf = np.empty(n + 2 * _PAD, np.float32)
    rowbuf[:_PAD] = np.inf
    rowbuf[_PAD + n :] = np.inf
    return rowbuf


@njit(cache=True, nogil=True)
def _pass_cols(
    src, dst, fs, fd, axis0, k0, k1, mode, w, costs, cost_bits, recip, buf, acc, line, v, av, z
):  # pragma: no cover - compiled
    # Min-plus pass P along the columns of a 2-D slab, for columns k0:k1: the slab is
    # src[:, fs, :] when axis0 else src[fs, :, :]; results go to the same slab of dst
    # (index fd), combined by mode. src and dst may be the same array.
    m = src.shape[0] if axis0 else src.shape[1]
    cap = _CAP
    pad = _PAD
    acc0 = acc[0]
    acc1 = acc[1]
    # buf (from _column_buffer(m)) holds the tile between pad rows of inf above and
    # below, so the search needs no bounds tests; only the rows in between are written.
    for t0 in range(k0, k1, _TILE):
        nt = min(_TILE, k1 - t0)
        for x in range(m):
            srow = src[x, fs, t0 : t0 + nt] if axis0 else src[fs, x, t0 : t0 + nt]
            row = buf[pad + x]
            for t in range(nt):
                row[t] = srow[t]
        xfail = m
        for x in range(m):
            cur = buf[pad + x]
            mx = _max_bits(cur.view(np.int32), nt)
            d = 1
            flip = False
            # Candidates d voxels away cost at least w d^2: stop once that is no less
            # than every current value in the tile.
            while cost_bits[d] < mx:
                if d > cap:
                    xfail = x
                    break
                if x < d and x + d >= m:
                    break  # only padding left on both sides
                res = acc1 if flip else acc0
                _relax(
                    cur,
                    res,
                    buf[pad + x - d],
                    buf[pad + x + d],
                    buf[pad + x - d - 1],
                    buf[pad + x + d + 1],
                    costs[d],
                    costs[d + 1],
                    nt,
                )
                cur = res
                flip = not flip
                mx = _max_bits(cur.view(np.int32), nt)
                d += 2
            if xfail < m:
                break
            drow = dst[x, fd, t0 : t0 + nt] if axis0 else dst[fd, x, t0 : t0 + nt]
            _store(drow, cur, nt, mode)
        if xfail < m:
            # Too far for the windowed search: lower envelope per line, results stored
            # from row xfail on (earlier rows are final; _MIN_SQRT must not apply twice).
            for t in range(nt):
                for x in range(m):
                    line[x] = buf[pad + x, t]
                _envelope(line, m, w, recip, v, av, z)
                for x in range(xfail, m):
                    buf[pad + x, t] = line[x]
            for x in range(xfail, m):
                drow = dst[x, fd, t0 : t0 + nt] if axis0 else dst[fd, x, t0 : t0 + nt]
                _store(drow, buf[pad + x], nt, mode)


@njit(cache=True, nogil=True)
def _pass_rows(
    src, dst, i, j0, j1, mode, w, costs, cost_bits, recip, rowbuf, acc, line, v, av, z
):  # pragma: no cover - compiled
    # Min-plus pass P along the rows src[i, j, :] for j in j0:j1, into dst[i, j, :];
    # tiles of _TILE consecutive voxels of a row are searched together.
    n = src.shape[2]
    cap = _CAP
    pad = _PAD
    acc0 = acc[0]
    acc1 = acc[1]
    # rowbuf (from _row_buffer(n)): the row between pad entries of inf.
    for j in range(j0, j1):
        srow = src[i, j]
        for x in range(n):
            rowbuf[pad + x] = srow[x]
        xfail = n
        for x0 in range(0, n, _TILE):
            nt = min(_TILE, n - x0)
            c = pad + x0
            cur = rowbuf[c : c + nt]
            mx = _max_bits(cur.view(np.int32), nt)
            d = 1
            flip = False
            while cost_bits[d] < mx:
                if d > cap:
                    xfail = x0
                    break
                if x0 + nt - 1 < d and x0 + d >= n:
                    break  # only padding left on both sides
                res = acc1 if flip else acc0
                _relax(
                    cur,
                    res,
                    rowbuf[c - d : c - d + nt],
                    rowbuf[c + d : c + d + nt],
                    rowbuf[c - d - 1 : c - d - 1 + nt],
                    rowbuf[c + d + 1 : c + d + 1 + nt],
                    costs[d],
                    costs[d + 1],
                    nt,
                )
                cur = res
                flip = not flip
                mx = _max_bits(cur.view(np.int32), nt)
                d += 2
            if xfail < n:
                break
            _store(dst[i, j, x0 : x0 + nt], cur, nt, mode)
        if xfail < n:
            for x in range(n):
                line[x] = rowbuf[pad + x]
            _envelope(line, n, w, recip, v, av, z)
            _store(dst[i, j, xfail:n], line[xfail:n], n - xfail, mode)


@njit(cache=True, nogil=True)
def _edge_codes(lab, codes, r0, r1):  # pragma: no cover - compiled
    # codes[i, j, k] bit 0/1/2: the voxel differs from its next neighbour along axis
    # 2/1/0, i.e. there is a boundary point half a voxel further along that axis. For
    # rows r = i * n1 + j in r0:r1. This is the only kernel that reads labels, so the
    # others are compiled once rather than once per label dtype, and read one byte per
    # voxel instead of up to eight.
    n0, n1, n2 = lab.shape
    for r in range(r0, r1):
        i = r // n1
        j = r - i * n1
        cur = lab[i, j]
        crow = codes[i, j]
        # The last row / plane is compared with itself: no boundary beyond the array.
        nj = lab[i, j + 1] if j < n1 - 1 else cur
        ni = lab[i + 1, j] if i < n0 - 1 else cur
        for k in range(n2 - 1):
            c = cur[k]
            crow[k] = np.uint8((c != cur[k + 1]) + 2 * (c != nj[k]) + 4 * (c != ni[k]))
        c = cur[n2 - 1]
        crow[n2 - 1] = np.uint8(2 * (c != nj[n2 - 1]) + 4 * (c != ni[n2 - 1]))


@njit(cache=True, nogil=True)
def _sweep_cols(codes, out, i, k0, k1, w, last):  # pragma: no cover - compiled
    # f along axis 1 of plane i, columns k0:k1: squared distance to the nearest site
    # x + 0.5 between rows x and x + 1 that differ. Row by row, vectorised along k.
    # (Loops run over slices from 0: a loop index starting at a variable k0 would keep
    # numba's negative-index handling in the loop and stop it from vectorising.)
    m = codes.shape[1]
    nk = k1 - k0
    lst = last[k0:k1]
    for k in range(nk):
        lst[k] = -np.inf
    for x in range(m):
        orow = out[i, x, k0:k1]
        if x > 0:
            prev = codes[i, x - 1, k0:k1]
            site = np.float32(x - 0.5)
            for k in range(nk):
                lst[k] = site if prev[k] & 2 else lst[k]
        xf = np.float32(x)
        for k in range(nk):
            orow[k] = xf - lst[k]
    for k in range(nk):
        lst[k] = np.inf
    for x in range(m - 1, -1, -1):
        cur = codes[i, x, k0:k1]
        orow = out[i, x, k0:k1]
        site = np.float32(x + 0.5)
        xf = np.float32(x)
        for k in range(nk):
            nl = site if cur[k] & 2 else lst[k]
            lst[k] = nl
            a = nl - xf
            b = orow[k]
            d = a if a < b else b
            orow[k] = w * d * d


@njit(cache=True, nogil=True)
def _sweep_rows(codes, i, out, io, j0, j1, w):  # pragma: no cover - compiled
    # f along axis 2 for the rows of plane i, j in j0:j1, into out[io, j, :]: forward
    # the distance past the last site, backward the one to the next, keep the smaller.
    n = codes.shape[2]
    for j in range(j0, j1):
        cr = codes[i, j]
        orow = out[io, j]
        last = np.float32(-np.inf)
        orow[0] = np.inf
        for x in range(1, n):
            last = np.float32(x - 0.5) if cr[x - 1] & 1 else last
            orow[x] = np.float32(x) - last
        nxt = np.float32(np.inf)
        for x in range(n - 1, -1, -1):
            nxt = np.float32(x + 0.5) if cr[x] & 1 else nxt
            a = nxt - np.float32(x)
            b = orow[x]
            d = a if a < b else b
            orow[x] = w * d * d


@njit(cache=True, nogil=True)
def _sweep_axis0(codes, out, j0, j1, w, last):  # pragma: no cover - compiled
    # f along axis 0 for rows j0:j1 of every plane. Planes are visited in order with a
    # block of rows each, so memory is read in long runs rather than one voxel per plane.
    n0 = codes.shape[0]
    n2 = codes.shape[2]
    for r in range(j1 - j0):
        lr = last[r]
        for k in range(n2):
            lr[k] = -np.inf
    for i in range(n0):
        xf = np.float32(i)
        site = np.float32(i - 0.5)
        for r in range(j1 - j0):
            orow = out[i, j0 + r]
            lr = last[r]
            if i > 0:
                prev = codes[i - 1, j0 + r]
                for k in range(n2):
                    lr[k] = site if prev[k] & 4 else lr[k]
            for k in range(n2):
                orow[k] = xf - lr[k]
    for r in range(j1 - j0):
        lr = last[r]
        for k in range(n2):
            lr[k] = np.inf
    for i in range(n0 - 1, -1, -1):
        xf = np.float32(i)
        site = np.float32(i + 0.5)
        for r in range(j1 - j0):
            cur = codes[i, j0 + r]
            orow = out[i, j0 + r]
            lr = last[r]
            for k in range(n2):
                nl = site if cur[k] & 4 else lr[k]
                lr[k] = nl
                a = nl - xf
                b = orow[k]
                d = a if a < b else b
                orow[k] = w * d * d


@njit(cache=True, nogil=True)
def _axis0_sweep_chunk(codes, out, w0, j0, j1):  # pragma: no cover - compiled
    # out <- f_0 for rows j0:j1 of every plane (3-D), a few rows at a time.
    n2 = codes.shape[2]
    rows = 8
    last = np.empty((rows, n2), np.float32)
    for r0 in range(j0, j1, rows):
        _sweep_axis0(codes, out, r0, min(j1, r0 + rows), w0, last)


@njit(cache=True, nogil=True)
def _planes_chunk(
    codes, out, g, w1, w2, costs1, bits1, costs2, bits2, recip, i0, i1
):  # pragma: no cover - compiled
    # For planes i0:i1: out[i] <- P_1 P_2 f_0 (out holds f_0 on entry) and
    # g[i] <- min(P_2 f_1, P_1 f_2). Each plane is worked on while it is in cache.
    # Each pass has a single call site (the job loops) so that it is compiled into
    # this function once, not once per use.
    n1, n2 = codes.shape[1], codes.shape[2]
    nmax = max(n1, n2)
    line = np.empty(nmax, np.float32)
    v = np.empty(nmax + 1, np.int64)
    av = np.empty(nmax + 1, np.float64)
    z = np.empty(nmax + 2, np.float64)
    last = np.empty(n2, np.float32)
    plane = np.empty((1, n1, n2), np.float32)
    buf = _column_buffer(n1)
    rowbuf = _row_buffer(n2)
    acc = np.empty((2, _TILE), np.float32)
    for i in range(i0, i1):
        _sweep_cols(codes, g, i, 0, n2, w1, last)  # g[i] <- f_1
        _sweep_rows(codes, i, plane, 0, 0, n1, w2)  # plane <- f_2
        for job in range(2):  # P_2 of f_1 and of f_0, in place
            arr = g if job == 0 else out
            _pass_rows(
                arr, arr, i, 0, n1, _WRITE, w2, costs2, bits2, recip, rowbuf, acc, line, v, av, z
            )
        for job in range(2):  # g[i] <- min(g[i], P_1 f_2); out[i] <- P_1 out[i]
            src = plane if job == 0 else out
            dst = g if job == 0 else out
            _pass_cols(
                src,
                dst,
                0 if job == 0 else i,
                i,
                False,
                0,
                n2,
                _MIN if job == 0 else _WRITE,
                w1,
                costs1,
                bits1,
                recip,
                buf,
                acc,
                line,
                v,
                av,
                z,
            )


@njit(cache=True, nogil=True)
def _slab_cols(
    src, dst, mode, w, costs, cost_bits, recip, j0, j1, k0, k1
):  # pragma: no cover - compiled
    # Pass along axis 0 of the slabs src[:, j, k0:k1], j in j0:j1, into dst (combined
    # by mode). 3-D: dst <- sqrt(min(dst, P_0 g)) by slabs j; 2-D (arrays reshaped to
    # (n1, 1, n2)): the column pass, by column ranges.
    m = src.shape[0]
    line = np.empty(m, np.float32)
    v = np.empty(m + 1, np.int64)
    av = np.empty(m + 1, np.float64)
    z = np.empty(m + 2, np.float64)
    buf = _column_buffer(m)
    acc = np.empty((2, _TILE), np.float32)
    for j in range(j0, j1):
        _pass_cols(
            src, dst, j, j, True, k0, k1, mode, w, costs, cost_bits, recip, buf, acc, line, v, av, z
        )


@njit(cache=True, nogil=True)
def _rows_chunk_2d(
    codes, out, plane, w2, costs2, bits2, recip, j0, j1
):  # pragma: no cover - compiled
    # 2-D, rows j0:j1: out <- P_2 out (out holds f_1) and plane <- f_2.
    n = codes.shape[2]
    line = np.empty(n, np.float32)
    v = np.empty(n + 1, np.int64)
    av = np.empty(n + 1, np.float64)
    z = np.empty(n + 2, np.float64)
    rowbuf = _row_buffer(n)
    acc = np.empty((2, _TILE), np.float32)
    _pass_rows(out, out, 0, j0, j1, _WRITE, w2, costs2, bits2, recip, rowbuf, acc, line, v, av, z)
    _sweep_rows(codes, 0, plane, 0, j0, j1, w2)


@njit(cache=True, nogil=True)
def _sweep_cols_chunk(codes, out, w1, k0, k1):  # pragma: no cover - compiled
    last = np.empty(codes.shape[2], np.float32)
    _sweep_cols(codes, out, 0, k0, k1, w1, last)


# --------------------------------------------------------------------------------------
# Threads. The kernels release the GIL; chunks of planes, rows or column tiles go to a
# pool of numba.get_num_threads() threads, which take the next chunk when done (the
# machine may be shared, so a static split would wait for the slowest thread).


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools_after_fork() -> None:
    # A forked child (e.g. a DataLoader worker) inherits the pools but not their
    # threads: work sent to them would never run. Start afresh in the child.
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


# Below this many voxels per chunk, handing work to threads costs more than it saves.
_MIN_CHUNK_VOXELS = 8192


def _run(
    task: Callable[[int, int], None], n: int, voxels: int, nthreads: int, align: int = 1
) -> None:
    """Call ``task(lo, hi)`` for chunks ``lo:hi`` covering ``range(n)``, the bounds
    multiples of ``align`` (except n); ``voxels`` is the size of the whole job."""
    units = -(-n // align)
    nchunks = min(units, 8 * nthreads, max(1, voxels // _MIN_CHUNK_VOXELS))
    if nthreads <= 1:
        nchunks = 1
    bounds = [min(n, (c * units // nchunks) * align) for c in range(nchunks)] + [n]
    chunks = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
    if len(chunks) <= 1:
        for lo, hi in chunks:
            task(lo, hi)
        return
    with _POOLS_LOCK:
        pool = _POOLS.get(nthreads)
        if pool is None:
            pool = _POOLS[nthreads] = ThreadPoolExecutor(nthreads, "innerdist-distance")
    for future in [pool.submit(task, lo, hi) for lo, hi in chunks]:
        future.result()


def _kernel_2d(
    codes: np.ndarray, out: np.ndarray, vs: np.ndarray, recip: np.ndarray, nthreads: int
) -> None:
    """out[0] <- d for the plane codes[0] (arrays of shape (1, n1, n2))."""
    _, n1, n2 = codes.shape
    w1, w2 = (float(s) ** 2 for s in vs)
    c1, b1 = _tables(w1)
    c2, b2 = _tables(w2)
    plane = np.empty_like(out)
    # Column work goes in ranges of whole tiles, row work in ranges of rows.
    _run(lambda lo, hi: _sweep_cols_chunk(codes, out, w1, lo, hi), n2, out.size, nthreads, _TILE)
    _run(
        lambda lo, hi: _rows_chunk_2d(codes, out, plane, w2, c2, b2, recip, lo, hi),
        n1,
        out.size,
        nthreads,
    )
    src = plane.reshape(n1, 1, n2)
    dst = out.reshape(n1, 1, n2)
    _run(
        lambda lo, hi: _slab_cols(src, dst, _MIN_SQRT, w1, c1, b1, recip, 0, 1, lo, hi),
        n2,
        out.size,
        nthreads,
        _TILE,
    )


def _kernel_3d(
    codes: np.ndarray, out: np.ndarray, vs: np.ndarray, recip: np.ndarray, nthreads: int
) -> None:
    """out <- d for a 3-D volume."""
    n0, n1, n2 = codes.shape
    w0, w1, w2 = (float(s) ** 2 for s in vs)
    c0, b0 = _tables(w0)
    c1, b1 = _tables(w1)
    c2, b2 = _tables(w2)
    g = np.empty_like(out)
    _run(lambda lo, hi: _axis0_sweep_chunk(codes, out, w0, lo, hi), n1, out.size, nthreads, 8)
    _run(
        lambda lo, hi: _planes_chunk(codes, out, g, w1, w2, c1, b1, c2, b2, recip, lo, hi),
        n0,
        out.size,
        nthreads,
    )
    _run(
        lambda lo, hi: _slab_cols(g, out, _MIN_SQRT, w0, c0, b0, recip, lo, hi, 0, n2),
        n1,
        out.size,
        nthreads,
    )
