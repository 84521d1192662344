"""Instances from one channel of an inner-distance prediction held in memory.

A prediction holds the tanh-normalised distance of every voxel to its object's boundary,
``pred = tanh(d / scale)``: 0 in background, close to 1 deep inside objects. Instances are
made in three steps:

1. **foreground**: the face-connected components of ``pred > foreground_level``;
2. **seeds**, one of two kinds:

   - *dynamic seeds* (``seed_dynamic > 0``, :func:`dynamic_seeds`): the h-maxima of the
     inner distance ``f = scale * atanh(min(pred, seed_level))``, in world units. Every
     regional maximum of ``f`` that rises at least ``h = seed_dynamic`` above the saddle
     to a higher maximum (and, for the highest maximum of a component, above the
     foreground level) is a seed; its seed region is the connected part of ``f > peak - h``
     around it. A small object touching a big one gets its seed because its top rises
     above the saddle on their shared boundary, wherever that top lies. Capping ``f`` at
     the seed level makes everything above it one plateau, so that noise in the saturated
     interior of large objects makes no extra seeds;
   - *level seeds* (``seed_dynamic == 0``): the face-connected components of
     ``pred > seed_level``; an object whose prediction stays below the level gets none;

3. **flood**: a seeded watershed on ``-pred`` over each foreground component (the deepest
   voxels claim their neighbours first). Foreground that no seed reaches stays 0; objects
   with fewer than ``min_size_voxels`` voxels are set to 0. Ids are consecutive from 1 in
   the raster order of each object's first voxel, so that every way of computing the same
   segmentation gives the same ids::

      pred        .1 .5 .9 .95 .6 .3 .6 .85 .5 .02     foreground_level .05
      foreground   x  x  x  x   x  x  x  x   x  .       seed_level       .8
      seeds              1  1              2
      instances    1  1  1  1   1  1  2  2   2  0       the .3 goes to 1: both .6 reach it,
                                                        the left one entered the queue first

The tie rule and what it guarantees
-----------------------------------
Voxels are ordered by the *total order* "higher value first, then earlier in raster
order". The seeds (which of two equal maxima is the higher one) and the flood (which of
two equal seeds is popped first, :func:`_flood`) break every tie by it. Because the raster
order of any box is the raster order of the volume restricted to the box, this gives:

- **restriction consistency**: the instances of a foreground component depend only on
  that component's voxels and values. Segmenting any box that holds whole components,
  with everything else masked out, labels those components exactly as segmenting the
  whole volume does. This is what makes the blockwise result of
  :func:`innerdist.segment.segment_volume` equal to this one, id for id;
- **agreement with skimage**: every seed is placed before any other voxel is claimed
  (seed voxels first, in order of value), then the flood runs by value as
  ``skimage.segmentation.watershed(-pred, seeds, mask=foreground, connectivity=1)``
  does. Where every seed voxel lies above every other foreground voxel (level seeds:
  all of them above ``seed_level``) and seed values are distinct, the result is
  skimage's exactly. Dynamic seeds can sit below a neighbouring object's flank; skimage
  would then let that flank claim a voxel beside the lower seed first, innerdist gives it
  to the seed. (skimage also pops equal-valued markers in an order that depends on the
  whole heap, which is not restriction consistent.)
"""

from __future__ import annotations

import math
from typing import Any

import cc3d
import numba
import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_FOREGROUND_LEVEL",
    "DEFAULT_SEED_LEVEL",
    "dynamic_seeds",
    "instances",
    "seed_relief",
    "threshold_mask",
]

#: The predictor's ``epsilon``: below it the target is background.
DEFAULT_FOREGROUND_LEVEL = 0.05
#: The predictor's ``threshold``: above it a voxel is deep inside an object.
DEFAULT_SEED_LEVEL = 0.8

_INT64_MAX = np.iinfo(np.int64).max
# skimage's heap stores entry times as int32.
_MAX_FLOOD_VOXELS = 2**31 - 1


