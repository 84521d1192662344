"""A tiny block function for the worker tests, importable by a worker from the job file:
each block writes ``1000 * block row + its voxel index`` into a 1-D zarr array."""

import time

import numpy as np
import zarr


def toy_factory(*, out, delay=0.0, fail_at=None):
    def process(read_roi, write_roi):
        if fail_at is not None and write_roi.begin[0] == fail_at:
            raise ValueError(f"toy block at {fail_at} refuses")
        time.sleep(delay)
        z = zarr.open_array(out, mode="r+")
        z[write_roi.to_slices()] = write_roi.begin[0] * 1000 + np.arange(write_roi.shape[0])
    return process


def expected(size, block):
    return np.array([(i // block) * block * 1000 + i % block for i in range(size)])
