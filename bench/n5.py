"""innerdist's N5 reader against tensorstore's, on a 256^3 N5 volume written by tensorstore.

    python bench/n5.py [--size 256] [--repeats 3] [--out bench/results/n5.json]

Reads, per compression (raw, gzip): the whole volume, 16 block-aligned 64^3 crops and 16
unaligned 96^3 crops (what training crops look like). Each read is checked to return the
same voxels from both readers. Time: best of N wall-clock runs, the readers interleaved
(the machine is shared); ``x innerdist`` is tensorstore's speed over innerdist's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np


def _write(path: Path, data: np.ndarray, compression: str) -> None:
    import tensorstore as ts

    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "dimensions": list(reversed(data.shape)),
            "blockSize": [64, 64, 64],
            "dataType": "uint8",
            "compression": {"type": compression}
            if compression == "raw"
            else {"type": "gzip", "level": 6},
        },
        "create": True,
        "delete_existing": True,
    }
    store = ts.open(spec).result()
    # tensorstore indexes N5 x first; write the numpy (z, y, x) array transposed.
    store[...] = data.T
    meta = json.loads((path / "attributes.json").read_text())
    meta["resolution"] = [8, 8, 8]
    (path / "attributes.json").write_text(json.dumps(meta))


def _best(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _read_all(read: Callable[[tuple[slice, ...]], np.ndarray], boxes: list) -> None:
    for box in boxes:
        read(box)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/n5.json")
    args = parser.parse_args()
    if args.size < 128 or args.size % 64:
        parser.error(f"--size must be a multiple of 64 and >= 128 (96^3 crops), got {args.size}")

    import tensorstore as ts

    from innerdist.n5 import N5Array

    rng = np.random.default_rng(0)
    n = args.size
    # Smooth-ish EM-like content, so gzip has something to compress.
    data = (
        rng.integers(0, 32, (n, n, n), dtype=np.uint8) + np.arange(n, dtype=np.uint8)[:, None, None]
    )
    aligned = [tuple(int(v) * 64 for v in rng.integers(0, n // 64, 3)) for _ in range(16)]
    unaligned = [tuple(int(v) for v in rng.integers(0, n - 96, 3)) for _ in range(16)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for compression in ("raw", "gzip"):
            path = Path(tmp) / f"{compression}.n5" / "raw"
            _write(path, data, compression)
            ours = N5Array(path)
            theirs = ts.open(
                {"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}}
            ).result()

            def read_ts(box: tuple[slice, ...], store: object = theirs) -> np.ndarray:
                # x-first tensorstore -> numpy order.
                return np.asarray(store[tuple(reversed(box))].read().result()).T  # type: ignore[index]

            def read_ours(box: tuple[slice, ...], reader: N5Array = ours) -> np.ndarray:
                return reader[box]

            cases = {
                f"whole {n}^3": [(slice(0, n),) * 3],
                "16 x 64^3 aligned": [tuple(slice(o, o + 64) for o in c) for c in aligned],
                "16 x 96^3 unaligned": [tuple(slice(o, o + 96) for o in c) for c in unaligned],
            }
            for name, boxes in cases.items():
                for box in boxes:
                    np.testing.assert_array_equal(read_ours(box), data[box])
                    np.testing.assert_array_equal(read_ts(box), data[box])
                voxels = sum(int(np.prod([s.stop - s.start for s in b])) for b in boxes)
                t_ours = t_ts = float("inf")
                for _ in range(args.repeats):  # interleaved
                    t_ours = min(t_ours, _best(partial(_read_all, read_ours, boxes), 1))
                    t_ts = min(t_ts, _best(partial(_read_all, read_ts, boxes), 1))
                rows.append(
                    {
                        "compression": compression,
                        "case": name,
                        "innerdist_mvox_s": voxels / t_ours / 1e6,
                        "tensorstore_mvox_s": voxels / t_ts / 1e6,
                        "tensorstore_over_innerdist": t_ours / t_ts,
                    }
                )
    print("| compression | case | innerdist Mvox/s | tensorstore Mvox/s | x innerdist |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['compression']} | {r['case']} | {r['innerdist_mvox_s']:.1f} | "
            f"{r['tensorstore_mvox_s']:.1f} | {r['tensorstore_over_innerdist']:.2f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"size": n, "repeats": args.repeats, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
