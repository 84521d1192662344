"""Synthetic EM-like volumes with instance labels, for the demo, tests and benchmarks.

:func:`make_em_volume` draws organelle-like objects into a cytoplasm-like background and
renders what an electron microscope would show::

    labels (uint64)                      raw (float32, [0, 1])
    . . . . . . . . . . .                ░ ░ ▒ ░ ░ ░ ░ ▒ ░ ░ ░   textured cytoplasm
    . . 1 1 1 . . . . . .                ░ ░ █ █ █ ░ ░ ░ ░ ░ ░
    . 1 1 1 1 1 2 2 . . .                ░ █ ▓ ▓ ▓ █ █ █ ░ ▒ ░   dark membrane rim inside
    . 1 1 1 1 1 2 2 2 . .                ░ █ ▓ ▓ ▓ █ █ ▓ █ ░ ░   every object, lighter or
    . . 1 1 1 . 2 2 . . .                ░ ░ █ █ █ ░ █ █ ░ ░ ░   darker textured interior
    . . . . . . . . . . .                ░ ▒ ░ ░ ░ ░ ░ ░ ░ ▒ ░   (1 and 2 touch)

Objects are randomly oriented ellipsoids (3-D) or ellipses (2-D) whose sizes are drawn in
world units (nm), so an anisotropic voxel size such as ``(40, 8, 8)`` gives objects that
are flat in voxels along z. Three kinds are mixed: small round vesicles (some with a dense
core), elongated mitochondria with dark cristae, and large round granules with a mottled
interior. They are packed densely; about ``touching_fraction`` of them are placed against
an earlier object so that touching pairs with different ids exist, the rest keep a gap
of background. Every id is exactly one face-connected component.

The image is composed from: smoothed noise at two scales plus thin dark sheets (ER-like)
and dark specks (ribosome-like) for the background; per-object interior intensity and
texture; a dark rim of ``membrane_width`` (world units) just inside each object's boundary,
including between touching objects; a Gaussian point spread function; signal-dependent
Gaussian noise (a Poisson-like shot term plus a read-noise floor). Everything is vectorised
numpy/scipy; the only Python loop is over objects. The same seed gives the same volume.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi
from scipy import ndimage

from innerdist.attrs import SYNTHETIC_ATTR
from innerdist.volumes import create_volume, mark_complete, split_volume_path

__all__ = [
    "DEMO_SHAPES",
    "DEMO_VOXEL_SIZES",
    "SyntheticVolume",
    "make_demo_dataset",
    "make_em_volume",
    "write_volume",
]

#: Shapes (voxels) of the demo volumes written by :func:`make_demo_dataset`, per number of
#: spatial dimensions. Sized so that a small U-Net trains on 2 CPU cores in minutes: the
#: 3-D training volume is 1.9 x 1.5 x 1.5 um at (40, 8, 8) nm, enough for a few dozen
#: objects and many distinct training crops, validation and test volumes are smaller.
DEMO_SHAPES: dict[int, dict[str, tuple[int, ...]]] = {
    3: {"train": (48, 192, 192), "validate": (32, 128, 128), "test": (32, 128, 128)},
    2: {"train": (512, 512), "validate": (256, 256), "test": (256, 256)},
}
#: Voxel sizes (nm) of the demo volumes: typical serial-section EM anisotropy in 3-D.
DEMO_VOXEL_SIZES: dict[int, tuple[int, ...]] = {3: (40, 8, 8), 2: (8, 8)}


@dataclass(frozen=True)
class SyntheticVolume:
    """A synthetic image with its ground truth.

    ``raw`` is float32 in ``[0, 1]``, ``labels`` uint64 instance ids (0 = background),
    both of the same spatial shape; ``voxel_size`` and ``offset`` are in world units (nm).
    """

    raw: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[int, ...]
    offset: tuple[int, ...]

    @property
    def roi(self) -> Roi:
        """The region covered, in world units."""
        return Roi(
            Coordinate(self.offset), Coordinate(self.labels.shape) * Coordinate(self.voxel_size)
        )

    @property
    def num_objects(self) -> int:
        """Number of distinct non-zero ids in ``labels``."""
        ids = np.unique(self.labels)
        return int(np.count_nonzero(ids))


# Object kinds: semi-axis ranges (nm, sorted long to short) and rendering parameters.
# Intensities are chosen so that, after blur, membranes are darker on average than both
# object interiors and the cytoplasm (the cue a network learns to split objects on).
_KINDS: dict[str, dict[str, tuple[float, float]]] = {
    "vesicle": {
        "semi_axes": (25.0, 60.0),
        "aspect": (0.8, 1.0),
        "interior": (0.72, 0.86),
        "texture": (0.01, 0.03),
    },
    "mitochondrion": {
        "semi_axes": (160.0, 380.0),
        "aspect": (0.3, 0.55),
        "interior": (0.42, 0.52),
        "texture": (0.03, 0.06),
    },
    "granule": {
        "semi_axes": (150.0, 300.0),
        "aspect": (0.75, 1.0),
        "interior": (0.50, 0.62),
        "texture": (0.06, 0.10),
    },
}
_KIND_NAMES = tuple(_KINDS)
_KIND_PROBS = np.array([0.4, 0.45, 0.15])
_MEMBRANE_LEVEL = (0.10, 0.20)
_BACKGROUND_LEVEL = 0.64
# Total size of the shapes drawn by default, as a fraction of the volume (objects cut by
# the volume's border or that find no room make the labelled fraction somewhat lower).
_TARGET_DENSITY = 0.5
# Random positions tried per object before it is dropped, and how many objects in a row
# may be dropped before the volume counts as full.
_PLACEMENT_TRIES = 30
_GIVE_UP_AFTER = 100


def _check_int_tuple(
    name: str, value: object, length: int | None, *, positive: bool
) -> tuple[int, ...]:
    """Validate a sequence of integers (world units or voxels) and return it as a tuple."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a sequence of integers, got {value!r}")
    values = list(value)
    if length is not None and len(values) != length:
        raise ValueError(f"{name} must have {length} entries (one per spatial axis), got {value!r}")
    out: list[int] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            if isinstance(v, numbers.Real) and float(v).is_integer():
                v = int(float(v))
            else:
                raise TypeError(f"{name} must contain integers, got {value!r}")
        if positive and int(v) <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
        out.append(int(v))
    return tuple(out)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray
) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation.

    ``sigma`` is in voxels per axis. Large sigmas are smoothed on a coarser grid and
    interpolated back (linear), which looks the same and is much faster than a wide kernel.
    """
    factor = np.maximum(1, np.floor(sigma / 3.0)).astype(int)
    coarse_shape = tuple(int(math.ceil(s / f)) + 1 for s, f in zip(shape, factor, strict=True))
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma / factor, mode="wrap")
    # Back to the fine grid by separable linear interpolation, one axis at a time.
    for axis, (size, f) in enumerate(zip(shape, factor, strict=True)):
        position = np.arange(size, dtype=np.float32) / f
        lo = position.astype(int)
        weight = (position - lo).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        noise = (1 - weight) * np.take(noise, lo, axis=axis) + weight * np.take(
            noise, lo + 1, axis=axis
        )
    std = float(noise.std())
    return (noise - float(noise.mean())) / (std if std > 0 else 1.0)


def _random_rotation(rng: np.random.Generator, dims: int) -> np.ndarray:
    """A uniformly random orthogonal matrix; column ``i`` is the object's ``i``-th axis."""
    q, r = np.linalg.qr(rng.standard_normal((dims, dims)))
    return q * np.sign(np.diag(r))


