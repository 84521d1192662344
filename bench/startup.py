"""Where ``innerdist predict`` / ``segment`` on a small 2-D image spend their first seconds.

    .venv/bin/python bench/startup.py [--repeats 3] [--out bench/results/startup.json]

Writes a 64x64 uint8 image and a random (untrained) 2-D checkpoint to a temporary
directory, then, each in a fresh interpreter, interleaved ``--repeats`` times:

- ``import X``: the import of each heavy dependency alone (torch, funlib.persistence with
  dask/xarray/pandas, daisy, scipy.ndimage, numba);
- ``model, meta pass`` vs ``model, arithmetic``: building the network the way it was done
  before (output shapes by a dry forward pass on the ``meta`` device, which imports
  torch._dynamo on first use) and now (the U-Net's shape arithmetic), after ``import
  torch``;
- ``innerdist predict`` and ``innerdist segment`` end to end (CLI, wall clock).

Times are the median wall clock; the machine is shared, so read the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETUP = """
import numpy as np
from funlib.geometry import Roi
from innerdist.architecture import UNet
from innerdist.checkpoint import random_checkpoint, save_checkpoint
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.volumes import create_volume, mark_complete
d = {d!r}
raw = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
a = create_volume(d + "/d.zarr/raw", roi=Roi((0, 0), (512, 512)), voxel_size=(8, 8),
                  dtype=np.uint8)
a[a.roi] = raw
mark_complete(a)
unet = UNet((92, 92), num_fmaps=12, downsample_factors=[(2, 2), (2, 2)])
norm = {{"min": 0, "max": 255, "dtype": "uint8"}}
save_checkpoint(d + "/model.pt", random_checkpoint(unet, InnerDistancePredictor(["n"], 40.0),
                                                   (8, 8), norm))
"""

MODEL = """
import time, torch
from innerdist.architecture import UNet
from innerdist.model import Model
unet = UNet((92, 92), num_fmaps=12, downsample_factors=[(2, 2), (2, 2)])
head = torch.nn.Conv2d(unet.num_out_channels, 1, 1)
t = time.perf_counter()
Model(unet, {head})
print(time.perf_counter() - t)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(args, check=True, env=_env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def _timed_python(code: str) -> float:
    """Seconds the snippet itself reports (its last line of output)."""
    out = subprocess.run([sys.executable, "-c", code], check=True, env=_env(),
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "startup.json"))
    args = parser.parse_args()

    cli = str(Path(sys.executable).with_name("innerdist"))
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-c", SETUP.format(d=d)], check=True, env=_env())
        cases = {
            "import torch": lambda: _run([sys.executable, "-c", "import torch"]),
            "import funlib.persistence": lambda: _run(
                [sys.executable, "-c", "import funlib.persistence"]),
            "import daisy": lambda: _run([sys.executable, "-c", "import daisy.v2"]),
            "import scipy.ndimage": lambda: _run([sys.executable, "-c", "import scipy.ndimage"]),
            "import numba": lambda: _run([sys.executable, "-c", "import numba"]),
            "model, meta pass": lambda: _timed_python(
                MODEL.format(head="torch.nn.Sequential(head)")),
            "model, arithmetic": lambda: _timed_python(MODEL.format(head="head")),
            "innerdist predict": lambda: _run(
                [cli, "predict", f"{d}/model.pt", f"{d}/d.zarr/raw", f"{d}/d.zarr/pred",
                 "--overwrite"]),
            "innerdist segment": lambda: _run(
                [cli, "segment", f"{d}/d.zarr/pred", f"{d}/d.zarr/seg", "--overwrite"]),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, case in cases.items():
                times[name].append(case())

    rows = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'step':28s} {'median s':>9s} {'runs':>24s}")
    for name, t in rows.items():
        runs = ", ".join(f"{v:.2f}" for v in times[name])
        print(f"{name:28s} {t:9.2f} {runs:>24s}")
    saved = rows["model, meta pass"] - rows["model, arithmetic"]
    print(f"model construction: {saved:.2f} s saved per process "
          f"({rows['model, meta pass'] / max(rows['model, arithmetic'], 1e-9):.0f}x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                               "repeats": args.repeats, "median_s": rows, "runs_s": times},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
