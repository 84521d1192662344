"""Instance quality against the peers, at the same CPU budget, scored by StarDist's own code.

    .venv/bin/python bench/quality.py                  # 8 minutes of training per tool
    .venv/bin/python bench/quality.py --minutes 2      # a quick comparison
    .venv/bin/python bench/quality.py --tools innerdist classical

Data: synthetic fluorescence-like nuclei the script draws (``make_nuclei``): touching
ellipses of radii 4 to 16 pixels, each with its own brightness and texture, blurred by a
point-spread function, with shot and read noise. Four training images, one validation
image, two test images (256 x 256 pixels, different seeds), the same for every tool.

Tools, each trained for ``--minutes`` of wall clock on the same cores (its own process;
the CPU seconds of that process are recorded too):

- ``innerdist``: ``innerdist train`` with the default validation (sweep refined around
  the best point, smoothed selection, criterion F1 averaged over IoU 0.5:0.9). A short
  timed run measures a step and a validation; the run then gets the iterations that fit
  the rest of the budget, Adam with a cosine schedule from 3e-3 over them (as ``innerdist
  demo --minutes`` plans), validation and a checkpoint every 20 iterations or more (so
  that validating takes at most ~10% of the run). Rows: the
  default selection; the selection of earlier versions (best F1@0.5 on the grid alone, no
  refinement or smoothing) from the same validation log; the default with ``--tta``.
- ``stardist``: StarDist 2-D with its own recipe (``Config2D``, 32 rays, grid 2, flips
  and rotations), TensorFlow, in ``bench/.venv-stardist``; training stops at the budget,
  then its thresholds are optimised on the validation image (its recipe).
- ``cellpose``: Cellpose 3.x trained from scratch (``train_seg``, no pretrained weights)
  in ``bench/.venv-cellpose``, which reuses the project's CPU torch through a ``.pth``
  file instead of downloading another torch; epochs calibrated to the budget.
- ``classical``: Otsu threshold of the smoothed image, Euclidean distance transform,
  seeds = h-maxima of the distance, seeded watershed; ``h`` picked on the validation image.

``--setup`` creates the two peer environments (PyPI only); a tool that cannot be installed
or fails gets its reason in its table row, the others still run. Scores: for every row,
``stardist.matching.matching_dataset`` over the test images (aggregated counts) at IoU
0.5 and 0.75: F1, AP (StarDist's ``accuracy``: TP / (TP + FP + FN)) and PQ, plus the mean
matched IoU at 0.5. Writes ``bench/results/quality.json`` (``--out``).

Runs in any of the three environments: the top level imports only the standard library
and numpy; each worker imports its own tool.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".quality-work"
VENVS = {"stardist": HERE / ".venv-stardist", "cellpose": HERE / ".venv-cellpose"}
TOOLS = ("innerdist", "stardist", "cellpose", "classical")
SHAPE = (256, 256)
SPLITS = {"train": 4, "validate": 1, "test": 2}
#: Steps of innerdist's timed calibration run (the first 5 are not timed).
_CALIBRATION_STEPS = 15


# --- data --------------------------------------------------------------------------------


def make_nuclei(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like image (uint8) of touching nuclei and its labels (int32).

    Centres are drawn with a minimum spacing; each nucleus is an ellipse (semi-axes 4 to
    16 px, random orientation); where ellipses overlap, a pixel goes to the nucleus whose
    ellipse it lies deepest in, so neighbours touch along a boundary. Intensity: a
    per-nucleus brightness (0.25 to 1) times smooth texture, on a dim uneven background,
    blurred (Gaussian PSF, sigma 1.5 px), Poisson shot noise and Gaussian read noise.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    depth = np.full(shape, np.inf)  # normalised ellipse radius of the best nucleus so far
    labels = np.zeros(shape, np.int32)
    centres: list[tuple[float, float, float]] = []
    for _ in range(4000):
        if len(centres) >= 110:
            break
        a = float(np.clip(rng.lognormal(np.log(8.0), 0.35), 4.0, 16.0))
        b = float(np.clip(a * rng.uniform(0.6, 1.0), 4.0, 16.0))
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        # Touching allowed, deep overlaps not: centres at least 0.7 x the sum of radii apart.
        if any(np.hypot(cy - y, cx - x) < 0.7 * (b + r) for y, x, r in centres):
            continue
        centres.append((cy, cx, b))
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dy * np.cos(theta) + dx * np.sin(theta)
        v = -dy * np.sin(theta) + dx * np.cos(theta)
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        inside = (r <= 1.0) & (r < depth)
        labels[inside] = len(centres)
        depth[inside] = r[inside]
    brightness = np.concatenate([[0.0], rng.uniform(0.25, 1.0, len(centres))])
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    texture = 1.0 + 0.25 * texture / (texture.std() + 1e-9)
    background = 0.06 + 0.04 * ndimage.gaussian_filter(rng.normal(0, 1, shape), 30.0) * 10
    signal = brightness[labels] * texture * (labels > 0) + np.clip(background, 0.02, 0.15)
    signal = ndimage.gaussian_filter(signal, 1.5)
    photons = rng.poisson(np.clip(signal, 0, None) * 60.0) / 60.0
    image = photons + rng.normal(0, 0.03, shape)
    raw = np.clip(image / 1.2 * 255, 0, 255).astype(np.uint8)
    return raw, labels


def write_data(seed: int) -> Path:
    """All splits as one ``.npz`` (``<split>_raw`` / ``<split>_labels``: stacked images)."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"data-{seed}.npz"
    if path.exists():
        return path
    seeds = np.random.SeedSequence(seed).generate_state(sum(SPLITS.values()))
    arrays: dict[str, np.ndarray] = {}
    k = 0
    for split, count in SPLITS.items():
        pairs = [make_nuclei(SHAPE, int(seeds[k + i])) for i in range(count)]
        k += count
        arrays[f"{split}_raw"] = np.stack([p[0] for p in pairs])
        arrays[f"{split}_labels"] = np.stack([p[1] for p in pairs])
    np.savez_compressed(path, **arrays)
    return path


