import os

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from innerdist.blockwise import (
    BlockFailedError,
    finish_output,
    open_or_create_output,
    run_blockwise,
    tracking_dir_for,
)
from innerdist.volumes import create_volume, is_complete, open_volume

ROI = Roi((10, 21), (100, 90))
VOXEL = (2, 3)


def _job(tmp_path, fail_at=None, num_workers=1, job=None):
    path = str(tmp_path / "o.zarr" / "x")
    out = open_or_create_output(path, job=job or {"a": 1}, overwrite=False, roi=ROI,
                                voxel_size=VOXEL, dtype=np.float32, chunk_shape=(10, 10))
    calls = tmp_path / "calls.txt"
    if is_complete(out):  # the same job finished before: nothing to do
        return path, calls

    def process(read_roi, write_roi):
        with open(calls, "a") as f:
            f.write(f"{write_roi.offset}\n")
        if fail_at is not None and write_roi.offset == fail_at:
            raise RuntimeError("boom")
        # record the read roi's grown size: checks the context is applied
        dst = open_volume(path, mode="r+")
        dst[write_roi] = float(read_roi.shape[0] - write_roi.shape[0])

    run_blockwise("t", total_roi=ROI, block_shape=Coordinate((20, 30)),
                  context=Coordinate((4, 6)), process=process,
                  tracking_dir=tracking_dir_for(path), num_workers=num_workers)
    finish_output(out, path)
    return path, calls


def test_blocks_tile_the_roi_with_context(tmp_path):
    path, calls = _job(tmp_path)
    out = open_volume(path)
    assert is_complete(out)
    np.testing.assert_array_equal(out[out.roi], 8.0)  # 2 * context on axis 0 everywhere
    assert len(calls.read_text().splitlines()) == 5 * 3
    assert not tracking_dir_for(path).exists()


@pytest.mark.parametrize("num_workers", [1, 2])
def test_failed_block_then_resume_skips_finished_blocks(tmp_path, num_workers):
    # The block's own exception propagates, serial or from a worker process.
    with pytest.raises(RuntimeError, match="boom") as caught:
        _job(tmp_path, fail_at=Coordinate((30, 51)), num_workers=num_workers)
    assert type(caught.value) is RuntimeError and str(caught.value) == "boom"
    if num_workers > 1:
        assert "1 of 15 blocks did not finish" in caught.value.__notes__[0]
    path = str(tmp_path / "o.zarr" / "x")
    assert not is_complete(open_volume(path))
    failed_calls_before = (tmp_path / "calls.txt").read_text().splitlines().count("(30, 51)")
    _job(tmp_path)
    # Blocks that finished are not run again: every other block ran exactly once over both
    # runs, and the failed one once more in the second run.
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls.count("(30, 51)") == failed_calls_before + 1
    others = [c for c in calls if c != "(30, 51)"]
    assert len(others) == len(set(others)) == 14
    out = open_volume(path)
    assert is_complete(out)
    np.testing.assert_array_equal(out[out.roi], 8.0)


