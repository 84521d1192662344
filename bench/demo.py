"""The end-to-end demo as a benchmark: test-set quality for several data seeds, and time.

Runs :func:`innerdist.demo.run_demo` (data generation, training for the demo's fixed
number of iterations, blockwise prediction and segmentation of the held-out test volume,
evaluation) once per data seed, each in a fresh directory, and prints one row per seed:
instance F1 / precision / recall at IoU 0.5, panoptic quality and foreground Dice on the
test volume, the iterations trained, the wall time and the CPU time of the run. Quality
does not depend on the machine's load (fixed iterations, deterministic training); wall
time does, so the load average is printed too and the CPU time is the number to compare.
The README quotes the last table; the quality floor of the demo lives here.

    .venv/bin/python bench/demo.py                          # default demo, seeds 0 1 2
    .venv/bin/python bench/demo.py --seeds 0 --iterations 300
    .venv/bin/python bench/demo.py --set training.optimizer.lr=0.003 \\
        --set training.schedule.name=cosine                 # an experiment
    .venv/bin/python bench/demo.py --quick                  # tiny volumes, a smoke test

``--set KEY=VALUE`` overrides one entry of the demo's training config (VALUE is YAML).
Writes ``bench/results/demo.json`` (``--out``); the demo directories are kept under
``--keep DIR`` (one ``seed<N>`` folder each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

QUICK: dict[str, Any] = dict(
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
COLUMNS = (
    ("instances.f1_score@0.5", "F1@0.5"),
    ("instances.precision@0.5", "precision"),
    ("instances.recall@0.5", "recall"),
    ("instances.panoptic_quality", "PQ"),
    ("binary.dice", "Dice"),
)


def overrides_from(settings: list[str]) -> dict[str, Any]:
    """``["training.optimizer.lr=0.003"]`` -> ``{"training": {"optimizer": {"lr": 0.003}}}``."""
    result: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {setting!r}")
        *parents, last = key.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return result


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (all threads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_one(seed: int, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    from innerdist.demo import run_demo

    kwargs: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.minutes is not None:
        kwargs["minutes"] = args.minutes
    elif args.iterations is not None or args.quick:
        kwargs["iterations"] = args.iterations or 2
    if args.keep:
        directory = Path(args.keep) / f"seed{seed}"
        shutil.rmtree(directory, ignore_errors=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix=f"innerdist-demo-{seed}-"))
    load_before = os.getloadavg()[0]
    cpu_before, wall_before = cpu_seconds(), time.perf_counter()
    try:
        result = run_demo(
            directory, seed=seed, overrides=overrides or None, progress=False, **kwargs
        )
        wall, cpu = time.perf_counter() - wall_before, cpu_seconds() - cpu_before
        inst = result.scores["channels"][0]["instances"]
        return {
            "seed": seed,
            "iterations": result.run.iteration,
            "test_scores": result.headline(),
            "objects": {
                "predicted": inst["num_predicted"], "ground_truth": inst["num_ground_truth"]
            },
            "best": {
                c: {"iteration": b.iteration, "score": b.score,
                    "foreground_level": b.foreground_level, "seed_level": b.seed_level}
                for c, b in result.run.best.items()
            },
            "seconds": result.seconds,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "training_iterations_per_second": result.run.iterations_per_second,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


def table(runs: list[dict[str, Any]]) -> str:
    head = ["seed", "iterations", *(label for _, label in COLUMNS), "wall min", "CPU min", "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        s = r["test_scores"]
        lines.append("| " + " | ".join([
            str(r["seed"]), str(r["iterations"]), *(f"{s[k]:.3f}" for k, _ in COLUMNS),
            f"{r['wall_s'] / 60:.1f}", f"{r['cpu_s'] / 60:.1f}",
            " -> ".join(f"{v:.1f}" for v in r["load_average"]),
        ]) + " |")
    if len(runs) > 1:
        lines.append("| mean | | " + " | ".join(
            f"{statistics.mean(r['test_scores'][k] for r in runs):.3f}" for k, _ in COLUMNS
        ) + f" | {statistics.mean(r['wall_s'] for r in runs) / 60:.1f} | "
            f"{statistics.mean(r['cpu_s'] for r in runs) / 60:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=None,
                        help="default: the demo's fixed number (DEMO_ITERATIONS)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="calibrate the iterations to a time budget instead")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE", help="override the demo config (VALUE is YAML)")
    parser.add_argument("--quick", action="store_true", help="tiny volumes and network")
    parser.add_argument("--out", default="bench/results/demo.json")
    parser.add_argument("--keep", default=None, help="run the demos in DIR/seed<N>")
    args = parser.parse_args()
    if args.iterations is not None and args.minutes is not None:
        parser.error("give --iterations or --minutes, not both")
    overrides = overrides_from(args.settings)

    import torch

    from innerdist.demo import DEMO_ITERATIONS

    runs = []
    for seed in args.seeds:
        runs.append(run_one(seed, args, overrides))
        print(table(runs[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(runs))
    report = {
        "benchmark": "demo",
        "quick": args.quick,
        "iterations_setting": args.iterations,
        "demo_iterations": DEMO_ITERATIONS,
        "minutes_budget": args.minutes,
        "overrides": overrides,
        "runs": runs,
        "mean_test_scores": {
            k: statistics.mean(r["test_scores"][k] for r in runs) for k in runs[0]["test_scores"]
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