def threshold_mask(pred: npt.ArrayLike, level: float) -> npt.NDArray[np.uint8]:
    """``1`` where ``pred > level``, else ``0`` (uint8, same shape as ``pred``).

    >>> threshold_mask(np.array([0.0, 0.05, 0.5, 0.9], np.float32), 0.05)
    array([0, 0, 1, 1], dtype=uint8)
    """
    values = _check_prediction(pred, spatial=False)
    _check_level("level", level)
    return (values > level).astype(np.uint8)


def instances(
    pred: npt.ArrayLike,
    *,
    foreground_level: float,
    seed_level: float,
    min_size_voxels: float = 0,
    seed_dynamic: float = 0.0,
    scale: float = 1.0,
) -> npt.NDArray[np.uint64]:
    """Instance labels (uint64) of one channel of a prediction held in memory.

    ``pred`` is a 2-D or 3-D float array (no channel axis). ``seed_dynamic`` (``h``) and
    ``scale`` (the prediction's tanh scale) are in the same world units, e.g. nm:
    ``h > 0`` seeds every regional maximum of the inner distance that rises at least ``h``
    above its saddles (dynamic seeds, see the module docstring); ``h == 0`` seeds the
    components of ``pred > seed_level`` only (level seeds). Each seed grows over the
    face-connected foreground ``pred > foreground_level`` by a watershed on ``-pred``.
    Foreground that no seed reaches stays 0; objects with fewer than ``min_size_voxels``
    voxels are set to 0. Ids are ``1..N`` in the raster order of the objects' first
    voxels. Ties are broken by the module's tie rule, so that
    :func:`innerdist.segment.segment_volume` reproduces this result exactly.

    >>> pred = np.array([[0.1, 0.5, 0.9, 0.95, 0.6, 0.3, 0.6, 0.85, 0.5, 0.02]], np.float32)
    >>> instances(pred, foreground_level=0.05, seed_level=0.8)
    array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 0]], dtype=uint64)

    A small bump below the seed level touching a big one gets its own seed when its top
    (distance ``atanh(.6) = .69`` scale units) rises ``h`` above the saddle (``.31``):

    >>> pred = np.array([[0.3, 0.7, 0.9, 0.95, 0.7, 0.3, 0.6, 0.3]], np.float32)
    >>> instances(pred, foreground_level=0.05, seed_level=0.8)
    array([[1, 1, 1, 1, 1, 1, 1, 1]], dtype=uint64)
    >>> instances(pred, foreground_level=0.05, seed_level=0.8, seed_dynamic=0.2)
    array([[1, 1, 1, 1, 1, 2, 2, 2]], dtype=uint64)
    """
    values = _check_prediction(pred, spatial=True)
    fg, seed = _check_levels(foreground_level, seed_level)
    min_size_voxels = _check_min_size("min_size_voxels", min_size_voxels)
    h = check_seed_dynamic(seed_dynamic)
    scale = _check_scale(scale)
    if values.size > _MAX_FLOOD_VOXELS:
        raise ValueError(
            f"prediction of shape {values.shape} has {values.size} voxels, more than the "
            f"{_MAX_FLOOD_VOXELS} one in-memory watershed can handle; use segment_volume"
        )
    mask = values > fg
    if h > 0:
        relief = seed_relief(values, seed, scale)
        floor = scale * math.atanh(fg)
        seeds, n = dynamic_seeds(relief, mask, h, floor)
    else:
        seeds, n = _components(values > seed)
    if n == 0:
        return np.zeros(values.shape, np.uint64)
    labels = _flood(values, seeds.astype(np.int32), mask)
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    ids = flat[where].astype(np.intp)
    sizes = np.bincount(ids, minlength=n + 1).astype(np.int64)
    first = np.full(n + 1, _INT64_MAX, np.int64)
    np.minimum.at(first, ids, where)
    lut = np.zeros(n + 1, np.uint64)
    lut[1:] = _consecutive_ids(sizes[1:], first[1:], np.zeros(n, np.int64), min_size_voxels)
    return lut[labels]


# --- dynamic seeds --------------------------------------------------------------------------


