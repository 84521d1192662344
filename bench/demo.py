"""The end-to-end demo as a benchmark: test-set quality and wall time, as JSON.

Runs :func:`innerdist.demo.run_demo` (data generation, calibrated training, blockwise
prediction and segmentation of the held-out test volume, evaluation) in a fresh directory
and records the headline scores (instance F1 / precision / recall at IoU 0.5, mean matched
IoU, panoptic quality, adapted Rand error, VOI, Dice), the number of iterations trained
and the time of each stage. The README quotes this file.

    .venv/bin/python bench/demo.py                      # the default demo (5 min budget)
    .venv/bin/python bench/demo.py --iterations 600     # a fixed amount of training
    .venv/bin/python bench/demo.py --quick              # tiny volumes, a smoke test

Writes ``bench/results/demo.json`` (``--out``); the demo directory is kept with ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--iterations", type=int, default=None, help="skip the calibration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny volumes and network")
    parser.add_argument("--out", default="bench/results/demo.json")
    parser.add_argument("--keep", default=None, help="run the demo in this directory")
    args = parser.parse_args()

    import torch

    from innerdist.demo import run_demo

    kwargs: dict[str, object] = {}
    if args.quick:
        kwargs = dict(
            iterations=args.iterations or 2,
            shapes={"train": (16, 64, 64), "validate": (12, 48, 48), "test": (12, 48, 48)},
            model={
                "input_shape": [12, 44, 44],
                "num_fmaps": 4,
                "batch_norm": True,
                "downsample_factors": [[1, 2, 2]],
                "kernel_size_down": [[[1, 3, 3], [1, 3, 3]], [[3, 3, 3], [3, 3, 3]]],
                "kernel_size_up": [[[1, 3, 3], [1, 3, 3]]],
            },
            block_shape=(8, 24, 24),
        )
    elif args.iterations is not None:
        kwargs = {"iterations": args.iterations}

    directory = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="innerdist-demo-"))
    load_before = list(os.getloadavg())
    try:
        result = run_demo(
            directory, minutes=args.minutes, seed=args.seed, progress=False, **kwargs  # type: ignore[arg-type]
        )
        print(result.summary())
        inst = result.scores["channels"][0]["instances"]
        report = {
            "benchmark": "demo",
            "quick": args.quick,
            "minutes_budget": args.minutes,
            "seed": args.seed,
            "iterations": result.run.iteration,
            "best_iteration": {c: b.iteration for c, b in result.run.best.items()},
            "best_levels": {
                c: {"foreground_level": b.foreground_level, "seed_level": b.seed_level}
                for c, b in result.run.best.items()
            },
            "validation_scores": {c: b.score for c, b in result.run.best.items()},
            "test_scores": result.headline(),
            "objects": {
                "predicted": inst["num_predicted"],
                "ground_truth": inst["num_ground_truth"],
            },
            "seconds": result.seconds,
            "training_iterations_per_second": result.run.iterations_per_second,
            "machine": {
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cuda": torch.cuda.is_available(),
                "load_average_before": load_before,
                "load_average_after": list(os.getloadavg()),
            },
        }
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
