"""Blockwise instance segmentation vs the same algorithm on the whole volume in memory.

    .venv/bin/python bench/segment.py            # 256^3 voxels, 64^3 blocks, 1 and 2 workers
    .venv/bin/python bench/segment.py --quick    # 64^3 voxels, 32^3 blocks

The prediction is what a good network would output for packed, partly touching balls:
``tanh(distance to the ball's boundary / scale)`` (touching balls bound each other), plus
smooth noise inside the balls, so that some balls get several seeds and touching balls share
a foreground component (the watershed splits them). It is written to zarr as float32. Two
packings by default (``--fill``): sparse (12% of the volume: touching clusters stay small)
and dense (25%: the touching balls percolate into one component spanning the volume, which
the exact path floods as a whole, so blockwise memory is no longer bounded by the blocks).

Two seed kinds (``--seeds``): ``level`` (components above the seed level 0.8; a
prediction without predictor attrs, as before dynamic seeds) and ``dynamic`` (the
default for predictions with predictor attrs: h-maxima of the inner distance with a
minimum dynamic of one voxel, 8 nm, the tanh scale 24 nm). ``--src`` runs the same
measurement with another checkout's ``src`` (e.g. the code before dynamic seeds, level
rows only) for a before/after table.

"in memory" reads the whole prediction and runs :func:`innerdist.watershed.instances`.
"blockwise" is :func:`innerdist.segment.segment_volume` end to end (all passes, zarr I/O,
block tracking, worker start-up). Each runs in a fresh subprocess; its time is wall-clock.
Memory, two ways: "peak MB" is how far the subprocess's own peak resident set grew beyond
its peak after imports (``VmHWM`` from /proc, which is ``ru_maxrss`` of this process image:
``ru_maxrss`` itself would include the bench parent's peak, inherited through fork);
"tree MB" is the largest total resident set of the subprocess and its workers, sampled
every 20 ms (absolute, interpreters and imports included). The results are compared voxel
by voxel: the blockwise ids must equal the in-memory ids. Prints a table and writes JSON
(default ``bench/results/segment.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

VOXEL_SIZE = (8, 8, 8)
SCALE_VOXELS = 3.0  # tanh scale of the synthetic prediction, voxels
SCALE_NM = SCALE_VOXELS * VOXEL_SIZE[0]
DYNAMIC_NM = float(min(VOXEL_SIZE))  # the default minimum dynamic: one voxel


def make_prediction(size: int, fill: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """Packed balls (radius 5..12 voxels, covering ``fill`` of the volume; overlaps go to
    the earlier ball, so overlapping balls touch) -> tanh of the distance to their
    boundaries, with smooth noise of +-0.1 inside."""
    import edt
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    labels = np.zeros(shape, np.uint32)
    count = 0
    while (labels > 0).mean() < fill:
        r = rng.uniform(5, 12)
        c = rng.uniform(0, size, 3)
        box = tuple(slice(max(int(ci - r), 0), min(int(ci + r) + 2, size)) for ci in c)
        ball = sum((g - ci) ** 2 for g, ci in zip(np.ogrid[box], c, strict=True)) <= r * r
        count += 1
        region = labels[box]
        region[ball & (region == 0)] = count
    distance = edt.edt(labels, black_border=False)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    noise *= 0.1 / np.abs(noise).max()
    pred = np.where(labels > 0, np.tanh(distance / SCALE_VOXELS) + noise, 0)
    return np.clip(pred, 0, 0.999).astype(np.float32), count


def peak_mb() -> float:
    """Peak resident set of this process image, MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_rss_mb(root: int) -> float:
    """Resident set of ``root`` and all its descendants now, MB (0 without /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    from innerdist.segment import instances, segment_volume
    from innerdist.volumes import open_volume

    work = Path(args.work)
    dynamic = args.seeds == "dynamic"
    pred_path = str(work / "bench.zarr" / ("pred_dynamic" if dynamic else "pred"))
    extra = {"seed_dynamic": DYNAMIC_NM, "scale": SCALE_NM} if dynamic else {}
    baseline = peak_mb()
    start = time.perf_counter()
    if args.child == "memory":
        array = open_volume(pred_path)
        pred = array[array.roi][0]
        labels = instances(pred, foreground_level=0.05, seed_level=0.8, **extra)
        seconds = time.perf_counter() - start
        np.save(work / f"memory-{args.seeds}.npy", labels)
    else:
        segment_volume(pred_path, str(work / "bench.zarr" / f"seg{args.workers}{args.seeds}"),
                       block_shape=(args.block,) * 3, num_workers=args.workers,
                       overwrite=True, progress=False)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb() - baseline}))


def measure(script: str, work: Path, mode: str, block: int, workers: int, seeds: str,
            src: str | None) -> dict[str, Any]:
    import os

    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    return run_child(
        [sys.executable, script, "--child", mode, "--work", str(work), "--block", str(block),
         "--workers", str(workers), "--seeds", seeds], f"{mode} run", env=env)


def run_child(command: list[str], what: str, env: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """Run a benchmark child; its last stdout line (JSON) plus ``tree_peak_mb``, the peak
    resident set of the child and all its descendants sampled every 20 ms."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, env=env)
        tree_peak = 0.0
        while child.poll() is None:
            tree_peak = max(tree_peak, tree_rss_mb(child.pid))
            time.sleep(0.02)
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{stderr.read()}")
        row = json.loads(stdout.read().strip().splitlines()[-1])
    return {**row, "tree_peak_mb": tree_peak}


