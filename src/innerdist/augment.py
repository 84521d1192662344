"""Training-time augmentation of raw / labels / mask crops.

Geometric transforms (elastic deformation, mirroring, axis transposes) move raw, labels
and mask together, so targets computed *afterwards* from the augmented labels are exact
inner distances of the augmented objects. Raw is resampled with linear interpolation,
labels and mask with nearest neighbour, so no new label ids ever appear. Intensity
transforms (scale/shift, gamma, noise) touch raw only and assume it was normalised to
roughly ``[0, 1]``.

An elastic deformation pulls every output voxel from a displaced position, so the voxels
near the array edge would need data from outside it. The caller reads a crop grown by
:func:`required_margin` voxels on every side, augments it, and keeps the centre::

    |<- margin ->|<------------- wanted crop -------------->|<- margin ->|
    |  may read  |  every voxel reads inside the whole array |  may read  |
    |  clamped   |  (displacements are clipped to margin)    |  clamped   |

>>> import numpy as np
>>> cfg = AugmentConfig.disabled().model_copy(update={"flip": True})
>>> labels = np.array([[0, 1, 1], [0, 2, 2]])
>>> raw = labels / 4
>>> r, lab, _ = augment(raw, labels, None, (4, 4), cfg, np.random.default_rng(3))
>>> lab
array([[2, 2, 0],
       [1, 1, 0]])
>>> bool(np.array_equal(r * 4, lab))  # raw moved with the labels
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.interpolate import CubicSpline

__all__ = [
    "AugmentConfig",
    "ElasticConfig",
    "GammaConfig",
    "IntensityConfig",
    "NoiseConfig",
    "augment",
    "required_margin",
]

# Control-point displacements are Gaussian; clipping them at this many sigmas bounds how
# far a voxel can move and so the margin a crop needs.
_SIGMAS = 3.0


def _check_range(value: tuple[float, float], what: str) -> None:
    if value[0] > value[1]:
        raise ValueError(f"{what} must be (low, high) with low <= high, got {value}")


class ElasticConfig(BaseModel):
    """Smooth random deformation from a coarse grid of jittered control points.

    Off by default: its sizes are in world units (nm) and only the user knows what suits
    the data. For EM at 8 nm, ``control_point_spacing=320, jitter_sigma=16`` (a 2-voxel
    wobble every 40 voxels) is a reasonable start; with anisotropic data give one value per
    axis, e.g. ``jitter_sigma=[0, 16, 16]`` to keep z slices flat.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Apply elastic deformation at all.")
    control_point_spacing: float | list[float] = Field(
        default=320.0,
        description="Distance between control points, world units; one value or one per axis.",
    )
    jitter_sigma: float | list[float] = Field(
        default=16.0,
        description="Std. dev. of control-point displacements, world units; one value or one "
        "per axis (0 = never move along that axis). Displacements are clipped at 3 sigma.",
    )
    probability: float = Field(default=0.5, ge=0.0, le=1.0, description="Chance per crop.")

    @model_validator(mode="after")
    def _check(self) -> ElasticConfig:
        spacing = _as_list(self.control_point_spacing)
        sigma = _as_list(self.jitter_sigma)
        if not spacing or any(not (math.isfinite(s) and s > 0) for s in spacing):
            raise ValueError(
                f"elastic.control_point_spacing must be positive (world units), got "
                f"{self.control_point_spacing}"
            )
        if not sigma or any(not (math.isfinite(s) and s >= 0) for s in sigma):
            raise ValueError(
                f"elastic.jitter_sigma must be >= 0 (world units), got {self.jitter_sigma}"
            )
        return self