def _radius_along(direction: np.ndarray, rotation: np.ndarray, semi_axes: np.ndarray) -> float:
    """Distance (world units) from an ellipsoid's centre to its surface along ``direction``."""
    local = rotation.T @ direction
    return float(1.0 / np.sqrt(np.sum((local / semi_axes) ** 2)))


@dataclass
class _Shape:
    kind: str
    semi_axes: np.ndarray  # world units, long to short
    rotation: np.ndarray  # column i: the object's i-th axis in world (z, y, x) coordinates

    @property
    def size(self) -> float:
        """Volume (3-D) or area (2-D) in world units, up to a constant factor."""
        return float(np.prod(self.semi_axes))


def _draw_shape(rng: np.random.Generator, dims: int) -> _Shape:
    kind = _KIND_NAMES[int(rng.choice(len(_KIND_NAMES), p=_KIND_PROBS))]
    spec = _KINDS[kind]
    lo, hi = spec["semi_axes"]
    long_axis = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    aspect_lo, aspect_hi = spec["aspect"]
    semi = [long_axis] + [long_axis * rng.uniform(aspect_lo, aspect_hi) for _ in range(2)]
    semi = sorted(semi, reverse=True)
    # A 2-D object is a section through a 3-D one: keep the long and one short axis.
    return _Shape(kind, np.array(semi[:dims]), _random_rotation(rng, dims))


