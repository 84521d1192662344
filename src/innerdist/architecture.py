"""Network architectures: the abstract :class:`Architecture` and the 2-D/3-D :class:`UNet`.

An architecture is a small, validated, JSON-serialisable description of a network plus the
shape arithmetic that blockwise prediction and training need; :meth:`Architecture.module`
builds a fresh ``torch.nn.Module`` from it. All shapes here are spatial and in voxels; tensors
are laid out ``(batch, channels, *spatial)``.

U-Net geometry (valid padding, one downsampling level, one axis)::

    input   |<------------------------ n ------------------------>|
    level 0  down convs (shrink by d0) ->  skip   |<--- n - d0 --->|
                                       max-pool by f
    level 1  down convs (bottom)        |<-- (n - d0)/f - d1 -->|
                                       upsample by f
    level 0  crop skip to the upsampled size, concatenate, up convs (shrink by u0)
    output          |<--- n - 2 * context --->|
                    ^ context voxels on each side

Levels are numbered from 0 (full resolution) to ``len(downsample_factors)`` (the bottom).
"""

from __future__ import annotations

import abc
import itertools
import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from funlib.geometry import Coordinate

from innerdist.export_unet import _ACTIVATIONS, UNetBody

__all__ = ["ACTIVATIONS", "Architecture", "UNet"]

# Element-wise activations that take no required arguments; looked up by name in torch.nn
# (never eval'd). Channel-mixing ones (Softmax, GLU) would break the channel bookkeeping.
# Defined with the network itself, which exported packages carry on its own.
ACTIVATIONS: tuple[str, ...] = _ACTIVATIONS

_PADDINGS = ("valid", "same")
_UPSAMPLES = ("transposed", "nearest")


def _as_int(value: object, what: str, minimum: int) -> int:
    """``value`` as an ``int >= minimum``; bools and floats are rejected, not rounded."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    if int(value) < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {int(value)}")
    return int(value)


def _as_int_tuple(value: object, what: str, length: int, minimum: int) -> tuple[int, ...]:
    """A sequence of ``length`` integers ``>= minimum`` as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a sequence of {length} integers, got {value!r}")
    if len(value) != length:
        raise ValueError(f"{what} must have {length} entries (one per axis), got {list(value)}")
    return tuple(_as_int(v, f"{what} entry {i}", minimum) for i, v in enumerate(value))


def _as_list(value: object, what: str) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a list, got {value!r}")
    return list(value)


class Architecture(abc.ABC):
    """A network body: maps ``(N, num_in_channels, *input_shape)`` to ``num_out_channels``.

    Subclasses provide the shapes and :meth:`module`; a :class:`innerdist.model.Model` puts a
    prediction head on top. ``input_shape`` is the training input size in voxels;
    prediction uses ``input_shape + eval_shape_increase`` (bigger blocks are cheaper per voxel
    when no gradients are kept).
    """

    @property
    @abc.abstractmethod
    def input_shape(self) -> Coordinate:
        """Spatial input shape for training, in voxels."""

    @property
    @abc.abstractmethod
    def num_in_channels(self) -> int:
        """Channels of the input tensor."""

    @property
    @abc.abstractmethod
    def num_out_channels(self) -> int:
        """Channels (feature maps) that :meth:`module` outputs."""

    @abc.abstractmethod
    def module(self) -> torch.nn.Module:
        """A freshly initialised ``torch.nn.Module`` for this architecture."""

    @property
    def dims(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.input_shape)

    @property
    def eval_shape_increase(self) -> Coordinate:
        """Voxels added to ``input_shape`` at prediction time (zeros unless overridden)."""
        return Coordinate((0,) * self.dims)

    def scale(self, voxel_size: Sequence[float]) -> Coordinate:
        """Voxel size of the output given the input's ``voxel_size`` (world units, e.g. nm).

        The base class keeps the resolution (the output is on the input grid). ``voxel_size``
        must have one whole, positive entry per spatial axis (``Coordinate`` holds integers).
        """
        if isinstance(voxel_size, (str, bytes)) or not isinstance(voxel_size, Sequence):
            raise TypeError(f"voxel_size must be a sequence of numbers, got {voxel_size!r}")
        if len(voxel_size) != self.dims:
            raise ValueError(
                f"voxel_size must have {self.dims} entries (one per spatial axis), "
                f"got {list(voxel_size)}"
            )
        sizes: list[int] = []
        for v in voxel_size:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"voxel_size entries must be numbers, got {list(voxel_size)}")
            if v <= 0 or float(v) != int(v):
                raise ValueError(
                    f"voxel_size entries must be positive whole numbers (world units), "
                    f"got {list(voxel_size)}"
                )
            sizes.append(int(v))
        return Coordinate(sizes)