class _OddError(Exception):
    def __init__(self, a, b):  # pickles, but does not unpickle with one argument
        super().__init__(f"{a}-{b}")


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ValueError("NaN in raw at block"), marks=pytest.mark.slow),
        pytest.param(TypeError("labels must be integer"), marks=pytest.mark.slow),
        pytest.param(PermissionError(13, "Permission denied", "/x/y.zarr"), marks=pytest.mark.slow),
        OSError(28, "No space left on device", "/x/y.zarr/c/0"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_worker_errors_keep_their_type(tmp_path, error):
    """Errors cross the process boundary as objects (pickled by the worker), not as
    traceback text to parse."""
    path = str(tmp_path / "o.zarr" / "z")

    def process(read_roi, write_roi):
        raise error

    with pytest.raises(type(error)) as caught:
        run_blockwise("t", total_roi=ROI, block_shape=Coordinate((100, 90)),
                      context=Coordinate((0, 0)), process=process,
                      tracking_dir=tracking_dir_for(path), num_workers=2, progress=False)
    assert type(caught.value) is type(error)
    assert str(caught.value) == str(error)
    if isinstance(error, OSError):
        assert caught.value.errno == error.errno and caught.value.filename == error.filename
    assert "blocks did not finish" in caught.value.__notes__[0]


@pytest.mark.slow
def test_worker_errors_that_do_not_unpickle_and_killed_workers(tmp_path):
    path = str(tmp_path / "o.zarr" / "z")

    def odd(read_roi, write_roi):
        raise _OddError(1, 2)

    with pytest.raises(BlockFailedError, match="_OddError: 1-2"):
        run_blockwise("t", total_roi=ROI, block_shape=Coordinate((100, 90)),
                      context=Coordinate((0, 0)), process=odd,
                      tracking_dir=tracking_dir_for(path), num_workers=2, progress=False)

    def killed(read_roi, write_roi):
        os._exit(3)  # a worker that dies without a word: only daisy's text is left

    with pytest.raises(BlockFailedError, match="blocks did not finish"):
        run_blockwise("k", total_roi=ROI, block_shape=Coordinate((100, 90)),
                      context=Coordinate((0, 0)), process=killed,
                      tracking_dir=tracking_dir_for(path), num_workers=2, progress=False)


def test_parallel_workers(tmp_path):
    path, _ = _job(tmp_path, num_workers=2)
    np.testing.assert_array_equal(open_volume(path)[ROI], 8.0)


def test_existing_outputs(tmp_path):
    _job(tmp_path)
    calls = (tmp_path / "calls.txt").read_text()
    # The same job again: already complete, a no-op that runs no block.
    path, _ = _job(tmp_path)
    assert (tmp_path / "calls.txt").read_text() == calls
    assert is_complete(open_volume(path))
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        _job(tmp_path, job={"a": 3})
    path = str(tmp_path / "o.zarr" / "y")
    open_or_create_output(path, job={"a": 1}, overwrite=False, roi=ROI, voxel_size=VOXEL,
                          dtype=np.uint8)
    with pytest.raises(FileExistsError, match="different job"):
        open_or_create_output(path, job={"a": 2}, overwrite=False, roi=ROI, voxel_size=VOXEL,
                              dtype=np.uint8)
    again = open_or_create_output(path, job={"a": 2}, overwrite=True, roi=ROI,
                                  voxel_size=VOXEL, dtype=np.uint8)
    assert not is_complete(again)


def test_existing_block_shape_is_read_from_the_job(tmp_path):
    from innerdist.blockwise import existing_block_shape

    path = str(tmp_path / "o.zarr" / "x")
    assert existing_block_shape(path, "segment", 2) is None  # no output
    for job, found in [
        ({"task": "segment", "block_shape": [16, 24]}, (16, 24)),
        ({"task": "predict", "block_shape": [16, 24]}, None),  # another task's
        ({"task": "segment", "block_shape": [16]}, None),  # other axes
        ({"task": "segment", "block_shape": [16, True]}, None),
        ({"task": "segment"}, None),
    ]:
        open_or_create_output(path, job=job, overwrite=True, roi=ROI, voxel_size=VOXEL,
                              dtype=np.uint8)
        assert existing_block_shape(path, "segment", 2) == found, job


def test_overwrite_replaces_only_innerdist_job_outputs(tmp_path):
    """--overwrite never deletes data that no innerdist job wrote."""
    user = tmp_path / "o.zarr" / "user"
    create_volume(user, roi=ROI, voxel_size=VOXEL, dtype=np.uint8)  # no job attribute
    plain = tmp_path / "o.zarr" / "folder"
    plain.mkdir(parents=True)
    (plain / "notes.txt").write_text("mine")
    for target in (user, plain):
        before = _tree_bytes(target)
        with pytest.raises(FileExistsError, match="not written by an innerdist job"):
            open_or_create_output(target, job={"a": 1}, overwrite=True, roi=ROI,
                                  voxel_size=VOXEL, dtype=np.uint8)
        assert _tree_bytes(target) == before
    with pytest.raises(FileExistsError, match="not a zarr array"):
        open_or_create_output(plain, job={"a": 1}, overwrite=False, roi=ROI,
                              voxel_size=VOXEL, dtype=np.uint8)


def test_output_may_not_touch_an_input(tmp_path):
    labels = tmp_path / "in.zarr" / "labels"
    create_volume(labels, roi=ROI, voxel_size=VOXEL, dtype=np.uint8)
    before = _tree_bytes(tmp_path / "in.zarr")
    for out in (labels, tmp_path / "in.zarr" / "sub" / ".." / "labels",
                tmp_path / "in.zarr" / "labels" / ".."):
        with pytest.raises(ValueError, match="would destroy an input"):
            open_or_create_output(out, job={"a": 1}, overwrite=True, inputs={"labels": labels},
                                  roi=ROI, voxel_size=VOXEL, dtype=np.uint8)
    assert _tree_bytes(tmp_path / "in.zarr") == before


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "o.zarr" / "x"
    # Another process holds the lock of this output (like a running predict).
    code = (
        "import sys, time; from innerdist.safety import acquire_output_lock; "
        f"acquire_output_lock({str(tracking_dir_for(path))!r}, 'x'); print('held', flush=True); "
        "sys.stdin.read()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FileExistsError, match="being written by another running job"):
            open_or_create_output(path, job={"a": 1}, overwrite=True, roi=ROI,
                                  voxel_size=VOXEL, dtype=np.uint8)
        assert not path.exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock, no stale lock is left
        holder.wait()
    out = open_or_create_output(path, job={"a": 1}, overwrite=True, roi=ROI,
                                voxel_size=VOXEL, dtype=np.uint8)
    finish_output(out, path)
    assert is_complete(open_volume(path))


def _tree_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_bad_arguments():
    with pytest.raises(ValueError, match="must have 2 axes"):
        run_blockwise("t", total_roi=ROI, block_shape=Coordinate((2, 2, 2)),
                      context=Coordinate((0, 0)), process=print, tracking_dir="x")
    with pytest.raises(ValueError, match="num_workers"):
        run_blockwise("t", total_roi=ROI, block_shape=Coordinate((2, 2)),
                      context=Coordinate((0, 0)), process=print, tracking_dir="x",
                      num_workers=0)


def test_an_output_off_the_voxel_grid_names_the_input(tmp_path):
    with pytest.raises(ValueError, match=r"taken from the labels 'in.zarr/l'\) has a shape "
                       r"\(8, 7\) that is not a multiple of the voxel size \(2, 2\)"):
        open_or_create_output(tmp_path / "o.zarr" / "t", job={"a": 1}, overwrite=False,
                              inputs={"labels": "in.zarr/l"}, roi=Roi((2, 3), (8, 7)),
                              voxel_size=(2, 2), dtype=np.uint8)
    assert not (tmp_path / "o.zarr").exists()


def test_an_empty_output_folder_left_by_a_kill_is_reused(tmp_path):
    """Killed between creating the output's folder and its metadata: an empty folder tree
    holds nothing to lose, so the same command (no --overwrite) starts afresh."""
    path = tmp_path / "o.zarr" / "x"
    (path / "c" / "0").mkdir(parents=True)
    out = open_or_create_output(path, job={"a": 1}, overwrite=False, roi=ROI,
                                voxel_size=VOXEL, dtype=np.uint8)
    assert not is_complete(out) and (path / "zarr.json").exists()