def _ellipsoid_in_box(
    shape_: _Shape,
    centre: np.ndarray,
    voxel_size: np.ndarray,
    shape: tuple[int, ...],
    pad: np.ndarray,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Rasterise an ellipsoid in its bounding box (grown by ``pad`` voxels, clipped).

    ``centre`` is in world units from the volume's corner. Returns the box slices and the
    mask of voxel centres inside, or ``None`` when the box misses the volume.
    """
    rotation, semi = shape_.rotation, shape_.semi_axes
    # Half extent of a rotated ellipsoid along world axis d: sqrt(sum_i (R[d, i] a_i)^2).
    half = np.sqrt(((rotation * semi[None, :]) ** 2).sum(axis=1))
    lo = np.floor((centre - half) / voxel_size - 0.5).astype(int) - pad
    hi = np.ceil((centre + half) / voxel_size - 0.5).astype(int) + 1 + pad
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(shape))
    if np.any(hi <= lo):
        return None
    dims = len(shape)
    # World offsets of the voxel centres from the object's centre, one 1-D array per axis,
    # shaped to broadcast over the box.
    axes = [
        ((np.arange(lo[d], hi[d]) + 0.5) * voxel_size[d] - centre[d]).reshape(
            [-1 if e == d else 1 for e in range(dims)]
        )
        for d in range(dims)
    ]
    r2: np.ndarray | float = 0.0
    for i in range(dims):
        q = axes[0] * (rotation[0, i] / semi[i])
        for d in range(1, dims):
            q = q + axes[d] * (rotation[d, i] / semi[i])
        r2 = r2 + q * q
    inside = np.broadcast_to(np.asarray(r2) <= 1.0, tuple(hi - lo))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return box, inside


def _place_objects(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    voxel: np.ndarray,
    *,
    num_objects: int | None,
    touching_fraction: float,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pack objects into the volume; returns labels (ids 1..n), a detail image, kinds per id.

    Shapes are drawn first (``num_objects`` of them, or until their total size reaches
    half the volume), then placed largest first, each at up to
    ``_PLACEMENT_TRIES`` random spots, so small vesicles fill the gaps between large
    objects, like random sequential packing. The work is bounded by shapes x tries.
    """
    dims = len(shape)
    extent = np.array(shape) * voxel  # world units
    shapes: list[_Shape] = []
    if num_objects is None:
        # An ellipsoid's volume is (4/3) pi abc, an ellipse's area pi ab.
        unit = 4.0 / 3.0 * math.pi if dims == 3 else math.pi
        budget = _TARGET_DENSITY * float(np.prod(extent))
        total = 0.0
        while total < budget:
            shapes.append(_draw_shape(rng, dims))
            total += unit * shapes[-1].size
    else:
        shapes = [_draw_shape(rng, dims) for _ in range(num_objects)]
    shapes.sort(key=lambda s: -s.size)

    labels = np.zeros(shape, dtype=np.int32)
    # Id of the object whose guard zone covers a voxel (-1 where two objects' zones meet).
    # A free object may not overlap any guard zone, so separate objects keep at least
    # `gap` world units of background between them (not touching, visibly apart).
    near = np.zeros(shape, dtype=np.int32)
    detail = np.zeros(shape, dtype=np.float32)
    gap = 2.0 * float(voxel.min())
    pad = np.ceil(gap / voxel).astype(int)
    centres: list[np.ndarray] = []
    placed: list[_Shape] = []
    failures_in_a_row = 0
    for obj in shapes:
        if failures_in_a_row >= _GIVE_UP_AFTER:
            break  # the volume is full; a huge num_objects must not take forever
        failures_in_a_row += 1
        touching = bool(placed) and rng.random() < touching_fraction
        for _ in range(_PLACEMENT_TRIES):
            partner = 0
            if touching:
                partner = int(rng.integers(len(placed))) + 1
                other = placed[partner - 1]
                direction = rng.standard_normal(dims)
                direction /= np.linalg.norm(direction)
                # Overlap the partner by a third of the new object's radius in that
                # direction; the overlap stays with the partner, so the two touch along a
                # curved face.
                reach = _radius_along(direction, other.rotation, other.semi_axes)
                reach += 0.67 * _radius_along(direction, obj.rotation, obj.semi_axes)
                centre = centres[partner - 1] + direction * reach
            else:
                centre = rng.uniform(0.0, extent)
                centre_voxel = tuple(np.minimum((centre / voxel).astype(int), np.array(shape) - 1))
                if near[centre_voxel] != 0:
                    continue  # cheap early rejection in a crowded volume
            rast = _ellipsoid_in_box(obj, centre, voxel, shape, pad)
            if rast is None:
                continue
            box, inside = rast
            if np.count_nonzero(inside) < 4:
                continue
            zone = near[box][inside]
            if partner:
                if np.any((zone != 0) & (zone != partner)):
                    continue
                claim = inside & (labels[box] == 0)
                if np.count_nonzero(claim) < 0.5 * np.count_nonzero(inside):
                    continue
            else:
                if np.any(zone != 0):
                    continue
                claim = inside
            new_id = len(placed) + 1
            labels[box][claim] = new_id
            # Normalised object coordinates of the claimed voxels, for the kind's texture.
            where = np.nonzero(claim)
            offsets = np.stack(
                [(w + box[d].start + 0.5) * voxel[d] - centre[d] for d, w in enumerate(where)]
            )
            local = (obj.rotation.T @ offsets) / obj.semi_axes[:, None]
            detail[box][claim] = _interior_detail(rng, obj.kind, local)
            guard = ndimage.maximum_filter(claim, size=tuple(2 * pad + 1))
            zone_box = near[box]
            zone_box[guard & (zone_box != 0) & (zone_box != new_id)] = -1
            zone_box[guard & (zone_box == 0)] = new_id
            placed.append(obj)
            centres.append(centre)
            failures_in_a_row = 0
            break

    labels = _keep_largest_pieces(labels)
    return labels, detail, [obj.kind for obj in placed]


def _keep_largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Make every id one face-connected component by keeping its largest piece.

    Placement already makes this almost always true (convex shapes, small overlaps);
    this pass guarantees it where the voxel grid splits a thin or cut object.
    """
    import cc3d

    if labels.ndim == 3:
        pieces = cc3d.connected_components(labels, connectivity=6)
    else:
        pieces = cc3d.connected_components(labels, connectivity=4)
    num_pieces = int(pieces.max())
    if num_pieces == 0:
        return labels
    owner = np.zeros(num_pieces + 1, dtype=labels.dtype)
    owner[pieces.ravel()] = labels.ravel()
    sizes = np.bincount(pieces.ravel(), minlength=num_pieces + 1)
    sizes[0] = 0
    # For each id, the piece with the largest size: sort pieces by (id, size) and take the
    # last piece of every id.
    order = np.lexsort((sizes, owner))
    last_of_id = np.ones(order.size, dtype=bool)
    last_of_id[:-1] = owner[order][1:] != owner[order][:-1]
    keep = np.zeros(num_pieces + 1, dtype=bool)
    keep[order[last_of_id]] = True
    keep[0] = False
    return np.where(keep[pieces], labels, 0).astype(labels.dtype)


def _boundary_voxels(labels: np.ndarray) -> np.ndarray:
    """Object voxels with a face neighbour of another id (or background) inside the array."""
    boundary = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        differs = labels[tuple(lo)] != labels[tuple(hi)]
        boundary[tuple(lo)] |= differs & (labels[tuple(lo)] != 0)
        boundary[tuple(hi)] |= differs & (labels[tuple(hi)] != 0)
    return boundary


def make_em_volume(
    shape: Sequence[int],
    voxel_size: Sequence[int] | None = None,
    *,
    seed: int = 0,
    num_objects: int | None = None,
    noise: float = 0.08,
    offset: Sequence[int] | None = None,
    touching_fraction: float = 0.3,
    membrane_width: float | None = None,
    psf_sigma: float | None = None,
) -> SyntheticVolume:
    """Draw an EM-like volume with organelle-shaped objects and its instance labels.

    Parameters
    ----------
    shape
        Voxels per axis, 2 (``(y, x)``) or 3 (``(z, y, x)``) entries, each at least 4.
    voxel_size
        World units (nm) per voxel; default ``(40, 8, 8)`` in 3-D, ``(8, 8)`` in 2-D.
        Object sizes are in nm, so anisotropic voxels flatten objects in voxel space.
    seed
        Seed of the random generator; the same arguments and seed give the same volume.
    num_objects
        Place up to this many objects (fewer if there is no room after many attempts).
        ``None`` packs shapes adding up to half the volume, of which typically 30% (3-D)
        to 45% (2-D) end up labelled (the rest is cut off by the border or finds no room).
    noise
        Standard deviation of the noise at intensity 1 (it scales with the square root of
        the signal, like shot noise, with a floor of half that at intensity 0).
    offset
        World coordinate of the first voxel's corner, a multiple of ``voxel_size``.
    touching_fraction
        Probability that a new object is placed against an earlier one (a touching pair
        with different ids) instead of at a free spot.
    membrane_width
        World width (nm) of the dark rim inside each object's boundary; default two
        in-plane voxels (``2 * min(voxel_size)``).
    psf_sigma
        Standard deviation (nm) of the Gaussian blur; default ``0.6 * min(voxel_size)``.

    Examples
    --------
    >>> vol = make_em_volume((8, 48, 48), seed=1)
    >>> vol.raw.dtype, vol.labels.dtype, vol.voxel_size
    (dtype('float32'), dtype('uint64'), (40, 8, 8))
    >>> bool(vol.raw.min() >= 0 and vol.raw.max() <= 1)
    True
    """
    shp = _check_int_tuple("shape", shape, None, positive=True)
    if len(shp) not in (2, 3):
        raise ValueError(f"shape must have 2 or 3 entries (2-D or 3-D), got {shape!r}")
    if min(shp) < 4:
        raise ValueError(f"shape must be at least 4 voxels along every axis, got {shape!r}")
    dims = len(shp)
    if voxel_size is None:
        voxel_size = DEMO_VOXEL_SIZES[dims]
    vs = _check_int_tuple("voxel_size", voxel_size, dims, positive=True)
    off = (
        (0,) * dims if offset is None else _check_int_tuple("offset", offset, dims, positive=False)
    )
    if any(o % v for o, v in zip(off, vs, strict=True)):
        raise ValueError(f"offset {off} must be a multiple of the voxel size {vs} (world units)")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if num_objects is not None and (
        isinstance(num_objects, bool)
        or not isinstance(num_objects, numbers.Integral)
        or num_objects < 0
    ):
        raise ValueError(f"num_objects must be None or a non-negative integer, got {num_objects!r}")
    if num_objects is not None and num_objects > math.prod(shp) // 4:
        # Every object needs at least 4 voxels.
        raise ValueError(
            f"num_objects {num_objects} cannot fit in {math.prod(shp)} voxels (at most "
            f"{math.prod(shp) // 4}, 4 voxels per object)"
        )
    for name, value, upper in (
        ("noise", noise, math.inf),
        ("touching_fraction", touching_fraction, 1.0),
    ):
        if not isinstance(value, numbers.Real) or not (0 <= float(value) <= upper):
            bound = "a finite number >= 0" if upper == math.inf else f"in [0, {upper}]"
            raise ValueError(f"{name} must be {bound}, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {value!r}")
    for name, value in (("membrane_width", membrane_width), ("psf_sigma", psf_sigma)):
        if value is not None and (
            not isinstance(value, numbers.Real) or not (0 <= float(value) < math.inf)
        ):
            raise ValueError(f"{name} must be None or a finite number >= 0 (nm), got {value!r}")

    rng = np.random.default_rng(int(seed))
    voxel = np.array(vs, dtype=float)
    membrane = 2.0 * float(voxel.min()) if membrane_width is None else float(membrane_width)
    psf = 0.6 * float(voxel.min()) if psf_sigma is None else float(psf_sigma)

    labels, detail, kinds = _place_objects(
        rng, shp, voxel, num_objects=num_objects, touching_fraction=float(touching_fraction)
    )
    raw = _render(rng, labels, detail, kinds, voxel, membrane=membrane, psf=psf, noise=float(noise))
    return SyntheticVolume(raw=raw, labels=labels.astype(np.uint64), voxel_size=vs, offset=off)


def _interior_detail(rng: np.random.Generator, kind: str, local: np.ndarray) -> np.ndarray:
    """Kind-specific structure inside an object, from its normalised local coordinates.

    ``local[i]`` is the coordinate along the object's ``i``-th axis divided by that
    semi-axis (so ``|local| <= 1`` inside). Mitochondria get dark cristae: lamellae
    across the long axis, kept off the membrane. Some vesicles get a dense dark core.
    """
    r2 = (local**2).sum(axis=0)
    if kind == "mitochondrion":
        # Roughly 8-14 cristae along the long axis, slightly wavy.
        count = rng.uniform(8, 14)
        phase = rng.uniform(0, 2 * math.pi)
        wobble = 0.6 * local[1] if local.shape[0] > 1 else 0.0
        stripes = np.cos(math.pi * count * local[0] + phase + wobble) > 0.55
        return np.where(stripes & (r2 < 0.6), -0.16, 0.0).astype(np.float32)
    if kind == "vesicle" and rng.random() < 0.3:
        return np.where(r2 < 0.3, -0.35, 0.0).astype(np.float32)
    return np.zeros(r2.shape, dtype=np.float32)


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    detail: np.ndarray,
    kinds: list[str],
    voxel: np.ndarray,
    *,
    membrane: float,
    psf: float,
    noise: float,
) -> np.ndarray:
    """Compose the EM-like intensity image from the labels (see the module docstring)."""
    shape = labels.shape
    num = len(kinds)
    # Per-id intensities, index 0 unused (background).
    interior = np.zeros(num + 1, dtype=np.float32)
    texture = np.zeros(num + 1, dtype=np.float32)
    rim = np.zeros(num + 1, dtype=np.float32)
    for i, kind in enumerate(kinds, start=1):
        interior[i] = rng.uniform(*_KINDS[kind]["interior"])
        texture[i] = rng.uniform(*_KINDS[kind]["texture"])
        rim[i] = rng.uniform(*_MEMBRANE_LEVEL)

    coarse = _smooth_noise(rng, shape, 90.0 / voxel)
    fine = _smooth_noise(rng, shape, 12.0 / voxel)
    # ER-like sheets: thin bands along the zero level set of a smooth field, shown only
    # where a second field is positive so they come and go like real cisternae.
    sheets_field = _smooth_noise(rng, shape, 120.0 / voxel)
    sheets = np.exp(-((sheets_field / 0.12) ** 2)) * (coarse > 0.3)
    specks = rng.random(shape, dtype=np.float32) < 0.004

    image = (
        _BACKGROUND_LEVEL + 0.05 * coarse + 0.035 * fine - 0.22 * sheets - 0.3 * specks
    ).astype(np.float32)
    inside = labels > 0
    lab = labels[inside]
    image[inside] = interior[lab] + texture[lab] * fine[inside] + detail[inside]
    # Dark rim: object voxels closer than `membrane` (world units) to a boundary voxel.
    boundary = _boundary_voxels(labels)
    # Same as "Euclidean distance to the nearest boundary voxel < membrane", but a
    # dilation with that ball is much cheaper than a distance transform.
    reach = np.ceil(membrane / voxel).astype(int)
    offsets = np.meshgrid(
        *[np.arange(-r, r + 1) * v for r, v in zip(reach, voxel, strict=True)], indexing="ij"
    )
    ball = sum(o**2 for o in offsets) < membrane**2
    on_rim = boundary
    if ball.sum() > 1 and boundary.any():
        on_rim = inside & ndimage.binary_dilation(boundary, structure=ball)
    image[on_rim] = rim[labels[on_rim]] + 0.02 * fine[on_rim]

    if psf > 0:
        image = ndimage.gaussian_filter(image, sigma=tuple(psf / voxel), mode="reflect")
    if noise > 0:
        # Shot-like noise grows with the signal; the floor stands in for detector noise.
        std = noise * np.sqrt(0.25 + 0.75 * np.clip(image, 0.0, 1.0))
        image = image + std * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def write_volume(
    vol: SyntheticVolume,
    path_container: str | Path,
    *,
    raw: str = "raw",
    labels: str = "labels",
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``vol.raw`` and ``vol.labels`` as datasets of a zarr container.

    Both get ``vol.voxel_size`` and ``vol.offset`` (world units), chunks of at most 64
    voxels per axis, and are marked complete once written. Returns the two volume paths
    (``container/raw``, ``container/labels``). Existing datasets raise
    :class:`FileExistsError` unless ``overwrite`` is set; both are checked before either
    is written.
    """
    if not isinstance(vol, SyntheticVolume):
        raise TypeError(f"vol must be a SyntheticVolume, got {type(vol).__name__}")
    if raw == labels:
        raise ValueError(f"raw and labels must be different datasets, got {raw!r} twice")
    container = Path(path_container)
    paths = (container / raw, container / labels)
    for path in paths:
        split_volume_path(path)  # raises a clear ValueError for a non-.zarr container
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"output {str(path)!r} already exists; pass overwrite=True (--overwrite) "
                "to replace it"
            )
    roi = vol.roi
    for path, data in zip(paths, (vol.raw, vol.labels), strict=True):
        array = create_volume(
            path,
            roi=roi,
            voxel_size=vol.voxel_size,
            dtype=data.dtype,
            overwrite=overwrite,
            attrs={SYNTHETIC_ATTR: True},
        )
        array[roi] = data
        mark_complete(array)
    return paths


