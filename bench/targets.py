"""Benchmark: inner-distance targets, innerdist's kernel against the 2x-grid reference.

Usage::

    python bench/targets.py [--quick] [--repeats N] [--out bench/results/targets.json]

Cases are densely packed instance volumes (a Voronoi tessellation of random seeds in
world units, with ~15% background: one-voxel gaps around a random subset of objects,
the rest touching), 3-D isotropic and ``(40, 8, 8)``-anisotropic, and 2-D images.

Methods, all on the same labels:

* ``innerdist``: :func:`innerdist.distance.boundary_distance`, 1 and 2 numba threads.
* ``2x_grid``: :func:`innerdist.distance.boundary_distance_2x_grid`, the reference
  (DaCapo's method, SciPy's single-threaded EDT on a grid of 8x the voxels). Skipped
  where it would need too much memory or time; the table says so.
* ``scipy_edt``: ``scipy.ndimage.distance_transform_edt(labels != 0)``: a plain binary
  EDT of the foreground, for speed orientation only (different definition).
* ``edt``: the ``edt`` package's multi-label EDT (``black_border=False``), 1 and 2
  threads: speed orientation only (distance to the nearest other-label voxel, not to
  boundary faces, so its values differ).

Columns: wall time (best of N, the methods interleaved so that load from other
processes hits them alike), CPU time of all threads (best of N; on a shared machine a
2-thread run whose wall time is close to its CPU time did not get a second core),
Mvox/s (from the wall time), peak memory (each method once in a fresh
subprocess: ``ru_maxrss`` after the call minus ``ru_maxrss`` after imports, data load
and a tiny warm-up call), max |tanh(d/s) - tanh(d_ref/s)| over all voxels with
``s = 2 * min(voxel_size)`` (only meaningful for methods computing the same
definition), and the speed ratio to ``2x_grid``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

METHODS = ("innerdist", "2x_grid", "scipy_edt", "edt")
THREADED = ("innerdist", "edt")
# The 2x-grid method needs about 360 bytes per voxel in 3-D; skip it above this.
REFERENCE_MAX_BYTES = 12e9


@dataclass(frozen=True)
class Case:
    name: str
    shape: tuple[int, ...]
    voxel_size: tuple[float, ...]
    mean_diameter_nm: float = 160.0
    background: float = 0.15
    seed: int = 0
    reference: bool = True  # run the 2x-grid reference (when memory allows)
    notes: list[str] = field(default_factory=list, compare=False, hash=False)


def cases(quick: bool) -> list[Case]:
    if quick:
        return [
            Case("3d_64_iso", (64, 64, 64), (8.0, 8.0, 8.0)),
            Case("3d_64_aniso", (32, 64, 64), (40.0, 8.0, 8.0)),
            Case("2d_512", (512, 512), (8.0, 8.0)),
        ]
    return [
        Case("3d_128_iso", (128, 128, 128), (8.0, 8.0, 8.0)),
        Case("3d_128_aniso", (128, 128, 128), (40.0, 8.0, 8.0)),
        Case("3d_256_iso", (256, 256, 256), (8.0, 8.0, 8.0)),
        Case(
            "3d_256_aniso",
            (256, 256, 256),
            (40.0, 8.0, 8.0),
            reference=False,
            notes=["2x_grid skipped to save time (~40 s, ~6 GB); see 3d_256_iso"],
        ),
        Case(
            "3d_256_large_objects",
            (256, 256, 256),
            (8.0, 8.0, 8.0),
            mean_diameter_nm=800.0,
            reference=False,
            notes=[
                "objects ~100 voxels across (one-voxel gaps give only ~2% background): far "
                "boundaries, many tiles take the lower-envelope fallback"
            ],
        ),
        Case("2d_2048", (2048, 2048), (8.0, 8.0)),
    ]


# --------------------------------------------------------------------------------------
# Data


def make_instances(case: Case) -> np.ndarray:
    """Densely packed instance labels (uint64) for ``case``.

    A Voronoi tessellation of random seeds, measured in world units so that objects are
    round in nm whatever the voxel size; then the voxels just before a boundary (along
    any axis, in + direction) of randomly chosen objects become background until about
    ``case.background`` of the volume is background. The other objects touch.
    """
    rng = np.random.default_rng(case.seed)
    shape = case.shape
    vs = np.asarray(case.voxel_size)
    extent_nm = np.asarray(shape) * vs
    n_seeds = max(2, int(np.prod(extent_nm / case.mean_diameter_nm)))
    seeds = tuple(rng.integers(0, n, n_seeds) for n in shape)
    not_seed = np.ones(shape, dtype=bool)
    not_seed[seeds] = False
    nearest = ndimage.distance_transform_edt(
        not_seed, sampling=vs, return_distances=False, return_indices=True
    )
    ids = np.zeros(shape, dtype=np.uint64)
    ids[seeds] = rng.permutation(n_seeds).astype(np.uint64) + 1
    labels = ids[tuple(nearest)]
    del nearest, not_seed

    edge = np.zeros(shape, dtype=bool)
    for axis in range(len(shape)):
        lo = [slice(None)] * len(shape)
        hi = [slice(None)] * len(shape)
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        edge[tuple(lo)] |= labels[tuple(lo)] != labels[tuple(hi)]
    per_object = np.bincount(labels[edge].astype(np.int64), minlength=n_seeds + 1)
    order = rng.permutation(np.arange(1, n_seeds + 1))
    budget = case.background * labels.size
    chosen = order[: int(np.searchsorted(np.cumsum(per_object[order]), budget)) + 1]
    gap = np.zeros(n_seeds + 1, dtype=bool)
    gap[chosen] = True
    labels[edge & gap[labels.astype(np.int64)]] = 0
    return labels


# --------------------------------------------------------------------------------------
# Methods


def _call(
    method: str, labels: np.ndarray, voxel_size: tuple[float, ...], threads: int
) -> np.ndarray:
    if method == "innerdist":
        import numba

        from innerdist.distance import boundary_distance

        numba.set_num_threads(threads)
        return boundary_distance(labels, voxel_size)
    if method == "2x_grid":
        from innerdist.distance import boundary_distance_2x_grid

        return boundary_distance_2x_grid(labels, voxel_size)
    if method == "scipy_edt":
        return ndimage.distance_transform_edt(labels != 0, sampling=voxel_size)
    if method == "edt":
        import edt

        return edt.edt(labels, anisotropy=voxel_size, black_border=False, parallel=threads)
    raise ValueError(f"unknown method {method!r}, expected one of {METHODS}")


def _warm_up(method: str, ndim: int, threads: int) -> None:
    # Compile / load numba kernels and import libraries outside the measurement.
    tiny = np.zeros((4,) * ndim, dtype=np.uint64)
    tiny[1:3] = 1
    _call(method, tiny, (1.0,) * ndim, threads)


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not found in /proc/self/status")


def _memory_worker(method: str, path: str, voxel_size: list[float], threads: int) -> None:
    """In a fresh interpreter: peak memory of one call above the memory in use before it,
    printed as JSON. Linux: the peak (VmHWM) is reset just before the call through
    /proc/self/clear_refs, so imports and the warm-up do not hide the call's peak."""
    labels = np.load(path)
    _warm_up(method, labels.ndim, threads)
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        base, how = _rss_kib("VmRSS"), "VmHWM"
    except OSError:  # no /proc: the high-water mark since start (may hide small peaks)
        base, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    _call(method, labels, tuple(voxel_size), threads)
    if how == "VmHWM":
        peak = _rss_kib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (peak - base) / 1024, "how": how}))


