"""Blockwise ``innerdist measure`` against skimage's in-memory ``regionprops_table``.

    .venv/bin/python bench/measure.py                  # 512^3 uint64 ids, 128^3 blocks
    .venv/bin/python bench/measure.py --size 256 --workers 1 2
    .venv/bin/python bench/measure.py --quick          # 128^3, 64^3 blocks

The volume holds packed balls of radius 5..12 voxels (30% of the volume) and a few large
ones (radius 40..90 voxels at 512^3, spanning several blocks), uint64 ids, voxel size 8 nm, with
uint8 intensities (noise). Both are written to zarr in 128^3 chunks.

"in memory" reads the whole instance and raw volumes and runs
``skimage.measure.regionprops_table`` for the properties both tools compute (label, area,
centroid, bbox, intensity mean / min / max / std). "blockwise" is
:func:`innerdist.measure.measure_volume` end to end (zarr reads, daisy, block tables,
merge, CSV, summary and PNG), which also computes the surface area. Each runs in a fresh
subprocess; memory is measured as in ``bench/segment.py``: "peak MB" is the growth of the
subprocess's peak resident set beyond its peak after imports, "tree MB" the largest total
resident set of the subprocess and its workers (sampled every 20 ms, interpreters
included). The two tables are compared object by object ("equal": same ids, voxel counts
and boxes, centroids within 1e-6 nm, intensities within 1e-9 relative). Prints a table and
writes JSON (default ``bench/results/measure.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment import peak_mb, run_child  # noqa: E402  (the bench's one memory probe)

VOXEL_SIZE = (8, 8, 8)
PROPERTIES = ("label", "area", "centroid", "bbox", "intensity_mean", "intensity_min",
              "intensity_max", "intensity_std")


def make_instances(size: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Packed small balls plus a few large ones, ids ``1..N`` in a uint64 volume, 0 between
    the balls. (Not ids above 2**53: regionprops allocates a slot for every id up to the
    largest, which fails for such ids; the tests cover them.)"""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    labels = np.zeros(shape, np.uint64)
    count, covered = 0, 0
    big = max(1, size // 128)
    target = 0.3 * labels.size
    while covered < target:
        r = rng.uniform(40, 90) * size / 512 if count < big else rng.uniform(5, 12)
        c = rng.uniform(0, size, 3)
        box = tuple(slice(max(int(ci - r), 0), min(int(ci + r) + 2, size)) for ci in c)
        ball = sum((g - ci) ** 2 for g, ci in zip(np.ogrid[box], c, strict=True)) <= r * r
        region = labels[box]
        free = ball & (region == 0)
        count += 1
        region[free] = count
        covered += int(free.sum())
    return labels, count


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    from innerdist.measure import measure_volume
    from innerdist.volumes import open_volume

    work = Path(args.work)
    inst, raw = str(work / "bench.zarr" / "inst"), str(work / "bench.zarr" / "raw")
    if args.child == "memory":
        from skimage.measure import regionprops_table
    baseline = peak_mb()
    start = time.perf_counter()
    if args.child == "memory":
        labels_array, raw_array = open_volume(inst), open_volume(raw)
        labels = np.asarray(labels_array[labels_array.roi])
        intensities = np.asarray(raw_array[raw_array.roi])
        table = regionprops_table(labels, intensities, properties=PROPERTIES)
        seconds = time.perf_counter() - start
        np.savez(work / "memory.npz", **table)
    else:
        measure_volume(inst, work / f"blockwise{args.workers}.csv", raw=raw,
                       block_shape=(args.block,) * 3, num_workers=args.workers,
                       overwrite=True, progress=False)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb() - baseline}))


def run(script: str, work: Path, mode: str, block: int, workers: int) -> dict[str, Any]:
    return run_child([sys.executable, script, "--child", mode, "--work", str(work),
                      "--block", str(block), "--workers", str(workers)], f"{mode} run")


