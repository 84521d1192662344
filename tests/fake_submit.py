"""A stand-in for a cluster's submit command (``bsub -K``, ``srun``), for the worker tests.

``python fake_submit.py CMD...`` runs CMD the way a batch system would on another node:
in a new session (no signals from the submitting terminal), from a fresh empty directory,
with an environment holding only ``PATH``, ``HOME`` and ``PYTHONPATH`` (the tests run
innerdist from its source tree). It waits for CMD and exits with its status.

``FAKE_SUBMIT_PIDS=DIR`` records each started worker's pid as ``DIR/<pid>`` (for tests
that kill workers). ``FAKE_SUBMIT_KILL_AFTER=DIR:N`` kills the worker with SIGKILL once
``DIR`` (an output's chunk folder) holds at least N files, on the first launch only (a
worker dying part way; the marker is ``DIR/../.fake-killed``).
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    command = sys.argv[1:]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": tempfile.mkdtemp(prefix="fake-home-"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    workdir = tempfile.mkdtemp(prefix="fake-node-")
    proc = subprocess.Popen(command, cwd=workdir, env=env, start_new_session=True)
    pids = os.environ.get("FAKE_SUBMIT_PIDS")
    if pids:
        Path(pids, str(proc.pid)).touch()
    kill_after = os.environ.get("FAKE_SUBMIT_KILL_AFTER")
    if kill_after:
        folder, count = kill_after.rsplit(":", 1)
        marker = Path(folder).parent / ".fake-killed"
        try:
            marker.touch(exist_ok=False)  # only the first launch kills its worker
        except FileExistsError:
            return proc.wait()
        while proc.poll() is None:
            chunks = sum(len(files) for _, _, files in os.walk(folder))
            if chunks >= int(count):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
