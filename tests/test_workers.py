"""Cluster workers started through a submit template (innerdist.workers).

The submit command is ``tests/fake_submit.py``: it starts the worker in a new session, from
an empty directory, with an environment of PATH, HOME and PYTHONPATH only, as a batch
system on another node would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi
from nets import NORM_UINT8, tiny_predictor, tiny_unet
from toyjob import expected

import innerdist
from innerdist.blockwise import run_blockwise
from innerdist.workers import (
    MAX_RESTARTS_ENV,
    WORKER_COMMAND_ENV,
    BlockFunction,
    WorkerCommandError,
    check_worker_command,
    job_file_for,
    max_worker_restarts,
    read_job_file,
    resolve_worker_command,
    run_worker,
    write_job_file,
)

TESTS = Path(__file__).resolve().parent
SRC = Path(innerdist.__file__).resolve().parent.parent
SUBMIT = f"{sys.executable} {TESTS / 'fake_submit.py'} {{command}}"


@pytest.fixture(autouse=True)
def worker_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers start in another directory: the source tree must be on an absolute path.
    monkeypatch.setenv("PYTHONPATH", f"{SRC}{os.pathsep}{TESTS}")
    monkeypatch.delenv(WORKER_COMMAND_ENV, raising=False)
    monkeypatch.delenv(MAX_RESTARTS_ENV, raising=False)


# --- the template, the limits, the job file ------------------------------------------------


def test_template_needs_the_placeholder() -> None:
    assert check_worker_command("srun {command}") == "srun {command}"
    with pytest.raises(ValueError, match=r"worker command 'srun -n 1' has no \{command\}"):
        check_worker_command("srun -n 1")
    with pytest.raises(TypeError, match="must be a string"):
        check_worker_command(["srun"])  # type: ignore[arg-type]


def test_template_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_worker_command(None) is None
    monkeypatch.setenv(WORKER_COMMAND_ENV, "bsub -K {command}")
    assert resolve_worker_command(None) == "bsub -K {command}"
    assert resolve_worker_command("srun {command}") == "srun {command}"
    monkeypatch.setenv(WORKER_COMMAND_ENV, "bsub -K")
    with pytest.raises(ValueError, match="'bsub -K' has no"):
        resolve_worker_command(None)


def test_restart_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert max_worker_restarts() == 10
    monkeypatch.setenv(MAX_RESTARTS_ENV, "3")
    assert max_worker_restarts() == 3
    for bad in ("-1", "many"):
        monkeypatch.setenv(MAX_RESTARTS_ENV, bad)
        with pytest.raises(ValueError, match=f"{MAX_RESTARTS_ENV} must be an integer >= 0"):
            max_worker_restarts()


def test_block_function_checks_and_builds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be 'package.module:function'"):
        BlockFunction("toyjob.toy_factory", {})
    with pytest.raises(TypeError, match="must be JSON-able"):
        BlockFunction("toyjob:toy_factory", {"out": tmp_path})
    with pytest.raises(TypeError, match="must be JSON-able"):
        BlockFunction("toyjob:toy_factory", {"delay": float("nan")})
    out = str(tmp_path / "o.zarr")
    zarr.open_array(out, mode="w", shape=(6,), chunks=(3,), dtype="i8")
    BlockFunction("toyjob:toy_factory", {"out": out}).build()(Roi((3,), (3,)), Roi((3,), (3,)))
    np.testing.assert_array_equal(zarr.open_array(out)[:], [0, 0, 0, 3000, 3001, 3002])


def test_job_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = job_file_for(tmp_path / "track", "toy")
    assert path == tmp_path / "track" / "toy.job.json"
    spec = BlockFunction("toyjob:toy_factory", {"out": "/data/o.zarr", "delay": (1, 2)})
    write_job_file(path, name="toy", block_function=spec, total_roi=Roi((4,), (20,)),
                   block_shape=Coordinate((5,)), context=Coordinate((1,)))
    job = read_job_file(path)
    assert job["block_function"] == {
        "factory": "toyjob:toy_factory", "params": {"out": "/data/o.zarr", "delay": [1, 2]}
    }
    assert job["total_roi"] == {"offset": [4], "shape": [20]}
    assert (job["block_shape"], job["context"]) == ([5], [1])
    assert Path(job["workers"]).is_dir()
    assert not list(path.parent.glob(".*"))  # written atomically, no temporary left

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_job_file(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        read_job_file(bad)
    bad.write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="not an innerdist job file of version 1"):
        read_job_file(bad)
    bad.write_text(json.dumps({"version": 1, "name": "x"}))
    with pytest.raises(ValueError, match=r"lacks \['block_function', 'workers'\]"):
        read_job_file(bad)


def test_worker_argument_errors(tmp_path: Path) -> None:
    path = write_job_file(
        job_file_for(tmp_path, "toy"), name="toy",
        block_function=BlockFunction("toyjob:toy_factory", {"out": str(tmp_path / "o")}),
        total_roi=Roi((0,), (4,)), block_shape=Coordinate((2,)), context=Coordinate((0,)),
    )
    with pytest.raises(ValueError, match="worker token must be alphanumeric"):
        run_worker(path, context="hostname=h:port=1:task_id=toy:worker_id=0", token="../x")
    with pytest.raises(ValueError, match="is not a daisy context"):
        run_worker(path, context="nonsense", token="abc")


def test_worker_command_needs_a_worker_job(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="needs worker_job"):
        run_blockwise("toy", total_roi=Roi((0,), (4,)), block_shape=Coordinate((2,)),
                      context=Coordinate((0,)), process=lambda r, w: None,
                      tracking_dir=tmp_path, worker_command="{command}", progress=False)


def test_cli_template_errors_are_one_line(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from innerdist.cli import app

    runner = CliRunner()
    args = ["targets", str(tmp_path / "gt.zarr/labels"), str(tmp_path / "gt.zarr/t"),
            "--scale-factor", "4"]
    result = runner.invoke(app, [*args, "--worker-command", "srun -n 1"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "innerdist targets: error: worker command 'srun -n 1' has no {command}: it must say "
        "where the worker command goes, e.g. 'srun --gres=gpu:1 {command}'"
    )
    monkeypatch.setenv(WORKER_COMMAND_ENV, "bsub -K")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "worker command 'bsub -K' has no {command}" in result.output
    assert not (tmp_path / "gt.zarr").exists()


# --- running blocks through the template -----------------------------------------------------


def run_toy(tmp_path: Path, template: str, *, workers: int = 2, size: int = 40, block: int = 4,
            **params: Any) -> np.ndarray:
    out = str(tmp_path / "o.zarr")
    if not Path(out).exists():
        zarr.open_array(out, mode="w", shape=(size,), chunks=(block,), dtype="i8")
    spec = BlockFunction("toyjob:toy_factory", {"out": out, **params})
    run_blockwise("toy", total_roi=Roi((0,), (size,)), block_shape=Coordinate((block,)),
                  context=Coordinate((0,)), process=spec.build(),
                  tracking_dir=tmp_path / "track", num_workers=workers,
                  worker_command=template, worker_job=spec, progress=False)
    result: np.ndarray = zarr.open_array(out)[:]
    return result


def markers(tmp_path: Path, kind: str) -> list[Path]:
    return sorted((tmp_path / "track" / "toy.workers").glob(f"*.{kind}"))


def test_workers_through_the_fake_submitter(tmp_path: Path) -> None:
    np.testing.assert_array_equal(run_toy(tmp_path, SUBMIT), expected(40, 4))
    done = [json.loads(p.read_text()) for p in markers(tmp_path, "done")]
    assert sum(d["blocks"] for d in done) == 10
    assert 1 <= len(done) <= 2


def test_a_block_error_in_a_cluster_worker_is_reported_as_bad_input(tmp_path: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv(MAX_RESTARTS_ENV, "2")
    # The worker's own error comes back with its type, the job's state as a note.
    with pytest.raises(ValueError, match="toy block at 8") as raised:
        run_toy(tmp_path, SUBMIT, workers=1, fail_at=8)
    assert "1 of 10 blocks did not finish" in " ".join(raised.value.__notes__)
    # The template itself works: this is not blamed on it.
    assert markers(tmp_path, "started") and not markers(tmp_path, "failed")


def test_a_dead_worker_is_replaced_and_its_block_handed_out_again(tmp_path: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("FAKE_SUBMIT_KILL_AFTER", f"{tmp_path / 'o.zarr'}:3")
    got = run_toy(tmp_path, SUBMIT, workers=1, delay=0.05)
    np.testing.assert_array_equal(got, expected(40, 4))
    assert (tmp_path / ".fake-killed").exists()
    assert len(markers(tmp_path, "started")) == 2  # the killed worker and its replacement
    assert len(markers(tmp_path, "done")) == 1


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("sh -c 'echo queue normal is closed; exit 3' {command}",
         r"worker command \"sh -c 'echo queue normal is closed; exit 3' \{command\}\" exited "
         r"with code 3 without starting an innerdist worker .* last output line: "
         r"'queue normal is closed'"),
        ("echo submitted {command}",
         r"exited with code 0 without starting an innerdist worker .* last output line: "
         r"'submitted .*innerdist worker.*must run \{command\} and wait for it"),
    ],
)
def test_workers_that_never_start_end_the_job_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str, message: str
) -> None:
    monkeypatch.setenv(MAX_RESTARTS_ENV, "1")
    start = time.monotonic()
    with pytest.raises(WorkerCommandError, match=message):
        run_toy(tmp_path, template, workers=1)
    assert time.monotonic() - start < 120  # not a hang
    assert markers(tmp_path, "failed")


# --- targets, predict and segment through the workers ----------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Labels, raw, a checkpoint and a prediction, and each command's output run locally."""
    from labelgen import random_instances
    from test_segment import scene_2d, write_prediction
    from test_targets import write_labels

    from innerdist.checkpoint import random_checkpoint, save_checkpoint
    from innerdist.predict import predict_volume
    from innerdist.segment import segment_volume
    from innerdist.targets import compute_targets

    tmp = tmp_path_factory.mktemp("inputs")
    labels = random_instances(np.random.default_rng(3), (90, 70), num_seeds=25)
    write_labels(tmp / "in.zarr" / "labels", labels, (4, 4))
    raw = np.random.default_rng(5).integers(0, 256, (60, 68), dtype=np.uint8)
    write_labels(tmp / "in.zarr" / "raw", raw, (6, 4))
    ckpt = random_checkpoint(tiny_unet(2), tiny_predictor(1), (6, 4), NORM_UINT8, seed=4)
    save_checkpoint(tmp / "model.pt", ckpt)
    write_prediction(tmp / "in.zarr" / "pred", scene_2d()[np.newaxis].astype(np.float32))
    args = {
        "targets": ["in.zarr/labels", "OUT", "--scale-factor", "16", "--block-shape", "16,16"],
        "predict": ["model.pt", "in.zarr/raw", "OUT", "--block-shape", "12,12",
                    "--device", "cpu"],
        "segment": ["in.zarr/pred", "OUT", "--block-shape", "8,8"],
    }
    local = {
        "targets": compute_targets(tmp / "in.zarr/labels", tmp / "local.zarr/targets",
                                   scale_factor=16, block_shape=(16, 16), progress=False),
        "predict": predict_volume(tmp / "model.pt", tmp / "in.zarr/raw",
                                  tmp / "local.zarr/predict", block_shape=(12, 12),
                                  device="cpu", num_workers=2, progress=False),
        "segment": segment_volume(tmp / "in.zarr/pred", tmp / "local.zarr/segment",
                                  block_shape=(8, 8), progress=False),
    }
    return {"dir": tmp, "args": args, "local": {k: zarr_read(v) for k, v in local.items()}}