def seed_relief(
    pred: npt.NDArray[np.floating[Any]], seed_level: float, scale: float
) -> npt.NDArray[np.float64]:
    """The inner distance the dynamic seeds are found on, in the units of ``scale``:
    ``scale * atanh(min(pred, seed_level))`` (float64; computed voxel by voxel, so a block
    and the whole volume give the same numbers)."""
    capped = np.minimum(np.asarray(pred, np.float64), np.float64(seed_level))
    # pred is < 1 by contract; a stray 1.0 (float32 rounding of tanh) is capped anyway
    # when seed_level < 1, and clipped here otherwise.
    # Below, an untrained network's linear head can give values <= -1 (background, never
    # foreground): kept finite instead of -inf / NaN, every value in (-1, 1) unchanged.
    capped = np.clip(capped, np.nextafter(-1.0, 0.0), np.nextafter(1.0, 0.0))
    return np.arctanh(capped) * np.float64(scale)


def dynamic_seeds(
    relief: npt.NDArray[np.float64],
    mask: npt.NDArray[np.bool_],
    h: float,
    floor: float,
) -> tuple[npt.NDArray[np.int32], int]:
    """h-maxima of ``relief`` inside ``mask`` (face connectivity): seed regions ``1..n``
    (int32, 0 elsewhere) and ``n``.

    Voxels of ``mask`` are taken in the total order "higher value first, then raster
    order" and joined into components by union-find (a merge tree). When a voxel joins two
    or more components, the one whose peak comes first in the total order survives; each
    other peak dies there with the *dynamic* ``peak - value``. The peak that survives to
    the end of its component has the dynamic ``peak - floor``. A peak is a seed when its
    dynamic is at least ``h``; its seed region is the face-connected set of voxels with
    ``peak - relief < h`` around it. Seed regions of different peaks are disjoint: if one
    reached another, the lower of the two peaks would meet the higher one less than ``h``
    below its top, so its dynamic would be below ``h``. Seeds are numbered in the total
    order of their peaks.

    >>> relief = np.array([[1.0, 3.0, 2.0, 2.5, 0.5, 4.0]])
    >>> dynamic_seeds(relief, relief > 0.2, h=0.6, floor=0.0)[0]
    array([[0, 2, 0, 0, 0, 1]], dtype=int32)
    >>> dynamic_seeds(relief, relief > 0.2, h=0.4, floor=0.0)[0]
    array([[0, 2, 0, 3, 0, 1]], dtype=int32)
    """
    if relief.shape != mask.shape or relief.ndim not in (2, 3):
        raise ValueError(
            f"relief {relief.shape} and mask {mask.shape} must be one 2-D or 3-D shape"
        )
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a finite number > 0, got {h!r}")
    labels, peaks = _hmaxima_regions(relief, mask, h, floor)
    return labels, len(peaks)


def _hmaxima_regions(
    relief: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_], h: float, floor: float
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """:func:`dynamic_seeds` without checks: the seed regions and the flat index (in
    ``relief``) of each region's peak, its first voxel in the total order."""
    shape3 = (1,) * (3 - relief.ndim) + relief.shape
    values = np.ascontiguousarray(relief, np.float64).reshape(-1)
    inside = np.ascontiguousarray(mask, np.bool_).reshape(-1)
    where = np.flatnonzero(inside)
    # Stable sort of raster-ordered voxels by -value: the total order of the tie rule.
    order = where[np.argsort(-values[where], kind="stable")]
    labels = np.zeros(values.size, np.int32)
    peaks = np.zeros(order.size, np.int64)
    nz, ny, nx = shape3
    n = _hmaxima(order, values, inside, labels, peaks, nz, ny, nx, float(h), float(floor))
    return labels.reshape(relief.shape), peaks[:n]


@numba.njit(cache=True)
def _find(parent: npt.NDArray[np.int32], v: int) -> int:  # pragma: no cover - numba
    while parent[v] != v:
        parent[v] = parent[parent[v]]
        v = parent[v]
    return v