def load(data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data) as f:
        return f[f"{split}_raw"], f[f"{split}_labels"]


# --- workers (each runs in its tool's environment) ---------------------------------------


def _deadline(minutes: float) -> float:
    return time.perf_counter() + 60.0 * minutes


def worker_classical(data: Path, minutes: float, out: Path) -> dict[str, Any]:
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from innerdist.metrics import instance_scores

    def segment(raw: np.ndarray, h: float) -> np.ndarray:
        smooth = ndimage.gaussian_filter(raw.astype(np.float32), 1.0)
        mask = smooth > threshold_otsu(smooth)
        distance = ndimage.distance_transform_edt(mask)
        seeds, _ = ndimage.label(h_maxima(distance, h))
        return np.asarray(watershed(-distance, seeds, mask=mask), np.int32)

    raw_v, gt_v = load(data, "validate")
    thresholds = [round(0.5 + 0.05 * i, 2) for i in range(9)]

    def val_score(h: float) -> float:
        s = [instance_scores(segment(r, h), g, iou_thresholds=thresholds) for r, g in
             zip(raw_v, gt_v, strict=True)]
        return float(np.mean([m["f1_score"] for x in s for m in x["matching"]]))

    hs = [0.5, 1.0, 1.5, 2.0, 3.0]
    scores = {h: val_score(h) for h in hs}
    h = max(hs, key=lambda k: scores[k])
    raw_t, _ = load(data, "test")
    began = time.perf_counter()
    np.savez_compressed(out, classical=np.stack([segment(r, h) for r in raw_t]))
    return {"h": h, "validation_f1_0.5:0.9": scores, "predict_s": time.perf_counter() - began}


