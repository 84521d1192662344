"""The GPU check (run through bench/gpu_check.sh; see there). A file, not a heredoc:
segment's grow step uses a spawn process pool, whose workers import the main module."""

import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
import zarr

from innerdist.predict import _device_tiling, _Runner, _Tiling, predict_volume
from innerdist.segment import segment_volume
from innerdist.synthetic import make_demo_dataset, make_em_volume, write_volume
from innerdist.train import train
from innerdist.volumes import OUTPUT_LEVEL


def main() -> None:
    smoke = "--smoke" in sys.argv[1:]
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible (run with --smoke for a CPU rehearsal)",
              file=sys.stderr)
        sys.exit(2)
    gpu = "cpu" if smoke else "cuda"
    side = 48 if smoke else 256
    iterations = 4 if smoke else 50
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    out_json = Path(os.environ.get("GPU_CHECK_OUT", "bench/results/gpu_check.json"))
    rows: list[dict] = []
    facts: dict = {"device": torch.cuda.get_device_name(0) if not smoke else "cpu (smoke)",
                   "gpus_visible": torch.cuda.device_count(), "torch": torch.__version__,
                   "host": platform.node(), "volume": [side] * 3}


    def timed(label, fn):
        if gpu == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if gpu == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        print(f"  {label}: {seconds:.1f} s", flush=True)
        return result, seconds


    # --- 1. train with AMP, stop, resume ---
    print("1. training", flush=True)
    make_demo_dataset(work / "data", dims=3)
    config = yaml.safe_load(Path("examples/em_3d.yaml").read_text())
    config["data"] = {
        "train": [{"raw": str(work / "data/train.zarr/raw"),
                   "labels": [str(work / "data/train.zarr/labels")]}],
        "validate": [{"raw": str(work / "data/validate.zarr/raw"),
                      "labels": [str(work / "data/validate.zarr/labels")]}],
    }
    config["training"].update(iterations=iterations // 2, device=gpu, amp=True, max_grad_norm=1.0,
                              validation_interval=iterations, checkpoint_interval=iterations // 2,
                              snapshot_interval=0, num_workers=2 if not smoke else 0)
    if smoke:
        config["model"].update(num_fmaps=2, eval_shape_increase=[0, 0, 0])
    config_path = work / "em_3d.yaml"
    config_path.write_text(yaml.safe_dump(config))
    first, t_first = timed(f"{iterations // 2} iterations", lambda: train(config_path,
                                                                            progress=False))
    config["training"]["iterations"] = iterations
    config_path.write_text(yaml.safe_dump(config))
    second, t_second = timed(f"resumed to {iterations}", lambda: train(config_path, progress=False))
    assert second.resumed_from == iterations // 2 and second.iteration == iterations, second
    checkpoint = second.last_checkpoint
    facts["train"] = {"iterations": iterations, "resumed_from": second.resumed_from,
                      "final_loss": second.final_loss,
                      "iterations_per_second": second.iterations_per_second}

    # --- 2. predict 256^3 on CUDA (fp32, fp16, bf16) and on the CPU ---
    print("2. prediction", flush=True)
    volume = make_em_volume((side, side, side), (40, 8, 8), seed=7)
    write_volume(volume, work / "big.zarr")
    raw = str(work / "big.zarr/raw")
    voxels = side**3
    workers = max(1, torch.cuda.device_count()) if gpu == "cuda" else 1
    predictions = {}
    for name, device, precision in [
        ("cuda fp32", gpu, "fp32"), ("cuda fp16", gpu, "fp16"), ("cuda bf16", gpu, "bf16"),
        ("cpu fp32", "cpu", "fp32"),
    ]:
        if smoke and precision != "fp32":
            continue
        out = str(work / f"pred.zarr/{name.replace(' ', '_')}")
        n = workers if device == "cuda" else 1
        def run(out=out, device=device, precision=precision, n=n):
            return predict_volume(checkpoint, raw, out, device=device, precision=precision,
                                  num_workers=n, progress=False)

        _, seconds = timed(f"predict {name} ({n} worker(s))", run)
        predictions[name] = zarr.open_array(f"{out}/{OUTPUT_LEVEL}", mode="r")[:]
        rows.append({"what": f"predict {name}", "device": device, "workers": n,
                     "seconds": seconds, "voxels_per_s": voxels / seconds})
    reference = predictions["cuda fp32"]
    for name, values in predictions.items():
        facts[f"max_abs_diff {name} vs cuda fp32"] = float(np.abs(values - reference).max())

    # --- the network alone on the same device ---
    from innerdist.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    forward_cases = [(gpu, "fp32"), ("cpu", "fp32")] if smoke else [
        ("cuda", "fp32"), ("cuda", "fp16"), ("cuda", "bf16"), ("cpu", "fp32")]
    tiles = {"eval": None}
    if gpu == "cuda":  # the tile predict plans for this GPU (predict._device_tiling)
        tiles["planned"] = _device_tiling(
            ckpt.build_model(), _Tiling(ckpt.architecture), (side,) * 3, batch_size=1,
            device=torch.device("cuda"), precision="fp32").max_tile
        facts["planned_tile"] = list(tiles["planned"])
    for (device, precision), (tile_name, tile_shape) in itertools.product(
            dict.fromkeys(forward_cases), tiles.items()):
        if device == "cpu" and tile_name != "eval":
            continue
        runner = _Runner(ckpt.build_model().to(device).eval(), torch.device(device),
                         precision=precision, tile_shape=tile_shape)
        tile = runner.tiling.max_tile
        x = torch.rand((1, 1, *runner.tiling.input_shape(tile)), device=device)
        autocast = torch.autocast(device, dtype=torch.float16 if precision == "fp16"
                                  else torch.bfloat16, enabled=precision != "fp32")
        with torch.inference_mode(), autocast:
            runner.model(x)  # warm-up (cuDNN autotuning)
            repeats = 3 if device == "cpu" or smoke else 20

            def forwards(runner=runner, x=x, repeats=repeats):
                for _ in range(repeats):
                    runner.model(x)

            _, seconds = timed(f"forward {device} {precision} x{repeats}", forwards)
        rows.append({"what": f"forward {device} {precision} {tile_name} tile {tile}",
                     "device": device, "workers": 1,
                     "seconds": seconds, "voxels_per_s": repeats * int(np.prod(tile)) / seconds})

    # --- 3. segment the CUDA prediction ---
    print("3. segmentation", flush=True)
    seg_out = str(work / "seg.zarr/instances")
    _, seconds = timed("segment", lambda: segment_volume(
        str(work / "pred.zarr/cuda_fp32"), seg_out, num_workers=2, progress=False))
    objects = len(np.unique(zarr.open_array(f"{seg_out}/{OUTPUT_LEVEL}", mode="r")[:])) - 1
    rows.append({"what": "segment", "device": "cpu", "workers": 2, "seconds": seconds,
                 "voxels_per_s": voxels / seconds})
    facts["segment_objects"] = objects

    # --- 4. the table ---
    print()
    print(f"{facts['device']}, {facts['gpus_visible']} GPU(s) visible, volume {side}^3")
    print(f"| {'what':<44} | {'device':<6} | workers | {'s':>7} | {'Mvoxel/s':>9} |")
    print(f"|{'-' * 46}|{'-' * 8}|---------|{'-' * 9}|{'-' * 11}|")
    for r in rows:
        print(f"| {r['what']:<44} | {r['device']:<6} | {r['workers']:>7} | {r['seconds']:>7.2f} | "
              f"{r['voxels_per_s'] / 1e6:>9.2f} |")
    print()
    for key, value in facts.items():
        if key.startswith("max_abs_diff"):
            print(f"{key}: {value:.3g}")
    print(f"train: {facts['train']}")
    print(f"segment: {objects} objects")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"facts": facts, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out_json}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
