"""Scaling of blockwise predict + segment over workers started through ``--worker-command``.

    .venv/bin/python bench/scale.py                       # 512^3, 1, 2 and 4 workers
    .venv/bin/python bench/scale.py --quick --workers 1 2 # 96^3 (a shared 2-core machine)

The workers are started locally through the template ``{command}`` (what ``srun {command}``
does on a cluster, minus the queue), so every worker is a fresh ``python -m innerdist
worker`` that rebuilds its block function from the job file. For each worker count: the
wall time of ``predict`` and of ``segment`` (all its passes), blocks/s, the time against
the same blocks run in one process (``num_workers=1``: no daisy, no workers), and the
overhead against the best the workers could do on this machine, ``t_N / (t_1 / s) - 1``
with the speed-up ``s`` they could have: ``min(N, cores)`` for segment (single-threaded
numpy per process), 1 for predict (the in-process pass already uses every core through
torch threads; local workers share those cores). Worker start-up is measured on its own: a
one-block job through the template minus the same block in-process. Last, the 2-D case of
the issue: a 2048^2 image (``--quick``: 512^2) predicted with the default blocks against
one block covering the image. Prints a table; writes JSON (``bench/results/scale.json``).
Ratios are comparable within one run, not across machines.

``--planner`` runs the planner's cases instead (``bench/results/scale-planner.json``):
``predict`` with planned blocks and with the old one-tile blocks against one in-memory
pass with its file I/O (:func:`in_memory_with_io`; the network-only
:func:`predict_array` is a row too), on the 2-D 2048^2 image and a 3-D volume
(``--quick``: 1024^2 and 128^3); ``segment`` of both predictions with planned blocks on 1
worker, 2 asked for (the planner's choice), 2 forced, and the old fixed blocks; and each
dry-run estimate next to the run it estimates. Every timing is the best of ``--repeats``,
interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Roi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import NORMALIZATION, VOXEL_SIZE, make_unet  # noqa: E402

from innerdist.architecture import UNet  # noqa: E402
from innerdist.checkpoint import random_checkpoint, save_checkpoint  # noqa: E402
from innerdist.inner_distance import InnerDistancePredictor  # noqa: E402
from innerdist.predict import predict_volume  # noqa: E402
from innerdist.segment import segment_volume  # noqa: E402
from innerdist.volumes import (  # noqa: E402
    create_volume,
    mark_complete,
    open_volume,
    zarr_array_path,
)

TEMPLATE = "{command}"


def write_raw(path: Path, data: np.ndarray, voxel: tuple[int, ...]) -> str:
    roi = Roi((0,) * data.ndim, tuple(s * v for s, v in zip(data.shape, voxel, strict=True)))
    array = create_volume(path, roi=roi, voxel_size=voxel, dtype=data.dtype,
                          chunk_shape=(64,) * data.ndim)
    array[roi] = data
    mark_complete(array)
    return str(path)


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (workers)."""
    import resource

    return sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF),
                  resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def timed_both(fn: Any) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``; CPU time is what other jobs on a shared machine
    disturb least."""
    cpu, start = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def in_memory_with_io(net: Any, raw: str, out: str, chunks: tuple[int, ...]) -> None:
    """What a user's script does without blocks: the raw read whole from its file,
    normalised, one :func:`predict_array` pass, the result written whole to a zarr array
    with ``chunks`` (those of the blockwise output). The reference of the 5 % goal."""
    from innerdist.predict import normalize_raw, predict_array

    data = np.asarray(zarr.open_array(zarr_array_path(open_volume(raw)), mode="r")[...])
    prediction = predict_array(net, normalize_raw(data, NORMALIZATION), device="cpu")
    array = zarr.create_array(out, shape=prediction.shape, chunks=chunks,
                              dtype=prediction.dtype, overwrite=True)
    array[...] = prediction


def _seconds(text: str) -> float:
    """The estimated wall time of a ``--dry-run`` plan, seconds."""
    line = next(x for x in text.splitlines() if "estimated wall time" in x)
    words = line.split("estimated wall time", 1)[1].split("with")[0].split()
    units = {"s": 1, "min": 60, "h": 3600}
    return sum(float(v) * units[u] for v, u in zip(words[::2], words[1::2], strict=True))


def planner(args: argparse.Namespace) -> None:

    from innerdist.plan import STARTUP_ENV
    from innerdist.predict import _Tiling, normalize_raw, predict_array

    side_2d, side_3d = (1024, 128) if args.quick else (2048, 192)
    work = Path(tempfile.mkdtemp(prefix="innerdist-scale-"))
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    try:
        unet_2d = UNet(input_shape=(92, 92), num_fmaps=12, fmap_inc_factor=2,
                       downsample_factors=[(2, 2), (2, 2)], eval_shape_increase=(68, 68))
        cases = [
            (f"2-D {side_2d}^2", unet_2d, (8, 8),
             rng.integers(0, 256, (side_2d,) * 2, dtype=np.uint8)),
            (f"3-D {side_3d}^3", make_unet(64), VOXEL_SIZE,
             rng.integers(0, 256, (side_3d,) * 3, dtype=np.uint8)),
        ]
        preds: dict[str, str] = {}
        for name, unet, voxel, data in cases:
            key = name.split()[0]
            raw = write_raw(work / f"{key}.zarr/raw", data, voxel)
            ckpt = random_checkpoint(unet, InnerDistancePredictor(["mito"], 40.0), voxel,
                                     NORMALIZATION, seed=0)
            model = str(save_checkpoint(work / f"{key}.pt", ckpt))
            net = ckpt.build_model()
            norm = normalize_raw(data, NORMALIZATION)
            one_tile = _Tiling(unet).max_tile
            times: dict[str, list[float]] = {"memory": [], "memory+io": [], "planned": [],
                                             "one-tile": []}
            cpu: dict[str, list[float]] = {k: [] for k in times}

            def record(label: str, both: tuple[float, float], times: dict[str, list[float]]
                       = times, cpu: dict[str, list[float]] = cpu) -> None:
                times[label].append(both[0])
                cpu[label].append(both[1])

            for r in range(args.repeats):
                for label, block in (("planned", None), ("one-tile", one_tile)):
                    out = str(work / f"{key}.zarr/{label}{r}")
                    record(label, timed_both(
                        lambda out=out, block=block, model=model, raw=raw: predict_volume(
                        model, raw, out, block_shape=block, device="cpu", overwrite=True,
                        progress=False, pyramid=False)))
                    if block is None:
                        preds[key] = out
                record("memory", timed_both(
                    lambda net=net, norm=norm: predict_array(net, norm, device="cpu")))
                chunks = zarr.open_array(zarr_array_path(open_volume(preds[key])),
                                         mode="r").chunks
                record("memory+io", timed_both(
                    lambda net=net, raw=raw, chunks=chunks, r=r, key=key: in_memory_with_io(
                        net, raw, str(work / f"{key}.zarr/memory{r}"), chunks)))
            estimate = _seconds(predict_volume(model, raw, str(work / f"{key}.zarr/dry"),
                                               device="cpu", dry_run=True, progress=False))
            best = {k: min(v) for k, v in times.items()}
            best_cpu = {k: min(v) for k, v in cpu.items()}
            planned_block = open_volume(preds[key]).attrs["innerdist_job"]["block_shape"]
            for label in ("memory", "memory+io", "planned", "one-tile"):
                rows.append({
                    "case": f"predict {name}", "run": {
                        "memory": "in memory, network only (predict_array)",
                        "memory+io": "in memory with the file: read, normalise, "
                                     "predict_array, write (reference)",
                        "planned": f"blockwise, planned blocks {tuple(planned_block)}",
                        "one-tile": f"blockwise, one-tile blocks {one_tile}",
                    }[label],
                    "seconds": best[label], "all_seconds": times[label],
                    "ratio": best[label] / best["memory+io"],
                    "cpu_seconds": best_cpu[label], "all_cpu_seconds": cpu[label],
                    "cpu_ratio": best_cpu[label] / best_cpu["memory+io"],
                })
            rows.append({"case": f"predict {name}", "run": "dry-run estimate (planned)",
                         "seconds": estimate, "ratio": estimate / best["planned"]})

        # segment both predictions (pyramid included, as by default): planned blocks with
        # 1 worker, 2 as planned, 2 forced (start-up "free"), the old fixed blocks; and the
        # dry-run estimates of the planned 1- and 2-worker runs.
        for key, side, old in (("2-D", side_2d, (512, 512)), ("3-D", side_3d, (64, 64, 64))):
            pred = preds[key]
            runs = (("1 worker, planned blocks", 1, None, None),
                    ("2 workers asked for (planned)", 2, None, None),
                    ("2 workers forced", 2, "0", None),
                    (f"1 worker, old fixed blocks {old}", 1, None, old))
            seg: dict[str, list[float]] = {label: [] for label, *_ in runs}
            for r in range(args.repeats):
                for i, (label, workers, startup, block) in enumerate(runs):
                    if startup is None:
                        os.environ.pop(STARTUP_ENV, None)
                    else:
                        os.environ[STARTUP_ENV] = startup
                    seg[label].append(timed(
                        lambda w=workers, i=i, r=r, b=block, pred=pred, key=key:
                        segment_volume(pred, str(work / f"{key}.zarr/seg{i}-{r}"),
                                       num_workers=w, block_shape=b, overwrite=True,
                                       progress=False)))
            os.environ.pop(STARTUP_ENV, None)
            best = {k: min(v) for k, v in seg.items()}
            reference = best["1 worker, planned blocks"]
            case = f"segment {key} {side}^{key[0]}"
            for label in seg:
                rows.append({"case": case, "run": label, "seconds": best[label],
                             "all_seconds": seg[label], "ratio": best[label] / reference})
            for workers, label in ((1, "1 worker, planned blocks"),
                                   (2, "2 workers asked for (planned)")):
                estimate = _seconds(segment_volume(
                    pred, str(work / f"{key}.zarr/segdry"), num_workers=workers,
                    dry_run=True, progress=False))
                rows.append({"case": case, "run": f"dry-run estimate ({workers} asked for)",
                             "seconds": estimate, "ratio": estimate / best[label]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| case | run | wall s (best) | ratio | CPU s (best) | CPU ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cpu_s = f"{r['cpu_seconds']:.2f}" if "cpu_seconds" in r else ""
        cpu_r = f"{r['cpu_ratio']:.3f}" if "cpu_ratio" in r else ""
        print(f"| {r['case']} | {r['run']} | {r['seconds']:.2f} | {r['ratio']:.3f} | "
              f"{cpu_s} | {cpu_r} |")
    print("ratio: predict rows against the in-memory pass with its file I/O, segment rows "
          "against 1 worker with planned blocks, estimates against the run they estimate")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": platform.node(), "cores": os.cpu_count(), "repeats": args.repeats,
        "load_average": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="3-D volume side, voxels")
    parser.add_argument("--block", type=int, default=128, help="block side, voxels")
    parser.add_argument("--quick", action="store_true", help="96^3 volume, 48^3 blocks")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--planner", action="store_true", help="the planner's cases")
    parser.add_argument("--repeats", type=int, default=2, help="--planner: runs per timing")
    args = parser.parse_args()
    if args.planner:
        args.json = args.json or Path("bench/results/scale-planner.json")
        planner(args)
        return
    args.json = args.json or Path("bench/results/scale.json")
    side_2d = 2048
    if args.quick:
        args.size, args.block, side_2d = 96, 48, 512
    work = Path(tempfile.mkdtemp(prefix="innerdist-scale-"))
    rows: list[dict[str, Any]] = []
    try:
        rng = np.random.default_rng(0)
        raw = write_raw(work / "d.zarr/raw",
                        rng.integers(0, 256, (args.size,) * 3, dtype=np.uint8), VOXEL_SIZE)
        ckpt = random_checkpoint(make_unet(args.block), InnerDistancePredictor(["mito"], 40.0),
                                 VOXEL_SIZE, NORMALIZATION, seed=0)
        model = str(save_checkpoint(work / "model.pt", ckpt))
        block = (args.block,) * 3
        blocks = (args.size // args.block) ** 3

        def predict(out: str, workers: int, template: str | None, **kw: Any) -> float:
            return timed(lambda: predict_volume(
                model, raw, out, num_workers=workers, block_shape=kw.get("block", block),
                device="cpu", overwrite=True, progress=False, worker_command=template,
                roi=kw.get("roi")))

        def segment(pred: str, out: str, workers: int, template: str | None) -> float:
            return timed(lambda: segment_volume(
                pred, out, block_shape=block, num_workers=workers, overwrite=True,
                progress=False, worker_command=template))

        pred = str(work / "d.zarr/pred")
        t_predict = predict(pred, 1, None)
        t_segment = segment(pred, str(work / "d.zarr/seg"), 1, None)
        rows.append({"case": f"predict {args.size}^3", "workers": "in-process",
                     "seconds": t_predict, "blocks_per_s": blocks / t_predict, "ratio": 1.0,
                     "overhead": 0.0})
        rows.append({"case": f"segment {args.size}^3", "workers": "in-process",
                     "seconds": t_segment, "blocks_per_s": blocks / t_segment, "ratio": 1.0,
                     "overhead": 0.0})
        cores = os.cpu_count() or 1
        for n in args.workers:
            t = predict(str(work / f"d.zarr/pred{n}"), n, TEMPLATE)
            rows.append({"case": f"predict {args.size}^3", "workers": n, "seconds": t,
                         "blocks_per_s": blocks / t, "ratio": t / t_predict,
                         "overhead": t / t_predict - 1})
            t = segment(pred, str(work / f"d.zarr/seg{n}"), n, TEMPLATE)
            rows.append({"case": f"segment {args.size}^3", "workers": n, "seconds": t,
                         "blocks_per_s": blocks / t, "ratio": t / t_segment,
                         "overhead": t / (t_segment / min(n, cores)) - 1})

        # Worker start-up: one block through the template against the block in-process.
        one = Roi((0, 0, 0), tuple(b * v for b, v in zip(block, VOXEL_SIZE, strict=True)))
        t_local = predict(str(work / "d.zarr/one_local"), 1, None, roi=one)
        t_worker = predict(str(work / "d.zarr/one_worker"), 1, TEMPLATE, roi=one)
        startup = t_worker - t_local

        # 2-D: default blocks against the whole image as one block.
        raw_2d = write_raw(work / "d.zarr/raw2d",
                           rng.integers(0, 256, (side_2d, side_2d), dtype=np.uint8), (8, 8))
        unet_2d = UNet(input_shape=(92, 92), num_fmaps=12, fmap_inc_factor=2,
                       downsample_factors=[(2, 2), (2, 2)], eval_shape_increase=(68, 68))
        ckpt_2d = random_checkpoint(unet_2d, InnerDistancePredictor(["mito"], 40.0), (8, 8),
                                    NORMALIZATION, seed=0)
        model_2d = str(save_checkpoint(work / "model2d.pt", ckpt_2d))
        for label, shape in (("default blocks", None), ("one block", (side_2d, side_2d))):
            t = timed(lambda shape=shape: predict_volume(
                model_2d, raw_2d, str(work / f"d.zarr/p2d{shape is None}"), block_shape=shape,
                device="cpu", overwrite=True, progress=False))
            rows.append({"case": f"predict 2-D {side_2d}^2, {label}", "workers": 1,
                         "seconds": t, "blocks_per_s": None, "ratio": None, "overhead": None})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{os.cpu_count()} cores")
    print("| case | workers | s | blocks/s | t / in-process | overhead vs the best on these "
          "cores |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        bps = "" if r["blocks_per_s"] is None else f"{r['blocks_per_s']:.2f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        over = "" if r["overhead"] is None else f"{r['overhead']:+.0%}"
        print(f"| {r['case']} | {r['workers']} | {r['seconds']:.1f} | {bps} | {ratio} | "
              f"{over} |")
    print(f"worker start-up (one block through {TEMPLATE!r} minus in-process): {startup:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": platform.node(), "cores": os.cpu_count(), "size": args.size,
        "block": args.block,
        "worker_startup_s": startup, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
