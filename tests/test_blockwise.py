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
from innerdist.volumes import is_complete, open_volume

ROI = Roi((10, 21), (100, 90))
VOXEL = (2, 3)


def _job(tmp_path, fail_at=None, num_workers=1, job=None):
    path = str(tmp_path / "o.zarr" / "x")
    out = open_or_create_output(path, job=job or {"a": 1}, overwrite=False, roi=ROI,
                                voxel_size=VOXEL, dtype=np.float32, chunk_shape=(10, 10))
    calls = tmp_path / "calls.txt"

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
    if num_workers == 1:  # serial: the block's own exception propagates
        with pytest.raises(RuntimeError, match="boom"):
            _job(tmp_path, fail_at=Coordinate((30, 51)))
    else:
        with pytest.raises(BlockFailedError, match="1 of 15 blocks did not finish.*boom"):
            _job(tmp_path, fail_at=Coordinate((30, 51)), num_workers=2)
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


def test_worker_input_errors_become_value_errors(tmp_path):
    path = str(tmp_path / "o.zarr" / "z")

    def process(read_roi, write_roi):
        raise ValueError(f"NaN in raw at {write_roi}")

    with pytest.raises(ValueError, match="first error: ValueError: NaN in raw"):
        run_blockwise("t", total_roi=ROI, block_shape=Coordinate((50, 45)),
                      context=Coordinate((0, 0)), process=process,
                      tracking_dir=tracking_dir_for(path), num_workers=2)


def test_parallel_workers(tmp_path):
    path, _ = _job(tmp_path, num_workers=2)
    np.testing.assert_array_equal(open_volume(path)[ROI], 8.0)


def test_existing_outputs(tmp_path):
    _job(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        _job(tmp_path)
    path = str(tmp_path / "o.zarr" / "y")
    open_or_create_output(path, job={"a": 1}, overwrite=False, roi=ROI, voxel_size=VOXEL,
                          dtype=np.uint8)
    with pytest.raises(FileExistsError, match="different job"):
        open_or_create_output(path, job={"a": 2}, overwrite=False, roi=ROI, voxel_size=VOXEL,
                              dtype=np.uint8)
    again = open_or_create_output(path, job={"a": 2}, overwrite=True, roi=ROI,
                                  voxel_size=VOXEL, dtype=np.uint8)
    assert not is_complete(again)


def test_bad_arguments():
    with pytest.raises(ValueError, match="must have 2 axes"):
        run_blockwise("t", total_roi=ROI, block_shape=Coordinate((2, 2, 2)),
                      context=Coordinate((0, 0)), process=print, tracking_dir="x")
    with pytest.raises(ValueError, match="num_workers"):
        run_blockwise("t", total_roi=ROI, block_shape=Coordinate((2, 2)),
                      context=Coordinate((0, 0)), process=print, tracking_dir="x",
                      num_workers=0)
