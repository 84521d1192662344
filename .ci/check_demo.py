"""CI: check what the README's first command left behind (a report, its pictures, real scores).

Usage: ``python .ci/check_demo.py DEMO_DIR``. Exits 1 with one line per problem.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path


def problems(root: Path) -> list[str]:
    found: list[str] = []
    report = root / "report.md"
    if not report.is_file():
        return [f"{report} is missing"]
    text = report.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    if not images:
        found.append(f"{report} shows no picture")
    for name in images:
        path = root / name
        if not path.is_file() or path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            found.append(f"{report} shows {name}, which is not a PNG file in {root}")
    scores_path = root / "scores.json"
    if not scores_path.is_file():
        return [*found, f"{scores_path} is missing"]
    scores = json.loads(scores_path.read_text())
    channel = scores["channels"][0]
    dice = channel["binary"]["dice"]
    at_half = [
        m for m in channel.get("instances", {}).get("matching", []) if m["iou_threshold"] == 0.5
    ]
    f1 = at_half[0]["f1_score"] if at_half else None
    for name, value in (("binary dice", dice), ("instance F1 @ 0.5", f1)):
        if not isinstance(value, int | float) or not math.isfinite(value):
            found.append(f"{scores_path}: {name} is {value!r}, not a number")
        elif not any(f"{value:.{digits}f}" in text for digits in (2, 3, 4)):
            found.append(f"{report} does not show the {name} of scores.json ({value:.3f})")
    return found


if __name__ == "__main__":
    root = Path(sys.argv[1])
    bad = problems(root)
    for line in bad:
        print(f"check_demo: {line}", file=sys.stderr)
    if not bad:
        print(f"check_demo: {root} holds a report with pictures and real scores")
    sys.exit(1 if bad else 0)
