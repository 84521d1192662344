"""Intensity normalisation: how raw voxels become network input, in one place.

Training crops, validation volumes and prediction all call :func:`normalize_raw` with the
same ``{"min": a, "max": b}`` dict (raw units), which a checkpoint stores, so a network
always sees at prediction what it saw in training::

    x  ->  (x - min) / (max - min)          float32, not clipped

Where ``min``/``max`` come from (``training.normalization`` in the config):

- given (``{min: 0, max: 255}``): used as it is;
- left out (the default): the data's own range, the :data:`DEFAULT_PERCENTILES` (1 and
  99.8 %) of the intensities of the training volumes, measured on a sample of at most
  :data:`SAMPLE_VOXELS` voxels (whole boxes spread over each volume, never a full read of
  a large volume; the sample is drawn from a fixed seed, so a resumed run measures the
  same values).

Why percentiles and not the dtype's range: 8-bit values stored as uint16 would map to
``0 .. 0.0039`` and a network learns nothing from such input. Why 1 / 99.8 % and not the
minimum and maximum: a few hot or dead pixels would set the range; these are the values
CSBDeep/StarDist use for fluorescence images, and the upper one sits high enough that small
bright objects covering well under 1 % of the image still map to about 1 rather than far
above it. Values outside the range map below 0 or above 1 (no clipping).

Checkpoints written before this module stored the dtype's range (``uint8`` -> 0..255);
they load and predict exactly as before, since the range is stored with them.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from funlib.geometry import Coordinate, Roi

if TYPE_CHECKING:
    from funlib.persistence import Array

__all__ = [
    "DEFAULT_PERCENTILES",
    "SAMPLE_VOXELS",
    "NonFiniteRawError",
    "check_normalization",
    "dtype_range",
    "measure_normalization",
    "normalize_raw",
    "range_mismatch",
    "sample_intensities",
    "warn_tiny_range",
]

#: Percentiles (in %) of the training intensities that map to 0 and 1 by default.
DEFAULT_PERCENTILES = (1.0, 99.8)
#: At most this many voxels are read to measure the intensity range.
SAMPLE_VOXELS = 2**22
#: A sample of whole chunks (``sample_intensities(..., whole_chunks=True)``) has at least
#: this many, within 8x its voxel budget.
MIN_CHUNKS = 8
#: Below this fraction of an integer dtype's range in use, a warning is issued.
TINY_RANGE = 1 / 100
_METHODS = ("given", "percentiles", "dtype")


class NonFiniteRawError(ValueError):
    """The raw data holds NaN or infinite values where the network would read them."""


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return float(value)


def check_normalization(
    normalization: Mapping[str, Any], *, require_dtype: bool = True
) -> dict[str, Any]:
    """Validate a normalisation dict and return it with plain types.

    ``{"min": a, "max": b, "dtype": name}`` with finite ``a < b`` (raw units) and a numpy
    dtype name (the dtype of the training raw); ``dtype`` may be left out when
    ``require_dtype`` is false. Optional: ``method`` (``"given"``, ``"percentiles"`` or
    ``"dtype"``: where ``min``/``max`` came from) and, with percentiles, ``percentiles``
    (the two levels in %).

    >>> check_normalization({"min": 0, "max": 255, "dtype": np.uint8})
    {'min': 0.0, 'max': 255.0, 'dtype': 'uint8'}
    """
    if not isinstance(normalization, Mapping):
        raise TypeError(
            f"normalization must be a dict like {{'min': 0, 'max': 255, 'dtype': 'uint8'}}, "
            f"got {type(normalization).__name__}"
        )
    required = {"min", "max", "dtype"} if require_dtype else {"min", "max"}
    allowed = {"min", "max", "dtype", "method", "percentiles"}
    missing = sorted(required - set(normalization))
    unknown = sorted(set(normalization) - allowed)
    if missing or unknown:
        raise ValueError(
            f"normalization {dict(normalization)} has missing keys {missing} / unknown keys "
            f"{unknown}; expected keys {sorted(required)}"
        )
    result: dict[str, Any] = {
        key: _number(normalization[key], f"normalization[{key!r}]") for key in ("min", "max")
    }
    if result["min"] >= result["max"]:
        raise ValueError(
            f"normalization needs min < max, got min={result['min']}, max={result['max']}"
        )
    if "dtype" in normalization:
        try:
            result["dtype"] = np.dtype(normalization["dtype"]).name
        except TypeError:
            raise TypeError(
                f"normalization['dtype'] must name a numpy dtype (e.g. 'uint8'), "
                f"got {normalization['dtype']!r}"
            ) from None
    if "method" in normalization:
        if normalization["method"] not in _METHODS:
            raise ValueError(
                f"normalization['method'] must be one of {list(_METHODS)}, "
                f"got {normalization['method']!r}"
            )
        result["method"] = str(normalization["method"])
    if "percentiles" in normalization:
        levels = normalization["percentiles"]
        if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(
            levels
        ) != 2:
            raise TypeError(
                f"normalization['percentiles'] must be two numbers (low, high in %), "
                f"got {levels!r}"
            )
        low, high = (_number(v, "normalization['percentiles']") for v in levels)
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"normalization['percentiles'] must satisfy 0 <= low < high <= 100, "
                f"got {list(levels)}"
            )
        result["percentiles"] = [low, high]
    return result


def dtype_range(dtype: Any) -> dict[str, Any]:
    """The full value range of an integer dtype: ``uint8`` -> ``{"min": 0, "max": 255}``.

    This was the default before percentiles; it is kept for data whose dtype range is
    meaningful. Float raw has no natural range.

    >>> dtype_range("int16")
    {'min': -32768.0, 'max': 32767.0, 'dtype': 'int16', 'method': 'dtype'}
    """
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.integer):
        raise ValueError(
            f"dtype_range needs an integer dtype, got {dt.name}; for float raw give "
            "{'min': ..., 'max': ...} from the data's intensity range"
        )
    info = np.iinfo(dt)
    return {"min": float(info.min), "max": float(info.max), "dtype": dt.name, "method": "dtype"}


def normalize_raw(
    raw: np.ndarray, normalization: Mapping[str, Any], *, where: str = "raw"
) -> np.ndarray:
    """Map raw intensities linearly so ``min`` -> 0 and ``max`` -> 1; float32.

    ``normalization`` is ``{"min": a, "max": b}`` in raw units (the other keys of
    :func:`check_normalization` are allowed and ignored here); values outside ``[a, b]``
    are not clipped. Raises :class:`NonFiniteRawError` (a ``ValueError``) naming ``where``
    when float raw holds NaN or inf.

    >>> normalize_raw(np.array([0, 51, 255], dtype=np.uint8), {"min": 0, "max": 255})
    array([0. , 0.2, 1. ], dtype=float32)
    """
    norm = check_normalization(normalization, require_dtype=False)
    raw = np.asarray(raw)
    if raw.dtype == bool or not (
        np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)
    ):
        raise TypeError(f"raw must hold integers or floats, got dtype {raw.dtype} in {where}")
    if np.issubdtype(raw.dtype, np.floating):
        finite = np.isfinite(raw)
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise NonFiniteRawError(
                f"non-finite values (NaN or inf) in {where}: {int((~finite).sum())} voxel(s), "
                f"the first at index {tuple(int(i) for i in bad)} of an array of shape "
                f"{raw.shape}; fix or mask the raw data"
            )
    lo, hi = norm["min"], norm["max"]
    if raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2 and raw.size >= 2 ** (
        8 * raw.dtype.itemsize
    ):
        # 8- and 16-bit raw: every value the dtype can hold mapped once, then looked up by
        # bit pattern (the same numbers as below, 5-10x faster on a large block).
        return _table(raw.dtype, lo, hi)[raw.view(f"u{raw.dtype.itemsize}")]
    # Computed in float64 and rounded once, so integer raw maps exactly (0 -> 0, max -> 1).
    return ((raw.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def _table(dtype: np.dtype[Any], lo: float, hi: float) -> np.ndarray:
    """The normalised value of every bit pattern of a 1- or 2-byte integer ``dtype``,
    indexed by the pattern read as unsigned (so ``table[raw.view(unsigned)]``)."""
    patterns = np.arange(2 ** (8 * dtype.itemsize), dtype=f"u{dtype.itemsize}")
    values = patterns.view(dtype).astype(np.float64)
    return ((values - lo) / (hi - lo)).astype(np.float32)


# --- measuring the data's range ---------------------------------------------------------


def _sample_boxes(
    roi: Roi, voxel: Coordinate, max_voxels: int, rng: np.random.Generator
) -> list[Roi]:
    """Boxes (world units, on the voxel grid of ``roi``) of at most ``max_voxels`` in all.

    All of ``roi`` when it is small enough; otherwise cubes (squares in 2-D) of up to 64
    voxels a side at random places, as many as fit the budget.
    """
    shape = roi.shape / voxel
    total = math.prod(shape)
    if total <= max_voxels:
        return [roi]
    side = Coordinate(min(64, s) for s in shape)
    count = max(1, max_voxels // math.prod(side))
    boxes = []
    for _ in range(count):
        free = shape - side + 1
        begin = Coordinate(int(rng.integers(0, f)) for f in free)
        boxes.append(Roi(roi.begin + begin * voxel, side * voxel))
    return boxes


def sample_intensities(
    array: Array, roi: Roi | None = None, *, max_voxels: int = SAMPLE_VOXELS, seed: int = 0,
    whole_chunks: bool = False,
) -> np.ndarray:
    """A flat sample of the intensities of ``array`` within ``roi`` (world units; default
    the whole array), all channels; at most about ``max_voxels`` per channel.

    ``whole_chunks``: the boxes are chunks of the array (clipped to ``roi``) picked at
    random (:func:`_chunk_boxes`), each read from one chunk: a quick look at the data (a
    range check before a prediction) that costs a few chunk reads, where boxes off the
    chunk grid read up to ``2**dims`` chunks each. Measuring a normalisation keeps the
    default boxes, so that checkpoints measure what they always measured.
    """
    from innerdist.volumes import read

    if isinstance(max_voxels, bool) or not isinstance(max_voxels, numbers.Integral) or (
        max_voxels < 1
    ):
        raise ValueError(f"max_voxels must be a positive integer, got {max_voxels!r}")
    voxel = Coordinate(array.voxel_size)
    region = array.roi if roi is None else roi
    if not array.roi.contains(region):
        raise ValueError(f"roi {region} is not inside the array's ROI {array.roi}")
    rng = np.random.default_rng(seed)
    if whole_chunks:
        boxes = _chunk_boxes(array, region, int(max_voxels), rng)
    else:
        boxes = _sample_boxes(region, voxel, int(max_voxels), rng)
    return np.concatenate([read(array, box).ravel() for box in boxes])


def _chunk_boxes(array: Array, roi: Roi, max_voxels: int, rng: np.random.Generator
                 ) -> list[Roi]:
    """Chunks of ``array`` (their parts inside ``roi``, world units) at random until they
    hold ``max_voxels`` voxels and are at least :data:`MIN_CHUNKS` (a chunk or two can miss
    what the data holds), but never more than ``8 * max_voxels``; all of ``roi`` when it
    is no larger than ``max_voxels``."""
    voxel = Coordinate(array.voxel_size)
    if math.prod(roi.shape / voxel) <= max_voxels:
        return [roi]
    stored = getattr(array._source_data, "chunks", None)  # zarr, N5, tiff (funlib's
    # chunk_shape is dask's, which can be the whole array)
    chunk = Coordinate(stored[-voxel.dims:] if stored else array.chunk_shape[-voxel.dims:]
                       ) * voxel  # world units
    one = Coordinate((1,) * voxel.dims)
    # Chunks are counted from the array's first voxel; those that overlap roi:
    first = (roi.begin - array.roi.begin) // chunk
    counts = (roi.end - array.roi.begin - one) // chunk - first + one
    order = rng.permutation(math.prod(counts))
    boxes: list[Roi] = []
    voxels = 0
    for flat in order:
        index = Coordinate(int(i) for i in np.unravel_index(int(flat), tuple(counts)))
        box = Roi(array.roi.begin + (first + index) * chunk, chunk).intersect(roi)
        boxes.append(box)
        voxels += math.prod(box.shape / voxel)
        if (voxels >= max_voxels and len(boxes) >= MIN_CHUNKS) or voxels >= 8 * max_voxels:
            break
    return boxes


def measure_normalization(
    arrays: Sequence[tuple[Array, Roi | None, str]],
    *,
    given: Mapping[str, Any] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_voxels: int = SAMPLE_VOXELS,
) -> dict[str, Any]:
    """The normalisation of training data ``arrays`` (``(array, roi or None, name)`` each).

    Without ``given``: ``{"min", "max", "dtype", "method": "percentiles", "percentiles"}``,
    the ``percentiles`` of a sample of the intensities (the budget ``max_voxels`` is split
    evenly between the volumes, whose samples are pooled). When the two percentiles
    coincide (an image that is mostly one value) the sample's minimum and maximum are used
    instead; a constant sample warns and gets ``max = min + 1``. With ``given``
    (``{"min", "max"}``): that range, ``"method": "given"``.

    Warns (``RuntimeWarning``) when integer raw uses a tiny part of its dtype's range
    (8-bit values in a uint16 file; harmless here, but worth knowing), or, with ``given``,
    when the data span a tiny part of that range (the network would see an almost constant
    image).
    """
    if isinstance(arrays, (str, bytes)) or not isinstance(arrays, Sequence) or not arrays:
        raise ValueError("measure_normalization needs a non-empty list of volumes")
    low, high = (float(p) for p in percentiles)
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    dtypes = sorted({np.dtype(a.dtype).name for a, _, _ in arrays})
    names = ", ".join(repr(name) for _, _, name in arrays)
    if given is not None:
        norm = check_normalization(given, require_dtype=False)
        result = {"min": norm["min"], "max": norm["max"], "dtype": dtypes[0], "method": "given"}
    elif len(dtypes) > 1:
        raise ValueError(
            f"training raw volumes have different dtypes {dtypes}; set training.normalization "
            "({min, max}) so they are mapped to one intensity range"
        )
    budget = max(1, int(max_voxels) // len(arrays))
    samples = []
    for i, (array, roi, name) in enumerate(arrays):
        sample = sample_intensities(array, roi, max_voxels=budget, seed=i)
        if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
            raise NonFiniteRawError(
                f"non-finite values (NaN or inf) in raw {name!r}; fix or mask the raw data"
            )
        samples.append(sample)
    pooled = np.concatenate(samples)
    lo, hi = (float(v) for v in np.percentile(pooled, [low, high]))
    if not hi > lo:
        lo, hi = float(pooled.min()), float(pooled.max())
    if given is None:
        warn_tiny_range(lo, hi, dtypes[0], names)
    else:
        span = (hi - lo) / (result["max"] - result["min"])
        if span < TINY_RANGE:
            warnings.warn(
                f"raw {names} holds values {lo:g}..{hi:g} (percentiles {low:g}..{high:g}), "
                f"only {100 * span:.2g} % of training.normalization {result['min']:g}.."
                f"{result['max']:g}: the network sees an almost constant image; leave "
                "training.normalization out to use the data's own range",
                RuntimeWarning,
                stacklevel=2,
            )
        return result
    if not hi > lo:
        # Nothing to learn from, but not an error (a blank test image, a placeholder
        # channel): keep the value at 0 with a unit scale.
        warnings.warn(
            f"the training raw {names} is constant ({lo:g}) in the sampled voxels; "
            f"normalising with min={lo:g}, max={lo + 1:g}",
            RuntimeWarning,
            stacklevel=2,
        )
        hi = lo + 1.0
    return {
        "min": lo,
        "max": hi,
        "dtype": dtypes[0],
        "method": "percentiles",
        "percentiles": [low, high],
    }


def warn_tiny_range(lo: float, hi: float, dtype: Any, where: str) -> bool:
    """Warn (and return True) when integer data from ``lo`` to ``hi`` use less than
    :data:`TINY_RANGE` of their dtype's range, e.g. 8-bit values in a uint16 file."""
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.integer):
        return False
    info = np.iinfo(dt)
    used = (hi - lo) / (float(info.max) - float(info.min))
    if used >= TINY_RANGE:
        return False
    warnings.warn(
        f"raw {where} ({dt.name}) holds values {lo:g}..{hi:g}, only {100 * used:.2g} % of "
        f"the {dt.name} range (normalising by the dtype's range would make the image almost "
        "constant; innerdist uses the data's own range unless training.normalization is set)",
        RuntimeWarning,
        stacklevel=3,
    )
    return True