def make_demo_dataset(
    directory: str | Path,
    *,
    seed: int = 0,
    dims: int = 3,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the demo's ``train.zarr``, ``validate.zarr`` and ``test.zarr`` into ``directory``.

    Each container holds ``raw`` and ``labels`` (see :func:`write_volume`), drawn with
    :func:`make_em_volume` from three different seeds derived from ``seed``. Shapes and
    voxel sizes are :data:`DEMO_SHAPES` and :data:`DEMO_VOXEL_SIZES`: in 3-D
    ``(48, 192, 192)`` for training and ``(32, 128, 128)`` for validation and test at
    ``(40, 8, 8)`` nm; in 2-D ``(512, 512)`` and ``(256, 256)`` at ``(8, 8)`` nm.
    Returns ``{"train": .../train.zarr, "validate": ..., "test": ...}``.
    """
    if dims not in (2, 3) or isinstance(dims, bool):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{str(out)!r} exists and is not a directory")
    # Check every output first so a refusal does not leave a partial dataset behind.
    if not overwrite:
        for split in DEMO_SHAPES[dims]:
            container = out / f"{split}.zarr"
            for name in ("raw", "labels"):
                if (container / name).exists():
                    raise FileExistsError(
                        f"output {str(container / name)!r} already exists; pass "
                        "overwrite=True (--overwrite) to replace it"
                    )
    # Independent, well-separated seeds per split: seed 0's validation volume is not
    # seed 1's training volume.
    split_seeds = np.random.SeedSequence(int(seed)).generate_state(len(DEMO_SHAPES[dims]))
    paths: dict[str, Path] = {}
    for (split, shape), split_seed in zip(DEMO_SHAPES[dims].items(), split_seeds, strict=True):
        vol = make_em_volume(shape, DEMO_VOXEL_SIZES[dims], seed=int(split_seed))
        container = out / f"{split}.zarr"
        write_volume(vol, container, overwrite=overwrite)
        paths[split] = container
    return paths
