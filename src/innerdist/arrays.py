"""In-memory arrays with a world-coordinate frame, and the types that say what an array holds.

:class:`NumpyArray` is a numpy array plus the ROI it covers (world units), its voxel size
and the names of its axes. Channel axes are named ``"c"`` or end in ``"^"`` (``"c^"``, the
funlib.persistence convention); every other axis is spatial::

    >>> import numpy as np
    >>> from funlib.geometry import Roi
    >>> a = NumpyArray.from_np_array(
    ...     np.zeros((2, 4, 6), np.float32), Roi((0, 0), (16, 24)), (4, 4), ["c^", "y", "x"]
    ... )
    >>> a.dims, a.num_channels, a.voxel_size
    (2, 2, (4, 4))

The array types (:class:`DistanceArray`, :class:`IntensitiesArray`, ...) describe how an
array may be resampled: distances and intensities interpolate, labels and masks do not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi

__all__ = [
    "ArrayType",
    "DistanceArray",
    "InstanceArray",
    "IntensitiesArray",
    "MaskArray",
    "NumpyArray",
    "as_numpy_array",
    "is_channel_axis",
]


def is_channel_axis(name: str) -> bool:
    """``"c"`` and names ending in ``"^"`` are channel axes; the rest are spatial."""
    return name == "c" or name.endswith("^")


class NumpyArray:
    """A numpy array that knows where it lies in the world.

    Use :meth:`from_np_array` (checked) or :meth:`from_gp_array` to build one; ``roi`` and
    ``voxel_size`` are in world units and cover the spatial axes only.
    """

    def __init__(
        self,
        data: np.ndarray,
        roi: Roi,
        voxel_size: Coordinate,
        axes: Sequence[str],
        *,
        writable: bool = True,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.data = data
        self.roi = roi
        self.voxel_size = voxel_size
        self.axes = list(axes)
        self.writable = writable
        self.attrs: dict[str, Any] = dict(attrs or {})

    @classmethod
    def from_np_array(
        cls,
        array: np.ndarray,
        roi: Roi,
        voxel_size: Sequence[int],
        axes: Sequence[str],
        *,
        attrs: Mapping[str, Any] | None = None,
    ) -> NumpyArray:
        """Wrap ``array``, checking that ``axes`` match its ndim and ``roi`` its shape.

        ``roi.shape`` must equal the spatial shape times ``voxel_size``.
        """
        if not isinstance(array, np.ndarray):
            raise TypeError(f"expected a numpy array, got {type(array).__name__}")
        axes = list(axes)
        if len(axes) != array.ndim:
            raise ValueError(
                f"got {len(axes)} axis names {axes} for an array with {array.ndim} dimensions "
                f"(shape {array.shape})"
            )
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis names must be unique, got {axes}")
        spatial_shape = tuple(
            s for s, name in zip(array.shape, axes, strict=True) if not is_channel_axis(name)
        )
        voxel = Coordinate(voxel_size)
        if voxel.dims != len(spatial_shape):
            raise ValueError(
                f"voxel size {tuple(voxel)} has {voxel.dims} entries but the array has "
                f"{len(spatial_shape)} spatial axes (axes {axes})"
            )
        if any(v <= 0 for v in voxel):
            raise ValueError(f"voxel size must be positive, got {tuple(voxel)}")
        roi = Roi(roi.offset, roi.shape)
        expected = Coordinate(spatial_shape) * voxel
        if roi.shape != expected:
            raise ValueError(
                f"roi shape {tuple(roi.shape)} does not match spatial shape {spatial_shape} x "
                f"voxel size {tuple(voxel)} = {tuple(expected)}"
            )
        return cls(array, roi, voxel, axes, attrs=attrs)

    @classmethod
    def from_gp_array(cls, array: Any) -> NumpyArray:
        """Wrap a gunpowder ``Array`` (anything with ``.data`` and ``.spec.roi/.voxel_size``).

        gunpowder arrays carry no axis names: leading extra axes become channels ``c^``
        (only one is allowed) and the spatial axes are named ``d0, d1, ...``.
        """
        try:
            data = np.asarray(array.data)
            roi = array.spec.roi
            voxel_size = array.spec.voxel_size
        except AttributeError as e:
            raise TypeError(
                f"expected a gunpowder-like array with .data and .spec.roi/.spec.voxel_size, "
                f"got {type(array).__name__}"
            ) from e
        spatial = len(voxel_size)
        extra = data.ndim - spatial
        if extra not in (0, 1):
            raise ValueError(
                f"gunpowder array of shape {data.shape} has {extra} non-spatial axes for "
                f"{spatial} spatial ones; expected 0 or 1 channel axis"
            )
        axes = ["c^"] * extra + [f"d{i}" for i in range(spatial)]
        return cls.from_np_array(data, roi, voxel_size, axes)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.data.dtype

    @property
    def channel_axes(self) -> list[int]:
        return [i for i, name in enumerate(self.axes) if is_channel_axis(name)]

    @property
    def spatial_axes(self) -> list[str]:
        return [name for name in self.axes if not is_channel_axis(name)]

    @property
    def dims(self) -> int:
        """Number of spatial axes."""
        return len(self.spatial_axes)

    @property
    def num_channels(self) -> int:
        """Size of the channel axis; ``ValueError`` when the array has none."""
        channel_axes = self.channel_axes
        if not channel_axes:
            raise ValueError(f"array with axes {self.axes} has no channel axis")
        return int(self.data.shape[channel_axes[0]])

    def __getitem__(self, roi: Roi) -> np.ndarray:
        """The data inside ``roi`` (world units, voxel aligned, within :attr:`roi`)."""
        if not self.roi.contains(roi):
            raise ValueError(f"requested roi {roi} is not inside the array's roi {self.roi}")
        begin = (roi.begin - self.roi.begin) / self.voxel_size
        shape = roi.shape / self.voxel_size
        index: list[slice] = []
        spatial = iter(zip(begin, shape, strict=True))
        for name in self.axes:
            if is_channel_axis(name):
                index.append(slice(None))
            else:
                b, s = next(spatial)
                index.append(slice(b, b + s))
        return self.data[tuple(index)]

    def __repr__(self) -> str:
        return (
            f"NumpyArray(shape={self.data.shape}, dtype={self.data.dtype}, roi={self.roi}, "
            f"voxel_size={tuple(self.voxel_size)}, axes={self.axes})"
        )


def as_numpy_array(array: Any) -> NumpyArray:
    """Turn a :class:`NumpyArray`, a :class:`funlib.persistence.Array` or a gunpowder
    array into a :class:`NumpyArray` (reading the data into memory)."""
    if isinstance(array, NumpyArray):
        return array
    if hasattr(array, "axis_names") and hasattr(array, "roi") and hasattr(array, "voxel_size"):
        # funlib.persistence.Array: indexing with its ROI reads everything as numpy.
        data = np.asarray(array[array.roi])
        return NumpyArray.from_np_array(data, array.roi, array.voxel_size, array.axis_names)
    if hasattr(array, "spec") and hasattr(array, "data"):
        return NumpyArray.from_gp_array(array)
    raise TypeError(
        "expected a NumpyArray, a funlib.persistence.Array or a gunpowder Array, got "
        f"{type(array).__name__} (plain numpy arrays carry no voxel size: wrap them with "
        "NumpyArray.from_np_array)"
    )


class ArrayType(ABC):
    """What an array holds, and therefore how it may be resampled."""

    @property
    @abstractmethod
    def interpolatable(self) -> bool:
        """Whether values may be interpolated (linear resampling) or only copied."""


@dataclass(frozen=True)
class DistanceArray(ArrayType):
    """Normalised distances per class (channel), in ``[0, max)``.

    ``classes`` maps channel index to a class name, e.g. ``{0: "mito"}``.
    """

    classes: dict[int, str] = field(default_factory=dict)
    max: float = 1.0

    @property
    def interpolatable(self) -> bool:
        return True


@dataclass(frozen=True)
class IntensitiesArray(ArrayType):
    """Raw image intensities in ``[min, max]`` (e.g. EM data), one entry per channel."""

    channels: dict[int, str] = field(default_factory=lambda: {0: "raw"})
    min: float = 0.0
    max: float = 1.0

    @property
    def interpolatable(self) -> bool:
        return True


@dataclass(frozen=True)
class MaskArray(ArrayType):
    """A binary mask (1 = use, 0 = ignore); resampled by nearest neighbour only."""

    @property
    def interpolatable(self) -> bool:
        return False


@dataclass(frozen=True)
class InstanceArray(ArrayType):
    """Instance ids per class (0 = background); resampled by nearest neighbour only."""

    classes: dict[int, str] = field(default_factory=dict)

    @property
    def interpolatable(self) -> bool:
        return False
