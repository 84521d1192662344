"""Prediction with a trained network: in memory (:func:`predict_array`) and blockwise over
volumes on disk (:func:`predict_volume`), with the same numbers either way.

How an output region is predicted (one axis, voxels; ``m`` is the margin)::

    data                |0 1 2 . . .                         . . . n-1|
    output tiles        [  tile 0  ][  tile 1  ][  tile 2  ]             on the step grid
    input of tile 0   [m|  tile 0  |m]                                   grown by m, mirrored
    input of tile 1               [m|  tile 1  |m]                       beyond the data

Every network input starts at ``k * output_step - m`` voxels from the origin of the raw data,
whatever block or array it belongs to. The U-Net is translation-equivariant for shifts by its
output step (its pooling windows fall on the same grid), and with valid padding an output
voxel depends only on the input within ``context`` of it; so every output voxel gets the same
value however the volume is cut into blocks and tiles. Outside the raw data, the input is the
data mirrored at its edge (numpy's ``"reflect"``: ``a b c | b a``; a one-voxel axis repeats its
voxel), after normalisation, in memory and blockwise alike.

Test-time augmentation (``tta``) averages the predictions of the data seen through every
flip and every transpose that the voxel size allows (a transpose only exchanges axes of
equal voxel size: 8 views in 2-D, 16 for a (z, y, x) volume with y = x, 48 for isotropic
3-D; prediction costs that many times more). Each view is predicted as above *in its own
coordinates* (its tile grid anchored at the view's origin, mirrored at the same edges,
since mirroring commutes with flips and transposes) and mapped back, so a block of a
TTA prediction equals the same region of the in-memory TTA prediction, as without TTA.

For ``padding="valid"`` the margin is the U-Net's ``context``. For ``padding="same"`` the
network pads each convolution with zeros; the margin is then the receptive-field radius
(the valid-mode context plus ``output_step - 1``, rounded up to the step), so output voxels
that are written never see those zeros.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time as clock
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from funlib.geometry import Coordinate, Roi

from innerdist.attrs import (
    POSTPROCESSING_ATTR,
    PREDICTOR_ATTR,
    QUANTIZATION_ATTR,
    TTA_ATTR,
)

# Normalisation is owned by innerdist.normalize; re-exported here, where it was first.
from innerdist.normalize import NonFiniteRawError, normalize_raw
from innerdist.units import world_unit

if TYPE_CHECKING:
    import torch
    from funlib.persistence import Array

    from innerdist.architecture import UNet
    from innerdist.model import Model

__all__ = [
    "OUTPUT_DTYPES",
    "POSTPROCESSING_ATTR",
    "PREDICTOR_ATTR",
    "QUANTIZATION_ATTR",
    "TTA_ATTR",
    "NonFiniteRawError",
    "dequantize",
    "normalize_raw",
    "parse_roi",
    "predict_array",
    "predict_volume",
    "tta_transforms",
]

logger = logging.getLogger(__name__)

OUTPUT_DTYPES = ("float32", "float16", "uint8")
#: ``--precision``: the autocast dtype of the forward pass on a CUDA GPU (None: fp32).
PRECISIONS: dict[str, str | None] = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}

# value = stored * scale + offset. Inner-distance predictions live in [0, 1); uint8 spends its
# 256 levels there (values outside are clipped), float16 keeps the value itself.
_QUANTIZATION: dict[str, dict[str, float]] = {
    "float16": {"scale": 1.0, "offset": 0.0},
    "uint8": {"scale": 1.0 / 255.0, "offset": 0.0},
}


def dequantize(data: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """Stored prediction values -> predicted values (float32), using the output's attrs.

    Outputs written as ``uint8``/``float16`` carry ``innerdist_quantization`` =
    ``{"scale", "offset"}`` and ``value = stored * scale + offset``; others are returned as
    float32 unchanged.
    """
    mapping = attrs.get(QUANTIZATION_ATTR)
    values = np.asarray(data, dtype=np.float32)
    if mapping is None:
        return values
    return (values * np.float32(mapping["scale"]) + np.float32(mapping["offset"])).astype(
        np.float32
    )


def _quantize(prediction: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return prediction.astype(np.float32, copy=False)
    mapping = _QUANTIZATION[dtype]
    stored = (prediction - mapping["offset"]) / mapping["scale"]
    if dtype == "uint8":
        return np.clip(np.rint(stored), 0, 255).astype(np.uint8)
    limit = float(np.finfo(np.float16).max)
    return np.clip(stored, -limit, limit).astype(np.float16)


# --- geometry ------------------------------------------------------------------------------


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _valid_context(unet: UNet) -> tuple[int, ...]:
    """What ``unet.context`` would be with valid padding: half the voxels its convolutions
    remove, each counted at the resolution of its level."""
    shrink = [0] * unet.dims
    scale = [1] * unet.dims
    for level in range(unet.num_levels + 1):
        kernels = list(unet.kernel_size_down[level])
        if level < unet.num_levels:
            kernels += list(unet.kernel_size_up[level])
        for kernel in kernels:
            for axis in range(unet.dims):
                shrink[axis] += (kernel[axis] - 1) * scale[axis]
        if level < unet.num_levels:
            factors = unet.downsample_factors[level]
            scale = [s * f for s, f in zip(scale, factors, strict=True)]
    return tuple(s // 2 for s in shrink)


class _Tiling:
    """The geometry of blockwise-consistent prediction with a U-Net (voxels):

    - ``step``: the output step; network inputs start on this grid (minus the margin);
    - ``margin``: input needed beyond an output tile on each side;
    - ``crop``: where the tile starts in the network's output;
    - ``max_tile``: the largest output tile per forward pass (default: the eval output
      shape, rounded down to the step).
    """

    def __init__(self, unet: UNet, tile_shape: Sequence[int] | None = None) -> None:
        self.unet = unet
        self.step = tuple(int(s) for s in unet.output_step)
        if unet.padding == "valid":
            self.margin = tuple(int(c) for c in unet.context)
            offset = self.margin
        else:
            self.margin = tuple(
                _round_up(c + s - 1, s)
                for c, s in zip(_valid_context(unet), self.step, strict=True)
            )
            offset = (0,) * unet.dims
        self.crop = tuple(m - o for m, o in zip(self.margin, offset, strict=True))
        if tile_shape is None:
            eval_input = unet.input_shape + unet.eval_shape_increase
            tile_shape = [
                (n - 2 * m) // s * s
                for n, m, s in zip(eval_input, self.margin, self.step, strict=True)
            ]
        self.max_tile = tuple(
            max(s, _round_up(int(t), s)) for t, s in zip(tile_shape, self.step, strict=True)
        )

    def tile_shape(self, extent: Sequence[int]) -> tuple[int, ...]:
        """Tiles for an output extent: as few as ``max_tile`` allows, split evenly, each a
        multiple of the step (so the tile grid stays on the step grid)."""
        tiles = []
        for e, t, s in zip(extent, self.max_tile, self.step, strict=True):
            count = math.ceil(e / t)
            tiles.append(_round_up(math.ceil(e / count), s))
        return tuple(tiles)

    def input_shape(self, tile: Sequence[int]) -> tuple[int, ...]:
        """Network input shape that predicts an output tile (plus margins)."""
        wanted = [t + 2 * m for t, m in zip(tile, self.margin, strict=True)]
        return tuple(int(n) for n in self.unet.valid_input_shape(wanted))


class _Runner:
    """A model on a device with its tiling; runs batches of tiles."""

    def __init__(
        self,
        model: Model,
        device: torch.device,
        *,
        tile_shape: Sequence[int] | None = None,
        batch_size: int = 1,
        precision: str = "fp32",
    ) -> None:
        from innerdist.architecture import UNet

        if not isinstance(model.architecture, UNet):
            raise TypeError(
                "prediction supports UNet models, got a "
                f"{type(model.architecture).__name__} architecture"
            )
        self.model = model
        self.device = device
        self.tiling = _Tiling(model.architecture, tile_shape)
        self.batch_size = batch_size
        self.num_out_channels = model.num_out_channels
        self.precision = precision

    def forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        half = PRECISIONS[self.precision]
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=getattr(torch, half or "float16"), enabled=half is not None
        ):
            x = torch.from_numpy(batch).to(self.device)
            y = self.model(x)
            return y.float().cpu().numpy()


def _box(begins: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """Index of all channels and the spatial box ``[begins, begins + shape)``."""
    return (slice(None), *(slice(b, b + n) for b, n in zip(begins, shape, strict=True)))


def _predict_region(
    runner: _Runner,
    read: Callable[[Sequence[int], Sequence[int]], np.ndarray],
    lo: Sequence[int],
    hi: Sequence[int],
) -> np.ndarray:
    """Predict output voxels ``[lo, hi)`` (voxel coordinates from the data origin).

    ``read(begin, shape)`` returns the normalised, edge-padded network input
    ``(channels, *shape)`` starting at voxel ``begin`` (may be negative). Returns float32
    ``(out_channels, *(hi - lo))``.
    """
    tiling = runner.tiling
    start = [(low // s) * s for low, s in zip(lo, tiling.step, strict=True)]
    extent = [h - g for h, g in zip(hi, start, strict=True)]
    tile = tiling.tile_shape(extent)
    counts = [math.ceil(e / t) for e, t in zip(extent, tile, strict=True)]
    net_in = tiling.input_shape(tile)
    window = read(
        [g - m for g, m in zip(start, tiling.margin, strict=True)],
        [(c - 1) * t + n for c, t, n in zip(counts, tile, net_in, strict=True)],
    )
    out = np.empty(
        (runner.num_out_channels, *(c * t for c, t in zip(counts, tile, strict=True))),
        dtype=np.float32,
    )
    corners = [
        [i * t for i, t in zip(index, tile, strict=True)]
        for index in itertools.product(*(range(c) for c in counts))
    ]
    for first in range(0, len(corners), runner.batch_size):
        batch = corners[first : first + runner.batch_size]
        outputs = runner.forward(np.stack([window[_box(corner, net_in)] for corner in batch]))
        for k, corner in enumerate(batch):
            out[_box(corner, tile)] = outputs[k][_box(tiling.crop, tile)]
    wanted = [h - low for h, low in zip(hi, lo, strict=True)]
    return out[_box([low - g for low, g in zip(lo, start, strict=True)], wanted)]


#: A view of the data: ``(perm, flips)``; view axis ``i`` is data axis ``perm[i]``, then
#: reversed where ``flips[i]``.
Transform = tuple[tuple[int, ...], tuple[bool, ...]]


def tta_transforms(voxel_size: Sequence[int]) -> list[Transform]:
    """The views test-time augmentation averages: every axis permutation that moves axes
    only onto axes of the same voxel size, with every combination of flips; the identity
    first.

    >>> len(tta_transforms((8, 8))), len(tta_transforms((40, 8, 8))), len(tta_transforms((4,) * 3))
    (8, 16, 48)
    >>> tta_transforms((40, 8, 8))[:2]
    [((0, 1, 2), (False, False, False)), ((0, 1, 2), (False, False, True))]
    """
    voxel = tuple(int(v) for v in voxel_size)
    dims = len(voxel)
    return [
        (perm, flips)
        for perm in itertools.permutations(range(dims))
        if all(voxel[p] == voxel[i] for i, p in enumerate(perm))
        for flips in itertools.product((False, True), repeat=dims)
    ]


def _predict_region_tta(
    runner: _Runner,
    read: Callable[[Sequence[int], Sequence[int]], np.ndarray],
    data_shape: Sequence[int],
    lo: Sequence[int],
    hi: Sequence[int],
    transforms: Sequence[Transform],
) -> np.ndarray:
    """:func:`_predict_region` averaged over the views ``transforms`` of the data (spatial
    shape ``data_shape``): each view is predicted in its own coordinates, mapped back and
    summed in a fixed order (float32), so any region gets the same numbers."""
    dims = len(data_shape)
    total: np.ndarray | None = None
    for perm, flips in transforms:
        view_shape = [int(data_shape[p]) for p in perm]
        view_lo = [int(lo[p]) for p in perm]
        view_hi = [int(hi[p]) for p in perm]
        for i in range(dims):
            if flips[i]:
                view_lo[i], view_hi[i] = view_shape[i] - view_hi[i], view_shape[i] - view_lo[i]
        flip_axes = tuple(i + 1 for i in range(dims) if flips[i])

        def read_view(
            begin: Sequence[int],
            shape: Sequence[int],
            perm: tuple[int, ...] = perm,
            flips: tuple[bool, ...] = flips,
            view_shape: list[int] = view_shape,
            flip_axes: tuple[int, ...] = flip_axes,
        ) -> np.ndarray:
            data_begin = [0] * dims
            data_size = [0] * dims
            for i, p in enumerate(perm):
                data_begin[p] = view_shape[i] - begin[i] - shape[i] if flips[i] else begin[i]
                data_size[p] = shape[i]
            data = np.transpose(read(data_begin, data_size), (0, *(p + 1 for p in perm)))
            return np.flip(data, flip_axes) if flip_axes else data

        view = _predict_region(runner, read_view, view_lo, view_hi)
        if flip_axes:
            view = np.flip(view, flip_axes)
        inverse = np.argsort(perm)
        back = np.transpose(view, (0, *(int(inverse[a]) + 1 for a in range(dims))))
        total = back.astype(np.float32) if total is None else total + back
    assert total is not None, "at least the identity view"
    return total / np.float32(len(transforms))


def _reflect(indices: np.ndarray, size: int) -> np.ndarray:
    """Indices mirrored into ``[0, size)`` like numpy's ``"reflect"`` padding (repeated
    as often as needed); a one-voxel axis maps everything to 0."""
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.mod(indices, period)
    return np.where(folded >= size, period - folded, folded)


def _read_reflected(
    read_box: Callable[[tuple[slice, ...]], np.ndarray],
    data_shape: Sequence[int],
    begin: Sequence[int],
    shape: Sequence[int],
) -> np.ndarray:
    """``(C, *shape)`` starting at voxel ``begin`` of data of spatial shape ``data_shape``,
    mirrored at the data's edges. ``read_box(slices)`` reads a box inside the data; only the
    box that the mirrored indices touch is read."""
    box: list[slice] = []
    gathers: list[tuple[int, np.ndarray]] = []
    for axis, (b, s, n) in enumerate(zip(begin, shape, data_shape, strict=True)):
        if b >= 0 and b + s <= n:
            box.append(slice(b, b + s))
            continue
        indices = _reflect(np.arange(b, b + s), n)
        low, high = int(indices.min()), int(indices.max()) + 1
        box.append(slice(low, high))
        gathers.append((axis, indices - low))
    data = read_box(tuple(box))
    for axis, local in gathers:
        data = np.take(data, local, axis=axis + 1)
    return data


# --- in memory -----------------------------------------------------------------------------


def _resolve_device(device: str | torch.device | None) -> torch.device:
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available; use 'cpu'")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return resolved


def _check_precision(precision: Any, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        raise ValueError(
            f"precision {precision!r} is for prediction on a CUDA GPU; the device is "
            f"{str(device)!r} (use fp32 there)"
        )
    return str(precision)


def _check_gpu_workers(device: torch.device, num_workers: int, local: bool) -> None:
    """Local workers on ``cuda`` each take a GPU of their own: no more workers than GPUs."""
    import torch

    if not local or device.type != "cuda" or device.index is not None or num_workers == 1:
        return
    count = torch.cuda.device_count()
    if num_workers > count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise ValueError(
            f"{num_workers} workers on device 'cuda' need {num_workers} GPUs, but {count} "
            f"are visible (CUDA_VISIBLE_DEVICES={visible}); use --workers {count} or fewer, "
            "or name one GPU (cuda:N) to share it on purpose"
        )


def _worker_device(device: str) -> tuple[str, Any]:
    """The device of this worker: in a daisy worker on plain ``cuda``, a visible GPU that
    no other innerdist worker on this machine holds (see :func:`innerdist.workers.claim_gpu`;
    the returned handle keeps the claim); otherwise ``device`` as given."""
    from innerdist.workers import claim_gpu, worker_id_from_env

    worker_id = worker_id_from_env()
    if device != "cuda" or worker_id is None:
        return device, None
    import tempfile

    import torch

    ids = [
        str(getattr(torch.cuda.get_device_properties(i), "uuid", i))
        for i in range(torch.cuda.device_count())
    ]
    index, handle = claim_gpu(worker_id, ids, tempfile.gettempdir())
    return f"cuda:{index}", handle


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return int(value)


def _shape_arg(value: Any, what: str, dims: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a sequence of {dims} integers (voxels), got {value!r}")
    if len(value) != dims:
        raise ValueError(f"{what} must have {dims} entries (one per spatial axis), got {value}")
    return tuple(_positive_int(v, f"{what} entry") for v in value)


def predict_array(
    model: Model,
    raw: np.ndarray,
    *,
    device: str | torch.device | None = None,
    tile_shape: Sequence[int] | None = None,
    batch_size: int = 1,
    tta: bool = False,
    voxel_size: Sequence[int] | None = None,
) -> np.ndarray:
    """Predict a whole array in memory; float32 ``(out_channels, *spatial)``.

    ``raw`` is already normalised (:func:`normalize_raw`), spatial or ``(channels,
    *spatial)``. The edges are padded by reflection (see the module docstring) so that the
    output covers the input's extent, and the array is cut into tiles of at most
    ``tile_shape`` output voxels (default: the model's eval output shape, rounded down to
    the output step), ``batch_size`` tiles per forward pass. The result equals
    :func:`predict_volume` on the same data.

    With ``tta`` the result is the mean over :func:`tta_transforms` of ``voxel_size``
    (needed then: it says which axes may be transposed), at that many times the cost.

    The model runs in eval mode (its previous mode is restored) on ``device``; ``None``
    keeps it where its parameters are, otherwise it is moved there.
    """
    import torch

    from innerdist.model import Model

    if not isinstance(model, Model):
        raise TypeError(f"model must be an innerdist Model, got {type(model).__name__}")
    if not isinstance(raw, np.ndarray):
        raise TypeError(f"raw must be a numpy array, got {type(raw).__name__}")
    dims = model.dims
    if raw.ndim == dims:
        raw = raw[np.newaxis]
    if raw.ndim != dims + 1:
        raise ValueError(
            f"raw of shape {raw.shape} does not fit a {dims}-D model; expected {dims} spatial "
            "axes, optionally after one channel axis"
        )
    if raw.shape[0] != model.num_in_channels:
        raise ValueError(
            f"raw has {raw.shape[0]} channel(s) (shape {raw.shape}) but the model takes "
            f"{model.num_in_channels}"
        )
    if not (np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer)):
        raise TypeError(f"raw must be numeric (normalised float), got dtype {raw.dtype}")
    raw = np.asarray(raw, dtype=np.float32)
    if not np.isfinite(raw).all():
        raise NonFiniteRawError(f"non-finite values (NaN or inf) in raw of shape {raw.shape}")
    batch_size = _positive_int(batch_size, "batch_size")
    if tile_shape is not None:
        tile_shape = _shape_arg(tile_shape, "tile_shape", dims)
    if not isinstance(tta, bool):
        raise TypeError(f"tta must be True or False, got {tta!r}")
    transforms = None
    if tta:
        if voxel_size is None:
            raise ValueError(
                "tta needs voxel_size (world units per axis): only axes of equal voxel size "
                "are transposed"
            )
        transforms = tta_transforms(_shape_arg(voxel_size, "voxel_size", dims))
    if device is None:
        resolved = next(model.parameters()).device
    else:
        resolved = _resolve_device(device)
        model.to(resolved)
    runner = _Runner(model, resolved, tile_shape=tile_shape, batch_size=batch_size)
    spatial = raw.shape[1:]

    def read(begin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
        return _read_reflected(lambda box: raw[(slice(None), *box)], spatial, begin, shape)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if transforms is not None:
                return _predict_region_tta(runner, read, spatial, (0,) * dims, spatial,
                                           transforms)
            return _predict_region(runner, read, (0,) * dims, spatial)
    finally:
        model.train(was_training)


# --- blockwise -----------------------------------------------------------------------------


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _BlockPredictor:
    """The per-block work of :func:`predict_volume`, in voxels of the raw data.

    Picklable: daisy ships it to worker processes, where it moves the model to its device
    and opens the volumes on first use. The model travels built (on the CPU), because
    building one in a fresh worker costs seconds of imports for its shape inference; zarr
    volumes are opened with zarr itself, which spares each worker the import of
    funlib.persistence (dask, xarray) and each read a dask graph. N5 raw goes through
    funlib.
    """

    def __init__(
        self,
        model: Model,
        normalization: Mapping[str, Any],
        *,
        raw: Array,
        raw_path: str,
        out: Array,
        out_path: str,
        raw_time: int | None = None,
        device: str,
        tile_shape: tuple[int, ...],
        batch_size: int,
        dtype: str,
        threads: int,
        precision: str = "fp32",
        transforms: Sequence[Transform] | None = None,
    ) -> None:
        self.model = model
        self.precision = precision
        self.transforms = list(transforms) if transforms else None
        self.normalization = dict(normalization)
        self.raw_path = raw_path
        self.raw_time = raw_time
        from innerdist.volumes import zarr_array_path

        self.raw_zarr = zarr_array_path(raw)
        self.out_zarr = zarr_array_path(out)
        if self.out_zarr is None:
            raise ValueError(f"output {out_path!r} is not a zarr array on disk")
        self.voxel = Coordinate(raw.voxel_size)
        self.origin = Coordinate(raw.roi.begin)  # world units of raw voxel 0
        self.data_shape = tuple(int(s) for s in raw.roi.shape / self.voxel)
        self.raw_has_channels = raw.channel_dims > 0
        self.out_roi = Roi(out.roi.offset, out.roi.shape)
        self.device = device
        self.tile_shape = tile_shape
        self.batch_size = batch_size
        self.dtype = dtype
        self.threads = threads
        self._state: tuple[_Runner, Any, Any] | None = None
        self._gpu_claim: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_state"] = None  # devices and open volumes are set up in each worker
        state["_gpu_claim"] = None
        return state

    def _setup(self) -> tuple[_Runner, Any, Any]:
        if self._state is None:
            import torch
            import zarr

            torch.set_num_threads(self.threads)
            name, self._gpu_claim = _worker_device(self.device)
            device = torch.device(name)
            runner = _Runner(
                self.model.to(device).eval(),
                device,
                tile_shape=self.tile_shape,
                batch_size=self.batch_size,
                precision=self.precision,
            )
            if self.raw_zarr is not None:
                raw: Any = zarr.open_array(self.raw_zarr, mode="r")
            else:
                from innerdist.volumes import open_volume

                raw = open_volume(self.raw_path, time=self.raw_time)
            self._state = (runner, raw, zarr.open_array(self.out_zarr, mode="r+"))
        return self._state

    def _read_box(self, raw: Any, box: tuple[slice, ...]) -> np.ndarray:
        """Normalised raw ``(C, *box)`` for a box of voxels inside the data."""
        roi = Roi(
            self.origin + Coordinate(s.start for s in box) * self.voxel,
            Coordinate(s.stop - s.start for s in box) * self.voxel,
        )
        if self.raw_zarr is not None:
            data = raw[(slice(None), *box) if self.raw_has_channels else box]
        else:
            data = raw[roi]
        if not self.raw_has_channels:
            data = data[np.newaxis]
        where = f"raw {self.raw_path} ROI {roi} (world units)"
        return normalize_raw(data, self.normalization, where=where)

    def __call__(self, read_roi: Roi, write_roi: Roi) -> None:
        runner, raw, out = self._setup()
        write = write_roi.intersect(self.out_roi)
        if write.empty:
            return
        lo = [int(b) for b in (write.begin - self.origin) / self.voxel]
        hi = [int(e) for e in (write.end - self.origin) / self.voxel]

        def read(begin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
            return _read_reflected(
                lambda box: self._read_box(raw, box), self.data_shape, begin, shape
            )

        if self.transforms:
            prediction = _predict_region_tta(
                runner, read, self.data_shape, lo, hi, self.transforms
            )
        else:
            prediction = _predict_region(runner, read, lo, hi)
        out_lo = [int(b) for b in (write.begin - self.out_roi.begin) / self.voxel]
        out[_box(out_lo, prediction.shape[1:])] = _quantize(prediction, self.dtype)


def block_predictor_function(
    *,
    checkpoint: str,
    weights_sha256: str,
    raw: str,
    out: str,
    device: str,
    tile_shape: list[int],
    batch_size: int,
    dtype: str,
    precision: str = "fp32",
    time: int | None = None,
    tta: bool = False,
) -> _BlockPredictor:
    """:class:`_BlockPredictor` rebuilt from JSON parameters, in a cluster worker: the model
    comes from the checkpoint file (checked to hold the weights the job was started with),
    and torch uses every core this worker was given."""
    from innerdist.export import load_checkpoint_or_package
    from innerdist.volumes import open_volume

    ckpt = load_checkpoint_or_package(checkpoint)
    if ckpt.weights_hash() != weights_sha256:
        raise ValueError(
            f"checkpoint {checkpoint!r} has changed since the job started (other weights); "
            "run the job again with --overwrite"
        )
    return _BlockPredictor(
        ckpt.build_model(),
        ckpt.normalization,
        raw=(raw_array := open_volume(raw, time=time)),
        raw_path=raw,
        raw_time=time,
        out=open_volume(out),
        out_path=out,
        device=device,
        tile_shape=tuple(tile_shape),
        batch_size=batch_size,
        dtype=dtype,
        threads=_cores(),
        precision=precision,
        transforms=tta_transforms(Coordinate(raw_array.voxel_size)) if tta else None,
    )


def _plan(
    model: Model,
    normalization: Mapping[str, Any],
    *,
    raw_array: Array,
    raw: str,
    roi: Roi,
    block: tuple[int, ...],
    tile: tuple[int, ...],
    margin: Coordinate,
    device: str,
    batch_size: int,
    dtype: str,
    precision: str,
    threads: int,
    num_workers: int,
    channels: int,
    cluster: bool,
    chunk: tuple[int, ...] | None = None,
    setup_seconds: float = 0.0,
    pyramid: bool = True,
) -> str:
    """The ``dry_run`` of :func:`predict_volume`: one sample block from the middle of
    ``roi``, predicted into a temporary output, timed and measured."""
    import tempfile

    import torch

    from innerdist.plan import Plan, measure_block, output_bytes, worker_startup_seconds
    from innerdist.volumes import create_volume

    voxel = Coordinate(raw_array.voxel_size)
    shape = tuple(int(s) for s in roi.shape / voxel)
    grid = [math.ceil(s / b) for s, b in zip(shape, block, strict=True)]
    middle = Coordinate(g // 2 * b for g, b in zip(grid, block, strict=True))
    write_roi = Roi(roi.offset + middle * voxel, Coordinate(block) * voxel).intersect(roi)
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="innerdist-plan-") as tmp:
        sample_path = str(Path(tmp) / "plan.zarr" / "pred")
        sample = create_volume(sample_path, roi=roi, voxel_size=voxel, dtype=dtype,
                               num_channels=channels, chunk_shape=chunk or block)
        process = _BlockPredictor(
            model, normalization, raw=raw_array, raw_path=raw, out=sample,
            out_path=sample_path, device=device, tile_shape=tile, batch_size=batch_size,
            dtype=dtype, threads=threads, precision=precision,
        )
        first: list[float] = []
        try:
            seconds, host, gpu = measure_block(
                process, write_roi.grow(margin * voxel, margin * voxel), write_roi,
                device=device, first=first,
            )
        finally:
            torch.set_num_threads(threads_before)
    startup = (
        worker_startup_seconds(["torch", "zarr", "innerdist.predict", "innerdist.workers"])
        if num_workers > 1 or cluster
        else 0.0
    )
    return str(Plan(
        job="predict", blocks=math.prod(grid), block_shape=block, workers=num_workers,
        block_seconds=seconds, block_memory_bytes=host, device_memory_bytes=gpu,
        output_bytes=output_bytes(shape, channels, dtype),
        output_description=f"{dtype}, {channels} channel(s), uncompressed",
        worker_startup_seconds=startup, setup_seconds=setup_seconds,
        warmup_seconds=max(0.0, first[0] - seconds),
        note="the pyramid levels are not in the estimate" if pyramid else None,
    ))


def _planned_block_shape(
    shape: tuple[int, ...],
    tiling: _Tiling,
    *,
    batch_size: int,
    in_channels: int,
    out_channels: int,
    dtype: str,
    tta: bool,
    workers: int,
    memory_budget: int | None,
    cluster: bool = False,
) -> tuple[int, ...]:
    """:func:`innerdist.plan.choose_block_shape` for this network: tiles of the eval
    output (first axis times the batch), and what a block holds per voxel: the raw and its
    normalised float32 copy; the float32 prediction, its tile-padded buffer and the stored
    copy (with TTA also the sum and one view). Cluster workers run on machines of their
    own: the RAM is not shared among them."""
    from innerdist.plan import choose_block_shape
    from innerdist.plan import memory_budget as budget_for

    tile = list(tiling.max_tile)
    tile[0] *= batch_size
    per_out = out_channels * (4 * (4 if tta else 2) + np.dtype(dtype).itemsize)
    return choose_block_shape(
        shape, tile=tile, margin=tiling.margin, in_bytes_per_voxel=in_channels * 8,
        out_bytes_per_voxel=per_out,
        budget_bytes=budget_for(1 if cluster else workers, memory_budget), workers=workers,
    )


def _gpu_memory(model: Model, tiling: _Tiling, device: torch.device, precision: str
                ) -> tuple[int, int]:
    """Peak GPU memory of one forward pass of the eval tile beyond the weights, and the
    device's free memory once that pass is gone, bytes. On a copy of the model, so the
    model that travels to workers stays on the CPU."""
    import copy

    import torch

    probe = copy.deepcopy(model).to(device).eval()
    runner = _Runner(probe, device, tile_shape=tiling.max_tile, precision=precision)
    batch = np.zeros((1, model.num_in_channels, *tiling.input_shape(tiling.max_tile)),
                     np.float32)
    torch.cuda.synchronize(device)
    weights = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    runner.forward(batch)
    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device)) - weights
    del probe, runner
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    return peak, int(free)


def _device_tiling(
    model: Model, tiling: _Tiling, shape: Sequence[int], *, batch_size: int,
    device: torch.device, precision: str,
    memory: Callable[[], tuple[int, int]] | None = None,
) -> _Tiling:
    """On a GPU, the tiling with the tile grown to the device's memory
    (:func:`innerdist.plan.choose_tile`): the eval tile's measured forward-pass memory per
    input voxel, times ``batch_size``, within :data:`~innerdist.plan.GPU_MEMORY_FRACTION`
    of the free memory. Elsewhere ``tiling`` as it is. ``memory()`` returns ``(peak, free)``
    bytes (default: :func:`_gpu_memory` on ``device``)."""
    from innerdist.plan import GPU_MEMORY_FRACTION, choose_tile

    if memory is None:
        if device.type != "cuda":
            return tiling
        peak, free = _gpu_memory(model, tiling, device, precision)
    else:
        peak, free = memory()
    inputs = math.prod(tiling.input_shape(tiling.max_tile))
    tile = choose_tile(
        tiling.max_tile, step=tiling.step, margin=tiling.margin, extent=shape,
        bytes_per_input_voxel=batch_size * max(1, peak) / inputs,
        budget_bytes=int(GPU_MEMORY_FRACTION * free),
    )
    if tile != tiling.max_tile:
        logger.info("predict: tiles of %s output voxels per forward pass (eval shape %s), "
                    "to fit %.1f GiB free on %s", tile, tiling.max_tile, free / 2**30, device)
    return _Tiling(tiling.unet, tile)


def _tile_seconds(model: Model, tiling: _Tiling, tile: Sequence[int],
                  device: torch.device, threads: int | None = None) -> float:
    """Seconds of one forward pass of a ``tile`` (the second of two: the first warms up),
    with ``threads`` torch threads (default: as set)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        runner = _Runner(model.to(device).eval(), device, tile_shape=tile)
        batch = np.zeros((1, model.num_in_channels, *tiling.input_shape(tile)), np.float32)
        runner.forward(batch)
        start = clock.perf_counter()
        runner.forward(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def _planned_workers(
    requested: int, blocks: int, model: Model, tiling: _Tiling, shape: Sequence[int],
    tile: Sequence[int], device: torch.device, *, views: int,
) -> int:
    """Local CPU workers for the job (:func:`innerdist.plan.choose_workers`). The work is
    timed, not assumed to scale: one forward pass with all the cores' threads (one process)
    and one with each worker's share of them, times the tiles the volume needs."""
    from innerdist.plan import choose_workers

    workers = max(1, min(requested, blocks))
    if workers == 1:
        return 1
    tiles = math.prod(math.ceil(s / t) for s, t in zip(shape, tile, strict=True)) * views
    serial = tiles * _tile_seconds(model, tiling, tile, device, threads=_cores())
    share = max(1, _cores() // workers)
    parallel = tiles * _tile_seconds(model, tiling, tile, device, threads=share) / workers
    return choose_workers(requested, blocks=blocks, serial_seconds=serial,
                          parallel_seconds=parallel)


def parse_roi(text: str) -> Roi:
    """A ROI from ``"BEGIN:END"`` text, world units: comma-separated begin (inclusive) and
    end (exclusive) per axis.

    >>> parse_roi("0,40,40:80,200,200")
    [0:80, 40:200, 40:200] (80, 160, 160)
    """
    if not isinstance(text, str):
        raise TypeError(f"roi text must be a string like '0,0,0:40,80,80', got {text!r}")
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        begin, end = (tuple(int(v) for v in p.split(",")) for p in parts)
    except ValueError:
        raise ValueError(
            f"roi must be 'BEGIN:END' with comma-separated integers (world units), e.g. "
            f"'0,0,0:400,800,800'; got {text!r}"
        ) from None
    if len(begin) != len(end):
        raise ValueError(f"roi begin and end must have the same number of axes, got {text!r}")
    if any(e <= b for b, e in zip(begin, end, strict=True)):
        raise ValueError(f"roi end must be greater than begin on every axis, got {text!r}")
    return Roi(begin, tuple(e - b for b, e in zip(begin, end, strict=True)))


def _snap_roi(roi: Roi, data_roi: Roi, voxel: Coordinate) -> Roi:
    """``roi`` grown to the voxel grid of the data (anchored at the data's offset)."""
    shifted = roi - data_roi.begin
    return shifted.snap_to_grid(voxel, mode="grow") + data_roi.begin


def predict_volume(
    checkpoint: str | Path,
    raw: str | Path,
    out: str | Path,
    *,
    roi: Roi | None = None,
    num_workers: int = 1,
    device: str | None = None,
    block_shape: Sequence[int] | None = None,
    batch_size: int = 1,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    pyramid: bool = True,
    time: int | None = None,
    allow_incomplete: bool = False,
    worker_command: str | None = None,
    precision: str = "fp32",
    dry_run: bool = False,
    tta: bool = False,
    memory_budget: int | None = None,
) -> str:
    """Predict ``raw`` blockwise with the network in ``checkpoint``, into ``out``.

    Parameters
    ----------
    checkpoint
        A file written by :func:`innerdist.checkpoint.save_checkpoint`, or a bioimage.io
        package written by :func:`innerdist.export.export_package` (the .zip, its unpacked
        folder or its rdf.yaml), which predicts and records the same.
    raw, out
        Volume paths (``container.zarr/dataset``). ``raw`` must have the checkpoint's voxel
        size and spatial dims, and the model's input channels (a leading ``c^`` axis, or
        none for one channel).
    roi
        Region to predict, world units (default: all of ``raw``); grown to the voxel grid,
        and it must lie inside ``raw``. Context around it comes from ``raw`` where there is
        data, from mirroring beyond (see the module docstring).
    num_workers
        Worker processes (1: serial, in this process); each uses ``cores / num_workers``
        torch threads. Never more than the job has blocks; on the CPU without a
        ``worker_command``, 1 (in this process) when the job, timed on one forward pass,
        is too short for worker start-up to pay off (:func:`innerdist.plan.choose_workers`).
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; default CUDA when available.
    block_shape
        Write block shape, output voxels, rounded up to a multiple of the U-Net's output
        step; also the output's chunk shape. Default: planned for the job
        (:func:`innerdist.plan.choose_block_shape`): whole multiples of the forward-pass
        tile (the model's eval output shape, the first axis times ``batch_size``), as
        large as ``memory_budget`` and the volume allow with several blocks per worker;
        the chunks are then the blocks cut to at most 128^3 voxels. An existing output
        (unfinished: resumed; finished: a no-op) keeps the blocks it was written with.
    memory_budget
        Bytes one block may hold (default: a quarter of the machine's RAM shared by the
        workers; :func:`innerdist.plan.memory_budget`). Used only to plan blocks.
    batch_size
        Tiles of a block that go through the network in one forward pass.
    dtype
        ``"float32"``, ``"float16"`` or ``"uint8"``; the latter two record
        ``innerdist_quantization = {"scale", "offset"}`` (value = stored * scale + offset,
        see :func:`dequantize`).
    tta
        Test-time augmentation: the mean over the flips and the transposes of axes of equal
        voxel size (:func:`tta_transforms`; 8x the prediction time in 2-D, 16x for
        anisotropic (z, y, x) with y = x, 48x for isotropic 3-D), equal to
        :func:`predict_array` with ``tta=True`` on the same data. Recorded in the output's
        ``innerdist_tta`` attribute (the number of views).
    overwrite
        Replace an existing output. Without it an existing complete output, or an
        unfinished one of a different job, raises ``FileExistsError``; an unfinished one of
        the same job (same checkpoint weights, raw, ROI, dtype, block shape) is resumed,
        and a complete one of the same job is returned as is (nothing to do).
    time
        Time point of a raw OME-Zarr image with a ``t`` axis (required there).
    pyramid
        Also write the multiscale levels ``s1, s2, ...`` (mean; :mod:`innerdist.pyramid`).
    allow_incomplete
        Use a raw that an innerdist job marked incomplete (with a warning) instead of
        refusing it.

    Returns the output path, an OME-NGFF image with the prediction as level ``s0``. The
    output covers the ROI with the raw's voxel size, has shape
    ``(C, *spatial)`` (axis ``c^``, one channel per predictor channel) and carries the
    predictor config (``innerdist_predictor``) and the checkpoint's post-processing
    parameters (``innerdist_postprocessing``, when it has them). It is marked complete only
    after every block is written.
    """
    from innerdist.blockwise import (
        existing_block_shape,
        finish_output,
        open_or_create_output,
        run_blockwise,
        tracking_dir_for,
    )
    from innerdist.export import load_checkpoint_or_package
    from innerdist.safety import check_input_complete
    from innerdist.volumes import is_complete, num_channels, open_volume, split_volume_path
    from innerdist.workers import BlockFunction, resolve_worker_command

    began = clock.perf_counter()  # the dry run measures the set-up a run repeats
    worker_command = resolve_worker_command(worker_command)
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {list(OUTPUT_DTYPES)}, got {dtype!r}")
    num_workers = _positive_int(num_workers, "num_workers")
    batch_size = _positive_int(batch_size, "batch_size")
    if not isinstance(tta, bool):
        raise TypeError(f"tta must be True or False, got {tta!r}")
    if roi is not None and not isinstance(roi, Roi):
        raise TypeError(f"roi must be a funlib.geometry.Roi (world units), got {roi!r}")
    resolved_device = _resolve_device(device)
    precision = _check_precision(precision, resolved_device)
    _check_gpu_workers(resolved_device, num_workers, local=worker_command is None)
    raw_container, raw_dataset = split_volume_path(raw)
    out_container, out_dataset = split_volume_path(out)
    if raw_container.resolve() == out_container.resolve() and raw_dataset == out_dataset:
        raise ValueError(f"output {str(out)!r} is the raw volume; choose another output path")
    if str(out_container).endswith(".n5"):
        raise ValueError(
            f"output {str(out)!r} is in an N5 container; predictions are written as zarr "
            "(e.g. data.zarr/prediction)"
        )

    ckpt = load_checkpoint_or_package(checkpoint)
    raw_array = open_volume(raw, time=time)
    check_input_complete(raw_array.attrs, raw, "raw", allow_incomplete=allow_incomplete)
    unet = ckpt.architecture
    dims = unet.dims
    if raw_array.spatial_dims != dims:
        raise ValueError(
            f"raw {str(raw)!r} has {raw_array.spatial_dims} spatial axes "
            f"{raw_array.axis_names} but the checkpoint's model is {dims}-D"
        )
    voxel = Coordinate(raw_array.voxel_size)
    if voxel != Coordinate(ckpt.voxel_size):
        raise ValueError(
            f"raw {str(raw)!r} has voxel size {tuple(voxel)} but the checkpoint was trained "
            f"at voxel size {tuple(ckpt.voxel_size)} (world units); resample the raw"
        )
    channels = num_channels(raw_array) or 1
    if channels != unet.num_in_channels:
        raise ValueError(
            f"raw {str(raw)!r} has {channels} channel(s) (axes {raw_array.axis_names}) but "
            f"the checkpoint's model takes {unet.num_in_channels} input channel(s)"
        )
    trained_dtype = ckpt.normalization["dtype"]
    raw_dtype = np.dtype(raw_array.dtype)
    if raw_dtype.name != trained_dtype and raw_dtype.kind in "biu":
        # Integer raw is in its own dtype's units; the normalisation's min/max are in the
        # units of another dtype, so the network would see values far off its training range.
        raise ValueError(
            f"raw {str(raw)!r} is {raw_dtype.name} but the network was trained on "
            f"{trained_dtype} raw with normalisation {ckpt.normalization}, which does not "
            f"map {raw_dtype.name} values; convert the raw to {trained_dtype} in the units "
            "the network was trained on"
        )
    if raw_dtype.name != trained_dtype:
        logger.warning(
            "raw %s is %s but the network was trained on %s raw; the normalisation %s is "
            "applied as is",
            raw, np.dtype(raw_array.dtype).name, trained_dtype, ckpt.normalization,
        )
    from innerdist.normalize import range_mismatch, sample_intensities

    mismatch = range_mismatch(
        sample_intensities(raw_array, max_voxels=2**16, whole_chunks=True),
        ckpt.normalization)
    if mismatch is not None:
        logger.warning("raw %s: %s; check that it is the kind of data the network was "
                       "trained on", raw, mismatch)

    data_roi = raw_array.roi
    if roi is None:
        roi = data_roi
    else:
        if roi.dims != dims:
            raise ValueError(f"roi {roi} has {roi.dims} axes, the raw has {dims}")
        if roi.unbounded or roi.empty:
            raise ValueError(f"roi {roi} is empty or unbounded; expected a finite region")
        roi = _snap_roi(roi, data_roi, voxel)
        if not data_roi.contains(roi):
            raise ValueError(
                f"roi {roi} (world units, snapped to the voxel grid) is not inside the raw "
                f"data's ROI {data_roi}"
            )

    model = ckpt.build_model()  # fails on weights that do not fit, before any output exists
    shape = tuple(int(s) for s in roi.shape / voxel)
    tiling = _Tiling(unet)
    if worker_command is None:  # cluster workers' GPUs may have less memory than this one
        tiling = _device_tiling(model, tiling, shape, batch_size=batch_size,
                                device=resolved_device, precision=precision)
    step = tiling.step
    transforms = tta_transforms(voxel) if tta else None
    out_channels = ckpt.predictor.embedding_dims
    from innerdist.plan import chunk_shape_for

    resumed = (None if block_shape is not None or overwrite
               else existing_block_shape(out, "predict", dims))
    planned = block_shape is None and resumed is None
    if block_shape is not None:
        block = tuple(
            _round_up(b, s)
            for b, s in zip(_shape_arg(block_shape, "block_shape", dims), step, strict=True)
        )
        chunk = block
    else:
        block = resumed or _planned_block_shape(
            shape, tiling, batch_size=batch_size, in_channels=channels,
            out_channels=out_channels, dtype=dtype, tta=transforms is not None,
            workers=num_workers, memory_budget=memory_budget,
            cluster=worker_command is not None,
        )
        chunk = chunk_shape_for(block, tiling.max_tile)
    tile = tuple(min(t, b) for t, b in zip(tiling.max_tile, block, strict=True))
    margin = Coordinate(tiling.margin)
    blocks_count = math.prod(math.ceil(s / b) for s, b in zip(shape, block, strict=True))
    requested_workers = num_workers
    if worker_command is None and resolved_device.type != "cuda":
        num_workers = _planned_workers(
            num_workers, blocks_count, model, tiling, shape, tile, resolved_device,
            views=len(transforms) if transforms else 1,
        )
        if num_workers == 1 and requested_workers > 1 and planned:
            # In this process after all: blocks planned for one worker (fewer, larger).
            block = _planned_block_shape(
                shape, tiling, batch_size=batch_size, in_channels=channels,
                out_channels=out_channels, dtype=dtype, tta=transforms is not None,
                workers=1, memory_budget=memory_budget,
            )
            chunk = chunk_shape_for(block, tiling.max_tile)
            tile = tuple(min(t, b) for t, b in zip(tiling.max_tile, block, strict=True))
            blocks_count = math.prod(
                math.ceil(s / b) for s, b in zip(shape, block, strict=True))
    else:
        num_workers = max(1, min(num_workers, blocks_count))
    if num_workers != requested_workers:
        logger.info(
            "predict: %d block(s) of %s voxels on %d worker(s) (%d asked for): %s",
            blocks_count, block, num_workers, requested_workers,
            "one worker per block at most" if num_workers > 1 or blocks_count == 1
            else "worker start-up would cost more than more workers save",
        )

    job = {
        "task": "predict",
        "checkpoint": str(Path(checkpoint).resolve()),
        "iteration": ckpt.iteration,
        "weights_sha256": ckpt.weights_hash(),
        "raw": str(raw_container.resolve() / raw_dataset),
        **({"time": time} if time is not None else {}),
        "roi": [list(roi.offset), list(roi.shape)],
        "dtype": dtype,
        "block_shape": list(block),
    }
    if transforms is not None:
        job["tta"] = len(transforms)  # a TTA output never resumes a plain one
    if precision != "fp32":  # fp32 jobs keep the description they always had
        job["precision"] = precision
    threads = max(1, _cores() // num_workers) if worker_command is None else _cores()
    if dry_run:
        return _plan(
            model, ckpt.normalization, raw_array=raw_array, raw=str(raw), roi=roi, block=block,
            tile=tile, margin=margin, device=str(resolved_device), batch_size=batch_size,
            dtype=dtype, precision=precision, threads=threads, num_workers=num_workers,
            channels=out_channels, cluster=worker_command is not None, chunk=chunk,
            setup_seconds=clock.perf_counter() - began, pyramid=pyramid,
        )
    attrs: dict[str, Any] = {
        PREDICTOR_ATTR: {"type": type(ckpt.predictor).__name__, **ckpt.predictor.to_dict()},
    }
    if dtype in _QUANTIZATION:
        attrs[QUANTIZATION_ATTR] = dict(_QUANTIZATION[dtype])
    if ckpt.postprocessing is not None:
        attrs[POSTPROCESSING_ATTR] = dict(ckpt.postprocessing)
    if transforms is not None:
        attrs[TTA_ATTR] = len(transforms)
    output = open_or_create_output(
        out,
        job=job,
        overwrite=overwrite,
        inputs={"raw": raw, "checkpoint": checkpoint},
        roi=roi,
        voxel_size=voxel,
        dtype=dtype,
        num_channels=out_channels,
        chunk_shape=chunk,
        attrs=attrs,
        ome=True,
        units=world_unit(raw_array.units),
    )

    if is_complete(output):
        return str(out)  # the same job finished before: nothing to do
    process = _BlockPredictor(
        model,
        ckpt.normalization,
        raw=raw_array,
        raw_path=str(raw),
        raw_time=time,
        out=output,
        out_path=str(out),
        device=str(resolved_device),
        tile_shape=tile,
        batch_size=batch_size,
        dtype=dtype,
        threads=threads,
        precision=precision,
        transforms=transforms,
    )
    worker_job = BlockFunction(
        "innerdist.predict:block_predictor_function",
        {
            "checkpoint": job["checkpoint"],
            "weights_sha256": job["weights_sha256"],
            "raw": job["raw"],
            "out": os.path.abspath(out),
            "device": str(resolved_device),
            "tile_shape": list(tile),
            "batch_size": batch_size,
            "dtype": dtype,
            "precision": precision,
            "time": time,
            "tta": tta,
        },
    )
    import torch

    threads_before = torch.get_num_threads()
    try:
        run_blockwise(
            "predict",
            total_roi=roi,
            block_shape=Coordinate(block) * voxel,
            context=margin * voxel,
            process=process,
            tracking_dir=tracking_dir_for(out),
            num_workers=num_workers,
            progress=progress,
            worker_command=worker_command,
            worker_job=worker_job,
        )
    finally:
        torch.set_num_threads(threads_before)
    if pyramid:
        from innerdist.pyramid import write_pyramid

        write_pyramid(
            out, reduction="mean", tracking_dir=tracking_dir_for(out) / "pyramid",
            progress=progress,
        )
    finish_output(output, out)
    return str(out)