class IntensityConfig(BaseModel):
    """``raw * scale + shift`` with ``scale``, ``shift`` drawn uniformly per crop."""

    model_config = ConfigDict(extra="forbid")

    scale_range: tuple[float, float] = Field(
        default=(0.9, 1.1), description="Multiplicative factor range (both ends > 0)."
    )
    shift_range: tuple[float, float] = Field(
        default=(-0.1, 0.1), description="Additive offset range, in normalised intensity units."
    )
    probability: float = Field(default=0.5, ge=0.0, le=1.0, description="Chance per crop.")

    @model_validator(mode="after")
    def _check(self) -> IntensityConfig:
        _check_range(self.scale_range, "intensity.scale_range")
        _check_range(self.shift_range, "intensity.shift_range")
        if self.scale_range[0] <= 0:
            raise ValueError(f"intensity.scale_range must be > 0, got {self.scale_range}")
        return self


class GammaConfig(BaseModel):
    """``raw ** gamma`` (odd extension ``sign(x) |x| ** gamma`` for negative values)."""

    model_config = ConfigDict(extra="forbid")

    range: tuple[float, float] = Field(
        default=(0.8, 1.25), description="Gamma range (both ends > 0); 1 leaves raw unchanged."
    )
    probability: float = Field(default=0.5, ge=0.0, le=1.0, description="Chance per crop.")

    @model_validator(mode="after")
    def _check(self) -> GammaConfig:
        _check_range(self.range, "gamma.range")
        if self.range[0] <= 0:
            raise ValueError(f"gamma.range must be > 0, got {self.range}")
        return self


class NoiseConfig(BaseModel):
    """Additive Gaussian noise whose std. dev. is drawn uniformly per crop."""

    model_config = ConfigDict(extra="forbid")

    sigma_range: tuple[float, float] = Field(
        default=(0.0, 0.05), description="Noise std. dev. range, in normalised intensity units."
    )
    probability: float = Field(default=0.5, ge=0.0, le=1.0, description="Chance per crop.")

    @model_validator(mode="after")
    def _check(self) -> NoiseConfig:
        _check_range(self.sigma_range, "noise.sigma_range")
        if self.sigma_range[0] < 0:
            raise ValueError(f"noise.sigma_range must be >= 0, got {self.sigma_range}")
        return self


class AugmentConfig(BaseModel):
    """Which augmentations to apply to training crops, and how strongly.

    Round-trips through JSON (``model_dump(mode="json")`` / ``model_validate``); unknown
    keys are an error naming the key. :meth:`disabled` gives a config that changes nothing
    (for validation crops).
    """

    model_config = ConfigDict(extra="forbid")

    flip: bool = Field(default=True, description="Mirror each spatial axis with chance 1/2.")
    transpose: bool = Field(
        default=True,
        description="Randomly permute axes that have the same voxel size and the same crop "
        "extent (with mirroring: all 90-degree rotations). With voxel size (40, 8, 8) only "
        "y and x are ever swapped.",
    )
    elastic: ElasticConfig = Field(default_factory=ElasticConfig)
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)
    gamma: GammaConfig = Field(default_factory=GammaConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)

    @classmethod
    def disabled(cls) -> AugmentConfig:
        """A config under which :func:`augment` returns its inputs unchanged."""
        return cls(
            flip=False,
            transpose=False,
            elastic=ElasticConfig(enabled=False),
            intensity=IntensityConfig(probability=0.0),
            gamma=GammaConfig(probability=0.0),
            noise=NoiseConfig(probability=0.0),
        )


def _as_list(value: float | list[float]) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def _per_axis(value: float | list[float], dims: int, what: str) -> tuple[float, ...]:
    values = _as_list(value)
    if len(values) == 1:
        return (values[0],) * dims
    if len(values) != dims:
        raise ValueError(
            f"{what} has {len(values)} entries {values} but the data has {dims} spatial axes; "
            "give one value or one per axis"
        )
    return tuple(values)


