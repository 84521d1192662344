"""Per-object measurements of instance volumes larger than memory: one table row per object.

:func:`measure_volume` cuts the instance volume into write blocks (daisy, through
:func:`innerdist.blockwise.run_blockwise`, so it resumes and runs on the same workers as
every other job). Each block reduces its voxels to a small table of *mergeable* sums per
object id; the tables are merged once at the end. Every column is a sum, a minimum or a
maximum over voxels (or Chan's merge of means and squared deviations for the intensity
std), so the result does not depend on how the volume is cut::

    block read with its face neighbours (zero outside the volume)
    +---------------------------+
    |  +---------------------+  |   counted here: the block's own voxels, and every
    |  | write block         |  |   face of those voxels whose neighbour (inside the
    |  |  voxel | neighbour -+--+-- context, possibly in the next block) has another
    |  +---------------------+  |   id: a face between two blocks belongs to exactly one
    +---------------------------+   voxel of each object, so it is counted once per object

Per block and object: voxel count, the sum of the voxels' indices (int64: exact), the
first and last index per axis, the exposed faces per axis, and with intensities their
sum, sum of squared deviations from the block mean (Welford), minimum and maximum.
The partial tables are ``.npz`` files in the job folder ``<out dir>/.innerdist-blocks/
<out name>/`` (written atomically, next to daisy's block tracking), so a killed job run
again skips the blocks it finished. Definitions of the columns: ``docs/measure.md``.

Geometry is in world units (nm, or px for data without a calibration): voxel ``i`` of a
volume with offset ``o`` and voxel size ``v`` sits at ``o + v * i`` (the position OME-NGFF
gives a voxel), its bounding box is the funlib ROI ``[o + v * first, o + v * (last + 1))``
that crops the object out of the volume.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from funlib.geometry import Coordinate, Roi
from numba import njit

__all__ = [
    "SURFACE_CORRECTION",
    "MeasureResult",
    "block_stats",
    "column_names",
    "measure_block_function",
    "measure_volume",
    "merge_stats",
    "outputs_for",
    "read_with_faces",
]

#: Factor from the exposed voxel faces to the surface estimate: the mean of
#: ``sum_d |n_d|`` over isotropically oriented surface normals is 3/2 in 3-D, 4/pi in 2-D.
SURFACE_CORRECTION = {2: math.pi / 4, 3: 2 / 3}
DEFAULT_BLOCK_VOXELS = {2: 1024, 3: 128}
JOB_VERSION = 1
_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}


# --------------------------------------------------------------------------------------
# one block


def _factorize(values: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[np.intp]]:
    """Sorted distinct ``values`` and each value's index into them.

    Labels come in runs along the last axis, so the (slow) sort runs over the runs only.
    """
    if values.size == 0:
        return values, np.zeros(0, np.intp)
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    ids, run_index = np.unique(values[starts], return_inverse=True)
    lengths = np.diff(np.append(starts, values.size))
    return ids, np.repeat(run_index.reshape(-1), lengths)


@njit(cache=True, nogil=True)
def _block_kernel(  # pragma: no cover - compiled; tested through block_stats
    padded: Any, index: Any, n: int, intensities: Any, with_intensities: bool,
    flat_first_axis: bool,
) -> tuple[Any, ...]:
    """One pass over a 3-D block (``padded`` holds one voxel of context per side; ids as
    uint64). ``index[k]`` is the row of the k-th foreground voxel in C order. With
    ``flat_first_axis`` (a 2-D block stacked into 3-D) no faces are counted along axis 0.
    Intensity moments use Welford's update (no sum of squares)."""
    nz, ny, nx = padded.shape[0] - 2, padded.shape[1] - 2, padded.shape[2] - 2
    count = np.zeros(n, np.int64)
    index_sum = np.zeros((n, 3), np.int64)
    box_lo = np.full((n, 3), np.iinfo(np.int64).max, np.int64)
    box_hi = np.full((n, 3), -1, np.int64)
    faces = np.zeros((n, 3), np.int64)
    total = np.zeros(n)
    mean = np.zeros(n)
    m2 = np.zeros(n)
    lowest = np.full(n, np.inf)
    highest = np.full(n, -np.inf)
    k = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                v = padded[z + 1, y + 1, x + 1]
                if v == 0:
                    continue
                r = index[k]
                k += 1
                count[r] += 1
                for d, c in ((0, z), (1, y), (2, x)):
                    index_sum[r, d] += c
                    if c < box_lo[r, d]:
                        box_lo[r, d] = c
                    if c + 1 > box_hi[r, d]:
                        box_hi[r, d] = c + 1
                p = padded
                if not flat_first_axis:
                    faces[r, 0] += (p[z, y + 1, x + 1] != v) + (p[z + 2, y + 1, x + 1] != v)
                faces[r, 1] += (p[z + 1, y, x + 1] != v) + (p[z + 1, y + 2, x + 1] != v)
                faces[r, 2] += (p[z + 1, y + 1, x] != v) + (p[z + 1, y + 1, x + 2] != v)
                if with_intensities:
                    w = intensities[z, y, x]
                    total[r] += w
                    delta = w - mean[r]
                    mean[r] += delta / count[r]
                    m2[r] += delta * (w - mean[r])
                    if w < lowest[r]:
                        lowest[r] = w
                    if w > highest[r]:
                        highest[r] = w
    return count, index_sum, box_lo, box_hi, faces, total, m2, lowest, highest