def is_bijection(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
            and bool(((pairs[0] == 0) == (pairs[1] == 0)).all()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="volume side, voxels")
    parser.add_argument("--block", type=int, default=64, help="block side, voxels")
    parser.add_argument("--quick", action="store_true", help="64^3 volume, 32^3 blocks")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--fill", type=float, nargs="+", default=[0.12, 0.25],
                        help="fractions of the volume covered by balls")
    parser.add_argument("--seeds", nargs="+", default=["level", "dynamic"],
                        choices=["level", "dynamic"], help="seed kinds to measure")
    parser.add_argument("--src", help="PYTHONPATH of the code measured (default: this one)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/segment.json"))
    parser.add_argument("--child", choices=["memory", "blockwise"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workers = args.workers[0]
        args.seeds = args.seeds[0]
        child(args)
        return
    if args.quick:
        args.size, args.block = 64, 32

    from funlib.geometry import Roi

    from innerdist.volumes import create_volume, mark_complete, open_volume

    script = str(Path(__file__).resolve())
    rows: list[dict[str, Any]] = []
    scenes: list[dict[str, Any]] = []
    for fill in args.fill:
        work = Path(tempfile.mkdtemp(prefix="innerdist-bench-segment-"))
        try:
            pred, balls = make_prediction(args.size, fill)
            roi = Roi((0, 0, 0), tuple(args.size * v for v in VOXEL_SIZE))
            array = create_volume(work / "bench.zarr" / "pred", roi=roi, voxel_size=VOXEL_SIZE,
                                  dtype=np.float32, num_channels=1,
                                  chunk_shape=(args.block,) * 3)
            array[roi] = pred[np.newaxis]
            mark_complete(array)
            attrs = {"innerdist_predictor": {"channels": ["x"], "scale_factor": SCALE_NM,
                                             "epsilon": 0.05, "threshold": 0.8}}
            array = create_volume(work / "bench.zarr" / "pred_dynamic", roi=roi,
                                  voxel_size=VOXEL_SIZE, dtype=np.float32, num_channels=1,
                                  chunk_shape=(args.block,) * 3, attrs=attrs)
            array[roi] = pred[np.newaxis]
            mark_complete(array)
            del pred
            objects = {}
            for seeds in args.seeds:
                rows.append({"fill": fill, "seeds": seeds, "mode": "in memory", "workers": 1,
                             **measure(script, work, "memory", args.block, 1, seeds, args.src)})
                reference = np.load(work / f"memory-{seeds}.npy")
                objects[seeds] = int(reference.max())
                for workers in args.workers:
                    row = {"fill": fill, "seeds": seeds, "mode": "blockwise", "workers": workers,
                           **measure(script, work, "blockwise", args.block, workers, seeds,
                                     args.src)}
                    out = open_volume(work / "bench.zarr" / f"seg{workers}{seeds}")
                    got = out[out.roi][0]
                    row["identical_ids"] = bool(np.array_equal(got, reference))
                    row["bijection"] = is_bijection(got, reference)
                    rows.append(row)
            scenes.append({"fill": fill, "balls": balls, "objects": objects})
        finally:
            shutil.rmtree(work, ignore_errors=True)

    mvox = args.size**3 / 1e6
    for row in rows:
        row["mvox_per_s"] = mvox / row["seconds"]
    print(f"volume {args.size}^3 float32, blocks {args.block}^3; "
          + ", ".join(f"fill {s['fill']}: {s['balls']} balls -> {s['objects']} objects"
                      for s in scenes))
    print(f"{'fill':>5} {'seeds':<8} {'mode':<10} {'workers':>7} {'seconds':>8} {'Mvox/s':>7} "
          f"{'peak MB':>8} {'tree MB':>8} {'equal':>6}")
    for row in rows:
        equal = "-" if "identical_ids" not in row else str(row["identical_ids"])
        print(f"{row['fill']:>5} {row['seeds']:<8} {row['mode']:<10} {row['workers']:>7} "
              f"{row['seconds']:>8.2f} "
              f"{row['mvox_per_s']:>7.2f} {row['peak_mb']:>8.0f} "
              f"{row['tree_peak_mb']:>8.0f} {equal:>6}")
    result = {
        "volume_shape": [args.size] * 3,
        "block_shape": [args.block] * 3,
        "scenes": scenes,
        "machine": platform.platform(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
