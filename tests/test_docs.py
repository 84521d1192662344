"""The contracts in docs/ hold, and the repository stands on its own."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
EXAMPLES = [d for d in DOCS if "```python" in d.read_text()]


@pytest.mark.parametrize("doc", EXAMPLES, ids=[d.name for d in EXAMPLES])
def test_python_blocks_of_the_docs_run(doc: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    namespace: dict = {}
    for block in blocks:  # blocks of one page share a namespace, like a reader's session
        exec(compile(block, str(doc), "exec"), namespace)


def test_the_targets_contract_is_in_the_repository() -> None:
    assert ROOT / "docs" / "targets.md" in EXAMPLES  # and its examples run


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    return [ROOT / n for n in names if n]


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    # A user's clone has none of these: the folder the checkout sits in, the developers'
    # shared folder beside it, home and build-machine directories.
    outside = [
        re.escape(str(ROOT.parent) + "/"),
        r"(?<![\w.-])\.\./shared\b",
        r"(?<![\w/.-])shared/spec\b",
        r"/home/\w",
        r"/Users/\w",
        r"/root/",
    ]
    pattern = re.compile("|".join(f"(?:{p})" for p in outside))
    found = []
    for path in _tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line) and path.name != "test_docs.py":
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "tracked files name paths outside the repository:\n" + "\n".join(found)