@numba.njit(cache=True)
def _hmaxima(
    order: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    inside: npt.NDArray[np.bool_],
    labels: npt.NDArray[np.int32],
    peaks: npt.NDArray[np.int64],
    nz: int,
    ny: int,
    nx: int,
    h: float,
    floor: float,
) -> int:  # pragma: no cover - numba
    """Merge tree over ``order`` (see :func:`dynamic_seeds`); writes the seed regions into
    ``labels``, their peaks into ``peaks`` and returns their number."""
    size = values.size
    # Roots are peaks: a new component's root is its first voxel, and merged roots point
    # to the surviving root.
    parent = np.full(size, -1, np.int32)  # int32: at most _MAX_FLOOD_VOXELS voxels
    is_peak = np.zeros(size, np.bool_)
    rank = np.zeros(size, np.int32)  # position in the total order
    dynamic = np.full(size, np.inf)  # of peaks; survivors get peak - floor below
    steps = (ny * nx, nx, 1)
    extent = (nz, ny, nx)
    roots = np.zeros(6, np.int64)
    for k in range(order.size):
        v = order[k]
        rank[v] = k
        parent[v] = v
        coords = (v // steps[0], (v // nx) % ny, v % nx)
        count = 0
        for axis in range(3):
            for sign in (-1, 1):
                c = coords[axis] + sign
                if c < 0 or c >= extent[axis]:
                    continue
                u = v + sign * steps[axis]
                if not inside[u] or parent[u] < 0:
                    continue
                r = _find(parent, u)
                seen = False
                for i in range(count):
                    if roots[i] == r:
                        seen = True
                if not seen:
                    roots[count] = r
                    count += 1
        if count == 0:
            is_peak[v] = True
            continue
        best = roots[0]
        for i in range(1, count):
            if rank[roots[i]] < rank[best]:
                best = roots[i]
        for i in range(count):
            r = roots[i]
            if r != best:
                dynamic[r] = values[r] - values[v]
                parent[r] = best
        parent[v] = best
    # Seed regions, in the total order of their peaks: breadth-first from each kept peak
    # over the voxels less than h below it.
    queue = np.zeros(order.size, np.int64)
    n = 0
    for k in range(order.size):
        p = order[k]
        if parent[p] == p:
            dynamic[p] = values[p] - floor
        if not is_peak[p] or not dynamic[p] >= h:
            continue
        peaks[n] = p
        n += 1
        labels[p] = n
        top = values[p]
        head, tail = 0, 1
        queue[0] = p
        while head < tail:
            v = queue[head]
            head += 1
            coords = (v // steps[0], (v // nx) % ny, v % nx)
            for axis in range(3):
                for sign in (-1, 1):
                    c = coords[axis] + sign
                    if c < 0 or c >= extent[axis]:
                        continue
                    u = v + sign * steps[axis]
                    if inside[u] and labels[u] == 0 and top - values[u] < h:
                        labels[u] = n
                        queue[tail] = u
                        tail += 1
    return n


def candidate_peaks(
    relief: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Voxels of ``mask`` with no face neighbour in ``mask`` of strictly higher ``relief``.

    Face-adjacent candidates have equal values, so the face-connected components of the
    candidates are plateaus, and every regional maximum is one of them: a component
    whose candidates form a single plateau has a single peak. The test reads one voxel
    beyond each voxel only, so blocks with one voxel of context give the whole-volume
    answer (the blockwise engine uses this to skip flooding such components)."""
    lifted = np.where(mask, relief, -np.inf)
    candidate = mask.copy()
    for axis in range(relief.ndim):
        for lo, hi in ((slice(0, -1), slice(1, None)), (slice(1, None), slice(0, -1))):
            here = [slice(None)] * relief.ndim
            there = [slice(None)] * relief.ndim
            here[axis], there[axis] = lo, hi
            candidate[tuple(here)] &= ~(lifted[tuple(there)] > lifted[tuple(here)])
    return candidate


# --- flooding -------------------------------------------------------------------------------


def _consecutive_ids(
    sizes: npt.NDArray[np.int64],
    first: npt.NDArray[np.int64],
    channel: npt.NDArray[np.int64],
    min_size_voxels: float,
) -> npt.NDArray[np.uint64]:
    """Final id of every object: 0 when it is smaller than ``min_size_voxels`` (or empty),
    else ``1..N`` per channel in the order of the objects' first voxels."""
    result = np.zeros(sizes.shape, np.uint64)
    kept = np.flatnonzero((sizes > 0) & (sizes >= min_size_voxels))
    if kept.size == 0:
        return result
    order = kept[np.lexsort((first[kept], channel[kept]))]
    ch = channel[order]
    start_of_run = np.r_[0, np.flatnonzero(np.diff(ch)) + 1]
    run_start = np.repeat(start_of_run, np.diff(np.r_[start_of_run, order.size]))
    result[order] = (np.arange(order.size) - run_start + 1).astype(np.uint64)
    return result


def _components(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[Any], int]:
    """Face-connected components of a 2-D/3-D boolean array: labels ``1..n`` and ``n``."""
    labels, n = cc3d.connected_components(
        mask,
        connectivity=6 if mask.ndim == 3 else 4,
        return_N=True,
        out_dtype=np.uint32 if mask.size < 2**32 else np.uint64,
    )
    return labels, int(n)


def _flood(
    pred: npt.NDArray[np.floating[Any]],
    markers: npt.NDArray[np.int32],
    mask: npt.NDArray[np.bool_],
) -> npt.NDArray[np.int32]:
    """Seeded watershed on ``-pred`` inside ``mask`` with face connectivity.

    ``pred`` must be at most 1 (then every non-marker voxel has ``-pred >= -1``). Marker
    voxels get distinct keys below ``-1``, ranked by ``-pred`` and then by raster
    position: skimage gives all markers the entry time 0, so without distinct keys
    equal-valued markers would be popped in an order that depends on everything else in
    the heap, and a component flooded on its own could come out differently from the same
    component flooded with the whole volume. Non-marker voxels keep ``-pred``; their ties
    are broken by entry time, which is the same for a component alone or in company,
    because components never touch inside the mask.
    """
    from skimage.segmentation import watershed

    image = np.negative(pred, dtype=np.float64)
    flat = image.reshape(-1)
    where = np.flatnonzero((markers != 0) & mask)
    order = np.argsort(flat[where], kind="stable")
    keys = np.empty(where.size, np.float64)
    keys[order] = np.arange(where.size, dtype=np.float64) - (where.size + 2.0)
    flat[where] = keys
    result: npt.NDArray[np.int32] = watershed(image, markers, mask=mask, connectivity=1)
    return result


# --- input checks ---------------------------------------------------------------------------


def _check_prediction(pred: npt.ArrayLike, *, spatial: bool) -> npt.NDArray[np.floating[Any]]:
    values = np.asarray(pred)
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(
            f"prediction must be a float array (dequantise stored integers first), got dtype "
            f"{values.dtype}"
        )
    if spatial and values.ndim not in (2, 3):
        raise ValueError(
            f"prediction must be 2-D or 3-D (one channel, no channel axis), got shape "
            f"{values.shape}"
        )
    return values


def _check_level(name: str, level: Any) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1], got {level!r}")
    if not 0 <= float(level) <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {level!r}")
    return float(level)


def _check_levels(foreground_level: Any, seed_level: Any) -> tuple[float, float]:
    fg = _check_level("foreground_level", foreground_level)
    seed = _check_level("seed_level", seed_level)
    if not fg < seed:
        raise ValueError(
            f"foreground_level must be below seed_level, got foreground_level={fg} and "
            f"seed_level={seed}"
        )
    return fg, seed


def _check_min_size(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a non-negative number, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_seed_dynamic(value: Any, name: str = "seed_dynamic") -> float:
    """``value`` as a float: a finite number >= 0 (world units; 0 turns dynamic seeds off)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number >= 0 (world units, e.g. nm), got {value!r}")
    if not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (world units), got {value!r}")
    return float(value)


def _check_scale(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a number > 0 (world units), got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"scale must be a finite number > 0 (world units), got {value!r}")
    return float(value)
