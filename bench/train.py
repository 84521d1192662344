"""Training throughput: iterations/s and how long the step waits for data, per loader setup.

Trains the demo's 3-D U-Net (``innerdist.demo.DEMO_MODEL``, batch 1, the demo's
augmentation) on a generated EM-like volume with 0, 1 and 2 data-loader workers and
reports, for each, the steady-state iterations per second and the fraction of the step
time spent waiting for the next batch (``data_wait_fraction`` in ``stats.csv``). The first
iterations (worker start-up, lazy initialisation) are left out of the steady state.

    .venv/bin/python bench/train.py            # 40 iterations per setup
    .venv/bin/python bench/train.py --quick    # a smaller volume and 12 iterations

Writes ``bench/results/train.json`` (``--out``). The goal: under 10% waiting with workers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml


def steady_state(stats_csv: Path, skip: int) -> dict[str, float]:
    with stats_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))[skip:]
    step = sum(float(r["step_time_s"]) for r in rows)
    wait = sum(float(r["data_wait_s"]) for r in rows)
    return {
        "iterations_timed": len(rows),
        "iterations_per_second": len(rows) / step,
        "seconds_per_iteration": step / len(rows),
        "data_wait_fraction": wait / step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small volume, few iterations")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/results/train.json")
    args = parser.parse_args()

    from innerdist.demo import demo_config
    from innerdist.synthetic import DEMO_SHAPES, make_em_volume, write_volume
    from innerdist.train import train

    iterations = args.iterations or (12 if args.quick else 40)
    skip = max(2, iterations // 5)
    shape = (24, 128, 128) if args.quick else DEMO_SHAPES[3]["train"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_volume(make_em_volume(shape, seed=1), root / "train.zarr")
        write_volume(make_em_volume((16, 64, 64), seed=2), root / "validate.zarr")
        data = {"train": root / "train.zarr", "validate": root / "validate.zarr"}
        for workers in args.workers:
            config = demo_config(data, iterations=iterations)
            config["data"]["validate"] = []
            config["training"].update(
                num_workers=workers, checkpoint_interval=iterations, snapshot_interval=0
            )
            path = root / f"workers{workers}.yaml"
            path.write_text(yaml.safe_dump(config))
            began = time.perf_counter()
            run = train(path, root / f"run{workers}", progress=False)
            wall = time.perf_counter() - began
            result = {
                "workers": workers,
                "wall_s": round(wall, 2),
                **steady_state(run.run_dir / "stats.csv", skip),
                "data_wait_fraction_all": run.data_wait_fraction,
            }
            results.append(result)
            print(
                f"workers {workers}: {result['iterations_per_second']:.3f} it/s, "
                f"{100 * result['data_wait_fraction']:.1f}% waiting for data",
                file=sys.stderr,
            )

    print()
    print(f"{'workers':>8} {'it/s':>8} {'s/it':>8} {'waiting':>8} {'wall s':>8}")
    for r in results:
        print(
            f"{r['workers']:>8} {r['iterations_per_second']:>8.3f} "
            f"{r['seconds_per_iteration']:>8.3f} {100 * r['data_wait_fraction']:>7.1f}% "
            f"{r['wall_s']:>8.1f}"
        )
    report = {
        "benchmark": "train",
        "quick": args.quick,
        "iterations": iterations,
        "untimed_first_iterations": skip,
        "train_volume_shape": list(shape),
        "model": "innerdist.demo.DEMO_MODEL, batch 1",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_after": list(os.getloadavg()),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