def _peak_memory_mb(
    method: str, path: str, voxel_size: tuple[float, ...], threads: int
) -> float | None:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-worker",
        method,
        path,
        json.dumps(list(voxel_size)),
        str(threads),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"  memory run of {method} failed: {result.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"])


# --------------------------------------------------------------------------------------
# One case


def run_case(
    case: Case,
    methods: tuple[str, ...] = METHODS,
    threads: tuple[int, ...] = (1, 2),
    repeats: int = 3,
    subprocess_memory: bool = True,
) -> list[dict[str, Any]]:
    """Time every method on ``case`` and return one row (dict) per method and thread count."""
    t0 = time.perf_counter()
    labels = make_instances(case)
    print(
        f"\n{case.name}: shape {case.shape}, voxel size {case.voxel_size}, "
        f"{np.unique(labels).size - 1} objects, background {np.mean(labels == 0):.1%} "
        f"(made in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    scale = 2.0 * min(case.voxel_size)
    n_vox = labels.size
    reference_bytes = 360 * n_vox if labels.ndim == 3 else 100 * n_vox
    run_reference = case.reference and reference_bytes < REFERENCE_MAX_BYTES

    runs: list[tuple[str, int]] = []
    for method in methods:
        if method == "2x_grid" and not run_reference:
            continue
        for t in threads if method in THREADED else (1,):
            runs.append((method, t))
    for method, t in runs:
        _warm_up(method, labels.ndim, t)

    best = {run: math.inf for run in runs}
    best_cpu = {run: math.inf for run in runs}
    results: dict[tuple[str, int], np.ndarray] = {}
    for rep in range(repeats):
        for run in runs:
            # The reference takes tens of seconds at 256^3: once is enough.
            if run[0] == "2x_grid" and rep > 0 and n_vox > 64**3:
                continue
            start, cpu_start = time.perf_counter(), time.process_time()
            d = _call(run[0], labels, case.voxel_size, run[1])
            best[run] = min(best[run], time.perf_counter() - start)
            best_cpu[run] = min(best_cpu[run], time.process_time() - cpu_start)
            if rep == 0:
                results[run] = np.asarray(d, dtype=np.float32)
            del d

    reference = results.get(("2x_grid", 1))
    memory: dict[tuple[str, int], float | None] = {}
    if subprocess_memory:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "labels.npy")
            np.save(path, labels)
            for run in runs:
                memory[run] = _peak_memory_mb(run[0], path, case.voxel_size, run[1])

    rows = []
    for run in runs:
        method, t = run
        row: dict[str, Any] = {
            "case": case.name,
            "shape": list(case.shape),
            "voxel_size": list(case.voxel_size),
            "method": method,
            "threads": t,
            "seconds": best[run],
            "cpu_seconds": best_cpu[run],
            "mvox_per_s": n_vox / best[run] / 1e6,
            "peak_mb": memory.get(run),
            "tanh_scale": scale,
            "max_abs_diff_tanh": None,
            "max_rel_diff": None,
            "speedup_vs_2x_grid": None,
        }
        if reference is not None:
            d = results[run]
            row["max_abs_diff_tanh"] = float(
                np.max(np.abs(np.tanh(d / scale) - np.tanh(reference / scale)))
            )
            rel = np.abs(d - reference) / np.maximum(reference, 1e-30)
            row["max_rel_diff"] = float(np.max(rel))
            row["speedup_vs_2x_grid"] = best[("2x_grid", 1)] / best[run]
        rows.append(row)
    if not run_reference:
        rows.append(
            {
                "case": case.name,
                "shape": list(case.shape),
                "method": "2x_grid",
                "threads": 1,
                "skipped": "; ".join(case.notes) or "too much memory",
            }
        )
    print(format_table(rows), flush=True)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'case':22s} {'method':10s} {'thr':>3s} {'time s':>8s} {'cpu s':>7s} {'Mvox/s':>8s} "
        f"{'peak MB':>8s} {'max|dtanh|':>10s} {'x 2x-grid':>9s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(
                f"{r['case']:22s} {r['method']:10s} {r['threads']:3d}   skipped: {r['skipped']}"
            )
            continue

        def fmt(value: float | None, spec: str) -> str:
            return "n/a" if value is None else format(value, spec)

        lines.append(
            f"{r['case']:22s} {r['method']:10s} {r['threads']:3d} {r['seconds']:8.3f} "
            f"{r['cpu_seconds']:7.3f} "
            f"{r['mvox_per_s']:8.2f} {fmt(r['peak_mb'], '8.0f'):>8s} "
            f"{fmt(r['max_abs_diff_tanh'], '10.1e'):>10s} "
            f"{fmt(r['speedup_vs_2x_grid'], '9.1f'):>9s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best of N)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/targets.json"))
    parser.add_argument("--cases", nargs="*", help="run only these case names")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        method, path, vs, threads = args.memory_worker
        _memory_worker(method, path, json.loads(vs), int(threads))
        return 0

    selected = [c for c in cases(args.quick) if not args.cases or c.name in args.cases]
    all_rows: list[dict[str, Any]] = []
    for case in selected:
        all_rows += run_case(case, repeats=args.repeats, subprocess_memory=not args.no_memory)
    print("\n" + format_table(all_rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "cases": [asdict(c) for c in selected],
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": all_rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