def same_table(csv_path: Path, memory: dict[str, np.ndarray]) -> bool:
    """Whether the blockwise CSV holds regionprops' values for every object."""
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [int(r["id"]) for r in rows]
    if ids != [int(v) for v in memory["label"]]:
        return False
    vs = np.array(VOXEL_SIZE)
    checks = [np.array_equal([int(r["voxel_count"]) for r in rows], memory["area"])]
    for d, a in enumerate("zyx"):
        centroid = np.array([float(r[f"centroid_{a}_nm"]) for r in rows])
        checks.append(np.allclose(centroid, vs[d] * memory[f"centroid-{d}"], rtol=0, atol=1e-6))
        checks.append(np.array_equal([int(r[f"bbox_begin_{a}_nm"]) for r in rows],
                                     vs[d] * memory[f"bbox-{d}"]))
        checks.append(np.array_equal([int(r[f"bbox_end_{a}_nm"]) for r in rows],
                                     vs[d] * memory[f"bbox-{d + 3}"]))
    for name in ("mean", "min", "max", "std"):
        got = np.array([float(r[f"{name}_intensity"]) for r in rows])
        checks.append(np.allclose(got, memory[f"intensity_{name}"], rtol=1e-9, atol=1e-9))
    return all(bool(c) for c in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[512], help="volume sides")
    parser.add_argument("--block", type=int, default=128, help="block side, voxels")
    parser.add_argument("--quick", action="store_true", help="128^3 volume, 64^3 blocks")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-memory", action="store_true", help="skip regionprops")
    parser.add_argument("--out", type=Path, default=Path("bench/results/measure.json"))
    parser.add_argument("--child", choices=["memory", "blockwise"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workers = args.workers[0]
        child(args)
        return
    if args.quick:
        args.size, args.block = [128], 64

    from funlib.geometry import Roi

    from innerdist.volumes import create_volume, mark_complete

    script = str(Path(__file__).resolve())
    rows: list[dict[str, Any]] = []
    for size in args.size:
        work = Path(tempfile.mkdtemp(prefix="innerdist-bench-measure-"))
        try:
            labels, objects = make_instances(size)
            roi = Roi((0, 0, 0), tuple(size * v for v in VOXEL_SIZE))
            raw = np.random.default_rng(1).integers(0, 256, labels.shape, dtype=np.uint8)
            for name, data in (("inst", labels), ("raw", raw)):
                array = create_volume(work / "bench.zarr" / name, roi=roi,
                                      voxel_size=VOXEL_SIZE, dtype=data.dtype,
                                      chunk_shape=(128,) * 3)
                array[roi] = data
                mark_complete(array)
            del labels, raw
            memory = None
            if not args.no_memory:
                rows.append({"size": size, "objects": objects, "mode": "in memory",
                             "workers": 1, **run(script, work, "memory", args.block, 1)})
                with np.load(work / "memory.npz") as data:
                    memory = {k: data[k] for k in data.files}
            for workers in args.workers:
                row = {"size": size, "objects": objects, "mode": "blockwise",
                       "workers": workers, **run(script, work, "blockwise", args.block, workers)}
                if memory is not None:
                    row["equal"] = same_table(work / f"blockwise{workers}.csv", memory)
                rows.append(row)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    for row in rows:
        row["mvox_per_s"] = row["size"] ** 3 / 1e6 / row["seconds"]
    print(f"uint64 ids + uint8 raw, voxel size {VOXEL_SIZE} nm, blocks {args.block}^3")
    print(f"{'size':>6} {'objects':>8} {'mode':<10} {'workers':>7} {'seconds':>8} "
          f"{'Mvox/s':>7} {'peak MB':>8} {'tree MB':>8} {'equal':>6}")
    for row in rows:
        equal = str(row.get("equal", "-"))
        print(f"{row['size']:>5}^3 {row['objects']:>8} {row['mode']:<10} {row['workers']:>7} "
              f"{row['seconds']:>8.2f} {row['mvox_per_s']:>7.2f} {row['peak_mb']:>8.0f} "
              f"{row['tree_peak_mb']:>8.0f} {equal:>6}")
    result = {"block_shape": [args.block] * 3, "voxel_size": list(VOXEL_SIZE),
              "machine": platform.platform(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