def _check_voxel_size(voxel_size: Sequence[float]) -> tuple[float, ...]:
    if isinstance(voxel_size, (str, bytes)) or not isinstance(voxel_size, Sequence | np.ndarray):
        raise TypeError(f"voxel_size must be a sequence of numbers, got {voxel_size!r}")
    voxel = tuple(float(v) for v in voxel_size)
    if len(voxel) not in (2, 3):
        raise ValueError(f"voxel_size must have 2 or 3 entries (spatial axes), got {voxel}")
    if any(not (math.isfinite(v) and v > 0) for v in voxel):
        raise ValueError(f"voxel_size must be positive (world units), got {voxel}")
    return voxel


def _elastic_active(config: AugmentConfig) -> bool:
    return config.elastic.enabled and config.elastic.probability > 0


def required_margin(config: AugmentConfig, voxel_size: Sequence[float]) -> tuple[int, ...]:
    """Voxels to add on each side of every axis so the centre survives elastic deformation.

    ``ceil(3 * jitter_sigma / voxel_size)`` per axis while elastic deformation is enabled
    (displacements are clipped at that many voxels), zeros otherwise.

    >>> cfg = AugmentConfig(elastic={"enabled": True, "jitter_sigma": [0, 16, 16]})
    >>> required_margin(cfg, (40, 8, 8))
    (0, 6, 6)
    """
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    voxel = _check_voxel_size(voxel_size)
    if not _elastic_active(config):
        return (0,) * len(voxel)
    sigma = _per_axis(config.elastic.jitter_sigma, len(voxel), "elastic.jitter_sigma")
    # The small tolerance keeps e.g. 3 * 16 / 8 = 6.000000001 from rounding up to 7.
    return tuple(
        max(0, math.ceil(_SIGMAS * s / v - 1e-9)) for s, v in zip(sigma, voxel, strict=True)
    )


def _spline_matrix(n: int, spacing: float) -> np.ndarray:
    """``(n, k)`` matrix mapping values at ``k`` control points to ``n`` voxels.

    Control points are ``spacing`` voxels apart and centred on the axis; the interpolant is
    a natural cubic spline, so the dense field is smooth (C2) and separable.
    """
    k = max(2, math.ceil((n - 1) / spacing) + 1)
    start = (n - 1) / 2 - (k - 1) * spacing / 2
    points = start + spacing * np.arange(k)
    spline = CubicSpline(points, np.eye(k), bc_type="natural")
    return np.asarray(spline(np.arange(n, dtype=np.float64)), dtype=np.float64)


def _displacements(
    shape: tuple[int, ...],
    voxel: tuple[float, ...],
    config: ElasticConfig,
    margin: tuple[int, ...],
    rng: np.random.Generator,
) -> list[np.ndarray | None]:
    """Per axis, the displacement (voxels) of every voxel, or ``None`` for no movement."""
    dims = len(shape)
    spacing = _per_axis(config.control_point_spacing, dims, "elastic.control_point_spacing")
    sigma = _per_axis(config.jitter_sigma, dims, "elastic.jitter_sigma")
    matrices = [_spline_matrix(n, s / v) for n, s, v in zip(shape, spacing, voxel, strict=True)]
    coarse_shape = tuple(m.shape[1] for m in matrices)
    fields: list[np.ndarray | None] = []
    for axis in range(dims):
        sigma_vox = sigma[axis] / voxel[axis]
        if sigma_vox == 0 or margin[axis] == 0:
            fields.append(None)
            continue
        field = np.clip(
            rng.normal(0.0, sigma_vox, coarse_shape), -_SIGMAS * sigma_vox, _SIGMAS * sigma_vox
        )
        # Upsample one axis at a time (tensor-product spline): cheap, since the coarse grid
        # is tiny and each step is one matrix product.
        for a, matrix in enumerate(matrices):
            field = np.moveaxis(np.tensordot(field, matrix, axes=([a], [1])), -1, a)
        # The spline can overshoot the clipped control values a little; clipping the dense
        # field keeps every centre voxel's source inside the margin.
        np.clip(field, -margin[axis], margin[axis], out=field)
        fields.append(field.astype(np.float32))
    return fields