class UNet(Architecture):
    """A 2-D or 3-D U-Net, as a validated and JSON-serialisable configuration.

    Parameters
    ----------
    input_shape
        Spatial training input shape in voxels (2 or 3 entries); ``dims = len(input_shape)``.
        Must be valid for the network (see :meth:`valid_input_shape`).
    num_in_channels
        Channels of the raw input.
    num_fmaps
        Feature maps at level 0; level ``l`` has ``num_fmaps * fmap_inc_factor**l``.
    num_fmaps_out
        Feature maps of the last convolution (= ``num_out_channels``); default ``num_fmaps``.
    fmap_inc_factor
        Integer growth of feature maps per level.
    downsample_factors
        One max-pooling factor per level and axis, e.g. ``[(1, 2, 2), (2, 2, 2)]`` for data
        that is anisotropic at full resolution. Default: two levels of 2 on every axis.
        ``[]`` gives a plain stack of convolutions.
    kernel_size_down, kernel_size_up
        Per level, the list of convolution kernel sizes (an int or one odd size per axis,
        e.g. ``(1, 3, 3)``). ``kernel_size_down`` has ``len(downsample_factors) + 1`` levels
        (the last is the bottom), ``kernel_size_up`` has ``len(downsample_factors)``. Default:
        two ``3**dims`` convolutions per level. Sizes must be odd so that a convolution
        removes the same number of voxels on both sides and skip connections stay centred.
    padding
        ``"valid"`` (no padding: the output shrinks by :attr:`context` on each side and tiles
        seamlessly, see :attr:`output_step`) or ``"same"`` (zero padding: output shape =
        input shape, but values near block borders depend on the block).
    activation
        Name of an element-wise ``torch.nn`` activation, one of :data:`ACTIVATIONS`; applied
        after every convolution, including the last.
    eval_shape_increase
        Voxels added to ``input_shape`` for prediction; the sum must be a valid shape too
        (in valid mode: a multiple of :attr:`output_step`). Default zeros.
    upsample
        ``"transposed"``: a transposed convolution with kernel = stride = factor that also
        reduces the feature maps to those of the level above; ``"nearest"``: nearest-neighbour
        repetition, feature maps unchanged.
    batch_norm
        Batch normalisation between each convolution and its activation. In training mode
        it couples the voxels of a batch, so blockwise consistency only holds in eval mode.

    Examples
    --------
    >>> unet = UNet(input_shape=(44, 44), num_fmaps=4, downsample_factors=[(2, 2)])
    >>> unet.output_shape(unet.input_shape)
    (28, 28)
    >>> unet.context, unet.output_step
    ((8, 8), (2, 2))
    >>> unet.valid_input_shape((45, 40))
    (46, 40)
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_in_channels: int = 1,
        num_fmaps: int = 12,
        num_fmaps_out: int | None = None,
        fmap_inc_factor: int = 2,
        downsample_factors: Sequence[Sequence[int]] | None = None,
        kernel_size_down: Sequence[Sequence[int | Sequence[int]]] | None = None,
        kernel_size_up: Sequence[Sequence[int | Sequence[int]]] | None = None,
        padding: str = "valid",
        activation: str = "ReLU",
        eval_shape_increase: Sequence[int] | None = None,
        upsample: str = "transposed",
        batch_norm: bool = False,
    ) -> None:
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
            raise TypeError(
                f"input_shape must be a sequence of 2 or 3 integers, got {input_shape!r}"
            )
        if len(input_shape) not in (2, 3):
            raise ValueError(
                f"input_shape must have 2 or 3 entries (2-D or 3-D), got {list(input_shape)}"
            )
        dims = len(input_shape)
        shape = _as_int_tuple(input_shape, "input_shape", dims, 1)

        self._num_in_channels = _as_int(num_in_channels, "num_in_channels", 1)
        self._num_fmaps = _as_int(num_fmaps, "num_fmaps", 1)
        self._num_fmaps_out = (
            self._num_fmaps
            if num_fmaps_out is None
            else _as_int(num_fmaps_out, "num_fmaps_out", 1)
        )
        self._fmap_inc_factor = _as_int(fmap_inc_factor, "fmap_inc_factor", 1)

        if downsample_factors is None:
            downsample_factors = [(2,) * dims, (2,) * dims]
        self._downsample_factors = tuple(
            _as_int_tuple(f, f"downsample_factors level {level}", dims, 1)
            for level, f in enumerate(_as_list(downsample_factors, "downsample_factors"))
        )
        num_levels = len(self._downsample_factors)

        default_kernels = [[3] * dims, [3] * dims]
        if kernel_size_down is None:
            kernel_size_down = [default_kernels] * (num_levels + 1)
        if kernel_size_up is None:
            kernel_size_up = [default_kernels] * num_levels
        self._kernel_size_down = self._parse_kernels(
            kernel_size_down, "kernel_size_down", num_levels + 1, dims
        )
        self._kernel_size_up = self._parse_kernels(
            kernel_size_up, "kernel_size_up", num_levels, dims
        )

        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {list(_PADDINGS)}, got {padding!r}")
        self._padding = padding
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
        self._activation = activation
        if upsample not in _UPSAMPLES:
            raise ValueError(f"upsample must be one of {list(_UPSAMPLES)}, got {upsample!r}")
        self._upsample = upsample
        if not isinstance(batch_norm, bool):
            raise TypeError(f"batch_norm must be a bool, got {batch_norm!r}")
        self._batch_norm = batch_norm

        # Shapes last: checking them needs the factors and kernels above.
        self._input_shape = Coordinate(shape)
        self._check_shape(shape, "input_shape")
        if eval_shape_increase is None:
            eval_shape_increase = (0,) * dims
        increase = _as_int_tuple(eval_shape_increase, "eval_shape_increase", dims, 0)
        self._eval_shape_increase = Coordinate(increase)
        eval_shape = tuple(s + i for s, i in zip(shape, increase, strict=True))
        reason = self._propagate(eval_shape, tuple(range(dims)))[1]
        if reason is not None:
            raise ValueError(
                f"eval_shape_increase {list(increase)} makes the prediction input shape "
                f"input_shape + eval_shape_increase = {eval_shape} invalid: {reason}; "
                f"with the valid input_shape {shape} the increase must be a multiple of "
                f"output_step {tuple(self.output_step)}"
            )

    @staticmethod
    def _parse_kernels(
        value: object, what: str, num_levels: int, dims: int
    ) -> tuple[tuple[tuple[int, ...], ...], ...]:
        levels = _as_list(value, what)
        if len(levels) != num_levels:
            expected = (
                "len(downsample_factors) + 1" if what == "kernel_size_down"
                else "len(downsample_factors)"
            )
            raise ValueError(
                f"{what} must have {expected} = {num_levels} levels, got {len(levels)}: {value!r}"
            )
        parsed = []
        for level, kernels in enumerate(levels):
            kernels = _as_list(kernels, f"{what} level {level}")
            if not kernels:
                raise ValueError(f"{what} level {level} must list at least one kernel size, got []")
            sizes = []
            for conv, k in enumerate(kernels):
                where = f"{what} level {level} conv {conv}"
                if isinstance(k, numbers.Integral) and not isinstance(k, bool):
                    size = (_as_int(k, where, 1),) * dims  # one size for every axis
                else:
                    size = _as_int_tuple(k, where, dims, 1)
                if any(s % 2 == 0 for s in size):
                    raise ValueError(
                        f"{where}: kernel size {list(size)} has even entries; only odd sizes "
                        f"remove the same number of voxels on both sides"
                    )
                sizes.append(size)
            parsed.append(tuple(sizes))
        return tuple(parsed)

    # --- the Architecture interface ---------------------------------------------------------

    @property
    def input_shape(self) -> Coordinate:
        return self._input_shape

    @property
    def num_in_channels(self) -> int:
        return self._num_in_channels

    @property
    def num_out_channels(self) -> int:
        return self._num_fmaps_out

    @property
    def eval_shape_increase(self) -> Coordinate:
        return self._eval_shape_increase

    def module(self) -> torch.nn.Module:
        return _UNetModule(self)

    # --- configuration ----------------------------------------------------------------------

    @property
    def num_fmaps(self) -> int:
        return self._num_fmaps

    @property
    def fmap_inc_factor(self) -> int:
        return self._fmap_inc_factor

    @property
    def downsample_factors(self) -> tuple[Coordinate, ...]:
        return tuple(Coordinate(f) for f in self._downsample_factors)

    @property
    def kernel_size_down(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        return self._kernel_size_down

    @property
    def kernel_size_up(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        return self._kernel_size_up

    @property
    def padding(self) -> str:
        return self._padding

    @property
    def activation(self) -> str:
        return self._activation

    @property
    def upsample(self) -> str:
        return self._upsample

    @property
    def batch_norm(self) -> bool:
        return self._batch_norm

    @property
    def num_levels(self) -> int:
        """Number of downsampling steps (``len(downsample_factors)``); levels are 0..this."""
        return len(self._downsample_factors)

    def fmaps_at(self, level: int) -> int:
        """Feature maps of the convolutions at ``level`` (``num_fmaps * inc**level``)."""
        return self._num_fmaps * self._fmap_inc_factor**level

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON types (lists, ints, strings), defaults resolved."""
        return {
            "input_shape": list(self._input_shape),
            "num_in_channels": self._num_in_channels,
            "num_fmaps": self._num_fmaps,
            "num_fmaps_out": self._num_fmaps_out,
            "fmap_inc_factor": self._fmap_inc_factor,
            "downsample_factors": [list(f) for f in self._downsample_factors],
            "kernel_size_down": [[list(k) for k in lv] for lv in self._kernel_size_down],
            "kernel_size_up": [[list(k) for k in lv] for lv in self._kernel_size_up],
            "padding": self._padding,
            "activation": self._activation,
            "eval_shape_increase": list(self._eval_shape_increase),
            "upsample": self._upsample,
            "batch_norm": self._batch_norm,
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> UNet:
        """Rebuild a U-Net from :meth:`to_dict` output (e.g. read back from JSON)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping (dict), got {type(config).__name__}")
        known = set(cls._parameter_names())
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown UNet config keys {unknown}; known keys: {sorted(known)}")
        if "input_shape" not in config:
            raise ValueError("UNet config is missing the required key 'input_shape'")
        return cls(**dict(config))

    @staticmethod
    def _parameter_names() -> tuple[str, ...]:
        return (
            "input_shape",
            "num_in_channels",
            "num_fmaps",
            "num_fmaps_out",
            "fmap_inc_factor",
            "downsample_factors",
            "kernel_size_down",
            "kernel_size_up",
            "padding",
            "activation",
            "eval_shape_increase",
            "upsample",
            "batch_norm",
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UNet):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"UNet({args})"

    # --- shape arithmetic -------------------------------------------------------------------

    @property
    def output_step(self) -> Coordinate:
        """Product of the downsample factors per axis, in voxels.

        Valid input shapes differ by multiples of it, and so do valid output shapes. In valid
        mode the network is translation-equivariant only for shifts that are multiples of it
        (max-pooling windows must fall on the same grid): two blocks predict the same values
        where their outputs overlap **iff their input offsets differ by a multiple of
        output_step**, so blockwise prediction must put block inputs on that grid. Blocks
        whose write ROIs touch are offset by the write size, so the write size must be a
        multiple of output_step too. The output shape usually is one (factor-2 U-Nets with
        odd kernels), but not always (one level of factor 3 with two 3-wide convolutions
        per level gives output sizes of 2 mod 3); then write a smaller, multiple-of-step
        part of each block's output.
        """
        step = [1] * self.dims
        for factor in self._downsample_factors:
            step = [s * f for s, f in zip(step, factor, strict=True)]
        return Coordinate(step)

    @property
    def context(self) -> Coordinate:
        """Voxels lost on each side of every axis: ``(input_shape - output_shape) / 2``.

        The same for every valid input shape. An output voxel depends on the input voxels
        within ``context`` of it (the receptive field is ``2 * context + 1`` wide, at least),
        so blockwise prediction reads a block's write ROI grown by ``context``. Zero for
        ``padding="same"``, whose border voxels see zero padding instead of real context.
        """
        output = self.output_shape(self._input_shape)
        return Coordinate((i - o) // 2 for i, o in zip(self._input_shape, output, strict=True))

    def output_shape(self, input_shape: Sequence[int]) -> Coordinate:
        """Spatial output shape (voxels) for a spatial ``input_shape`` (voxels).

        Raises ``ValueError`` naming the level and shapes when ``input_shape`` is not valid:
        a shape that does not divide by a level's downsample factor (in valid mode, the shape
        after that level's convolutions) or that shrinks to nothing.
        """
        shape = _as_int_tuple(input_shape, "input_shape", self.dims, 1)
        return self._check_shape(shape, "input shape")

    def valid_input_shape(self, min_shape: Sequence[int]) -> Coordinate:
        """The smallest valid input shape that is ``>= min_shape`` on every axis (voxels).

        Axes are independent, and on each one the valid sizes are ``n0 + k * output_step``
        for ``k >= 0``; so this is, per axis, the first valid size at or above ``min_shape``.
        """
        shape = _as_int_tuple(min_shape, "min_shape", self.dims, 1)
        result = []
        for axis, size in enumerate(shape):
            # Terminates: above the size where nothing shrinks to zero, every run of
            # output_step consecutive sizes holds a valid one.
            for n in itertools.count(size):
                if self._propagate((n,), (axis,))[1] is None:
                    result.append(n)
                    break
        return Coordinate(result)

    def _check_shape(self, shape: tuple[int, ...], what: str) -> Coordinate:
        output, reason = self._propagate(shape, tuple(range(len(shape))))
        if reason is not None or output is None:
            suggestion = self.valid_input_shape(shape)
            raise ValueError(
                f"{what} {shape} (voxels) is not valid for this U-Net: {reason}; the smallest "
                f"valid shape >= it is {tuple(suggestion)} (see UNet.valid_input_shape)"
            )
        return Coordinate(output)

    def _propagate(
        self, shape: tuple[int, ...], axes: tuple[int, ...]
    ) -> tuple[tuple[int, ...] | None, str | None]:
        """Walk ``shape`` (sizes of ``axes``) through the network: ``(output, None)`` or
        ``(None, why not)``. The single source of truth for the shape rules; the module's
        forward pass checks its input with it too."""

        def pick(values: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(values[a] for a in axes)

        def convolve(size: tuple[int, ...], kernels: tuple[tuple[int, ...], ...]) -> tuple[
            int, ...
        ]:
            if self._padding == "same":
                return size
            for kernel in kernels:
                size = tuple(s - (k - 1) for s, k in zip(size, pick(kernel), strict=True))
            return size

        def describe(kernels: tuple[tuple[int, ...], ...]) -> str:
            return str([list(pick(k)) for k in kernels])

        size = shape
        for level, factor in enumerate(self._downsample_factors):
            kernels = self._kernel_size_down[level]
            after = convolve(size, kernels)
            if min(after) < 1:
                return None, (
                    f"level {level}: the down convolutions {describe(kernels)} shrink "
                    f"{size} to {after}"
                )
            f = pick(factor)
            if any(a % fa for a, fa in zip(after, f, strict=True)):
                return None, (
                    f"level {level}: the shape {after} after the down convolutions "
                    f"{describe(kernels)} is not divisible by the downsample factor {f}"
                )
            size = tuple(a // fa for a, fa in zip(after, f, strict=True))

        bottom = self.num_levels
        kernels = self._kernel_size_down[bottom]
        after = convolve(size, kernels)
        if min(after) < 1:
            return None, (
                f"level {bottom} (bottom): the convolutions {describe(kernels)} shrink "
                f"{size} to {after}"
            )
        size = after

        for level in reversed(range(self.num_levels)):
            upsampled = tuple(
                s * fa for s, fa in zip(size, pick(self._downsample_factors[level]), strict=True)
            )
            # The skip connection is always at least this big: it lost only this level's
            # down convolutions, the upsampled path also everything below.
            kernels = self._kernel_size_up[level]
            after = convolve(upsampled, kernels)
            if min(after) < 1:
                return None, (
                    f"level {level}: the up convolutions {describe(kernels)} shrink the "
                    f"upsampled shape {upsampled} to {after}"
                )
            size = after
        return size, None


class _UNetModule(UNetBody):
    """The ``torch.nn.Module`` built by :meth:`UNet.module`; input ``(N, C, *spatial)``.

    The layers are :class:`innerdist.export_unet.UNetBody`'s, the one definition of the
    network that exported packages carry too; this adds the checks of the input's shape.
    """

    def __init__(self, unet: UNet) -> None:
        super().__init__(
            unet.dims,
            unet.num_in_channels,
            unet.num_fmaps,
            unet.num_out_channels,
            unet.fmap_inc_factor,
            [list(f) for f in unet.downsample_factors],
            [[list(k) for k in level] for level in unet.kernel_size_down],
            [[list(k) for k in level] for level in unet.kernel_size_up],
            unet.padding,
            unet.activation,
            unet.upsample,
            unet.batch_norm,
        )
        self.unet = unet
        self._valid_shapes: set[tuple[int, ...]] = set()  # spatial shapes checked already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.unet.dims + 2:
            raise ValueError(
                f"expected a {self.unet.dims + 2}-D tensor (batch, channels, "
                f"{self.unet.dims} spatial axes), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.unet.num_in_channels:
            raise ValueError(
                f"expected {self.unet.num_in_channels} input channels, got shape "
                f"{tuple(x.shape)}"
            )
        # Pooling would silently floor an invalid shape and misalign the skip connections.
        # (Checked once per shape: prediction runs thousands of tiles of one shape.)
        spatial = tuple(int(s) for s in x.shape[2:])
        if spatial not in self._valid_shapes:
            self.unet.output_shape(spatial)
            self._valid_shapes.add(spatial)
        return super().forward(x)