def worker_innerdist(data: Path, minutes: float, out: Path) -> dict[str, Any]:
    import csv

    import torch
    import yaml
    from funlib.geometry import Roi

    from innerdist.checkpoint import load_checkpoint
    from innerdist.config import ValidationConfig
    from innerdist.predict import normalize_raw, predict_array
    from innerdist.segment import instances
    from innerdist.validate import SWEPT, select_best
    from innerdist.volumes import create_volume, mark_complete

    deadline = _deadline(minutes)
    torch.set_num_threads(2)
    base = WORK / "innerdist"
    voxel = (100, 100)  # nm: nuclei of 0.4 to 1.6 um radius

    def container(split: str, i: int, raw: np.ndarray, labels: np.ndarray) -> str:
        path = base / f"{split}-{i}.zarr"
        roi = Roi((0, 0), (raw.shape[0] * voxel[0], raw.shape[1] * voxel[1]))
        for name, array, dtype in (("raw", raw, np.uint8), ("labels", labels, np.uint64)):
            v = create_volume(path / name, roi=roi, voxel_size=voxel, dtype=dtype,
                              overwrite=True)
            v[roi] = array.astype(dtype)
            mark_complete(v)
        return str(path)

    sources: dict[str, list[dict[str, str]]] = {"train": [], "validate": []}
    for split in sources:
        raws, labels = load(data, split)
        for i, (r, g) in enumerate(zip(raws, labels, strict=True)):
            c = container(split, i, r, g)
            sources[split].append({"raw": f"{c}/raw", "labels": f"{c}/labels"})

    criteria = ["instances.f1_score@0.5:0.9", "instances.f1_score@0.5"]

    def config(iterations: int, validations: int) -> dict[str, Any]:
        interval = max(1, -(-iterations // validations))
        return {
            "data": {"train": sources["train"], "validate": sources["validate"]},
            "task": {"channels": ["nucleus"], "scale_factor": 300},
            "model": {
                "input_shape": [108, 108],
                "num_fmaps": 8,
                "fmap_inc_factor": 2,
                "batch_norm": True,
                "upsample": "nearest",
                "downsample_factors": [[2, 2], [2, 2]],
                "eval_shape_increase": [96, 96],
            },
            "training": {
                "iterations": iterations,
                "batch_size": 1,
                "optimizer": {"name": "adam", "lr": 1e-3},
                "schedule": {"name": "constant", "warmup": min(50, max(1, iterations // 10))},
                "augment": {"flip": True, "transpose": True},
                "num_workers": 0,
                "validation_interval": interval,
                "checkpoint_interval": interval,
                "keep_last": validations + 1,
                "snapshot_interval": 0,
            },
            # The default grid (what a user gets), spelled out for the replay below.
            "validation": {
                "foreground_levels": ValidationConfig().foreground_levels,
                "seed_levels": ValidationConfig().seed_levels,
                "criteria": criteria,
            },
        }

    # As a user with a time budget would (and as `innerdist demo --minutes` does): a short
    # timed run measures one step and one validation, then the run gets the iterations that
    # fit what is left, with a cosine schedule from 3e-3 over them (short training learns
    # most from a high rate decaying to 0: bench/README.md, demo experiments). Validation
    # every ~20 iterations gives the selection its choice; the deadline still stops it.
    import multiprocessing
    import statistics

    spawn = multiprocessing.get_context("spawn")

    def run_training(settings: dict[str, Any], run_dir: Path, stop_at: float) -> None:
        shutil.rmtree(run_dir, ignore_errors=True)
        path = run_dir.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        # Daemonic, and SIGTERM exits through Python (main): a stopped benchmark stops its
        # training too instead of leaving it running on the cores the next run is timed on.
        child = spawn.Process(target=_train_child, args=(str(path), str(run_dir)), daemon=True)
        child.start()
        child.join(timeout=max(1.0, stop_at - time.perf_counter()))
        if child.is_alive():
            child.terminate()
            child.join()

    calibration = config(_CALIBRATION_STEPS, 1)
    calibration["training"]["schedule"] = {"name": "constant", "warmup": 1}
    run_training(calibration, base / "calibration", deadline)
    with (base / "calibration" / "stats.csv").open(newline="") as f:
        steps = [float(r["step_time_s"]) for r in csv.DictReader(f)]
    step = statistics.median(steps[5:] or steps)
    # One validation as the calibration measured it; validation every `interval` steps
    # takes at most ~10% of the run (at 20 steps, a fast 2-D step spent half the budget
    # validating), and the run gets the iterations that fit what is left.
    validation = json.loads((base / "calibration" / "bench-result.json").read_text())[
        "validation_seconds"]
    interval = max(20, math.ceil(9 * validation / step))
    left = deadline - time.perf_counter() - 5.0
    iterations = max(interval, int(left / (step + validation / interval)))
    settings = config(iterations, max(1, iterations // interval))
    settings["training"]["optimizer"] = {"name": "adam", "lr": 3e-3}
    settings["training"]["schedule"] = {"name": "cosine",
                                        "warmup": min(50, max(1, iterations // 10))}
    run_dir = base / "run"
    run_training(settings, run_dir, deadline)
    train_done = time.perf_counter()

    with (run_dir / "validation.csv").open(newline="") as f:
        rows = [{**r, "iteration": int(r["iteration"]),
                 **{k: float(r[k]) for k in (*SWEPT, *criteria)}} for r in csv.DictReader(f)]
    grid = config(1, 1)["validation"]
    on_grid = [r for r in rows if r["foreground_level"] in grid["foreground_levels"]
               and r["seed_level"] in grid["seed_levels"]]
    with (run_dir / "stats.csv").open(newline="") as f:
        iterations = sum(1 for _ in csv.DictReader(f))
    if not rows:
        raise RuntimeError(f"no validation finished within the budget ({iterations} iterations)")
    new = select_best(rows, criteria)[criteria[0]]
    old = select_best(on_grid, [criteria[1]], smooth_levels=False,
                      smooth_checkpoints=1)[criteria[1]]

    raw_t, _ = load(data, "test")

    def segment(choice: Any, tta: bool) -> tuple[np.ndarray, float]:
        ckpt = load_checkpoint(run_dir / "checkpoints" / f"iteration_{choice.iteration}.pt")
        model = ckpt.build_model()
        began = time.perf_counter()
        outs = []
        for r in raw_t:
            pred = predict_array(model, normalize_raw(r, ckpt.normalization), tta=tta,
                                 voxel_size=voxel)
            # Every tuned parameter, as `innerdist segment` applies the checkpoint's
            # post-processing: levels, dynamic seeds (in nm, need the tanh scale), min size.
            post = choice.postprocessing(voxel)
            outs.append(instances(
                pred[0], foreground_level=float(post["foreground_level"]),
                seed_level=float(post["seed_level"]),
                seed_dynamic=float(post.get("seed_dynamic", 0.0)),
                min_size_voxels=int(post["min_size"]),
                scale=float(ckpt.predictor.dt_scale_factor),
            ).astype(np.int32))
        return np.stack(outs), time.perf_counter() - began

    seg_new, t_plain = segment(new, False)
    seg_old, _ = segment(old, False)
    seg_tta, t_tta = segment(new, True)
    np.savez_compressed(out, innerdist=seg_new, innerdist_old_selection=seg_old,
                        innerdist_tta=seg_tta)
    return {
        "iterations": iterations,
        "train_s": train_done - (deadline - 60.0 * minutes),
        "selection": {"default": new.to_dict(), "old_f1@0.5_grid": old.to_dict()},
        "validation_rows": len(rows),
        "grid_rows": len(on_grid),
        "predict_s": t_plain,
        "predict_tta_s": t_tta,
        "tta_cost": t_tta / t_plain,
    }


def _train_child(config_path: str, run_dir: str) -> None:
    import torch

    from innerdist.train import train

    torch.set_num_threads(2)
    result = train(config_path, run_dir, progress=False)
    (Path(run_dir) / "bench-result.json").write_text(
        json.dumps({"validation_seconds": result.validation_seconds}))


def worker_stardist(data: Path, minutes: float, out: Path) -> dict[str, Any]:
    deadline = _deadline(minutes)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    def prep(split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        raws, labels = load(data, split)
        return ([normalize(r.astype(np.float32), 1, 99.8, axis=(0, 1)) for r in raws],
                [fill_label_holes(g) for g in labels])

    x_train, y_train = prep("train")
    x_val, y_val = prep("validate")

    rng = np.random.default_rng(0)

    def augment(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # StarDist's example augmenter: random flips and 90 degree rotations.
        k = int(rng.integers(4))
        x, y = np.rot90(x, k), np.rot90(y, k)
        for axis in (0, 1):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        return x, y

    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(128, 128),
                    train_batch_size=4, train_tensorboard=False, use_gpu=False)
    model = StarDist2D(conf, name="stardist", basedir=str(WORK / "stardist"))

    class Budget(tf.keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            # Leave time for the threshold optimisation that follows (its recipe).
            if time.perf_counter() > deadline - 20:
                self.model.stop_training = True

    model.prepare_for_training()
    model.callbacks.append(Budget())
    history = model.train(x_train, y_train, validation_data=(x_val, y_val), augmenter=augment,
                          epochs=10_000, steps_per_epoch=20)
    model.optimize_thresholds(x_val, y_val)
    raws, _ = load(data, "test")
    began = time.perf_counter()
    masks = [model.predict_instances(normalize(r.astype(np.float32), 1, 99.8))[0]
             for r in raws]
    np.savez_compressed(out, stardist=np.stack(masks).astype(np.int32))
    return {"epochs": len(history.history.get("loss", [])), "steps_per_epoch": 20,
            "thresholds": dict(model.thresholds._asdict()),
            "predict_s": time.perf_counter() - began}


def worker_cellpose(data: Path, minutes: float, out: Path) -> dict[str, Any]:
    deadline = _deadline(minutes)
    import torch

    torch.set_num_threads(2)
    from cellpose import models, train

    raws, labels = load(data, "train")
    raws_v, labels_v = load(data, "validate")
    from cellpose import dynamics

    images = [r.astype(np.float32) for r in raws]
    # Flows once (train_seg takes them in place of labels), not once per train_seg call.
    masks = dynamics.labels_to_flows([g.astype(np.int32) for g in labels],
                                     device=torch.device("cpu"))

    def fresh() -> Any:
        # No pretrained weights: a randomly initialised network ("from scratch").
        return models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)

    # Calibrate: one short training, then as many epochs as fit the rest of the budget.
    for d in ("cellpose-calibration", "cellpose"):
        (WORK / d).mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    train.train_seg(fresh().net, train_data=images, train_labels=masks, channels=[0, 0],
                    n_epochs=2, save_path=str(WORK / "cellpose-calibration"),
                    model_name="calibration")
    per_epoch = (time.perf_counter() - began) / 2
    epochs = max(2, int((deadline - time.perf_counter() - 20) / per_epoch))
    model = fresh()
    path = train.train_seg(model.net, train_data=images, train_labels=masks,
                           test_data=[r.astype(np.float32) for r in raws_v],
                           test_labels=[g.astype(np.int32) for g in labels_v],
                           channels=[0, 0], n_epochs=epochs, save_path=str(WORK / "cellpose"),
                           model_name="scratch")
    trained = models.CellposeModel(gpu=False, pretrained_model=str(path[0] if isinstance(
        path, tuple) else path))
    test, _ = load(data, "test")
    diameter = float(trained.net.diam_labels.item())
    began = time.perf_counter()
    result = [trained.eval(r.astype(np.float32), channels=[0, 0], diameter=diameter)[0]
              for r in test]
    np.savez_compressed(out, cellpose=np.stack(result).astype(np.int32))
    return {"epochs": epochs, "diameter": diameter, "predict_s": time.perf_counter() - began}


WORKERS = {"innerdist": worker_innerdist, "stardist": worker_stardist,
           "cellpose": worker_cellpose, "classical": worker_classical}


# --- orchestration (the project's environment) ------------------------------------------


def setup(tool: str) -> str | None:
    """Create the tool's environment if missing; ``None`` when ready, else the reason."""
    if tool not in VENVS:
        return None
    venv = VENVS[tool]
    python = venv / "bin" / "python"
    check = "import stardist.models" if tool == "stardist" else "import cellpose.train"
    if python.exists() and subprocess.run([str(python), "-c", check],
                                          capture_output=True).returncode == 0:
        return None
    try:
        # venv builds on the base interpreter, not on the project's environment.
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True)
        if tool == "stardist":
            packages = ["stardist>=0.9", "tensorflow-cpu<2.20"]
        else:
            # The project's CPU torch, through a .pth file: pip sees torch as installed.
            site = subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True, capture_output=True, text=True).stdout.strip()
            import torch

            shared = Path(torch.__file__).resolve().parents[1]
            (Path(site) / "zz_project_torch.pth").write_text(f"{shared}\n")
            packages = ["cellpose<4"]
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages],
                              capture_output=True, text=True)
        if done.returncode != 0:
            lines = [x for x in done.stderr.splitlines() if "is ignored" not in x and x.strip()]
            return f"pip install {' '.join(packages)} failed: {lines[-1] if lines else '?'}"
    except (OSError, subprocess.CalledProcessError) as e:
        return f"could not create {venv}: {e}"
    ok = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    return None if ok.returncode == 0 else f"installed but `{check}` fails"


def run_tool(tool: str, data: Path, minutes: float) -> dict[str, Any]:
    """Run one worker in its own process; wall clock, CPU seconds, its report or error."""
    python = str(VENVS[tool] / "bin" / "python") if tool in VENVS else sys.executable
    if tool in VENVS and not Path(python).exists():
        return {"error": f"no environment {VENVS[tool]} (run with --setup)"}
    out = WORK / f"{tool}-masks.npz"
    out.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT / "src"),
           "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    # The worker and everything it starts form one process group, stopped as a whole when
    # the benchmark ends for any reason (a tool's own children included).
    proc = subprocess.Popen(
        [python, str(Path(__file__).resolve()), "--worker", tool, "--data", str(data),
         "--minutes", str(minutes), "--masks", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60 * minutes * 3 + 600)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {60 * minutes * 3 + 600:.0f} s"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    log = WORK / f"{tool}.log"
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0 or not out.exists():
        lines = [x for x in done.stderr.splitlines() if x.strip()]
        # The exception, not a warning printed at shutdown after it.
        errors = [x for x in lines if re.match(r"^[\w.]+(Error|Exception)\b", x)]
        line = errors[-1] if errors else lines[-1] if lines else f"exit code {done.returncode}"
        return {"error": line[:200],
                "wall_s": wall, "cpu_s": cpu, "log": str(log)}
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "cpu_s": cpu, "report": report, "masks": str(out)}


def score(masks: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """StarDist's own matching, aggregated over the test images."""
    from stardist.matching import matching_dataset

    out: dict[str, float] = {}
    for t in (0.5, 0.75):
        m = matching_dataset(list(truth), list(masks), thresh=t, show_progress=False)
        out[f"f1@{t}"] = float(m.f1)
        out[f"ap@{t}"] = float(m.accuracy)
        out[f"pq@{t}"] = float(m.panoptic_quality)
        if t == 0.5:
            out["matched_iou@0.5"] = float(m.mean_matched_score)
            out["tp@0.5"], out["fp@0.5"], out["fn@0.5"] = int(m.tp), int(m.fp), int(m.fn)
    return out


ROW_NAMES = {
    "innerdist": "innerdist (default selection)",
    "innerdist_old_selection": "innerdist (old selection: F1@0.5, grid only)",
    "innerdist_tta": "innerdist (default selection, --tta)",
    "stardist": "StarDist 2-D",
    "cellpose": "Cellpose 3, from scratch",
    "classical": "Otsu + distance transform + watershed",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="training budget per tool, wall clock minutes (default 8)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--setup", action="store_true", help="create the peer environments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quality.json")
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--masks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")

    if args.worker:
        report = WORKERS[args.worker](args.data, args.minutes, args.masks)
        print(json.dumps(report, default=float))
        return

    data = write_data(args.seed)
    _, truth = load(data, "test")
    results: dict[str, Any] = {}
    rows: list[tuple[str, dict[str, Any]]] = []
    for tool in args.tools:
        problem = setup(tool) if args.setup else None
        run = {"error": problem} if problem else run_tool(tool, data, args.minutes)
        results[tool] = run
        if "error" in run:
            rows.append((ROW_NAMES[tool], {"note": run["error"]}))
            print(f"{tool}: {run['error']}", file=sys.stderr)
            continue
        with np.load(run["masks"]) as f:
            for key in f.files:
                scores = score(f[key], truth)
                run.setdefault("scores", {})[key] = scores
                rows.append((ROW_NAMES[key], {**scores, "wall_s": run["wall_s"],
                                              "cpu_s": run["cpu_s"]}))
        print(f"{tool}: done in {run['wall_s']:.0f} s", file=sys.stderr)

    columns = ["f1@0.5", "f1@0.75", "ap@0.5", "ap@0.75", "pq@0.5", "pq@0.75",
               "matched_iou@0.5", "wall_s", "cpu_s"]
    print(f"\n{args.minutes:g} min training budget per tool, {SPLITS['test']} test images, "
          f"{int(sum(len(np.unique(t)) - 1 for t in truth))} nuclei; scorer: "
          "stardist.matching.matching_dataset\n")
    print("| tool | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, values in rows:
        if "note" in values:
            print(f"| {name} | " + f"not run: {values['note']}" + " |" * len(columns))
            continue
        cells = [f"{values[c]:.0f}" if c.endswith("_s") else f"{values[c]:.3f}"
                 for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "minutes": args.minutes, "seed": args.seed, "machine": platform.platform(),
        "cores": os.cpu_count(), "tools": results,
        "table": [{"tool": n, **v} for n, v in rows],
    }, indent=2, default=float) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