def zarr_read(path: str | Path) -> np.ndarray:
    """Level s0 of an output (an OME-NGFF image group), or a plain array."""
    node = zarr.open(str(path), mode="r")
    result: np.ndarray = (node["s0"] if isinstance(node, zarr.Group) else node)[:]
    return result


def cli(inputs: dict[str, Any], command: str, out: str, *extra: str,
        **popen: Any) -> subprocess.Popen[bytes]:
    args = [out if a == "OUT" else a for a in inputs["args"][command]]
    return subprocess.Popen(
        [sys.executable, "-m", "innerdist", command, *args, *extra], cwd=inputs["dir"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )


def finish(proc: subprocess.Popen[bytes]) -> str:
    output = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == 0, output
    return output


@pytest.mark.slow
@pytest.mark.parametrize("command", ["targets", "predict", "segment"])
def test_commands_through_workers_equal_the_local_run(inputs: dict[str, Any],
                                                      command: str) -> None:
    out = f"cluster.zarr/{command}"
    finish(cli(inputs, command, out, "--workers", "2", "--worker-command", SUBMIT))
    got = zarr_read(inputs["dir"] / out)
    np.testing.assert_array_equal(got, inputs["local"][command])


def chunk_count(dataset: Path) -> int:
    return sum(len([f for f in files if not f.startswith((".", "zarr"))])
               for _, _, files in os.walk(dataset))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["targets", "predict", "segment"])