def block_stats(
    padded: npt.NDArray[Any],
    first_voxel: Sequence[int],
    intensities: npt.NDArray[Any] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """The mergeable per-object sums of one block.

    ``padded`` holds the block's ids with one voxel of context on every side (0 outside
    the volume; only the face neighbours are looked at, not edges and corners);
    ``first_voxel`` is the global voxel index of the block's first voxel;
    ``intensities`` (optional) has the block's shape, without context. Returns arrays
    with one entry (row) per id present in the block, ids sorted, 0 left out.

    >>> padded = np.zeros((3, 4), np.uint64); padded[1, 1:3] = 7  # a 1x2 block: [7, 7]
    >>> s = block_stats(padded, (5, 10))
    >>> s["ids"].tolist(), s["count"].tolist(), s["index_sum"].tolist()
    ([7], [2], [[10, 21]])
    >>> s["faces"].tolist()  # 2 faces along y (above, below each voxel), 2 along x
    [[4, 2]]
    """
    dims = padded.ndim
    if dims not in (2, 3):
        raise ValueError(f"expected a 2-D or 3-D block, got shape {padded.shape}")
    inner = padded[(slice(1, -1),) * dims]
    if intensities is not None and intensities.shape != inner.shape:
        raise ValueError(
            f"intensities of shape {intensities.shape} do not match the block {inner.shape}"
        )
    ids, index = _factorize(inner[inner != 0])
    as_ids = padded.astype(np.uint64, copy=False)  # equality is all the kernel needs
    values = np.zeros((1, 1, 1))
    if intensities is not None:
        values = intensities.astype(np.float64, copy=False)
    if dims == 2:
        stacked = np.zeros((3, *padded.shape), np.uint64)
        stacked[1] = as_ids
        as_ids = stacked
        values = values[np.newaxis] if intensities is not None else values
    count, index_sum, box_lo, box_hi, faces, total, m2, lowest, highest = _block_kernel(
        np.ascontiguousarray(as_ids), index, len(ids), np.ascontiguousarray(values),
        intensities is not None, dims == 2,
    )
    lo = np.asarray(first_voxel, np.int64)
    axes = slice(3 - dims, 3)
    stats: dict[str, npt.NDArray[Any]] = {
        "ids": ids,
        "count": count,
        "index_sum": index_sum[:, axes] + count[:, None] * lo,
        "box_lo": box_lo[:, axes] + lo,
        "box_hi": box_hi[:, axes] + lo,
        "faces": faces[:, axes],
    }
    if intensities is not None:
        stats.update({"sum": total, "m2": m2, "min": lowest, "max": highest})
    return stats


def merge_stats(parts: Sequence[Mapping[str, npt.NDArray[Any]]]) -> dict[str, npt.NDArray[Any]]:
    """Merge block tables (:func:`block_stats`) into one row per id.

    Sums add, boxes take the minimum / maximum, and the squared deviations follow Chan et
    al.'s pairwise update generalised to many parts:
    ``M2 = sum_i M2_i + n_i * (mean_i - mean)**2``, which needs no sum of squares (that
    would lose the variance of bright objects to cancellation).
    """
    parts = [p for p in parts if len(p["ids"])]
    if not parts:
        return {}
    merged: dict[str, npt.NDArray[Any]] = {}
    ids = np.concatenate([p["ids"] for p in parts])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    merged["ids"] = ids[starts]

    def gathered(key: str) -> npt.NDArray[Any]:
        return np.concatenate([p[key] for p in parts])[order]

    count = gathered("count")
    merged["count"] = np.add.reduceat(count, starts)
    merged["index_sum"] = np.add.reduceat(gathered("index_sum"), starts, axis=0)
    merged["faces"] = np.add.reduceat(gathered("faces"), starts, axis=0)
    merged["box_lo"] = np.minimum.reduceat(gathered("box_lo"), starts, axis=0)
    merged["box_hi"] = np.maximum.reduceat(gathered("box_hi"), starts, axis=0)
    if "sum" in parts[0]:
        total = gathered("sum")
        merged["sum"] = np.add.reduceat(total, starts)
        mean = merged["sum"] / merged["count"]
        group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(ids))))
        part_mean = total / count
        merged["m2"] = np.add.reduceat(
            gathered("m2") + count * (part_mean - mean[group]) ** 2, starts
        )
        merged["min"] = np.minimum.reduceat(gathered("min"), starts)
        merged["max"] = np.maximum.reduceat(gathered("max"), starts)
    return merged


