"""Scoring a segmentation volume against ground truth, blockwise (larger than memory).

The scores themselves (definitions, empty-case conventions) are in :mod:`innerdist.metrics`;
this module reads volumes block by block (daisy blocks, optionally in workers), feeds the
counters of that module, and reports the result as JSON, CSV and a text table.

Every instance score and every binary count is a function of the *contingency table*: the
number of voxels carrying each (predicted id, ground-truth id) pair. The table is small
(one entry per overlapping pair), so :class:`OverlapCounter` accumulates it block by block
and volumes larger than memory are scored exactly. The distance scores need context: each
block is read with a margin of ``clip_distance`` (rounded up to whole voxels) around it and
only the voxels of the block itself are counted::

    +-----------------------------------+
    | read ROI = block grown by         |
    | ceil(clip_distance / voxel_size)  |
    |     +-----------------+           |
    |     | block: voxels   |           |
    |     | counted here    |           |
    |     +-----------------+           |
    +-----------------------------------+

Any true distance up to ``clip_distance`` is reached inside the margin, so the clipped
distances and the tolerance counts (``tol_distance <= clip_distance``) are exact, however
the volume is cut into blocks.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from innerdist.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    BinaryCounts,
    DistanceCounter,
    OverlapCounter,
    _binary_scores,
    _check_distances,
    binary_scores,
    check_iou_thresholds,
    instance_scores,
    match_instances,
)

# The metrics are re-exported: ``from innerdist.evaluate import instance_scores`` keeps working.
__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "BinaryCounts",
    "DistanceCounter",
    "OverlapCounter",
    "binary_scores",
    "evaluate_arrays",
    "evaluate_volumes",
    "format_scores",
    "instance_scores",
    "match_instances",
    "parse_iou_thresholds",
    "write_scores",
]

Mode = Literal["auto", "binary", "instances"]

logger = logging.getLogger(__name__)

#: In-process counting time per voxel and channel, seconds (distance transforms included;
#: about what segment costs). Only to decide whether workers pay off.
_SECONDS_PER_VOXEL = 1.5e-6


# --------------------------------------------------------------------------------------
# volumes, blockwise


def _is_binary_dtype(dtype: np.dtype[Any]) -> bool:
    return dtype == np.bool_ or dtype == np.uint8


def _channels_of(array: Array, name: str) -> int | None:
    if array.channel_dims == 0:
        return None
    if array.channel_dims > 1 or not array.axis_names[0].endswith("^"):
        raise ValueError(
            f"{name} must have at most one channel axis, first; got axes {array.axis_names}"
        )
    return int(array.shape[0])


@dataclass
class _Plan:
    """Everything validated about one evaluation, picklable for worker processes."""

    mode: Literal["binary", "instances"]
    roi: Roi
    voxel_size: Coordinate
    num_channels: int
    pred_has_channels: bool
    gt_has_channels: bool
    mask_has_channels: bool
    tol_distance: float
    clip_distance: float
    block_shape: Coordinate  # voxels

    def blocks(self) -> Iterator[tuple[Roi, Roi]]:
        """``(read_roi, write_roi)`` in world units; write ROIs tile ``roi``."""
        shape = self.roi.shape / self.voxel_size
        context = (
            Coordinate(math.ceil(self.clip_distance / v) for v in self.voxel_size) * self.voxel_size
        )
        starts = [range(0, s, b) for s, b in zip(shape, self.block_shape, strict=True)]
        for start in itertools.product(*starts):
            size = Coordinate(
                min(b, s - i) for i, b, s in zip(start, self.block_shape, shape, strict=True)
            )
            write = Roi(
                self.roi.offset + Coordinate(start) * self.voxel_size, size * self.voxel_size
            )
            read = write.grow(context, context).intersect(self.roi)
            yield read, write

    def num_blocks(self) -> int:
        shape = self.roi.shape / self.voxel_size
        return math.prod(-(-s // b) for s, b in zip(shape, self.block_shape, strict=True))


def _plan(
    predicted: Array,
    ground_truth: Array,
    mask: Array | None,
    mode: str,
    tol_distance: float,
    clip_distance: float,
    block_shape: Sequence[int] | None,
) -> tuple[_Plan, str | None]:
    """Validate the inputs against each other; also returns a note on the evaluated ROI."""
    if mode not in ("auto", "binary", "instances"):
        raise ValueError(f"mode must be 'auto', 'binary' or 'instances', got {mode!r}")
    tol_distance, clip_distance = _check_distances(tol_distance, clip_distance)
    named = [("predicted", predicted), ("ground truth", ground_truth)]
    if mask is not None:
        named.append(("mask", mask))
    for name, array in named:
        if not isinstance(array, Array):
            raise TypeError(f"{name} must be a funlib.persistence.Array, got {type(array)}")
        if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f"{name} must hold integer ids or a bool mask, got dtype {array.dtype}")
    vs = Coordinate(predicted.voxel_size)
    for name, array in named[1:]:
        if array.voxel_size.dims != vs.dims:
            raise ValueError(
                f"{name} has {array.voxel_size.dims} spatial axes (voxel size "
                f"{tuple(array.voxel_size)}) but predicted has {vs.dims} ({tuple(vs)})"
            )
        if Coordinate(array.voxel_size) != vs:
            raise ValueError(
                f"{name} voxel size {tuple(array.voxel_size)} differs from the predicted "
                f"voxel size {tuple(vs)} (world units); resample one of them first"
            )
    if vs.dims not in (2, 3):
        raise ValueError(f"expected 2 or 3 spatial axes, got voxel size {tuple(vs)}")

    c_pred = _channels_of(predicted, "predicted")
    c_gt = _channels_of(ground_truth, "ground truth")
    if (c_pred or 1) != (c_gt or 1):
        raise ValueError(
            f"channel counts differ: predicted has {c_pred or 1}, ground truth has "
            f"{c_gt or 1} (a volume without channel axis counts as one channel)"
        )
    c_mask = _channels_of(mask, "mask") if mask is not None else None
    if c_mask not in (None, 1):
        raise ValueError(f"mask must have no channel axis or one channel, got {c_mask}")

    roi = predicted.roi.intersect(ground_truth.roi)
    note = None
    if predicted.roi != ground_truth.roi:
        note = (
            f"predicted ROI {predicted.roi} and ground-truth ROI {ground_truth.roi} differ; "
            f"evaluated on their intersection {roi}"
        )
    if roi.empty:
        raise ValueError(
            f"predicted ROI {predicted.roi} and ground-truth ROI {ground_truth.roi} do not "
            "intersect (world units): nothing to evaluate"
        )
    if mask is not None and not mask.roi.contains(roi):
        # Outside the mask ROI nothing is counted, so cropping to it changes no score.
        roi = roi.intersect(mask.roi)
        if roi.empty:
            raise ValueError(f"mask ROI {mask.roi} does not intersect the evaluated ROI")
        note = (note + "; " if note else "") + f"cropped to the mask ROI: {roi}"

    resolved: Literal["binary", "instances"]
    if mode == "auto":
        binary = _is_binary_dtype(predicted.dtype) or _is_binary_dtype(ground_truth.dtype)
        resolved = "binary" if binary else "instances"
    else:
        resolved = "binary" if mode == "binary" else "instances"

    if block_shape is None:
        shape = Coordinate((1024, 1024) if vs.dims == 2 else (128, 128, 128))
    else:
        if len(block_shape) != vs.dims or any(
            isinstance(s, bool) or not isinstance(s, int | np.integer) or s <= 0
            for s in block_shape
        ):
            raise ValueError(
                f"block_shape must be {vs.dims} positive integers (voxels), got "
                f"{tuple(block_shape)}"
            )
        shape = Coordinate(int(s) for s in block_shape)
    return (
        _Plan(
            mode=resolved,
            roi=roi,
            voxel_size=vs,
            num_channels=c_pred or 1,
            pred_has_channels=c_pred is not None,
            gt_has_channels=c_gt is not None,
            mask_has_channels=c_mask is not None,
            tol_distance=tol_distance,
            clip_distance=clip_distance,
            block_shape=shape,
        ),
        note,
    )


_Counters = list[tuple[OverlapCounter, DistanceCounter]]


def _new_counters(plan: _Plan) -> _Counters:
    return [
        (
            OverlapCounter(),
            DistanceCounter(tuple(plan.voxel_size), plan.tol_distance, plan.clip_distance),
        )
        for _ in range(plan.num_channels)
    ]


def _score_block(
    plan: _Plan,
    arrays: tuple[Array, Array, Array | None],
    read: Roi,
    write: Roi,
    counters: _Counters,
) -> None:
    predicted, ground_truth, mask = arrays
    pred = predicted.to_ndarray(read)
    gt = ground_truth.to_ndarray(read)
    if not plan.pred_has_channels:
        pred = pred[np.newaxis]
    if not plan.gt_has_channels:
        gt = gt[np.newaxis]
    m = None
    if mask is not None:
        m = mask.to_ndarray(read, fill_value=0)
        if plan.mask_has_channels:
            m = m[0]
    begin = (write.offset - read.offset) / plan.voxel_size
    size = write.shape / plan.voxel_size
    inner = tuple(slice(b, b + s) for b, s in zip(begin, size, strict=True))
    m_inner = m[inner] if m is not None else None
    for c, (overlap, dist) in enumerate(counters):
        p, g = pred[c], gt[c]
        if plan.mode == "binary":
            overlap.add(p[inner] != 0, g[inner] != 0, m_inner)
        else:
            overlap.add(p[inner], g[inner], m_inner)
        dist.add(p, g, m, inner=inner)


def _results(
    plan: _Plan,
    counters: _Counters,
    note: str | None,
    iou_thresholds: list[float],
    units: str,
) -> dict[str, Any]:
    channels: list[dict[str, Any]] = []
    for c, (overlap, dist) in enumerate(counters):
        entry: dict[str, Any] = {
            "channel": c,
            "num_voxels": overlap.num_voxels,
            "binary": _binary_scores(overlap.binary_counts(), dist),
        }
        if plan.mode == "instances":
            entry["instances"] = overlap.instance_scores(iou_thresholds)
        channels.append(entry)
    return {
        "mode": plan.mode,
        "units": units,
        "voxel_size": [int(v) for v in plan.voxel_size],
        "roi_offset": [int(v) for v in plan.roi.offset],
        "roi_shape": [int(v) for v in plan.roi.shape],
        "roi_note": note,
        "tol_distance": plan.tol_distance,
        "clip_distance": plan.clip_distance,
        "iou_thresholds": iou_thresholds,
        "channels": channels,
    }


def _units(array: Array) -> str:
    units = [u for u in (array.units or []) if u]
    return units[0] if units else "world units"


def parse_iou_thresholds(text: str) -> list[float]:
    """IoU thresholds from comma-separated text (a pair matches at ``t`` when ``IoU >= t``).

    >>> parse_iou_thresholds("0.5, 0.75")
    [0.5, 0.75]
    """
    if not isinstance(text, str):
        raise TypeError(f"iou thresholds must be text like '0.5,0.75', got {text!r}")
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"iou thresholds must be comma-separated numbers in (0, 1], e.g. '0.5,0.75'; "
            f"got {text!r}"
        ) from None
    thresholds = check_iou_thresholds(values)
    if len(set(thresholds)) != len(thresholds):
        raise ValueError(f"iou thresholds must be distinct, got {text!r}")
    return thresholds


def evaluate_arrays(
    predicted: Array,
    ground_truth: Array,
    *,
    mask: Array | None = None,
    mode: Mode = "auto",
    tol_distance: float = 40.0,
    clip_distance: float = 200.0,
    block_shape: Sequence[int] | None = None,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``predicted`` against ``ground_truth`` block by block, in this process.

    The arrays (in memory or on disk) are read one block of ``block_shape`` voxels (default
    1024^2 in 2-D, 128^3 in 3-D) plus a margin of ``clip_distance`` at a time, so memory
    stays bounded. See :func:`evaluate_volumes` for the checks, the modes and the result.
    """
    thresholds = check_iou_thresholds(iou_thresholds)
    plan, note = _plan(
        predicted, ground_truth, mask, mode, tol_distance, clip_distance, block_shape
    )
    counters = _new_counters(plan)
    from tqdm import tqdm

    for read, write in tqdm(
        plan.blocks(),
        total=plan.num_blocks(),
        unit="block",
        desc="evaluate",
        disable=not progress,
    ):
        _score_block(plan, (predicted, ground_truth, mask), read, write, counters)
    return _results(plan, counters, note, thresholds, _units(predicted))


