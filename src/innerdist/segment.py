"""Segmenting inner-distance predictions blockwise: binary masks and seam-free instances.

The in-memory algorithm (seeds, the watershed and its tie rule) lives in
:mod:`innerdist.watershed`; this module reads prediction volumes (quantisation, tuned
post-processing attrs) and computes the same segmentation blockwise on volumes larger
than memory, resumably:

- **masks**: ``pred > foreground_level`` (:func:`threshold_mask`), block by block;
- **instances**: :func:`segment_volume` gives *exactly* :func:`instances` of each whole
  channel (same ids). That rests on the tie rule's restriction consistency: a foreground
  component segmented on its own bounding box, everything else masked out, comes out as
  in the whole volume. Level seeds are local (a threshold); dynamic seeds (h-maxima) are
  not, since a saddle can lie anywhere in the component, so they are computed on whole
  components too, in the grow step. No context bound is needed::

    A  fragments   per block: components of pred > foreground_level (fragments) and
                   seeds: the components of pred > seed_level (level seeds) or the
                   plateaus of candidate peaks (dynamic seeds; one voxel of context),
                   ids block * 2**32 + local id, written to <out>__seeds /
                   <out>__fragments; per fragment: voxel count, first voxel, bounding
                   box (and, for dynamic seeds, the top of its relief)
    B  faces       per block: pairs of ids that touch across its upper faces
    merge          union-find over the pairs -> whole-volume components (exactly those
                   of the in-memory version); per foreground component: its seeds, size,
                   first voxel, bounding box
    grow           0 seeds: background.  1 seed: the whole component is that object
                   (the watershed floods every connected foreground voxel; a single
                   candidate plateau is a single peak, an object when it rises
                   seed_dynamic above the foreground level).  >= 2 seeds: the dynamic
                   seeds (or the level seeds) and the watershed on the component's
                   bounding box with the mask "component == id", written to
                   <out>__grown; exact because neither ever sees another component.
                   Components whose box exceeds ``max_watershed_voxels`` fall back to a
                   per-block watershed with context: approximate at block seams, with an
                   ApproximateSeamsWarning.
    finalize       object sizes -> min_size; ids in raster order of first voxels
    write          per block: fragment -> object id, or the grown id; output written

All volume coordinates are voxels relative to the prediction's ROI unless named ``*_roi``
(world units, e.g. nm). ``min_size`` is in world units (nm^3 in 3-D, nm^2 in 2-D);
``min_size_voxels`` in voxels; ``seed_dynamic`` is a distance in world units.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import importlib
import itertools
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from funlib.geometry import Coordinate, Roi

from innerdist.attrs import (
    POSTPROCESSING_ATTR,
    PREDICTOR_ATTR,
    QUANTIZATION_ATTR,
    SEGMENTATION_ATTR,
)
from innerdist.units import world_unit
from innerdist.watershed import (
    _INT64_MAX,
    _MAX_FLOOD_VOXELS,
    DEFAULT_FOREGROUND_LEVEL,
    DEFAULT_SEED_LEVEL,
    _check_level,
    _check_levels,
    _check_min_size,
    _components,
    _consecutive_ids,
    _flood,
    _hmaxima_regions,
    candidate_peaks,
    check_seed_dynamic,
    instances,
    seed_relief,
    threshold_mask,
)

if TYPE_CHECKING:
    # Not imported at run time: workers open zarr directly, and funlib.persistence (with
    # dask) costs seconds of start-up in every worker process.
    from funlib.persistence import Array

__all__ = [
    "DEFAULT_FOREGROUND_LEVEL",
    "DEFAULT_MAX_WATERSHED_VOXELS",
    "DEFAULT_SEED_LEVEL",
    "POSTPROCESSING_ATTR",
    "QUANTIZATION_ATTR",
    "ApproximateSeamsWarning",
    "instances",
    "segment_volume",
    "threshold_mask",
]

logger = logging.getLogger(__name__)

#: Largest bounding box (voxels) of a multi-seed component flooded as a whole (~1 GB RAM).
DEFAULT_MAX_WATERSHED_VOXELS = 2**24

_LOCAL_BITS = 32
_LOCAL_MASK = np.uint64(2**_LOCAL_BITS - 1)
# Stands for "look the id up in <out>__grown" in the fragment -> object table.
_GROWN = np.uint64(2**64 - 1)


class ApproximateSeamsWarning(UserWarning):
    """Some components were too large to flood as a whole; their split is approximate at
    block seams (see ``max_watershed_voxels``)."""


# --- reading predictions --------------------------------------------------------------------


def _quantization(attrs: Mapping[str, Any], dtype: np.dtype[Any], path: str) -> tuple[float, float]:
    """``(scale, offset)`` mapping stored values to predicted values, checked."""
    mapping = attrs.get(QUANTIZATION_ATTR)
    if mapping is None:
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(
                f"prediction {path!r} has dtype {dtype} but no {QUANTIZATION_ATTR!r} attribute "
                '({"scale": s, "offset": o}); expected float values in [0, 1) or that mapping'
            )
        return 1.0, 0.0
    if dtype == np.bool_ or not (
        np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
    ):
        raise TypeError(f"prediction {path!r} has dtype {dtype}; expected float or integer")
    if not isinstance(mapping, Mapping) or set(mapping) != {"scale", "offset"}:
        raise ValueError(
            f"{QUANTIZATION_ATTR} of {path!r} must be {{'scale': s, 'offset': o}}, got {mapping!r}"
        )
    values = []
    for key in ("scale", "offset"):
        v = mapping[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{QUANTIZATION_ATTR}[{key!r}] of {path!r} must be finite, got {v!r}")
        values.append(float(v))
    if values[0] <= 0:
        raise ValueError(f"{QUANTIZATION_ATTR}['scale'] of {path!r} must be > 0, got {values[0]}")
    return values[0], values[1]


def _dequantize(stored: npt.NDArray[Any], scale: float, offset: float) -> npt.NDArray[np.float32]:
    """Stored values -> predicted values, in float32 (so every pass compares the same numbers)."""
    values = np.asarray(stored, dtype=np.float32)
    if scale == 1.0 and offset == 0.0:
        return values
    return values * np.float32(scale) + np.float32(offset)


def _postprocessing(attrs: Mapping[str, Any], path: str) -> dict[str, float]:
    """Tuned levels stored with the prediction (any subset of the three keys)."""
    stored = attrs.get(POSTPROCESSING_ATTR)
    if stored is None:
        return {}
    if not isinstance(stored, Mapping) or not set(stored) <= {
        "foreground_level",
        "seed_level",
        "seed_dynamic",
        "min_size",
    }:
        raise ValueError(
            f"{POSTPROCESSING_ATTR} of {path!r} must be a dict with keys foreground_level, "
            f"seed_level, seed_dynamic, min_size; got {stored!r}"
        )
    result: dict[str, float] = {}
    for key, value in stored.items():
        if value is None:
            continue
        if key == "min_size":
            result[key] = _check_min_size(f"{POSTPROCESSING_ATTR}['min_size'] of {path!r}", value)
        elif key == "seed_dynamic":
            result[key] = check_seed_dynamic(
                value, f"{POSTPROCESSING_ATTR}['seed_dynamic'] of {path!r}"
            )
        else:
            result[key] = _check_level(f"{POSTPROCESSING_ATTR}[{key!r}] of {path!r}", value)
    return result


def _distance_scale(attrs: Mapping[str, Any], path: str) -> float | None:
    """The tanh scale (world units) of the predictor that made the prediction, if recorded."""
    predictor = attrs.get(PREDICTOR_ATTR)
    if predictor is None:
        return None
    value = predictor.get("scale_factor") if isinstance(predictor, Mapping) else None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(
            f"{PREDICTOR_ATTR} of {path!r} must hold a 'scale_factor' > 0 (world units), "
            f"got {predictor!r}"
        )
    return float(value)


# --- blockwise ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """Everything a pass needs, picklable (daisy ships it to its worker processes)."""

    prediction: str
    prediction_is_zarr: bool  # else (N5) it is read through funlib
    out: str  # the zarr array of level 0
    user_out: str  # the output path as given (an OME-NGFF image group)
    seeds: str
    fragments: str
    grown: str
    tracking: str
    mode: str
    voxel_size: tuple[int, ...]
    offset: tuple[int, ...]  # world units
    shape: tuple[int, ...]  # voxels, spatial
    block: tuple[int, ...]  # voxels
    chunk: tuple[int, ...]  # voxels, of the output and the intermediates; divides block
    channels: int
    scale: float
    shift: float
    foreground_level: float
    seed_level: float
    seed_dynamic: float  # world units; 0: level seeds
    distance_scale: float  # the prediction's tanh scale, world units (1 when unknown)
    min_size_voxels: float
    max_watershed_voxels: int
    fallback_context: tuple[int, ...]  # voxels
    progress: bool
    worker_command: str | None = None  # start workers through it (innerdist.workers)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block, strict=True))

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid)

    @property
    def dims(self) -> int:
        return len(self.shape)

    def locate(self, write_roi: Roi) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Block index and voxel box ``[lo, hi)`` of a daisy write ROI."""
        lo = tuple(
            (b - o) // v
            for b, o, v in zip(write_roi.begin, self.offset, self.voxel_size, strict=True)
        )
        hi = tuple(
            (e - o) // v
            for e, o, v in zip(write_roi.end, self.offset, self.voxel_size, strict=True)
        )
        position = tuple(lo_d // b for lo_d, b in zip(lo, self.block, strict=True))
        return int(np.ravel_multi_index(position, self.grid)), lo, hi

    @property
    def floor(self) -> float:
        """The foreground level as an inner distance (world units)."""
        return self.distance_scale * math.atanh(self.foreground_level)

    def stats(self, step: str) -> Path:
        path = Path(self.tracking) / step
        path.mkdir(parents=True, exist_ok=True)
        return path


def segment_volume(
    prediction: str | Path,
    out: str | Path,
    *,
    mode: str = "instances",
    foreground_level: float | None = None,
    seed_level: float | None = None,
    seed_dynamic: float | None = None,
    min_size: float | None = None,
    block_shape: Sequence[int] | None = None,
    num_workers: int = 1,
    overwrite: bool = False,
    max_watershed_voxels: int = DEFAULT_MAX_WATERSHED_VOXELS,
    fallback_context: Sequence[int] | None = None,
    progress: bool = True,
    pyramid: bool = True,
    allow_incomplete: bool = False,
    worker_command: str | None = None,
    dry_run: bool = False,
) -> str:
    """Segment a prediction volume blockwise; returns the output path.

    Parameters
    ----------
    prediction:
        ``container/dataset`` written by ``innerdist predict`` (or ``targets``): shape
        ``(C, *spatial)`` with the channel axis first, 2-D or 3-D, float values in [0, 1),
        or integers/float16 with an ``innerdist_quantization`` mapping. Must be complete.
        Values are compared with the levels in float32 (the reference is :func:`instances`
        on the float32 values).
    out:
        ``container/dataset`` to write: ``(C, *spatial)``, same ROI and voxel size, chunked
        like the blocks; uint8 masks (``mode="threshold"``) or uint64 instances
        (``mode="instances"``, ids ``1..N`` per channel, equal to :func:`instances` on each
        whole channel). Marked complete only when every pass has finished.
    foreground_level, seed_level:
        Levels in [0, 1], ``foreground_level < seed_level``. Default: the prediction's
        ``innerdist_postprocessing`` attrs, else 0.05 and 0.8. Threshold mode uses
        ``foreground_level`` only.
    seed_dynamic:
        Smallest dynamic of a seed, world units (nm), see :mod:`innerdist.watershed`:
        every regional maximum of the inner distance that rises at least this far above
        its saddles is a seed; 0 seeds the components above ``seed_level`` only. The
        inner distance is ``scale_factor * atanh(pred)`` with the scale from the
        prediction's ``innerdist_predictor`` attrs (written by ``predict`` and
        ``targets``). Default: the attrs' ``seed_dynamic``, else one voxel (the smallest
        voxel size) when the scale is known, else 0.
    min_size:
        Smallest object kept, world units (nm^3 in 3-D, nm^2 in 2-D). Default: the
        attrs' ``min_size`` (voxels), else 0.
    block_shape:
        Write block in voxels, capped at the volume; also the chunk shape of the output.
        Default: planned (:func:`innerdist.plan.choose_block_shape`) from the volume, the
        prediction's chunks (blocks of whole chunks where they allow it), the workers
        (several blocks each) and the memory budget, with output chunks of at most
        512^2 / 64^3 voxels; an existing output of the job keeps the blocks it was
        written with. The objects do not depend on the blocks (except in the fallback
        below), their ids do.
    num_workers:
        Worker processes (1: everything in this process).
    overwrite:
        Replace an existing output. Without it, an existing complete output is refused and
        an incomplete one written by the same job is resumed (finished blocks are kept).
    max_watershed_voxels:
        Components with two or more seeds are flooded as a whole on their bounding box when
        it has at most this many voxels (exact); larger ones are flooded per block with
        ``fallback_context`` voxels of context, which is approximate at block seams and
        raises an :class:`ApproximateSeamsWarning`.
    fallback_context:
        Context (voxels per axis) of the fallback; default half a block.
    progress:
        Show progress bars.
    pyramid:
        Also write the multiscale levels ``s1, s2, ...`` (most frequent id per window:
        :mod:`innerdist.pyramid`). The output is an OME-NGFF label image (level ``s0``).
    allow_incomplete:
        Segment a prediction that its job marked incomplete (with a warning) instead of
        refusing it.
    worker_command:
        Start each worker of the blockwise passes through this template, e.g.
        ``'srun {command}'`` (default: ``$INNERDIST_WORKER_COMMAND``; unset: local
        processes); see :mod:`innerdist.workers`.
    dry_run:
        Check everything, run every step (passes, merge, grow, finalize, write, pyramid)
        on a sample of up to 2 blocks per axis from the middle, copied into a temporary
        folder, and return the plan's text (:class:`innerdist.plan.Plan`) instead of the
        output path: the estimate scales the sample's steps to the job (see
        :func:`_plan`). Nothing is written to ``out``; the temporary folder is removed.
    """
    began = time.perf_counter()
    from innerdist.blockwise import existing_block_shape, tracking_dir_for
    from innerdist.safety import check_input_complete, check_output_apart_from_inputs
    from innerdist.workers import resolve_worker_command

    worker_command = resolve_worker_command(worker_command)
    from innerdist.volumes import (
        label_output_path,
        num_channels,
        open_volume,
        split_volume_path,
        zarr_array_path,
    )

    if mode not in ("instances", "threshold"):
        raise ValueError(f"mode must be 'instances' or 'threshold', got {mode!r}")
    out = label_output_path(out)
    if (
        isinstance(num_workers, bool)
        or not isinstance(num_workers, (int, np.integer))
        or num_workers < 1
    ):
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if (
        isinstance(max_watershed_voxels, bool)
        or not isinstance(max_watershed_voxels, (int, np.integer))
        or not 1 <= max_watershed_voxels <= _MAX_FLOOD_VOXELS
    ):
        raise ValueError(
            f"max_watershed_voxels must be an integer in [1, {_MAX_FLOOD_VOXELS}], "
            f"got {max_watershed_voxels!r}"
        )
    if mode == "threshold" and (
        seed_level is not None or min_size is not None or seed_dynamic is not None
    ):
        raise ValueError(
            "seed_level, seed_dynamic and min_size apply to mode='instances' only; threshold "
            f"mode uses foreground_level alone (got seed_level={seed_level!r}, "
            f"seed_dynamic={seed_dynamic!r}, min_size={min_size!r})"
        )
    out_container, out_dataset = split_volume_path(out)
    pred_container, pred_dataset = split_volume_path(prediction)
    if (out_container.resolve(), out_dataset) == (pred_container.resolve(), pred_dataset):
        raise ValueError(f"output {str(out)!r} is the prediction itself; choose another path")
    intermediates = [out_container / f"{out_dataset}__{n}" for n in ("seeds", "fragments", "grown")]
    check_output_apart_from_inputs([out, *intermediates], {"prediction": prediction})
    if not (out_container / out_dataset).exists():
        # Without the output they belong to, these are someone else's data: never delete.
        for path in intermediates:
            if path.exists():
                raise FileExistsError(
                    f"{str(path)!r} exists, but segment keeps its intermediate results there "
                    f"for output {str(out)!r}; move it or choose another output name"
                )

    source = open_volume(prediction)
    pred_path = str(prediction)
    check_input_complete(source.attrs, pred_path, "prediction", allow_incomplete=allow_incomplete)
    channels = num_channels(source)
    if channels is None:
        raise ValueError(
            f"prediction {pred_path!r} has axes {source.axis_names} without a channel axis; "
            "expected (c^, *spatial) as written by innerdist predict"
        )
    dims = source.voxel_size.dims
    if dims not in (2, 3) or source.channel_dims != 1:
        raise ValueError(
            f"prediction {pred_path!r} has shape {source.shape} (axes {source.axis_names}); "
            "expected one channel axis followed by 2 or 3 spatial axes"
        )
    if channels < 1:
        raise ValueError(f"prediction {pred_path!r} has no channels (shape {source.shape})")
    scale, shift = _quantization(source.attrs, np.dtype(source.dtype), pred_path)
    tuned = _postprocessing(source.attrs, pred_path)

    fg = (
        foreground_level
        if foreground_level is not None
        else tuned.get("foreground_level", DEFAULT_FOREGROUND_LEVEL)
    )
    voxel_size = tuple(int(v) for v in source.voxel_size)
    voxel_volume = math.prod(voxel_size)
    distance_scale = _distance_scale(source.attrs, pred_path)
    if mode == "threshold":
        fg = _check_level("foreground_level", fg)
        seed, min_size_voxels, min_size_world, h = 1.0, 0.0, 0.0, 0.0
    else:
        if seed_dynamic is not None:
            h = check_seed_dynamic(seed_dynamic)
        elif "seed_dynamic" in tuned:
            h = tuned["seed_dynamic"]
        else:
            h = float(min(voxel_size)) if distance_scale is not None else 0.0
        if h > 0 and distance_scale is None:
            raise ValueError(
                f"seed_dynamic={h} needs the prediction's tanh scale, but {pred_path!r} has "
                f"no {PREDICTOR_ATTR!r} attribute with a 'scale_factor'; give "
                "seed_dynamic=0 (seeds above seed_level only)"
            )
        seed = seed_level if seed_level is not None else tuned.get("seed_level", DEFAULT_SEED_LEVEL)
        fg, seed = _check_levels(fg, seed)
        if min_size is not None:
            min_size_world = _check_min_size("min_size", min_size)
            min_size_voxels = min_size_world / voxel_volume
        else:
            min_size_voxels = tuned.get("min_size", 0.0)
            min_size_world = min_size_voxels * voxel_volume

    shape = tuple(int(s) for s in source.shape[1:])
    cluster = worker_command is not None
    if block_shape is not None:
        block = _given_block_shape(block_shape, shape)
        chunk = block
    else:
        # A job that exists keeps its blocks (planned ones depend on workers and RAM).
        resumed = None if overwrite else existing_block_shape(out, "segment", dims)
        stored = tuple(int(c) for c in source.chunk_shape[source.channel_dims:])
        plan_blocks = partial(_planned_block_shape, shape, channels=channels,
                              stored_chunks=stored, cluster=cluster)
        block = resumed or plan_blocks(workers=num_workers)
    blocks = math.prod(-(-s // b) for s, b in zip(shape, block, strict=True))
    requested_workers = num_workers
    num_workers = _planned_workers(num_workers, shape=shape, channels=channels, blocks=blocks,
                                   cluster=cluster)
    if block_shape is None:
        if resumed is None and num_workers == 1 < requested_workers:
            block = plan_blocks(workers=1)  # in this process after all: fewer, larger blocks
        chunk = _chunk_shape(block)
    # Ids are (channel, block) * 2**32 + local id: both parts must fit in 32 bits.
    grid = [-(-s // b) for s, b in zip(shape, block, strict=True)]
    if math.prod(block) >= 2**_LOCAL_BITS or channels * math.prod(grid) >= 2**_LOCAL_BITS:
        raise ValueError(
            f"block_shape {block} gives blocks of 2**32 voxels or more, or 2**32 blocks or "
            f"more over {channels} channel(s) of shape {shape}; choose another block shape"
        )
    if fallback_context is None:
        context = tuple(b // 2 for b in block)
    else:
        context = tuple(int(c) for c in fallback_context)
        if len(context) != dims or any(c < 0 for c in context):
            raise ValueError(
                f"fallback_context must be {dims} non-negative integers (voxels), "
                f"got {tuple(fallback_context)}"
            )

    seeds_path, fragments_path, grown_path = (
        str(out_container / f"{out_dataset}__{name}") for name in ("seeds", "fragments", "grown")
    )
    job = _Job(
        prediction=zarr_array_path(source) or str(prediction),
        prediction_is_zarr=zarr_array_path(source) is not None,
        out=str(out_container / out_dataset),
        user_out=str(out),
        seeds=seeds_path,
        fragments=fragments_path,
        grown=grown_path,
        tracking=str(tracking_dir_for(out)),
        mode=mode,
        voxel_size=voxel_size,
        offset=tuple(int(o) for o in source.roi.offset),
        shape=shape,
        block=block,
        chunk=chunk,
        channels=channels,
        scale=scale,
        shift=shift,
        foreground_level=fg,
        seed_level=seed,
        seed_dynamic=h,
        distance_scale=distance_scale or 1.0,
        min_size_voxels=min_size_voxels,
        max_watershed_voxels=max_watershed_voxels,
        fallback_context=context,
        progress=progress,
        worker_command=worker_command,
    )
    description = {
        "task": "segment",
        "prediction": str(pred_container.resolve() / pred_dataset),
        "mode": mode,
        "foreground_level": fg,
        "seed_level": seed if mode == "instances" else None,
        "seed_dynamic": h if mode == "instances" else None,
        "min_size": min_size_world if mode == "instances" else None,
        "block_shape": list(block),
        "max_watershed_voxels": max_watershed_voxels,
        "fallback_context": list(context),
    }
    if dry_run:
        return _plan(job, description, source, num_workers=num_workers, pyramid=pyramid,
                     setup_seconds=time.perf_counter() - began)
    _execute(job, description, roi=source.roi, units=world_unit(source.units),
             inputs={"prediction": prediction}, overwrite=overwrite, pyramid=pyramid,
             num_workers=num_workers)
    return str(out)


class _Steps:
    """Seconds spent in each step of a run, summed by name (the dry run extrapolates
    them to the whole job)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _execute(
    job: _Job,
    description: dict[str, Any],
    *,
    roi: Roi,
    units: Any,
    inputs: Mapping[str, str | Path],
    overwrite: bool,
    pyramid: bool,
    num_workers: int,
    steps: _Steps | None = None,
    before_finish: Callable[[_Job], None] | None = None,
) -> None:
    """Create (or reopen, to resume) the output of ``job`` and run every step into it: the
    one sequence a run and the dry run's sample both go through. ``before_finish`` is
    called once the passes are done, while the intermediates still exist."""
    from innerdist.blockwise import open_or_create_output
    from innerdist.volumes import is_complete, zarr_array_path

    steps = steps or _Steps()
    resuming = Path(job.out).exists() and not overwrite
    with steps("create"):
        output = open_or_create_output(
            job.user_out,
            job=description,
            overwrite=overwrite,
            inputs=inputs,
            roi=roi,
            voxel_size=job.voxel_size,
            dtype=np.uint8 if job.mode == "threshold" else np.uint64,
            num_channels=job.channels,
            chunk_shape=job.chunk,
            attrs={
                SEGMENTATION_ATTR: {
                    k: description[k]
                    for k in ("mode", "foreground_level", "seed_level", "seed_dynamic",
                              "min_size")
                }
            },
            ome=True,
            label=True,
            units=units,
        )
    job = dataclasses.replace(job, out=zarr_array_path(output) or job.out)
    if is_complete(output):
        return  # the same job finished before: nothing to do
    _forget()
    try:
        if job.mode == "threshold":
            with steps("threshold"):
                _run(job, "segment-threshold", _pass_threshold, num_workers)
        else:
            _segment_instances(job, roi, resuming=resuming, num_workers=num_workers,
                               steps=steps)
        if before_finish is not None:
            before_finish(job)
    finally:
        _forget()
    _finish(job, output, pyramid=pyramid, num_workers=num_workers, steps=steps)


#: In-process segmentation time per voxel and channel (all passes), seconds: 2048^2 in 6.5 s
#: on one core of the 2-core development machine. Only to decide whether workers pay off.
_SECONDS_PER_VOXEL = 1.5e-6
#: Host memory a segment block holds per voxel and channel, bytes. The fragments pass holds
#: the most: measured (:func:`innerdist.plan.measure_block`, 1024^2 and 96^3 blocks of a
#: smooth random prediction) 53-61 B with dynamic seeds (the float32 prediction and its
#: halo copy, the float64 relief, component labels, the uint64 seeds and fragments and
#: their temporaries), 40-45 B with level seeds; the write pass 33 B, the faces pass < 8 B.
_BYTES_PER_VOXEL = 64
#: Step (voxels) of planned blocks when whole chunks of the prediction are too coarse.
_BLOCK_STEP = 8
#: Largest planned output chunk, voxels: the old fixed blocks (512^2, 64^3; 2 MiB of
#: uint64), so that viewers and the pyramid levels see the chunks they saw before.
_MAX_CHUNK_VOXELS = 2**18


def _planned_workers(requested: int, *, shape: Sequence[int], channels: int, blocks: int,
                     cluster: bool) -> int:
    """Workers for the job: no more than blocks, and 1 (this process) for local workers
    when the job is too small for their start-up to pay off
    (:func:`innerdist.plan.choose_workers`)."""
    from innerdist.plan import choose_workers

    if cluster:
        return max(1, min(requested, blocks))
    seconds = math.prod(shape) * channels * _SECONDS_PER_VOXEL
    # The passes are single-threaded numpy: workers scale up to the cores.
    usable = max(1, min(requested, blocks, os.cpu_count() or 1))
    workers = choose_workers(requested, blocks=blocks, serial_seconds=seconds,
                             parallel_seconds=seconds / usable)
    if workers != requested:
        logger.info("segment: %d block(s) on %d worker(s) (%d asked for)", blocks, workers,
                    requested)
    return workers


def _given_block_shape(block_shape: Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The user's ``block_shape``, checked and capped at the volume."""
    dims = len(shape)
    wanted = tuple(block_shape)
    if len(wanted) != dims or any(
        isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in wanted
    ):
        raise ValueError(
            f"block_shape must be {dims} positive integers (voxels), got {tuple(block_shape)}"
        )
    return tuple(min(int(b), s) for b, s in zip(wanted, shape, strict=True))


def _planned_block_shape(
    shape: tuple[int, ...], *, channels: int, stored_chunks: Sequence[int], workers: int,
    cluster: bool,
) -> tuple[int, ...]:
    """Blocks for a job the user gave none (:func:`innerdist.plan.choose_block_shape`):
    whole chunks of the prediction (a block reads every chunk it touches in full), as
    large as :data:`_BYTES_PER_VOXEL` per voxel and channel in the memory budget, the
    voxel cap and :data:`~innerdist.plan.BLOCKS_PER_WORKER` blocks per worker allow; in
    steps of :data:`_BLOCK_STEP` voxels when whole chunks cannot do that. One voxel of
    margin: dynamic seeds read it. Cluster workers have a machine each."""
    from innerdist.plan import choose_block_shape, memory_budget

    dims = len(shape)
    return choose_block_shape(
        shape,
        tile=[min(int(c), s) for c, s in zip(stored_chunks, shape, strict=True)],
        margin=(1,) * dims,
        in_bytes_per_voxel=_BYTES_PER_VOXEL * channels,
        out_bytes_per_voxel=0,
        budget_bytes=memory_budget(1 if cluster else workers),
        workers=workers,
        fallback_tile=(_BLOCK_STEP,) * dims,
    )


def _chunk_shape(block: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of the output and intermediates for planned blocks: the block cut into equal
    parts of whole steps, at most :data:`_MAX_CHUNK_VOXELS` (each block still writes
    chunks of its own)."""
    from innerdist.plan import chunk_shape_for

    return chunk_shape_for(block, tuple(min(_BLOCK_STEP, b) for b in block),
                           max_voxels=_MAX_CHUNK_VOXELS)


def _run(job: _Job, name: str, process: Callable[[_Job, Roi, Roi], None], num_workers: int) -> None:
    """One blockwise pass over the write blocks. Passes that need context read it
    themselves (zero-filled outside the volume), so daisy is given none."""
    from innerdist.blockwise import run_blockwise
    from innerdist.workers import BlockFunction

    voxel = Coordinate(job.voxel_size)
    worker_job = None
    if job.worker_command is not None:
        paths = ("prediction", "out", "seeds", "fragments", "grown", "tracking")
        fields = dataclasses.asdict(
            dataclasses.replace(
                job, worker_command=None, **{p: os.path.abspath(getattr(job, p)) for p in paths}
            )
        )
        worker_job = BlockFunction(
            "innerdist.segment:pass_function", {"job": fields, "step": process.__name__}
        )
    run_blockwise(
        name,
        total_roi=Roi(job.offset, Coordinate(job.shape) * voxel),
        block_shape=Coordinate(job.block) * voxel,
        context=Coordinate((0,) * job.dims),
        process=partial(process, job),
        tracking_dir=job.tracking,
        num_workers=num_workers,
        progress=job.progress,
        worker_command=job.worker_command,
        worker_job=worker_job,
    )


def pass_function(*, job: dict[str, Any], step: str) -> Callable[[Roi, Roi], None]:
    """One pass's block function rebuilt from JSON (in a cluster worker): ``step`` names
    a ``_pass_*`` function of this module, ``job`` the fields of its :class:`_Job`."""
    function = globals().get(step) if step.startswith("_pass_") else None
    if not callable(function):
        raise ValueError(f"{step!r} is not a segmentation pass")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in job.items()}
    return partial(function, _Job(**fields))


#: Steps that run block by block through daisy (workers start anew for each).
_BLOCK_STEPS = ("threshold", "fragments", "faces", "fallback", "write")
#: What the steps import on first use. The dry run imports them before it times the
#: sample: once per run, they belong to the set-up, not to the time scaled with voxels.
#: (skimage loads its submodules lazily: the watershed's own module is named.)
_STEP_MODULES = ("scipy.ndimage", "scipy.sparse.csgraph", "skimage.segmentation._watershed",
                 "cc3d", "innerdist.blockwise", "innerdist.progress", "innerdist.pyramid")


def _warm_up(job: _Job) -> float:
    """Pay what the steps pay on first use in a process, and return its seconds: the
    imports of :data:`_STEP_MODULES`, and the watershed's compiled code (numba, loaded
    from its cache on the first call), warmed by segmenting two touching bumps with the
    job's levels. A run pays this once, whatever its size: it must not be scaled."""
    start = time.perf_counter()
    for module in _STEP_MODULES:
        importlib.import_module(module)
    line = np.array([0.3, 0.7, 0.9, 0.95, 0.7, 0.3, 0.6, 0.9, 0.95, 0.3], np.float32)
    bumps = line.reshape((1,) * (job.dims - 1) + (-1,))
    if job.mode == "instances":
        instances(bumps, foreground_level=job.foreground_level, seed_level=job.seed_level,
                  seed_dynamic=job.seed_dynamic, scale=job.distance_scale)
    return time.perf_counter() - start


def _pass_nothing(job: _Job, read_roi: Roi, write_roi: Roi) -> None:
    """A pass that does nothing: the dry run times what starting a pass's workers costs."""


def _pass_startup_seconds(job: _Job, num_workers: int, tracking: Path) -> float:
    """Seconds a blockwise pass with ``num_workers`` local workers costs beyond its blocks
    (daisy spawns them, each imports this module and unpickles the job), measured on a
    pass of empty blocks."""
    from innerdist.blockwise import run_blockwise

    start = time.perf_counter()
    run_blockwise(
        "segment-startup", total_roi=Roi((0,), (num_workers,)), block_shape=Coordinate((1,)),
        context=Coordinate((0,)), process=partial(_pass_nothing, job),
        tracking_dir=tracking, num_workers=num_workers, progress=False,
    )
    return time.perf_counter() - start


def _sample_box(job: _Job) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Voxel box ``[lo, hi)`` of the dry run's sample: up to 2 blocks per axis around the
    middle, whole blocks where the axis has 3 or more::

        grid 1: [0]     grid 2: [0 1]     grid 5: 0 [1 2] 3 4     grid 6: 0 1 [2 3] 4 5
    """
    lo, hi = [], []
    for g, b, s in zip(job.grid, job.block, job.shape, strict=True):
        first = max(0, (g - 2) // 2)
        lo.append(first * b)
        hi.append(min(s, (first + 2) * b))
    return tuple(lo), tuple(hi)


def _plan(
    job: _Job, description: dict[str, Any], source: Array, *, num_workers: int, pyramid: bool,
    setup_seconds: float,
) -> str:
    """The ``dry_run`` of :func:`segment_volume`: every step of the job (the passes, merge,
    grow, finalize, write, pyramid) run on a sample of a few blocks from the middle
    (:func:`_sample_box`) copied into a temporary folder, timed, and scaled to the whole
    job: by voxels, in rounds of blocks over the workers for the per-block passes, plus
    the workers' measured start-up for each step that starts them. The memory of a block
    is measured on the sample's first block (:func:`innerdist.plan.measure_block`)."""
    from innerdist.blockwise import tracking_dir_for
    from innerdist.plan import Plan, measure_block, output_bytes, worker_startup_seconds
    from innerdist.pyramid import level_factors
    from innerdist.volumes import create_volume, read, zarr_array_path

    voxel = Coordinate(job.voxel_size)
    lo, hi = _sample_box(job)
    sample_shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
    sample_roi = Roi(Coordinate(job.offset) + Coordinate(lo) * voxel,
                     Coordinate(sample_shape) * voxel)
    threshold = job.mode == "threshold"
    steps = _Steps()
    memory: list[int] = []
    batches: list[int] = []
    setup_seconds += _warm_up(job)
    cluster = job.worker_command is not None
    with tempfile.TemporaryDirectory(prefix="innerdist-plan-") as tmp:
        # A pass's workers (local ones: cluster workers are not started for a plan).
        pass_startup = (_pass_startup_seconds(job, num_workers, Path(tmp) / "startup")
                        if num_workers > 1 and not cluster else 0.0)
        copy_path = Path(tmp) / "in.zarr" / "pred"
        copy = create_volume(copy_path, roi=sample_roi, voxel_size=job.voxel_size,
                             dtype=source.dtype, num_channels=job.channels,
                             chunk_shape=source.chunk_shape[source.channel_dims:])
        copy[sample_roi] = read(source, sample_roi)
        out = Path(tmp) / "out.zarr" / "seg"
        sample = dataclasses.replace(
            job, prediction=zarr_array_path(copy) or str(copy_path), prediction_is_zarr=True,
            out=str(out), user_out=str(out), seeds=f"{out}__seeds",
            fragments=f"{out}__fragments", grown=f"{out}__grown",
            tracking=str(tracking_dir_for(out)), offset=tuple(sample_roi.offset),
            shape=sample_shape, progress=False, worker_command=None,
        )

        def measure(done: _Job) -> None:
            """Memory of the sample's first block in each pass (they can run again)."""
            write_roi = Roi(sample_roi.offset, Coordinate(job.block) * voxel)
            write_roi = write_roi.intersect(sample_roi)
            if not threshold:
                batches.append(len(_tables(done)["batch_channel"]))
            for step in [_pass_threshold] if threshold else [_pass_fragments, _pass_faces,
                                                              _pass_write]:
                _forget()
                host = measure_block(partial(step, done), write_roi, write_roi)[1]
                memory.extend([] if host is None else [host])

        _execute(sample, description, roi=sample_roi, units=world_unit(source.units),
                 inputs={"prediction": str(copy_path)}, overwrite=False, pyramid=pyramid,
                 num_workers=1, steps=steps, before_finish=measure)

    parallel = num_workers > 1 or cluster
    # A fresh Python importing what a worker imports: the grow step's pool, and (no better
    # measure without submitting) a cluster worker.
    startup = (
        worker_startup_seconds(["numpy", "zarr", "cc3d", "innerdist.segment", "innerdist.workers",
                                "innerdist.blockwise"])
        if parallel
        else 0.0
    )
    if not cluster:
        pass_startup = max(pass_startup, startup)
    else:
        pass_startup = startup
    cores = os.cpu_count() or 1
    scale = math.prod(job.shape) / math.prod(sample_shape)
    estimate: dict[str, float] = {}
    for name, seconds in steps.seconds.items():
        whole = seconds * scale
        if name == "create":
            estimate[name] = seconds  # once, whatever the size
        elif name in _BLOCK_STEPS and parallel:
            share = max(1, min(num_workers if cluster else min(num_workers, cores),
                               job.num_blocks))
            rounds = math.ceil(job.num_blocks / share)
            estimate[name] = pass_startup + rounds * whole / job.num_blocks
        elif name == "grow" and num_workers > 1 and batches and batches[0] * scale > 1:
            # Grown by local processes (a pool), on this machine even with a worker command.
            share = max(1, min(num_workers, cores, math.ceil(batches[0] * scale)))
            estimate[name] = whole if share == 1 else startup + whole / share
        elif name == "pyramid" and num_workers > 1:
            # One blockwise run per level, each starting its (local) workers.
            levels = len(level_factors(job.voxel_size, job.shape, job.chunk))
            estimate[name] = levels * pass_startup + whole / max(1, min(num_workers, cores))
        else:
            estimate[name] = whole
    sample_blocks = math.prod(-(-s // b) for s, b in zip(sample_shape, job.block, strict=True))
    block_seconds = sum(steps.seconds.get(n, 0.0) for n in _BLOCK_STEPS) / sample_blocks
    notes = []
    if sample_shape != job.shape and not threshold \
            and job.max_watershed_voxels < math.prod(job.shape):
        notes.append("objects cut by the sample's edges are smaller there, so a fallback "
                     "pass the whole job needs may be missing")
    if cluster:
        notes.append("the wait for cluster workers to be scheduled is not in the estimate")
    copies = 1 if threshold else 4  # instances: the output and 3 uint64 intermediates
    return str(Plan(
        job="segment", blocks=job.num_blocks, block_shape=job.block, workers=num_workers,
        block_seconds=block_seconds, block_memory_bytes=max(memory) if memory else None,
        device_memory_bytes=None,
        output_bytes=output_bytes(job.shape, job.channels * copies,
                                  "uint8" if threshold else "uint64"),
        output_description=(
            f"uint8, {job.channels} channel(s)" if threshold else
            f"uint64, {job.channels} channel(s), with 3 intermediates while it runs"
        ) + ", uncompressed",
        worker_startup_seconds=pass_startup, setup_seconds=setup_seconds,
        steps=tuple(estimate.items()),
        sample=(f"a sample of {sample_blocks} block(s), {sample_shape} voxels, through every "
                "step"),
        note="; ".join(notes) or None,
    ))


def _finish(job: _Job, output: Array, *, pyramid: bool, num_workers: int, steps: _Steps) -> None:
    from innerdist.blockwise import finish_output

    # Threshold mode has no intermediates of its own, but may replace an instances run's.
    with steps("clean-up") if job.mode == "instances" else contextlib.nullcontext():
        for path in (job.seeds, job.fragments, job.grown):
            _remove_dataset(path)
    if pyramid:
        from innerdist.pyramid import write_pyramid

        with steps("pyramid"):
            write_pyramid(
                job.user_out,
                reduction="mode",
                tracking_dir=Path(job.tracking) / "pyramid",
                num_workers=num_workers,
                progress=job.progress,
            )
    with steps("finish"):
        finish_output(output, job.user_out)


def _remove_dataset(path: str) -> None:
    if Path(path).exists():
        shutil.rmtree(path)


def _exists(path: str) -> bool:
    return Path(path).exists()


def _segment_instances(
    job: _Job, roi: Roi, *, resuming: bool, num_workers: int, steps: _Steps
) -> None:
    from innerdist.volumes import create_volume

    tracking = Path(job.tracking)
    if (tracking / "written").exists():
        return  # killed while cleaning up: every pass is done
    intermediates = (job.seeds, job.fragments, job.grown)
    if not (resuming and all(_exists(p) for p in intermediates)):
        # A fresh start (or an intermediate went missing): forget every finished block.
        if tracking.exists():
            shutil.rmtree(tracking)
        for path in intermediates:
            create_volume(
                path,
                roi=roi,
                voxel_size=job.voxel_size,
                dtype=np.uint64,
                num_channels=job.channels,
                chunk_shape=job.chunk,
                overwrite=True,
            )
    with steps("fragments"):
        _run(job, "segment-fragments", _pass_fragments, num_workers)
    with steps("faces"):
        _run(job, "segment-faces", _pass_faces, num_workers)
    with steps("merge"):
        tables = _merge(job)
    if tables["fallback_comps"].size:
        warnings.warn(
            f"{tables['fallback_comps'].size} foreground component(s) with several seeds have "
            f"bounding boxes larger than max_watershed_voxels={job.max_watershed_voxels}; "
            f"they are split by a per-block watershed with {job.fallback_context} voxels of "
            "context, which is approximate at block seams (raise max_watershed_voxels to "
            "make them exact)",
            ApproximateSeamsWarning,
            stacklevel=4,  # _segment_instances, _execute, segment_volume, its caller
        )
        with steps("fallback"):
            _run(job, "segment-fallback", _pass_fallback, num_workers)
    with steps("grow"):
        _grow_batches(job, num_workers)
    with steps("finalize"):
        _finalize(job)
    with steps("write"):
        _run(job, "segment-write", _pass_write, num_workers)
    (tracking / "written").touch()


# --- passes ---------------------------------------------------------------------------------


class _Voxels:
    """Numpy-style access in voxels to a volume that is not a zarr array (N5), through
    funlib (lazy ops included)."""

    def __init__(self, array: Array) -> None:
        self.array = array

    def __getitem__(self, key: tuple[int | slice, ...]) -> Any:
        return np.asarray(self.array.data[key].compute(scheduler="synchronous"))


_OPENED: dict[tuple[str, str], Any] = {}


def _open(path: str, mode: str = "r") -> Any:
    """A zarr array (written by innerdist: the outputs and intermediates), opened once per
    process. Indexed in voxels, channel first, like the funlib Array around it."""
    import zarr

    if (path, mode) not in _OPENED:
        _OPENED[path, mode] = zarr.open_array(path, mode=mode)
    return _OPENED[path, mode]


def _prediction(job: _Job) -> Any:
    """The prediction, opened once per process: zarr directly when it is zarr (reads via
    funlib's dask arrays cost ~8 ms each), else through funlib."""
    if job.prediction_is_zarr:
        return _open(job.prediction)
    if (job.prediction, "funlib") not in _OPENED:
        from innerdist.volumes import open_volume

        _OPENED[job.prediction, "funlib"] = _Voxels(open_volume(job.prediction))
    return _OPENED[job.prediction, "funlib"]


def _forget() -> None:
    """Drop the per-process caches (volumes may be recreated between calls)."""
    _OPENED.clear()
    _TABLES.clear()


def _box(
    lo: Sequence[int], hi: Sequence[int], channel: int | None = None
) -> tuple[int | slice, ...]:
    spatial = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return ((slice(None) if channel is None else channel), *spatial)


def _read(array: Any, job: _Job, lo: Sequence[int], hi: Sequence[int], channel: int) -> Any:
    """One channel of ``array`` over the voxel box ``[lo, hi)``, zeros outside the volume."""
    inner_lo = [max(a, 0) for a in lo]
    inner_hi = [min(b, s) for b, s in zip(hi, job.shape, strict=True)]
    data = np.asarray(array[_box(inner_lo, inner_hi, channel)])
    if list(inner_lo) == list(lo) and list(inner_hi) == list(hi):
        return data
    full = np.zeros(tuple(b - a for a, b in zip(lo, hi, strict=True)), data.dtype)
    full[tuple(slice(i - a, j - a) for i, j, a in zip(inner_lo, inner_hi, lo, strict=True))] = data
    return full


def _save(path: Path, **arrays: Any) -> None:
    """Write an ``.npz`` atomically, so a killed run never leaves a truncated one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _finite_block(job: _Job, lo: Sequence[int], hi: Sequence[int]) -> npt.NDArray[np.float32]:
    """The dequantised prediction over a block; NaN/inf is refused (every voxel is read
    here once, by the threshold or the fragments pass), not silently segmented."""
    pred = _dequantize(np.asarray(_prediction(job)[_box(lo, hi)]), job.scale, job.shift)
    return _refuse_non_finite(job, pred, lo, hi)


def _refuse_non_finite(
    job: _Job, pred: npt.NDArray[np.float32], lo: Sequence[int], hi: Sequence[int]
) -> npt.NDArray[np.float32]:
    """``pred`` (the block ``lo``-``hi``), or a ValueError naming its first NaN/inf voxel."""
    if not np.isfinite(pred).all():
        bad = ~np.isfinite(pred)
        first = np.argwhere(bad)[0]
        voxel = tuple(int(a + o) for a, o in zip(first[1:], lo, strict=True))
        raise ValueError(
            f"prediction {job.prediction!r} holds {int(bad.sum())} non-finite value(s) "
            f"(NaN or inf) in the block at voxels {tuple(lo)}-{tuple(hi)}, the first in "
            f"channel {int(first[0])} at voxel {voxel}; a prediction with NaN cannot be "
            "segmented (check the network and the raw)"
        )
    return pred


def _pass_threshold(job: _Job, read_roi: Roi, write_roi: Roi) -> None:
    b, lo, hi = job.locate(write_roi)
    pred = _finite_block(job, lo, hi)
    _open(job.out, "r+")[_box(lo, hi)] = (pred > job.foreground_level).astype(np.uint8)


def _pass_fragments(job: _Job, read_roi: Roi, write_roi: Roi) -> None:
    """Pass A: components of seeds and foreground inside one block, with block-unique ids.

    Seeds are the components above the seed level (level seeds) or, for dynamic seeds,
    the plateaus of candidate peaks (:func:`innerdist.watershed.candidate_peaks`, read with
    one voxel of context): a foreground component with one of them has a single peak.
    With dynamic seeds the top of every fragment's relief is recorded too."""
    b, lo, hi = job.locate(write_roi)
    dynamic = job.seed_dynamic > 0
    if dynamic:
        glo = [a - 1 for a in lo]
        ghi = [e + 1 for e in hi]
        inner = tuple(slice(1, 1 + e - a) for a, e in zip(lo, hi, strict=True))
        halo = np.stack(
            [
                _dequantize(_read(_prediction(job), job, glo, ghi, c), job.scale, job.shift)
                for c in range(job.channels)
            ]
        )
        pred = _refuse_non_finite(job, halo[(slice(None), *inner)], lo, hi)
    else:
        pred = _finite_block(job, lo, hi)
    seeds_out = np.zeros(pred.shape, np.uint64)
    fragments_out = np.zeros(pred.shape, np.uint64)
    stats: dict[str, Any] = {}
    for c in range(job.channels):
        base = np.uint64((c * job.num_blocks + b) << _LOCAL_BITS)
        fragments, n_fragments = _components(pred[c] > job.foreground_level)
        if dynamic:
            relief = seed_relief(halo[c], job.seed_level, job.distance_scale)
            candidates = candidate_peaks(relief, halo[c] > job.foreground_level)[inner]
            seeds, n_seeds = _components(candidates)
            stats[f"top{c}"] = _fragment_tops(relief[inner], fragments, n_fragments)
        else:
            seeds, n_seeds = _components(pred[c] > job.seed_level)
        seeds_out[c] = np.where(seeds > 0, seeds.astype(np.uint64) + base, np.uint64(0))
        fragments_out[c] = np.where(fragments > 0, fragments.astype(np.uint64) + base, 0)
        counts, first, box_lo, box_hi = _fragment_stats(fragments, n_fragments, lo, job.shape)
        # Every seed lies inside one fragment: look it up at the seed's first voxel.
        seed_first = _first_voxels(seeds, n_seeds)
        stats[f"counts{c}"] = counts
        stats[f"first{c}"] = first
        stats[f"box_lo{c}"] = box_lo
        stats[f"box_hi{c}"] = box_hi
        stats[f"seed_fragment{c}"] = fragments.reshape(-1)[seed_first].astype(np.int64)
    _open(job.seeds, "r+")[_box(lo, hi)] = seeds_out
    _open(job.fragments, "r+")[_box(lo, hi)] = fragments_out
    _save(job.stats("fragments") / f"{b}.npz", **stats)


def _fragment_tops(
    relief: npt.NDArray[np.float64], labels: npt.NDArray[Any], n: int
) -> npt.NDArray[np.float64]:
    """Largest ``relief`` of each label ``1..n``."""
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    tops = np.full(n + 1, -np.inf, np.float64)
    np.maximum.at(tops, flat[where].astype(np.intp), relief.reshape(-1)[where])
    return tops[1:]


def _first_voxels(labels: npt.NDArray[Any], n: int) -> npt.NDArray[np.int64]:
    """Flat index (in ``labels``) of the first voxel of each label ``1..n``."""
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    first = np.full(n, _INT64_MAX, np.int64)
    np.minimum.at(first, flat[where].astype(np.intp) - 1, where)
    return first


def _fragment_stats(
    labels: npt.NDArray[Any], n: int, lo: Sequence[int], shape: Sequence[int]
) -> tuple[npt.NDArray[np.int64], ...]:
    """Voxel counts, first voxels (raster index in the whole volume) and bounding boxes
    (voxels of the whole volume, ``[box_lo, box_hi)``) of labels ``1..n`` of a block at
    ``lo``. The first voxel in block raster order is also the first in volume raster order:
    both orders sort by (z, y, x)."""
    from scipy import ndimage

    dims = labels.ndim
    flat = labels.reshape(-1)
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
    first_local = _first_voxels(labels, n)
    coords = np.unravel_index(first_local, labels.shape)
    first = np.ravel_multi_index(
        tuple(c + o for c, o in zip(coords, lo, strict=True)), tuple(shape)
    ).astype(np.int64)
    box_lo = np.zeros((n, dims), np.int64)
    box_hi = np.zeros((n, dims), np.int64)
    for i, slices in enumerate(ndimage.find_objects(labels, max_label=n)):
        box_lo[i] = [s.start + o for s, o in zip(slices, lo, strict=True)]
        box_hi[i] = [s.stop + o for s, o in zip(slices, lo, strict=True)]
    return counts, first, box_lo, box_hi


def _pass_faces(job: _Job, read_roi: Roi, write_roi: Roi) -> None:
    """Pass B: id pairs that touch across the block's upper faces (face connectivity, as
    within blocks). Reads the block plus one voxel beyond each upper face."""
    b, lo, hi = job.locate(write_roi)
    grown_hi = [min(e + 1, s) for e, s in zip(hi, job.shape, strict=True)]
    inside = tuple(slice(0, e - a) for a, e in zip(lo, hi, strict=True))
    pairs = {}
    for name, path in (("seeds", job.seeds), ("fragments", job.fragments)):
        data = np.asarray(_open(path)[_box(lo, grown_hi)])
        found = [np.zeros((0, 2), np.uint64)]
        for d in range(job.dims):
            if grown_hi[d] == hi[d]:
                continue  # the volume ends here
            last: tuple[Any, ...] = (slice(None), *inside[:d], hi[d] - lo[d] - 1, *inside[d + 1 :])
            beyond: tuple[Any, ...] = (slice(None), *inside[:d], hi[d] - lo[d], *inside[d + 1 :])
            below, above = data[last], data[beyond]
            touching = (below != 0) & (above != 0)
            found.append(np.stack([below[touching], above[touching]], axis=1))
        pairs[name] = np.unique(np.concatenate(found), axis=0)
    _save(job.stats("faces") / f"{b}.npz", **pairs)


# --- merge: whole-volume components from block components ----------------------------------

_TABLES: dict[str, dict[str, Any]] = {}


def _tables(job: _Job) -> dict[str, Any]:
    """The merge tables, memory-mapped once per process."""
    key = job.tracking
    if key not in _TABLES:
        folder = Path(job.tracking) / "tables"
        _TABLES[key] = {p.stem: np.load(p, mmap_mode="r") for p in folder.glob("*.npy")}
    return _TABLES[key]


def _union(num_nodes: int, pairs: npt.NDArray[np.int64]) -> tuple[int, npt.NDArray[np.int64]]:
    """Connected components of a graph given as node pairs: (count, component of node)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if num_nodes == 0:
        return 0, np.zeros(0, np.int64)
    graph = coo_matrix(
        (np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(num_nodes, num_nodes)
    )
    count, labels = connected_components(graph, directed=False)
    return int(count), labels.astype(np.int64)


def _node_index(
    ids: npt.NDArray[np.uint64], offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Block-unique ids -> dense node numbers (``offsets[virtual block] + local - 1``);
    -1 for id 0."""
    block = (ids >> np.uint64(_LOCAL_BITS)).astype(np.int64)
    local = (ids & _LOCAL_MASK).astype(np.int64)
    return np.where(ids != 0, offsets[block] + local - 1, -1)


def _save_table(folder: Path, name: str, value: npt.NDArray[Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, value)
    os.replace(tmp, folder / f"{name}.npy")


def _merge(job: _Job) -> dict[str, Any]:
    """Union-find over the block components; writes the tables every later step reads.

    Nodes are the block components, numbered densely in the order of their virtual block
    ``channel * num_blocks + block`` (the high bits of their ids), so that node =
    ``offsets[virtual block] + local id - 1``.
    """
    folder = Path(job.tracking) / "tables"
    if (folder / "done").exists():
        return _tables(job)
    per_block = []
    for b in range(job.num_blocks):
        with np.load(job.stats("fragments") / f"{b}.npz") as data:
            per_block.append({k: data[k] for k in data.files})

    def gather(key: str) -> list[npt.NDArray[Any]]:
        return [
            per_block[b][f"{key}{c}"] for c in range(job.channels) for b in range(job.num_blocks)
        ]

    n_fragments = np.array([len(x) for x in gather("counts")], np.int64)
    seed_fragment_local = gather("seed_fragment")
    fragment_offsets = np.r_[0, np.cumsum(n_fragments)].astype(np.int64)
    seed_offsets = np.r_[0, np.cumsum([len(x) for x in seed_fragment_local])].astype(np.int64)
    fragment_counts = np.concatenate(gather("counts")).astype(np.int64)
    fragment_first = np.concatenate(gather("first")).astype(np.int64)
    box_lo = np.concatenate(gather("box_lo")).reshape(-1, job.dims).astype(np.int64)
    box_hi = np.concatenate(gather("box_hi")).reshape(-1, job.dims).astype(np.int64)
    seed_fragment = np.concatenate(
        [np.zeros(0, np.int64)]
        + [local - 1 + fragment_offsets[vb] for vb, local in enumerate(seed_fragment_local)]
    ).astype(np.int64)
    fragment_channel = np.repeat(
        np.arange(job.channels * job.num_blocks) // job.num_blocks, n_fragments
    )

    pairs: dict[str, list[npt.NDArray[np.uint64]]] = {"seeds": [], "fragments": []}
    for b in range(job.num_blocks):
        with np.load(job.stats("faces") / f"{b}.npz") as data:
            for name, found in pairs.items():
                found.append(data[name].astype(np.uint64).reshape(-1, 2))
    n_comps, fragment_comp = _union(
        len(fragment_counts), _node_index(np.concatenate(pairs["fragments"]), fragment_offsets)
    )
    n_objects, seed_comp = _union(
        int(seed_offsets[-1]), _node_index(np.concatenate(pairs["seeds"]), seed_offsets)
    )

    comp_size = np.zeros(n_comps, np.int64)
    np.add.at(comp_size, fragment_comp, fragment_counts)
    comp_first = np.full(n_comps, _INT64_MAX, np.int64)
    np.minimum.at(comp_first, fragment_comp, fragment_first)
    comp_lo = np.full((n_comps, job.dims), _INT64_MAX, np.int64)
    np.minimum.at(comp_lo, fragment_comp, box_lo)
    comp_hi = np.zeros((n_comps, job.dims), np.int64)
    np.maximum.at(comp_hi, fragment_comp, box_hi)
    comp_channel = np.zeros(n_comps, np.int64)
    comp_channel[fragment_comp] = fragment_channel

    # Objects are the whole-volume seed components; each lies inside one foreground
    # component. Object keys are 1 + object number (0 is background).
    object_comp = np.zeros(n_objects, np.int64)
    object_comp[seed_comp] = fragment_comp[seed_fragment]
    seeds_per_comp = np.bincount(object_comp, minlength=n_comps)
    comp_object = np.full(n_comps, -1, np.int64)
    comp_object[object_comp] = np.arange(n_objects)
    single = seeds_per_comp == 1
    multi = seeds_per_comp >= 2
    if job.seed_dynamic > 0:
        # One candidate plateau: one peak, whose dynamic is its rise above the foreground
        # level (computed as in the merge tree); too low, and the component has no seed.
        comp_top = np.full(n_comps, -np.inf, np.float64)
        np.maximum.at(comp_top, fragment_comp, np.concatenate(gather("top")).astype(np.float64))
        single &= comp_top - job.floor >= job.seed_dynamic
    box_voxels = np.prod((comp_hi - comp_lo).astype(np.float64), axis=1)
    fallback = multi & (box_voxels > job.max_watershed_voxels)

    comp_value = np.zeros(n_comps, np.uint64)
    comp_value[single] = (comp_object[single] + 1).astype(np.uint64)
    comp_value[multi] = _GROWN
    # Single-seed components are their object: size and first voxel are the component's.
    object_size = np.zeros(n_objects, np.int64)
    object_first = np.full(n_objects, _INT64_MAX, np.int64)
    object_size[comp_object[single]] = comp_size[single]
    object_first[comp_object[single]] = comp_first[single]

    batches = _batches(job, np.flatnonzero(multi & ~fallback), comp_lo, comp_hi, comp_channel)
    tables = {
        "fragment_offsets": fragment_offsets,
        "seed_offsets": seed_offsets,
        "fragment_comp": fragment_comp,
        "seed_comp": seed_comp,
        "fragment_value": comp_value[fragment_comp],
        "is_fallback_fragment": fallback[fragment_comp],
        "fallback_comps": np.flatnonzero(fallback),
        "object_size": object_size,
        "object_first": object_first,
        "object_channel": comp_channel[object_comp],
        **batches,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in tables.items():
        _save_table(folder, name, value)
    (folder / "done").touch()
    logger.info(
        "%d foreground components: %d with one seed, %d flooded exactly in %d batches, "
        "%d by the blockwise fallback",
        n_comps,
        int(single.sum()),
        int((multi & ~fallback).sum()),
        len(batches["batch_channel"]),
        int(fallback.sum()),
    )
    _TABLES.pop(job.tracking, None)
    return _tables(job)


def _batches(
    job: _Job,
    comps: npt.NDArray[np.int64],
    comp_lo: npt.NDArray[np.int64],
    comp_hi: npt.NDArray[np.int64],
    comp_channel: npt.NDArray[np.int64],
) -> dict[str, npt.NDArray[np.int64]]:
    """Group the exactly flooded components into batches flooded together on one box.

    Components of one channel whose boxes start in the same block go together (neighbours
    share one read and one watershed call) as long as the joint box stays within
    ``max_watershed_voxels``. Flooding several components at once is still exact: the
    mask keeps them apart. Batch ``i`` holds ``comps[start[i]:start[i + 1]]``.
    """
    block = np.array(job.block, np.int64)
    owner = [
        (int(comp_channel[k]), int(np.ravel_multi_index(tuple(comp_lo[k] // block), job.grid)))
        for k in comps
    ]
    order = sorted(range(len(comps)), key=lambda i: (owner[i], int(comps[i])))
    start: list[int] = []
    channel: list[int] = []
    lo: list[npt.NDArray[np.int64]] = []
    hi: list[npt.NDArray[np.int64]] = []
    previous = None
    for position, i in enumerate(order):
        k = comps[i]
        if previous == owner[i]:
            joint_lo = np.minimum(lo[-1], comp_lo[k])
            joint_hi = np.maximum(hi[-1], comp_hi[k])
            if math.prod((joint_hi - joint_lo).tolist()) <= job.max_watershed_voxels:
                lo[-1], hi[-1] = joint_lo, joint_hi
                continue
        previous = owner[i]
        start.append(position)
        channel.append(owner[i][0])
        lo.append(comp_lo[k].copy())
        hi.append(comp_hi[k].copy())
    return {
        "batch_comps": np.array([comps[i] for i in order], np.int64),
        "batch_start": np.array([*start, len(order)], np.int64),
        "batch_channel": np.array(channel, np.int64),
        "batch_lo": np.array(lo, np.int64).reshape(-1, job.dims),
        "batch_hi": np.array(hi, np.int64).reshape(-1, job.dims),
    }


# --- growing multi-seed components ---------------------------------------------------------


def _mask_of(
    fragments: npt.NDArray[np.uint64],
    offsets: npt.NDArray[np.int64],
    member: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.bool_]],
) -> npt.NDArray[np.bool_]:
    """Voxels whose fragment node is a ``member``; node numbers are made for foreground
    voxels only (the big boxes of exact batches are mostly background)."""
    flat = fragments.reshape(-1)
    where = np.flatnonzero(flat)
    mask = np.zeros(fragments.shape, bool)
    mask.reshape(-1)[where[member(_node_index(flat[where], offsets))]] = True
    return mask


def _markers(
    seeds: npt.NDArray[np.uint64], mask: npt.NDArray[np.bool_], tables: Mapping[str, Any]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint64]]:
    """Seed voxels inside ``mask`` as int32 markers ``1..m`` (skimage's label type), and
    the object key of every marker (``keys[marker]``, ``keys[0] == 0``)."""
    inside = mask & (seeds != 0)
    nodes = _node_index(seeds[inside], tables["seed_offsets"])
    objects = np.asarray(tables["seed_comp"])[nodes] + 1
    unique, inverse = np.unique(objects, return_inverse=True)
    markers = np.zeros(seeds.shape, np.int32)
    markers[inside] = inverse.reshape(-1) + 1
    return markers, np.r_[0, unique].astype(np.uint64)


def _seed_markers(
    job: _Job,
    pred: npt.NDArray[np.float32],
    seeds: npt.NDArray[np.uint64],
    mask: npt.NDArray[np.bool_],
    tables: Mapping[str, Any],
    *,
    exact: bool = True,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint64]]:
    """The markers of the components in ``mask``, and the object key of every marker.

    Level seeds are the seed components of pass A. Dynamic seeds are found here, on the
    whole components (exact: they depend on the component's voxels only, see
    :mod:`innerdist.watershed`); each is keyed by the candidate plateau of pass A that
    holds its peak (a peak is a regional maximum, so it lies on one). The fallback
    (``exact=False``) sees parts of components only: a peak on the cut is no regional
    maximum, and its seed is dropped."""
    if job.seed_dynamic == 0:
        return _markers(seeds, mask, tables)
    relief = seed_relief(pred, job.seed_level, job.distance_scale)
    markers, peaks = _hmaxima_regions(relief, mask, job.seed_dynamic, job.floor)
    plateau = seeds.reshape(-1)[peaks]
    on_plateau = plateau != 0
    if not on_plateau.all():
        if exact:
            raise RuntimeError("a dynamic seed's peak lies on no candidate plateau (a bug)")
        lut = np.zeros(len(peaks) + 1, np.int32)
        lut[1:][on_plateau] = np.arange(1, int(on_plateau.sum()) + 1, dtype=np.int32)
        markers, plateau = lut[markers], plateau[on_plateau]
    objects = np.asarray(tables["seed_comp"])[_node_index(plateau, tables["seed_offsets"])] + 1
    return markers, np.r_[0, objects].astype(np.uint64)


def _object_stats(
    labels: npt.NDArray[np.int32],
    keys: npt.NDArray[np.uint64],
    lo: Sequence[int],
    shape: Sequence[int],
) -> dict[str, npt.NDArray[np.int64]]:
    """Voxel count and first voxel (raster index in the volume) of every marker label in a
    box at ``lo``, listed by object number (``key - 1``)."""
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    ids = flat[where].astype(np.intp)
    counts = np.bincount(ids, minlength=len(keys))
    first_local = np.full(len(keys), _INT64_MAX, np.int64)
    np.minimum.at(first_local, ids, where)
    present = np.flatnonzero(counts[1:] > 0) + 1
    coords = np.unravel_index(first_local[present], labels.shape)
    first = np.ravel_multi_index(
        tuple(c + o for c, o in zip(coords, lo, strict=True)), tuple(shape)
    )
    return {
        "objects": keys[present].astype(np.int64) - 1,
        "sizes": counts[present].astype(np.int64),
        "first": np.asarray(first, np.int64),
    }


def _pass_fallback(job: _Job, read_roi: Roi, write_roi: Roi) -> None:
    """Per-block watershed with context, for components too large to flood whole. The
    block's part of such a component is flooded from the seeds within ``fallback_context``;
    voxels whose seed is farther away (or behind a seam) can come out differently from the
    in-memory result, or stay 0."""
    b, lo, hi = job.locate(write_roi)
    tables = _tables(job)
    offsets = tables["fragment_offsets"]
    is_fallback = np.r_[False, np.asarray(tables["is_fallback_fragment"])]
    fragments_w = np.asarray(_open(job.fragments)[_box(lo, hi)])
    stats: dict[str, list[npt.NDArray[np.int64]]] = {"objects": [], "sizes": [], "first": []}
    grown = _open(job.grown, "r+")
    context = job.fallback_context
    rlo = [a - m for a, m in zip(lo, context, strict=True)]
    rhi = [a + m for a, m in zip(hi, context, strict=True)]
    inner = tuple(slice(m, m + e - a) for m, a, e in zip(context, lo, hi, strict=True))
    for c in range(job.channels):
        todo = is_fallback[_node_index(fragments_w[c], offsets) + 1]
        if not todo.any():
            continue
        pred = _dequantize(_read(_prediction(job), job, rlo, rhi, c), job.scale, job.shift)
        mask = _mask_of(
            _read(_open(job.fragments), job, rlo, rhi, c),
            offsets,
            lambda nodes: np.asarray(tables["is_fallback_fragment"])[nodes],
        )
        seeds = _read(_open(job.seeds), job, rlo, rhi, c)
        markers, keys = _seed_markers(job, pred, seeds, mask, tables, exact=False)
        labels = np.where(todo, _flood(pred, markers, mask)[inner], 0)
        box = _box(lo, hi, c)
        grown[box] = np.where(todo, keys[labels], np.asarray(grown[box]))
        for k, v in _object_stats(labels, keys, lo, job.shape).items():
            stats[k].append(v)
    _save(
        job.stats("fallback") / f"{b}.npz",
        **{k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in stats.items()},
    )


_Flooded = tuple[int, list[int], npt.NDArray[np.uint64], dict[str, npt.NDArray[np.int64]]]


def _flood_batch(job: _Job, batch: int) -> _Flooded:
    """Flood the components of one batch on their joint box (exact, see the module
    docstring). Returns ``(batch, lo, object keys in the box (0 outside the batch's
    components), stats)``; the caller writes the keys into ``<out>__grown``."""
    tables = _tables(job)
    start, stop = tables["batch_start"][batch : batch + 2]
    comps = np.asarray(tables["batch_comps"][start:stop])
    lo = [int(v) for v in tables["batch_lo"][batch]]
    hi = [int(v) for v in tables["batch_hi"][batch]]
    c = int(tables["batch_channel"][batch])
    fragment_comp = tables["fragment_comp"]
    mask = _mask_of(
        _read(_open(job.fragments), job, lo, hi, c),
        tables["fragment_offsets"],
        lambda nodes: np.isin(fragment_comp[nodes], comps),
    )
    pred = _dequantize(_read(_prediction(job), job, lo, hi, c), job.scale, job.shift)
    seeds = _read(_open(job.seeds), job, lo, hi, c)
    markers, keys = _seed_markers(job, pred, seeds, mask, tables)
    labels = _flood(pred, markers, mask)
    return batch, lo, keys[labels], _object_stats(labels, keys, lo, job.shape)


def _grow_batches(job: _Job, num_workers: int) -> None:
    """Flood every batch of exact components. Only this process writes ``__grown``: boxes
    of different batches may share chunks, and parallel writers could lose updates."""
    from innerdist.progress import Progress

    tables = _tables(job)
    folder = job.stats("grow")
    todo = [i for i in range(len(tables["batch_channel"])) if not (folder / f"{i}.npz").exists()]
    if not todo:
        return
    grown = _open(job.grown, "r+")

    def store(result: _Flooded) -> None:
        batch, lo, keys, stats = result
        hi = [a + s for a, s in zip(lo, keys.shape, strict=True)]
        box = _box(lo, hi, int(tables["batch_channel"][batch]))
        grown[box] = np.where(keys != 0, keys, np.asarray(grown[box]))
        _save(folder / f"{batch}.npz", **stats)

    with Progress(len(todo), "segment-grow", "batch", enabled=job.progress) as bar:
        workers = min(num_workers, len(todo))  # spawning a worker costs seconds
        if job.worker_command is not None:
            # Growing runs on the submitting machine (it alone writes __grown): cluster
            # worker counts are not local process counts.
            workers = min(workers, os.cpu_count() or 1)
        if workers == 1:
            for batch in todo:
                store(_flood_batch(job, batch))
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            # A bounded window of batches in flight bounds the memory of pending results.
            queue = iter(todo)
            pending = {
                pool.submit(_flood_batch, job, i) for i in itertools.islice(queue, 2 * workers)
            }
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    store(future.result())
                    bar.update()
                    pending |= {
                        pool.submit(_flood_batch, job, i) for i in itertools.islice(queue, 1)
                    }


# --- final ids and output -------------------------------------------------------------------


def _finalize(job: _Job) -> None:
    """Sizes of grown objects -> min_size -> consecutive ids per channel."""
    target = Path(job.tracking) / "tables" / "final_ids.npy"
    if target.exists():
        return
    tables = _tables(job)
    sizes = np.array(tables["object_size"])
    first = np.array(tables["object_first"])
    for step in ("fallback", "grow"):
        for path in sorted(job.stats(step).glob("*.npz")):
            with np.load(path) as data:
                np.add.at(sizes, data["objects"], data["sizes"])
                np.minimum.at(first, data["objects"], data["first"])
    final = np.zeros(len(sizes) + 1, np.uint64)
    final[1:] = _consecutive_ids(
        sizes, first, np.asarray(tables["object_channel"]), job.min_size_voxels
    )
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, final)
    os.replace(tmp, target)
    _TABLES.pop(job.tracking, None)


def _pass_write(job: _Job, read_roi: Roi, write_roi: Roi) -> None:
    """Final pass: fragment -> object key (or the grown key) -> final id, per voxel."""
    b, lo, hi = job.locate(write_roi)
    tables = _tables(job)
    offsets = tables["fragment_offsets"]
    final = tables["final_ids"]
    fragments = np.asarray(_open(job.fragments)[_box(lo, hi)])
    out = np.zeros(fragments.shape, np.uint64)
    for c in range(job.channels):
        vb = c * job.num_blocks + b
        lut = np.r_[np.uint64(0), tables["fragment_value"][offsets[vb] : offsets[vb + 1]]]
        keys = lut[(fragments[c] & _LOCAL_MASK).astype(np.intp)]
        grown = keys == _GROWN
        if grown.any():
            keys[grown] = np.asarray(_open(job.grown)[_box(lo, hi, c)])[grown]
        out[c] = final[keys.astype(np.intp)]
    _open(job.out, "r+")[_box(lo, hi)] = out