# --------------------------------------------------------------------------------------
# columns


def column_names(dims: int, unit: str, intensities: bool) -> list[str]:
    """The table's columns, in order (units in the names; ``docs/measure.md``).

    >>> column_names(2, "nm", False)[:6]
    ['channel', 'id', 'voxel_count', 'area_nm2', 'perimeter_nm', 'face_length_nm']
    """
    axes = _AXES[dims]
    if dims == 3:
        size = [f"volume_{unit}3", f"surface_area_{unit}2", f"face_area_{unit}2"]
    else:
        size = [f"area_{unit}2", f"perimeter_{unit}", f"face_length_{unit}"]
    names = ["channel", "id", "voxel_count", *size]
    names += [f"centroid_{a}_{unit}" for a in axes]
    names += [f"bbox_begin_{a}_{unit}" for a in axes]
    names += [f"bbox_end_{a}_{unit}" for a in axes]
    names.append("touches_border")
    if intensities:
        names += ["mean_intensity", "min_intensity", "max_intensity", "std_intensity"]
    return names


def _columns(
    merged: Mapping[str, npt.NDArray[Any]], channel: int, job: _Job
) -> dict[str, npt.NDArray[Any]]:
    """The table columns of one channel from its merged sums."""
    dims = len(job.voxel_size)
    names = column_names(dims, job.unit, job.raw is not None)
    if not merged:
        return {name: np.zeros(0, _column_dtype(name, job)) for name in names}
    vs = np.asarray(job.voxel_size, np.int64)
    offset = np.asarray(job.offset, np.int64)
    count = merged["count"]
    face_size = np.prod(vs) // vs  # area (3-D) or length (2-D) of a face normal to axis d
    face_total = (merged["faces"] * face_size).sum(axis=1)
    columns: dict[str, npt.NDArray[Any]] = {
        "channel": np.full(len(count), channel, np.int64),
        "id": merged["ids"],
        "voxel_count": count,
        names[3]: count * np.prod(vs),
        names[4]: face_total * SURFACE_CORRECTION[dims],
        names[5]: face_total,
    }
    # quotient and remainder: exact however large the index sums grow (past 2**53)
    whole, rest = np.divmod(merged["index_sum"], count[:, None])
    centroid = offset + vs * (whole + rest / count[:, None])
    begin = offset + vs * merged["box_lo"]
    end = offset + vs * merged["box_hi"]
    for d in range(dims):
        columns[names[6 + d]] = centroid[:, d]
        columns[names[6 + dims + d]] = begin[:, d]
        columns[names[6 + 2 * dims + d]] = end[:, d]
    shape = np.asarray(job.shape, np.int64)
    columns["touches_border"] = (
        (merged["box_lo"] == 0) | (merged["box_hi"] == shape)
    ).any(axis=1)
    if job.raw is not None:
        columns["mean_intensity"] = merged["sum"] / count
        columns["min_intensity"] = merged["min"]
        columns["max_intensity"] = merged["max"]
        columns["std_intensity"] = np.sqrt(np.maximum(merged["m2"], 0) / count)
    return {name: columns[name] for name in names}