def test_killed_workers_resume_to_the_same_output(inputs: dict[str, Any], command: str,
                                                  tmp_path: Path, monkeypatch) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("FAKE_SUBMIT_PIDS", str(pids))
    out = f"killed.zarr/{command}"
    watched = inputs["dir"] / out
    # segment: killed in its first pass (fragments), resumed through the later ones
    first_written = watched.with_name(watched.name + "__fragments") if command == "segment" \
        else watched
    proc = cli(inputs, command, out, "--workers", "2", "--worker-command", SUBMIT,
               start_new_session=True)
    deadline = time.monotonic() + 240
    while chunk_count(first_written) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids.iterdir():  # the workers run in sessions of their own
        try:
            os.kill(int(pid.name), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    attrs = json.loads((watched / "zarr.json").read_text())["attributes"]
    assert attrs.get("innerdist_complete") is not True

    finish(cli(inputs, command, out, "--workers", "2", "--worker-command", SUBMIT))
    np.testing.assert_array_equal(zarr_read(watched), inputs["local"][command])


# --- GPUs for workers ------------------------------------------------------------------------


def test_worker_id_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from innerdist.workers import worker_id_from_env

    monkeypatch.delenv("DAISY_CONTEXT", raising=False)
    assert worker_id_from_env() is None
    monkeypatch.setenv("DAISY_CONTEXT", "hostname=h:task_id=t:worker_id=3:port=1:logdir=x")
    assert worker_id_from_env() == 3
    monkeypatch.setenv("DAISY_CONTEXT", "hostname=h:port=1")
    assert worker_id_from_env() is None


def test_gpus_are_claimed_one_per_worker(tmp_path: Path) -> None:
    from innerdist.workers import claim_gpu

    ids = ["GPU-a", "GPU-b", "GPU-c"]
    first, h1 = claim_gpu(4, ids, tmp_path)  # 4 % 3: starts at the second GPU
    second, h2 = claim_gpu(1, ids, tmp_path)  # wants the second too: gets the next free one
    third, h3 = claim_gpu(0, ids, tmp_path)
    assert (first, second, third) == (1, 2, 0)
    with pytest.raises(RuntimeError, match="all 3 visible GPU.* are held by other innerdist"):
        claim_gpu(0, ids, tmp_path)
    h2.close()  # a worker that exits (or is killed) frees its GPU for its replacement
    assert claim_gpu(7, ids, tmp_path)[0] == 2
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        claim_gpu(0, [], tmp_path)
    h1.close()
    h3.close()


def test_a_daisy_worker_on_cuda_takes_a_free_gpu(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    import tempfile

    import torch

    from innerdist.predict import _worker_device

    class Props:
        def __init__(self, i: int) -> None:
            self.uuid = f"test-{tmp_path.name}-{i}"

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", Props)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.delenv("DAISY_CONTEXT", raising=False)
    assert _worker_device("cuda") == ("cuda", None)  # serial: this process's default GPU
    monkeypatch.setenv("DAISY_CONTEXT", "hostname=h:task_id=t:worker_id=1:port=1")
    assert _worker_device("cuda:0") == ("cuda:0", None)  # a named GPU is used as named
    assert _worker_device("cpu") == ("cpu", None)
    name, claim = _worker_device("cuda")
    assert name == "cuda:1"
    assert _worker_device("cuda")[0] == "cuda:0"  # worker 1 again (a replacement): GPU 0
    claim.close()


def test_local_cuda_workers_may_not_outnumber_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from innerdist.predict import _check_gpu_workers

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    cuda = torch.device("cuda")
    _check_gpu_workers(cuda, 2, local=True)
    _check_gpu_workers(cuda, 5, local=False)  # cluster workers: a GPU per worker's node
    _check_gpu_workers(torch.device("cuda:1"), 5, local=True)  # shared on purpose
    _check_gpu_workers(torch.device("cpu"), 5, local=True)
    with pytest.raises(ValueError, match=r"3 workers on device 'cuda' need 3 GPUs, but 2 are "
                       r"visible \(CUDA_VISIBLE_DEVICES=4,5\); use --workers 2 or fewer"):
        _check_gpu_workers(cuda, 3, local=True)


def test_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from innerdist.predict import _check_precision, _Runner

    assert _check_precision("fp32", torch.device("cpu")) == "fp32"
    assert _check_precision("bf16", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'fp16', 'bf16'\]"):
        _check_precision("fp8", torch.device("cuda"))
    with pytest.raises(ValueError, match="'fp16' is for prediction on a CUDA GPU; the device is"):
        _check_precision("fp16", torch.device("cpu"))
    # The half-precision path really runs the network in half precision (bf16 autocast
    # exists on the CPU too): close to fp32, not equal.
    from innerdist.checkpoint import random_checkpoint

    model = random_checkpoint(tiny_unet(2), tiny_predictor(1), (1, 1), NORM_UINT8,
                              seed=2).build_model().eval()
    batch = np.random.default_rng(0).random((1, 1, 44, 44), dtype=np.float32)
    full = _Runner(model, torch.device("cpu")).forward(batch)
    half = _Runner(model, torch.device("cpu"), precision="bf16").forward(batch)
    assert half.dtype == np.float32 and half.shape == full.shape
    assert 0 < np.abs(half - full).max() < 0.05


def test_zarr_batches_sets_the_batch_size_and_restores_it() -> None:
    import zarr

    from innerdist.workers import ZARR_BATCH_SIZE, zarr_batches

    key = "codec_pipeline.batch_size"
    before = zarr.config.get(key)
    with zarr_batches():
        assert zarr.config.get(key) == ZARR_BATCH_SIZE
    assert zarr.config.get(key) == before
    # A batch size the user chose is kept.
    with zarr.config.set({key: 3}):
        with zarr_batches():
            assert zarr.config.get(key) == 3
        assert zarr.config.get(key) == 3
