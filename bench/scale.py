"""Scaling of blockwise predict + segment over workers started through ``--worker-command``.

    .venv/bin/python bench/scale.py                       # 512^3, 1, 2 and 4 workers
    .venv/bin/python bench/scale.py --quick --workers 1 2 # 96^3 (a shared 2-core machine)

The workers are started locally through the template ``{command}`` (what ``srun {command}``
does on a cluster, minus the queue), so every worker is a fresh ``python -m innerdist
worker`` that rebuilds its block function from the job file. For each worker count: the
wall time of ``predict`` and of ``segment`` (all its passes), blocks/s, and the overhead
against the same blocks run in one process (``num_workers=1``: no daisy, no workers) with
perfect scaling, ``t_N / (t_1 / N) - 1``. Worker start-up is measured on its own: a
one-block job through the template minus the same block in-process. Last, the 2-D case of
the issue: a 2048^2 image (``--quick``: 512^2) predicted with the default blocks against
one block covering the image. Prints a table; writes JSON (``bench/results/scale.json``).
Ratios are comparable within one run, not across machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Roi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import NORMALIZATION, VOXEL_SIZE, make_unet  # noqa: E402

from innerdist.architecture import UNet  # noqa: E402
from innerdist.checkpoint import random_checkpoint, save_checkpoint  # noqa: E402
from innerdist.inner_distance import InnerDistancePredictor  # noqa: E402
from innerdist.predict import predict_volume  # noqa: E402
from innerdist.segment import segment_volume  # noqa: E402
from innerdist.volumes import create_volume, mark_complete  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="3-D volume side, voxels")
    parser.add_argument("--block", type=int, default=128, help="block side, voxels")
    parser.add_argument("--quick", action="store_true", help="96^3 volume, 48^3 blocks")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", type=Path, default=Path("bench/results/scale.json"))
    args = parser.parse_args()
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
                     "seconds": t_predict, "blocks_per_s": blocks / t_predict, "overhead": 0.0})
        rows.append({"case": f"segment {args.size}^3", "workers": "in-process",
                     "seconds": t_segment, "blocks_per_s": blocks / t_segment, "overhead": 0.0})
        for n in args.workers:
            t = predict(str(work / f"d.zarr/pred{n}"), n, TEMPLATE)
            rows.append({"case": f"predict {args.size}^3", "workers": n, "seconds": t,
                         "blocks_per_s": blocks / t, "overhead": t / (t_predict / n) - 1})
            t = segment(pred, str(work / f"d.zarr/seg{n}"), n, TEMPLATE)
            rows.append({"case": f"segment {args.size}^3", "workers": n, "seconds": t,
                         "blocks_per_s": blocks / t, "overhead": t / (t_segment / n) - 1})

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
                         "seconds": t, "blocks_per_s": None, "overhead": None})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("| case | workers | s | blocks/s | overhead vs 1 process / N |")
    print("|---|---|---|---|---|")
    for r in rows:
        bps = "" if r["blocks_per_s"] is None else f"{r['blocks_per_s']:.2f}"
        over = "" if r["overhead"] is None else f"{r['overhead']:+.0%}"
        print(f"| {r['case']} | {r['workers']} | {r['seconds']:.1f} | {bps} | {over} |")
    print(f"worker start-up (one block through {TEMPLATE!r} minus in-process): {startup:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": platform.node(), "size": args.size, "block": args.block,
        "worker_startup_s": startup, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