def _column_dtype(name: str, job: _Job) -> np.dtype[Any]:
    if name == "id":
        return np.dtype(job.id_dtype)
    if name == "touches_border":
        return np.dtype(bool)
    if name in ("channel", "voxel_count") or name.startswith(("volume_", "area_", "bbox_")):
        return np.dtype(np.int64)
    if name.startswith(("face_area", "face_length")):
        return np.dtype(np.int64)
    return np.dtype(np.float64)


# --------------------------------------------------------------------------------------
# the job


@dataclass(frozen=True)
class _Job:
    """Everything a block needs, JSON-able (a cluster worker rebuilds it from the job
    file)."""

    instances: str  # absolute path of the level that is measured
    raw: str | None
    tracking: str
    voxel_size: tuple[int, ...]
    offset: tuple[int, ...]  # world units
    shape: tuple[int, ...]  # voxels, spatial
    block: tuple[int, ...]  # voxels
    channels: int
    has_channel_axis: bool
    raw_has_channel_axis: bool
    id_dtype: str
    unit: str

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block, strict=True))

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid)

    @property
    def blocks_dir(self) -> Path:
        return Path(self.tracking) / "blocks"

    def locate(self, write_roi: Roi) -> tuple[int, tuple[int, ...]]:
        """Block number and first voxel (global index) of a write ROI."""
        first = (write_roi.begin - Coordinate(self.offset)) / Coordinate(self.voxel_size)
        position = tuple(f // b for f, b in zip(first, self.block, strict=True))
        return int(np.ravel_multi_index(position, self.grid)), tuple(first)

    def identity(self) -> dict[str, Any]:
        """What determines the result: a resumed job must agree on all of it."""
        fields = asdict(self)
        fields.pop("tracking")
        return {"command": "measure", "version": JOB_VERSION, **fields}


def _job_from_dict(fields: Mapping[str, Any]) -> _Job:
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return _Job(**values)


def _save_npz(path: Path, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Write an ``.npz`` atomically: a killed worker never leaves half a block table."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **dict(arrays))  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_with_faces(array: Any, write_roi: Roi) -> npt.NDArray[Any]:
    """``array[write_roi]`` with one voxel of context on every side, of which only the
    face neighbours are read (0 outside the volume; edges and corners stay 0).

    Reading the six one-voxel slabs rather than the grown ROI decodes the chunks across
    the block's faces only, not those across its edges and corners (27 chunks per block
    when blocks are chunks, against 7).
    """
    from innerdist.volumes import read

    voxel = Coordinate(array.voxel_size)
    shape = write_roi.shape / voxel
    lead = (slice(None),) * array.channel_dims
    channel_shape = tuple(array.shape[: array.channel_dims])
    out = np.zeros((*channel_shape, *(s + 2 for s in shape)), array.dtype)
    out[lead + (slice(1, -1),) * voxel.dims] = read(array, write_roi)
    for d in range(voxel.dims):
        for side in (0, -1):
            begin = list(write_roi.begin)
            begin[d] = write_roi.begin[d] - voxel[d] if side == 0 else write_roi.end[d]
            size = list(write_roi.shape)
            size[d] = voxel[d]
            slab = Roi(begin, size)
            if not array.roi.contains(slab):
                continue  # outside the volume: stays 0
            where = tuple(side if a == d else slice(1, -1) for a in range(voxel.dims))
            out[lead + where] = read(array, slab).reshape(out[lead + where].shape)
    return out


def measure_block_function(*, job: dict[str, Any]) -> Callable[[Roi, Roi], None]:
    """The per-block work of :func:`measure_volume`, rebuilt from JSON parameters (so a
    cluster worker can build it from the job file)."""
    spec = _job_from_dict(job)
    # Opened on first use in the process that runs the blocks (this closure is built
    # fresh per job and sent to workers unused): opening costs as much as reading a small
    # block.
    opened: dict[str, Any] = {}

    def volume(path: str) -> Any:
        from innerdist.volumes import open_volume

        if path not in opened:
            opened[path] = open_volume(path)
        return opened[path]

    def process(read_roi: Roi, write_roi: Roi) -> None:
        from innerdist.volumes import read

        number, first = spec.locate(write_roi)
        labels = read_with_faces(volume(spec.instances), write_roi)
        if not spec.has_channel_axis:
            labels = labels[np.newaxis]
        values = None
        if spec.raw is not None:
            values = read(volume(spec.raw), write_roi)
            if spec.raw_has_channel_axis:
                values = values[0]
        parts: dict[str, npt.NDArray[Any]] = {}
        for c in range(spec.channels):
            for key, value in block_stats(labels[c], first, values).items():
                parts[f"c{c}_{key}"] = value
        spec.blocks_dir.mkdir(parents=True, exist_ok=True)
        _save_npz(spec.blocks_dir / f"{number}.npz", parts)

    return process


def _merge_job(job: _Job) -> list[dict[str, npt.NDArray[Any]]]:
    """One merged table per channel, from the block tables of every block."""
    parts: list[list[dict[str, npt.NDArray[Any]]]] = [[] for _ in range(job.channels)]
    for number in range(job.num_blocks):
        path = job.blocks_dir / f"{number}.npz"
        if not path.is_file():
            raise FileNotFoundError(
                f"block table {str(path)!r} is missing although daisy recorded the block as "
                "done (was the job folder edited?); run the same command with --overwrite"
            )
        with np.load(path) as data:
            for c in range(job.channels):
                prefix = f"c{c}_"
                parts[c].append(
                    {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
                )
    return [merge_stats(p) for p in parts]


# --------------------------------------------------------------------------------------
# outputs


@dataclass(frozen=True)
class MeasureResult:
    """What :func:`measure_volume` wrote (or found complete) and the per-channel summary."""

    table: Path
    summary_json: Path
    histogram_png: Path
    summary: dict[str, Any]
    already_complete: bool = False
    lines: list[str] = field(default_factory=list)

    def report(self) -> str:
        """The summary as text, one line per channel."""
        return "\n".join(self.lines)


def outputs_for(out: str | Path) -> tuple[Path, Path, Path]:
    """``objects.csv`` -> itself, ``objects.summary.json`` and ``objects.volumes.png``."""
    table = Path(out)
    if table.suffix not in (".csv", ".parquet"):
        raise ValueError(
            f"--out must end in .csv or .parquet (the table's format), got {str(out)!r}"
        )
    stem = table.with_suffix("")
    return table, Path(f"{stem}.summary.json"), Path(f"{stem}.volumes.png")


def _tracking_for(table: Path) -> Path:
    """``results/objects.csv`` -> ``results/.innerdist-blocks/objects.csv`` (like the block
    tracking of volume outputs, which lives in their container)."""
    return table.parent / ".innerdist-blocks" / table.name


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ValueError(
            "writing Parquet needs pyarrow, which is not installed: pip install "
            "'innerdist[parquet]' (or pyarrow), or write --out objects.csv"
        ) from None


def _atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _write_table(path: Path, tables: Sequence[Mapping[str, npt.NDArray[Any]]]) -> None:
    names = list(tables[0])
    tmp = _atomic_path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            columns = {n: np.concatenate([t[n] for t in tables]) for n in names}
            pq.write_table(pa.table(columns), tmp)
        else:
            with tmp.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(names)
                for table in tables:
                    # tolist() gives Python ints and floats: uint64 ids stay exact, floats
                    # are written with repr (shortest round-tripping digits)
                    writer.writerows(zip(*(table[n].tolist() for n in names), strict=True))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _summary(
    tables: Sequence[Mapping[str, npt.NDArray[Any]]], job: _Job
) -> tuple[dict[str, Any], list[str]]:
    dims = len(job.voxel_size)
    size_name = column_names(dims, job.unit, False)[3]
    unit = f"{job.unit}^{dims}"
    total_voxels = math.prod(job.shape)
    channels = []
    lines = []
    for c, table in enumerate(tables):
        volumes = table[size_name]
        occupied = int(table["voxel_count"].sum())
        entry: dict[str, Any] = {
            "channel": c,
            "objects": len(volumes),
            "object_voxels": occupied,
            "volume_fraction": occupied / total_voxels,
            "touching_border": int(table["touches_border"].sum()),
            "volume_unit": unit,
            "total_volume": int(volumes.sum()),
        }
        if len(volumes):
            entry["volume_min"] = int(volumes.min())
            entry["volume_median"] = float(np.median(volumes))
            entry["volume_max"] = int(volumes.max())
        counts, edges = _histogram(volumes)
        entry["histogram"] = {"edges": edges.tolist(), "counts": counts.tolist()}
        channels.append(entry)
        lines.append(_summary_line(entry, dims))
    summary = {
        "job": job.identity(),
        "voxel_size": list(job.voxel_size),
        "offset": list(job.offset),
        "shape": list(job.shape),
        "unit": job.unit,
        "channels": channels,
    }
    return summary, lines


def _summary_line(entry: Mapping[str, Any], dims: int) -> str:
    """``channel 0: 12 objects, 3.4% of the volume, volume median ...`` (printed)."""
    line = (
        f"channel {entry['channel']}: {entry['objects']} "
        f"object{'' if entry['objects'] == 1 else 's'}, "
        f"{100 * entry['volume_fraction']:.3g}% of the volume"
    )
    if entry["objects"]:
        line += (
            f", {'volume' if dims == 3 else 'area'} median {entry['volume_median']:.4g} "
            f"{entry['volume_unit']} (min {entry['volume_min']:.4g}, max "
            f"{entry['volume_max']:.4g}), {entry['touching_border']} touching the border"
        )
    return line


def _histogram(volumes: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """Counts over log-spaced bins (volumes span decades)."""
    if len(volumes) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    low, high = float(volumes.min()), float(volumes.max())
    if low == high:
        edges = np.array([low * 0.9, high * 1.1])
    else:
        edges = np.geomspace(low, high, min(50, max(5, int(np.sqrt(len(volumes))))) + 1)
    counts, edges = np.histogram(volumes, bins=edges)
    return counts.astype(np.int64), edges


def _plot(path: Path, summary: Mapping[str, Any], dims: int) -> None:
    from innerdist.plots import _figure, _save

    channels = summary["channels"]
    height = 2.6 * len(channels) + 0.6
    fig = _figure(6, height)
    for i, entry in enumerate(channels):
        ax = fig.add_subplot(len(channels), 1, i + 1)
        edges = np.asarray(entry["histogram"]["edges"])
        counts = np.asarray(entry["histogram"]["counts"])
        if len(counts):
            ax.stairs(counts, edges, fill=True, color="C0")
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "no objects", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(f"{'volume' if dims == 3 else 'area'} ({entry['volume_unit']})")
        ax.set_ylabel("objects")
        ax.set_title(
            f"channel {entry['channel']}: {entry['objects']} "
            f"object{'' if entry['objects'] == 1 else 's'}, "
            f"{100 * entry['volume_fraction']:.3g}% of the volume"
        )
        ax.grid(alpha=0.3)
    # margins in inches: room for the lowest x label and the first title at any height
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.55 / height, top=1 - 0.35 / height,
                        hspace=0.6)
    _save(fig, path)


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    tmp = _atomic_path(path)
    try:
        tmp.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


# --------------------------------------------------------------------------------------
# the command


def _check_block_shape(block_shape: Sequence[int] | None, dims: int) -> tuple[int, ...]:
    if block_shape is None:
        return (DEFAULT_BLOCK_VOXELS[dims],) * dims
    if len(block_shape) != dims or any(
        isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1 for b in block_shape
    ):
        raise ValueError(
            f"block shape must be {dims} positive integers (voxels), got {tuple(block_shape)}"
        )
    return tuple(int(b) for b in block_shape)


def _plan(
    instances: str, raw: str | None, block_shape: Sequence[int] | None, tracking: Path
) -> _Job:
    """Open and validate the inputs; the job that measures them."""
    from innerdist.safety import check_input_complete
    from innerdist.units import world_unit
    from innerdist.volumes import num_channels, open_volume

    labels = open_volume(instances)
    check_input_complete(labels.attrs, instances, "instances", allow_incomplete=None)
    dtype = np.dtype(labels.dtype)
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(
            f"instances {instances!r} have dtype {dtype}; expected integer object ids "
            "(0 = background)"
        )
    voxel = Coordinate(labels.voxel_size)
    if voxel.dims not in (2, 3):
        raise ValueError(
            f"instances {instances!r} have {voxel.dims} spatial axes ({labels.axis_names}); "
            "expected 2 or 3"
        )
    channels = num_channels(labels)
    raw_channels = None
    if raw is not None:
        intensities = open_volume(raw)
        check_input_complete(intensities.attrs, raw, "raw", allow_incomplete=None)
        raw_channels = num_channels(intensities)
        if raw_channels not in (None, 1):
            raise ValueError(
                f"raw {raw!r} has {raw_channels} channels; measure one intensity channel "
                "at a time (expected no channel axis or one channel)"
            )
        kind = np.dtype(intensities.dtype).kind
        if kind not in "biuf":
            raise TypeError(f"raw {raw!r} has dtype {intensities.dtype}; expected numbers")
        if Coordinate(intensities.voxel_size) != voxel:
            raise ValueError(
                f"raw {raw!r} has voxel size {tuple(intensities.voxel_size)}, the instances "
                f"{tuple(voxel)} (world units); resample one of them first"
            )
        if not intensities.roi.contains(labels.roi) or (
            (labels.roi.offset - intensities.roi.offset) % voxel != Coordinate((0,) * voxel.dims)
        ):
            raise ValueError(
                f"raw {raw!r} covers {intensities.roi}, which does not contain the instances' "
                f"region {labels.roi} on the same voxel grid (world units)"
            )
    shape = tuple(labels.roi.shape / voxel)
    block = tuple(min(b, s) for b, s in zip(_check_block_shape(block_shape, voxel.dims), shape,
                                            strict=True))
    return _Job(
        instances=os.path.abspath(instances),
        raw=None if raw is None else os.path.abspath(raw),
        tracking=os.path.abspath(tracking),
        voxel_size=tuple(voxel),
        offset=tuple(labels.roi.offset),
        shape=shape,
        block=block,
        channels=channels or 1,
        has_channel_axis=channels is not None,
        raw_has_channel_axis=raw_channels is not None,
        id_dtype=dtype.str,
        unit=world_unit(labels.units),
    )


def _prepare(
    table: Path, companions: Sequence[Path], tracking: Path, job: _Job, overwrite: bool
) -> bool:
    """Decide between a fresh run, a resumed one and nothing to do (returns True).

    A job folder of the same job is resumed; of another job it is refused. ``overwrite``
    starts afresh, replacing existing outputs only when their summary shows ``innerdist
    measure`` wrote them. The same finished job is a no-op.
    """
    identity = json.loads(json.dumps(job.identity()))
    job_file = tracking / "job.json"
    if job_file.is_file() and not overwrite:
        if _read_summary(job_file) == identity:
            return False  # resume: the outputs, if any, are this job's
        raise FileExistsError(
            f"{str(tracking)!r} holds an unfinished measure job of other inputs or "
            f"parameters writing {str(table)!r}; pass --overwrite to replace it"
        )
    existing = [p for p in (table, *companions) if p.exists()]
    if existing:
        summary = _read_summary(companions[0]) or {}
        recorded_job = summary.get("job")
        # an unfinished run of this output (its job folder) wrote what it left behind
        ours = job_file.is_file() or (
            isinstance(recorded_job, dict) and recorded_job.get("command") == "measure"
        )
        finished = recorded_job == identity and summary.get("table") == table.name
        if finished and table.exists() and not overwrite:
            return True
        if not overwrite:
            raise FileExistsError(
                f"{str(existing[0])!r} already exists; pass --overwrite to replace it"
            )
        if not ours:
            raise FileExistsError(
                f"{str(existing[0])!r} exists and was not written by innerdist measure (no "
                f"summary {str(companions[0])!r} naming the job); --overwrite only replaces "
                "innerdist outputs: choose another --out or delete it yourself"
            )
    if tracking.exists():
        shutil.rmtree(tracking)
    tracking.mkdir(parents=True)
    _write_json(job_file, identity)
    return False


def measure_volume(
    instances: str | Path,
    out: str | Path,
    *,
    raw: str | Path | None = None,
    block_shape: Sequence[int] | None = None,
    num_workers: int = 1,
    worker_command: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> MeasureResult:
    """Measure every object of an instance volume, blockwise; write a table and a summary.

    Parameters
    ----------
    instances:
        Integer id volume (``container/dataset``; 0 is background), 2-D or 3-D, with or
        without a leading channel axis (each channel is measured on its own: the table's
        ``channel`` column).
    out:
        ``objects.csv`` or ``objects.parquet`` (Parquet needs pyarrow). Next to it go
        ``objects.summary.json`` (per channel: object count, volume fraction, volume
        histogram; and the job) and ``objects.volumes.png`` (the histograms).
    raw:
        Intensities for ``mean/min/max/std_intensity`` (no channel axis or one channel;
        same voxel size as the instances, covering their region).
    block_shape:
        Block shape in voxels (default 128^3 / 1024^2). Memory is bounded by the block,
        plus the merged table (one row per object).
    num_workers, worker_command:
        As for every blockwise job (:mod:`innerdist.workers`).
    overwrite:
        Replace outputs of an earlier ``measure`` (never files that it did not write).

    Re-running a killed job resumes it (finished blocks are kept in the job folder
    ``<out dir>/.innerdist-blocks/<out name>/``); re-running a finished one does nothing.
    """
    from innerdist.blockwise import run_blockwise
    from innerdist.safety import (
        acquire_output_lock,
        check_output_apart_from_inputs,
        release_output_lock,
    )
    from innerdist.workers import BlockFunction, resolve_worker_command

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    table, summary_json, png = outputs_for(out)
    if table.suffix == ".parquet":
        _require_pyarrow()
    worker_command = resolve_worker_command(worker_command)
    tracking = _tracking_for(table)
    inputs = {"instances": str(instances), "raw": None if raw is None else str(raw)}
    check_output_apart_from_inputs([table, summary_json, png, tracking], inputs)
    job = _plan(str(instances), None if raw is None else str(raw), block_shape, tracking)
    acquire_output_lock(tracking, table)
    try:
        if _prepare(table, (summary_json, png), tracking, job, overwrite):
            summary = _read_summary(summary_json) or {}
            dims = len(job.voxel_size)
            lines = [_summary_line(e, dims) for e in summary.get("channels", [])]
            return MeasureResult(table, summary_json, png, summary, True, lines)
        block_function = BlockFunction(
            "innerdist.measure:measure_block_function", {"job": asdict(job)}
        )
        voxel = Coordinate(job.voxel_size)
        run_blockwise(
            "measure",
            total_roi=Roi(job.offset, Coordinate(job.shape) * voxel),
            block_shape=Coordinate(job.block) * voxel,
            context=Coordinate((0,) * voxel.dims),  # blocks read their faces themselves
            process=block_function.build(),
            tracking_dir=tracking,
            num_workers=num_workers,
            progress=progress,
            worker_command=worker_command,
            worker_job=block_function,
        )
        merged = _merge_job(job)
        tables = [_columns(m, c, job) for c, m in enumerate(merged)]
        summary, lines = _summary(tables, job)
        summary = {"table": table.name, **summary}
        _plot(png, summary, len(job.voxel_size))
        _write_table(table, tables)
        _write_json(summary_json, summary)  # last: it marks the outputs as this job's
        shutil.rmtree(tracking)
    finally:
        release_output_lock(tracking)
    return MeasureResult(table, summary_json, png, summary, False, lines)