def _plan_to_json(plan: _Plan) -> dict[str, Any]:
    return {
        "mode": plan.mode,
        "roi": [list(plan.roi.offset), list(plan.roi.shape)],
        "voxel_size": list(plan.voxel_size),
        "num_channels": plan.num_channels,
        "pred_has_channels": plan.pred_has_channels,
        "gt_has_channels": plan.gt_has_channels,
        "mask_has_channels": plan.mask_has_channels,
        "tol_distance": plan.tol_distance,
        "clip_distance": plan.clip_distance,
        "block_shape": list(plan.block_shape),
    }


def _plan_from_json(fields: Mapping[str, Any]) -> _Plan:
    values = dict(fields)
    offset, shape = values.pop("roi")
    return _Plan(
        **{**values, "roi": Roi(offset, shape), "voxel_size": Coordinate(values["voxel_size"]),
           "block_shape": Coordinate(values["block_shape"])}
    )


def _counts_file(folder: Path, write: Roi) -> Path:
    return folder / ("block-" + "_".join(str(int(o)) for o in write.offset) + ".pickle")


class _BlockScorer:
    """Counts one block (:func:`_score_block`) and stores its counters in
    ``folder/block-<offset>.pickle`` (atomically), for :func:`evaluate_volumes` to merge.

    Picklable (daisy ships it to local workers); the volumes are opened on first use in
    each process. The read ROI daisy hands over is grown by the distance context and may
    stick out of the evaluated ROI: it is cut to it, as the counters expect.
    """

    def __init__(self, paths: tuple[str, str, str | None], plan: _Plan, folder: str) -> None:
        self.paths, self.plan, self.folder = paths, plan, folder
        self._arrays: tuple[Array, Array, Array | None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __call__(self, read_roi: Roi, write_roi: Roi) -> None:
        import os
        import pickle
        import uuid

        from innerdist.volumes import open_volume

        if self._arrays is None:
            self._arrays = (
                open_volume(self.paths[0]),
                open_volume(self.paths[1]),
                open_volume(self.paths[2]) if self.paths[2] is not None else None,
            )
        counters = _new_counters(self.plan)
        _score_block(self.plan, self._arrays, read_roi.intersect(self.plan.roi), write_roi,
                     counters)
        target = _counts_file(Path(self.folder), write_roi)
        tmp = target.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(pickle.dumps(counters))
        os.replace(tmp, target)


def block_scorer_function(
    *, paths: list[str | None], plan: dict[str, Any], folder: str
) -> _BlockScorer:
    """:class:`_BlockScorer` rebuilt from JSON parameters, in a cluster worker."""
    pred, gt, mask = paths
    if pred is None or gt is None:
        raise ValueError("an evaluation job needs the predicted and ground-truth paths")
    return _BlockScorer((pred, gt, mask), _plan_from_json(plan), folder)


def evaluate_volumes(
    predicted: str | Path,
    ground_truth: str | Path,
    *,
    mask: str | Path | None = None,
    mode: Mode = "auto",
    tol_distance: float = 40.0,
    clip_distance: float = 200.0,
    block_shape: Sequence[int] | None = None,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    num_workers: int = 1,
    progress: bool = True,
    worker_command: str | None = None,
    tracking_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score a segmentation volume against ground truth, blockwise (larger than memory).

    Volumes are ``container/dataset`` paths. ``predicted`` may have a leading channel axis
    ``c^`` (innerdist outputs do); ``ground_truth`` too, or none when there is one channel.
    ``mask`` (optional, spatial, 0 = ignore) restricts the voxels that count.

    Checks (``ValueError`` / ``FileNotFoundError`` naming what is wrong): all volumes open
    and are complete (not half-written), have the same voxel size, the same number of
    channels, integer or bool dtype, and ROIs that intersect. Scores are computed on the
    intersection of the ROIs (``roi_note`` in the result says so when they differ).

    ``mode``: ``"binary"`` scores the foreground masks (``!= 0``); ``"instances"`` scores
    the objects and also reports the binary scores of their foreground; ``"auto"`` picks
    ``"binary"`` when either volume is bool or uint8 (masks) and ``"instances"`` otherwise
    (uint16/32/64 or signed ids).

    ``tol_distance`` and ``clip_distance`` are world units (e.g. nm); ``block_shape`` is in
    voxels. The blocks are counted through :func:`innerdist.blockwise.run_blockwise`, like
    every blockwise job: ``num_workers > 1`` in that many daisy workers (spawned; in a
    script, call it under ``if __name__ == "__main__":``), at most one per block and none
    for a job too small for their start-up to pay off; ``worker_command`` starts them
    through a cluster's submit command (:mod:`innerdist.workers`). Each block's counters
    are kept in ``tracking_dir/counts`` (default: a temporary folder), so that an
    interrupted evaluation with a ``tracking_dir`` resumes with the blocks it counted; they
    are merged in block order, so the scores do not depend on the workers, and the folder
    is removed once the scores are computed.

    Returns a JSON-able dict: ``mode``, ``units``, ``voxel_size``, ``roi_offset``,
    ``roi_shape`` (world units), ``roi_note``, the settings, and ``channels``: per channel
    ``{"channel", "num_voxels", "binary": {...}, "instances": {...}}`` (``instances`` in
    instance mode only). Definitions are in the module docstring of
    :mod:`innerdist.evaluate`.
    """
    from innerdist.blockwise import clear_tracking, run_blockwise
    from innerdist.plan import choose_workers
    from innerdist.volumes import is_complete, open_volume
    from innerdist.workers import BlockFunction, resolve_worker_command

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    thresholds = check_iou_thresholds(iou_thresholds)
    paths = (str(predicted), str(ground_truth), None if mask is None else str(mask))
    arrays = (
        open_volume(paths[0]),
        open_volume(paths[1]),
        open_volume(paths[2]) if paths[2] is not None else None,
    )
    for path, array in zip(paths, arrays, strict=True):
        if array is not None and not is_complete(array):
            raise ValueError(
                f"{path!r} is marked incomplete (a half-written output); finish or rerun the "
                "job that writes it before evaluating"
            )
    plan, note = _plan(
        arrays[0], arrays[1], arrays[2], mode, tol_distance, clip_distance, block_shape
    )
    worker_command = resolve_worker_command(worker_command)
    if worker_command is not None and tracking_dir is None:
        raise ValueError(
            "evaluate through a worker command needs a folder on the shared file system "
            "for the block counts (the CLI uses the one next to --out; give --out)"
        )
    counters = _new_counters(plan)
    with contextlib.ExitStack() as stack:
        if tracking_dir is None:
            tracking = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="innerdist-evaluate-")))
        else:
            tracking = Path(os.path.abspath(tracking_dir))
        folder = tracking / "counts"
        folder.mkdir(parents=True, exist_ok=True)
        # The job is what the counts depend on: counts of another job are never merged.
        job = {"paths": [os.path.abspath(p) if p else None for p in paths],
               "plan": _plan_to_json(plan)}
        job_file = tracking / "evaluate.json"
        if job_file.exists() and json.loads(job_file.read_text()) != job:
            clear_tracking(tracking)
            folder.mkdir(parents=True)
        job_file.write_text(json.dumps(job))
        voxel = plan.voxel_size
        context = Coordinate(math.ceil(plan.clip_distance / v) for v in voxel) * voxel
        requested = num_workers
        num_workers = max(1, min(num_workers, plan.num_blocks()))
        if worker_command is None and num_workers > 1:
            seconds = math.prod(plan.roi.shape / voxel) * plan.num_channels * _SECONDS_PER_VOXEL
            usable = min(num_workers, os.cpu_count() or 1)  # single-threaded counting
            num_workers = choose_workers(num_workers, blocks=plan.num_blocks(),
                                         serial_seconds=seconds,
                                         parallel_seconds=seconds / usable)
        if num_workers != requested:
            logger.info("evaluate: %d block(s) on %d worker(s) (%d asked for)",
                        plan.num_blocks(), num_workers, requested)
        run_blockwise(
            "evaluate",
            total_roi=plan.roi,
            block_shape=plan.block_shape * voxel,
            context=context,
            process=_BlockScorer(paths, plan, str(folder)),
            tracking_dir=tracking,
            num_workers=num_workers,
            progress=progress,
            worker_command=worker_command,
            worker_job=BlockFunction("innerdist.evaluate:block_scorer_function", {
                "paths": job["paths"], "plan": job["plan"], "folder": str(folder)}),
        )
        # Merged in the order of the block grid, whoever counted them: the same scores
        # for any number of workers.
        for _, write in plan.blocks():
            part = pickle.loads(_counts_file(folder, write).read_bytes())
            for (overlap, dist), (o2, d2) in zip(counters, part, strict=True):
                overlap.merge(o2)
                dist.merge(d2)
        if tracking_dir is not None:
            clear_tracking(tracking)
    result = _results(plan, counters, note, thresholds, _units(arrays[0]))
    return {"predicted": paths[0], "ground_truth": paths[1], "mask": paths[2], **result}


# --------------------------------------------------------------------------------------
# reporting


def _rows(scores: Mapping[str, Any]) -> list[tuple[int, str, float | int]]:
    """``(channel, score name, value)`` for every score, e.g. ``instances.f1_score@0.5``."""
    if not isinstance(scores, Mapping) or not isinstance(scores.get("channels"), list):
        raise TypeError(
            "expected the dict returned by evaluate_volumes (with a 'channels' list), got "
            f"{type(scores).__name__}"
        )
    rows: list[tuple[int, str, float | int]] = []
    for entry in scores["channels"]:
        c = int(entry["channel"])
        rows.append((c, "num_voxels", entry["num_voxels"]))
        for key, value in entry["binary"].items():
            rows.append((c, f"binary.{key}", value))
        inst = entry.get("instances")
        if inst is None:
            continue
        for key, value in inst.items():
            if key == "matching":
                for m in value:
                    t = m["iou_threshold"]
                    for k, v in m.items():
                        if k != "iou_threshold":
                            rows.append((c, f"instances.{k}@{t:g}", v))
            else:
                rows.append((c, f"instances.{key}", value))
    return rows


def write_scores(
    scores: Mapping[str, Any], out_json: str | Path, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``scores`` as JSON to ``out_json`` and as CSV next to it (``.csv`` suffix).

    The CSV has one row per channel and score (columns ``channel, score, value``), with
    names such as ``binary.dice`` or ``instances.f1_score@0.5``. Existing files raise
    :class:`FileExistsError` unless ``overwrite``. Returns both paths.
    """
    rows = _rows(scores)
    json_path = Path(out_json)
    if json_path.suffix != ".json":
        raise ValueError(f"scores file must end in .json, got {str(out_json)!r}")
    csv_path = json_path.with_suffix(".csv")
    for p in (json_path, csv_path):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{str(p)!r} already exists; pass --overwrite to replace it")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(scores, indent=2, allow_nan=False) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["channel", "score", "value"])
        writer.writerows(rows)
    return json_path, csv_path


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.4f}"


def format_scores(scores: Mapping[str, Any]) -> str:
    """A readable text table of the scores returned by :func:`evaluate_volumes`."""
    _rows(scores)  # validates the shape
    units = scores.get("units", "world units")
    clip = scores.get("clip_distance")
    lines = []
    if "predicted" in scores:
        lines.append(f"{scores['predicted']} vs {scores['ground_truth']} ({scores['mode']})")
    if scores.get("roi_offset") is not None:
        lines.append(
            f"ROI offset {tuple(scores['roi_offset'])}, shape {tuple(scores['roi_shape'])}, "
            f"voxel size {tuple(scores['voxel_size'])} ({units})"
        )
    if scores.get("roi_note"):
        lines.append(f"note: {scores['roi_note']}")
    if scores.get("mask"):
        lines.append(f"mask: {scores['mask']} (voxels where it is 0 are ignored)")
    for entry in scores["channels"]:
        lines.append("")
        lines.append(f"channel {entry['channel']}: {entry['num_voxels']} voxels scored")
        lines.append(f"  binary (foreground = label != 0; distances in {units})")
        for key, value in entry["binary"].items():
            text = _fmt(value)
            if key == "hausdorff_distance" and clip is not None and value >= clip:
                text = f">= {_fmt(clip)}"
            lines.append(f"    {key:<34}{text:>12}")
        inst = entry.get("instances")
        if inst is None:
            continue
        lines.append(
            f"  instances: {inst['num_predicted']} predicted, "
            f"{inst['num_ground_truth']} in ground truth"
        )
        lines.append(
            f"    {'IoU >=':>6}{'TP':>8}{'FP':>8}{'FN':>8}{'precision':>11}{'recall':>9}"
            f"{'F1':>9}{'accuracy':>10}"
        )
        for m in inst["matching"]:
            lines.append(
                f"    {m['iou_threshold']:>6.2f}{m['true_positives']:>8}"
                f"{m['false_positives']:>8}{m['false_negatives']:>8}{m['precision']:>11.4f}"
                f"{m['recall']:>9.4f}{m['f1_score']:>9.4f}{m['accuracy']:>10.4f}"
            )
        for key, value in inst.items():
            if key not in ("matching", "num_predicted", "num_ground_truth"):
                lines.append(f"    {key:<34}{_fmt(value):>12}")
    return "\n".join(lines)