def range_mismatch(
    sample: np.ndarray,
    normalization: Mapping[str, Any],
    *,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> str | None:
    """Why raw with intensities ``sample`` looks unlike the data a network was trained on,
    or ``None``.

    The sample's ``percentiles`` are normalised as the network's input would be; training
    data measured with the same percentiles map to 0 and 1. Flagged: a normalised range
    narrower than 0.05 (the network would see an almost constant image: 8-bit values
    through a 16-bit range), or one that lies entirely outside ``[-1, 2]``.

    >>> print(range_mismatch(np.arange(256), {"min": 0, "max": 65535}))
    its intensities 2.55..254 map to 3.9e-05..0.0039 with ... sees an almost constant image
    >>> range_mismatch(np.arange(256), {"min": 0, "max": 255}) is None
    True
    """
    values = np.asarray(sample)
    if values.size == 0:
        return None
    norm = check_normalization(normalization, require_dtype=False)
    lo, hi = (float(v) for v in np.nanpercentile(values, percentiles))
    span = norm["max"] - norm["min"]
    a, b = (lo - norm["min"]) / span, (hi - norm["min"]) / span
    if b - a < 0.05:
        why = "an almost constant image"
    elif b < -1 or a > 2:
        why = "values far outside its training range 0..1"
    else:
        return None
    return (
        f"its intensities {lo:.3g}..{hi:.3g} map to {a:.2g}..{b:.2g} with the network's "
        f"normalisation {norm['min']:g}..{norm['max']:g}: the network sees {why}"
    )
