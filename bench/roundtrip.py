"""Perfect-information round trip: labels -> exact targets -> instances -> F1@0.5.

    .venv/bin/python bench/roundtrip.py            # every case, 3 seeds each
    .venv/bin/python bench/roundtrip.py --quick    # small volumes, 1 seed

The targets are exact, so every object lost is lost by post-processing. Each case is a
label image of touching objects whose radii span 3..30 voxels, made by the generators of
``tests/labelgen.py`` (packed balls, and grown cells with gaps between half of the
touching pairs), 2-D and 3-D, isotropic (8 nm) and (40, 8, 8) nm anisotropic (objects
round in voxels there: a physically round object with a radius of 3 xy-voxels is a
single slice, and two of them touching along z have equal inner distances on both sides
of their face, which no inner-distance target separates; the ``*-round-nm`` case shows
it). For each case and seed:

- ``default``: the whole pipeline as a user runs it, :func:`innerdist.targets.compute_targets`
  (zarr, blockwise) then :func:`innerdist.segment.segment_volume` with DEFAULT settings,
  then instance F1@0.5 (:func:`innerdist.evaluate.instance_scores`);
- ``level``: the same targets with level seeds only (``seed_dynamic=0``, the behaviour
  before dynamic seeds: one global seed level 0.8);
- ``h=...``: dynamic seeds with other minimum dynamics (in voxels of the finest axis),
  segmented in memory with :func:`innerdist.watershed.instances` (which the blockwise
  result equals id for id), to show where the default sits.

Prints one table (mean F1 over seeds, and the worst seed) and writes JSON (default
``bench/results/roundtrip.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from labelgen import grown_cells, packed_balls  # noqa: E402

DYNAMICS = (0.5, 0.75, 1.0, 1.5, 2.0)  # voxels of the finest axis


def cases(quick: bool) -> list[dict[str, Any]]:
    s2, s3, sa = ((192, 192), (64, 64, 64), (40, 96, 96)) if quick else (
        (384, 384), (112, 112, 112), (64, 144, 144))
    iso2, iso3, aniso = (8, 8), (8, 8, 8), (40, 8, 8)
    return [
        {"name": "balls-2d", "make": packed_balls, "shape": s2, "voxel_size": iso2},
        {"name": "cells-2d", "make": grown_cells, "shape": s2, "voxel_size": iso2},
        {"name": "balls-3d", "make": packed_balls, "shape": s3, "voxel_size": iso3},
        {"name": "cells-3d", "make": grown_cells, "shape": s3, "voxel_size": iso3},
        {"name": "balls-3d-aniso", "make": packed_balls, "shape": sa, "voxel_size": aniso},
        {"name": "cells-3d-aniso", "make": grown_cells, "shape": sa, "voxel_size": aniso},
        {"name": "balls-3d-round-nm", "make": packed_balls, "shape": sa, "voxel_size": aniso,
         "round_in_world": True},
    ]


def f1(seg: np.ndarray, labels: np.ndarray) -> float:
    from innerdist.evaluate import instance_scores

    scores = instance_scores(seg, labels, iou_thresholds=[0.5])
    return float(scores["matching"][0]["f1_score"])


def run_case(case: dict[str, Any], seed: int, scale: float, work: Path) -> dict[str, Any]:
    from funlib.geometry import Roi

    from innerdist.segment import segment_volume
    from innerdist.targets import compute_targets
    from innerdist.volumes import create_volume, mark_complete, open_volume
    from innerdist.watershed import instances

    rng = np.random.default_rng(seed)
    voxel = case["voxel_size"]
    labels = case["make"](rng, case["shape"], voxel if case.get("round_in_world") else None)
    roi = Roi((0,) * len(voxel), tuple(s * v for s, v in zip(labels.shape, voxel, strict=True)))
    folder = work / f"{case['name']}-{seed}.zarr"
    array = create_volume(folder / "labels", roi=roi, voxel_size=voxel, dtype=np.uint32)
    array[roi] = labels
    mark_complete(array)
    start = time.perf_counter()
    compute_targets(folder / "labels", folder / "pred", scale_factor=scale, progress=False)
    targets_s = time.perf_counter() - start
    start = time.perf_counter()
    segment_volume(folder / "pred", folder / "seg", progress=False)
    segment_s = time.perf_counter() - start
    seg = open_volume(folder / "seg")
    row: dict[str, Any] = {
        "case": case["name"], "seed": seed, "objects": int(labels.max()),
        "default": f1(seg[seg.roi][0], labels),
        "attrs": dict(seg.attrs["innerdist_segmentation"]),
        "targets_s": targets_s, "segment_s": segment_s,
    }
    pred_array = open_volume(folder / "pred")
    pred = pred_array[pred_array.roi][0]
    level = instances(pred, foreground_level=0.05, seed_level=0.8)
    row["level"] = f1(level, labels)
    for h in DYNAMICS:
        got = instances(pred, foreground_level=0.05, seed_level=0.8,
                        seed_dynamic=h * min(voxel), scale=scale)
        row[f"h={h}"] = f1(got, labels)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small volumes, one seed")
    parser.add_argument("--seeds", type=int, default=3, help="label images per case")
    parser.add_argument("--scale", type=float, nargs="+", default=[50.0],
                        help="tanh scales of the targets, nm")
    parser.add_argument("--cases", nargs="+", help="only these cases")
    parser.add_argument("--out", type=Path, default=Path("bench/results/roundtrip.json"))
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    rows = []
    columns = ["default", "level", *[f"h={h}" for h in DYNAMICS]]
    with tempfile.TemporaryDirectory(prefix="innerdist-bench-roundtrip-") as tmp:
        for scale in args.scale:
            for case in cases(args.quick):
                if args.cases and case["name"] not in args.cases:
                    continue
                for seed in range(seeds):
                    row = run_case(case, seed, scale, Path(tmp))
                    row["scale_nm"] = scale
                    rows.append(row)
                    print(f"  {case['name']} seed {seed} scale {scale}: {row['objects']} "
                          f"objects, default F1 {row['default']:.3f}", file=sys.stderr)
    print(f"instance F1@0.5 (mean over {seeds} label image(s); worst in brackets); default = "
          "targets -> segment_volume with default settings; h in voxels of the finest axis")
    header = f"{'case':<18} {'scale':>5} {'objects':>7} " + " ".join(f"{c:>13}" for c in columns)
    print(header)
    summary = []
    for scale in args.scale:
        for name in dict.fromkeys(r["case"] for r in rows):
            group = [r for r in rows if r["case"] == name and r["scale_nm"] == scale]
            if not group:
                continue
            entry = {"case": name, "scale_nm": scale,
                     "objects": int(np.mean([r["objects"] for r in group]))}
            cells = []
            for c in columns:
                values = [r[c] for r in group]
                entry[c] = {"mean": float(np.mean(values)), "min": float(np.min(values))}
                cells.append(f"{np.mean(values):.3f} ({np.min(values):.3f})")
            summary.append(entry)
            print(f"{name:<18} {scale:>5.0f} {entry['objects']:>7} "
                  + " ".join(f"{c:>13}" for c in cells))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(
        {"machine": platform.platform(), "dynamics_voxels": list(DYNAMICS), "summary": summary,
         "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