def _elastic(
    raw: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    voxel: tuple[float, ...],
    config: ElasticConfig,
    margin: tuple[int, ...],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = tuple(raw.shape[1:])
    fields = _displacements(shape, voxel, config, margin, rng)
    if all(f is None for f in fields):
        return raw, labels, mask
    dims = len(shape)
    strides = [int(np.prod(shape[a + 1 :])) for a in range(dims)]
    # Per axis: the source position, clamped to the array (as scipy's mode="nearest"), split
    # into the lower corner of its interpolation cell and the fraction beyond it. Axes that
    # do not move keep integer positions and a zero fraction.
    flat_base = np.zeros(shape, dtype=np.intp)
    flat_nearest = np.zeros(shape, dtype=np.intp)
    fractions: list[np.ndarray | None] = []
    for axis, field in enumerate(fields):
        n = shape[axis]
        view = [1] * dims
        view[axis] = n
        grid = np.arange(n, dtype=np.float32).reshape(view)
        if field is None or n == 1:
            flat_base += grid.astype(np.intp) * strides[axis]
            flat_nearest += grid.astype(np.intp) * strides[axis]
            fractions.append(None)
            continue
        position = np.clip(grid + field, 0, n - 1)
        base = np.minimum(np.floor(position), n - 2)
        fraction = position - base
        base_index = base.astype(np.intp)
        flat_base += base_index * strides[axis]
        flat_nearest += (base_index + (fraction >= 0.5)) * strides[axis]
        fractions.append(fraction)

    # Multilinear interpolation for raw as nested lerps ``lo + f * (hi - lo)``, one moving
    # axis at a time (axes that do not move need no second corner). Unlike a weighted sum of
    # corners this is exact where all corners agree.
    moving = [(strides[a], f) for a, f in enumerate(fractions) if f is not None]

    def interpolate(values: np.ndarray, offset: int, level: int) -> np.ndarray:
        if level == len(moving):
            return values[(flat_base + offset).ravel()].reshape(shape)
        stride, fraction = moving[level]
        lo = interpolate(values, offset, level + 1)
        hi = interpolate(values, offset + stride, level + 1)
        hi -= lo
        hi *= fraction
        hi += lo
        return hi

    raw_flat = raw.reshape(raw.shape[0], -1)
    raw_out = np.stack([interpolate(raw_flat[c], 0, 0) for c in range(raw.shape[0])])
    # Nearest neighbour for labels and mask by integer indexing (exact for any id, where
    # interpolating in floating point would corrupt ids above 2**53).
    nearest = flat_nearest.ravel()
    labels_out = np.take(labels.reshape(labels.shape[0], -1), nearest, axis=1).reshape(labels.shape)
    mask_out = np.take(mask.reshape(mask.shape[0], -1), nearest, axis=1).reshape(mask.shape)
    return raw_out, labels_out, mask_out


def _as_channels(array: np.ndarray, dims: int, what: str) -> np.ndarray:
    if array.ndim == dims:
        return array[np.newaxis]
    if array.ndim == dims + 1:
        return array
    raise ValueError(
        f"{what} has shape {array.shape}, expected {dims} spatial axes and at most one leading "
        "channel axis"
    )


def augment(
    raw: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray | None,
    voxel_size: Sequence[float],
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Augment one crop; returns new ``(raw, labels, mask)`` of the same shapes.

    Parameters
    ----------
    raw:
        Float intensities, normalised to about ``[0, 1]``; ``(C_in, *spatial)`` or
        ``spatial``. Returned as float32.
    labels:
        Integer or bool labels, ``(C, *spatial)`` or ``spatial``; only ever moved, never
        mixed, so every output value is one of the input values.
    mask:
        ``spatial`` array (0 = ignore) moved like the labels, or ``None``.
    voxel_size:
        World units per spatial axis: sets the elastic sizes and which axes may be swapped.
    config, rng:
        What to apply, and the random generator every random choice is drawn from (the same
        generator state always gives the same result).

    Order: elastic (all three arrays), mirroring, transposes, then on raw only
    intensity scale/shift, gamma and noise. Raw is never clipped.
    """
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy Generator (np.random.default_rng(...)), got {type(rng).__name__}"
        )
    voxel = _check_voxel_size(voxel_size)
    dims = len(voxel)
    raw = np.asarray(raw)
    labels = np.asarray(labels)
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
        raise TypeError(f"raw must hold numbers, got dtype {raw.dtype}")
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer or bool, got dtype {labels.dtype}")
    raw_c = _as_channels(raw, dims, "raw").astype(np.float32, copy=False)
    labels_c = _as_channels(labels, dims, "labels")
    spatial = raw_c.shape[1:]
    if labels_c.shape[1:] != spatial:
        raise ValueError(
            f"labels have spatial shape {labels_c.shape[1:]} but raw has {spatial}; "
            "augment needs them on the same grid"
        )
    if mask is None:
        mask_c = np.ones((1, *spatial), dtype=np.uint8)
    else:
        mask = np.asarray(mask)
        if mask.shape != spatial:
            raise ValueError(f"mask has shape {mask.shape}, expected the spatial shape {spatial}")
        mask_c = mask[np.newaxis]

    if _elastic_active(config) and rng.random() < config.elastic.probability:
        margin = required_margin(config, voxel)
        raw_c, labels_c, mask_c = _elastic(
            raw_c, labels_c, mask_c, voxel, config.elastic, margin, rng
        )

    if config.flip:
        flips = tuple(1 + a for a in range(dims) if rng.random() < 0.5)
        if flips:
            raw_c, labels_c, mask_c = (np.flip(x, axis=flips) for x in (raw_c, labels_c, mask_c))

    if config.transpose:
        order = list(range(dims))
        for group in _swappable_groups(voxel, spatial):
            for src, dst in zip(group, rng.permutation(group), strict=True):
                order[src] = int(dst)
        if order != list(range(dims)):
            axes = (0, *(1 + a for a in order))
            raw_c, labels_c, mask_c = (np.transpose(x, axes) for x in (raw_c, labels_c, mask_c))

    raw_c = np.array(raw_c, dtype=np.float32)  # a fresh, contiguous copy we may modify
    intensity = config.intensity
    if intensity.probability > 0 and rng.random() < intensity.probability:
        scale = rng.uniform(*intensity.scale_range)
        shift = rng.uniform(*intensity.shift_range)
        raw_c *= np.float32(scale)
        raw_c += np.float32(shift)
    gamma = config.gamma
    if gamma.probability > 0 and rng.random() < gamma.probability:
        g = np.float32(rng.uniform(*gamma.range))
        # Odd extension: gamma of negative values (after a shift or noise) stays real.
        raw_c = np.sign(raw_c) * np.abs(raw_c) ** g
    noise = config.noise
    if noise.probability > 0 and rng.random() < noise.probability:
        sigma = np.float32(rng.uniform(*noise.sigma_range))
        raw_c += sigma * rng.standard_normal(raw_c.shape, dtype=np.float32)

    raw_out = raw_c.astype(np.float32, copy=False)
    labels_out = np.array(labels_c)  # copies: callers may modify what they get back
    mask_out = np.array(mask_c[0])
    if raw.ndim == dims:
        raw_out = raw_out[0]
    if labels.ndim == dims:
        labels_out = labels_out[0]
    return raw_out, labels_out, (None if mask is None else mask_out)


def _swappable_groups(voxel: tuple[float, ...], shape: tuple[int, ...]) -> list[list[int]]:
    """Groups of >= 2 axes that share voxel size and extent (so swapping them is exact)."""
    groups: dict[tuple[float, int], list[int]] = {}
    for axis, key in enumerate(zip(voxel, shape, strict=True)):
        groups.setdefault(key, []).append(axis)
    return [g for g in groups.values() if len(g) > 1]
