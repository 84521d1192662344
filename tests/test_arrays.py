import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from funlib.persistence import prepare_ds

from innerdist.arrays import (
    DistanceArray,
    InstanceArray,
    IntensitiesArray,
    MaskArray,
    NumpyArray,
    as_numpy_array,
)


def test_from_np_array_properties():
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    a = NumpyArray.from_np_array(data, Roi((10, 20), (30, 8)), (10, 2), ["c^", "y", "x"])
    assert a.dims == 2
    assert a.num_channels == 2
    assert a.voxel_size == Coordinate((10, 2))
    assert a.dtype == np.float32
    assert a.writable
    assert a.spatial_axes == ["y", "x"]
    np.testing.assert_array_equal(a[Roi((20, 24), (20, 4))], data[:, 1:3, 2:4])


def test_no_channel_axis():
    a = NumpyArray.from_np_array(np.zeros((3, 4), np.uint64), Roi((0, 0), (3, 4)), (1, 1), "yx")
    assert a.dims == 2
    with pytest.raises(ValueError, match="no channel axis"):
        _ = a.num_channels


@pytest.mark.parametrize(
    ("shape", "roi", "voxel", "axes", "match"),
    [
        ((3, 4), Roi((0, 0), (3, 4)), (1, 1), ["c^", "y", "x"], r"3 axis names .* 2 dimensions"),
        ((3, 4), Roi((0, 0), (3, 5)), (1, 1), ["y", "x"], r"roi shape \(3, 5\) does not match"),
        ((3, 4), Roi((0, 0), (3, 4)), (1, 1, 1), ["y", "x"], "voxel size .* 3 entries"),
        ((3, 4), Roi((0, 0), (3, 4)), (1, 1), ["x", "x"], "unique"),
        ((3, 4), Roi((0, 0), (0, 0)), (0, 1), ["y", "x"], "positive"),
    ],
)
def test_from_np_array_checks(shape, roi, voxel, axes, match):
    with pytest.raises(ValueError, match=match):
        NumpyArray.from_np_array(np.zeros(shape), roi, voxel, axes)


def test_from_np_array_rejects_non_arrays():
    with pytest.raises(TypeError, match="numpy array"):
        NumpyArray.from_np_array([[1, 2]], Roi((0, 0), (1, 2)), (1, 1), "yx")


def test_getitem_outside_roi():
    a = NumpyArray.from_np_array(np.zeros((3, 4)), Roi((0, 0), (3, 4)), (1, 1), "yx")
    with pytest.raises(ValueError, match="not inside"):
        a[Roi((2, 2), (4, 4))]


class _Spec:
    def __init__(self, roi, voxel_size):
        self.roi, self.voxel_size = roi, voxel_size


class _GpArray:
    def __init__(self, data, roi, voxel_size):
        self.data, self.spec = data, _Spec(roi, voxel_size)


def test_from_gp_array_duck_typed():
    gp = _GpArray(np.ones((2, 4, 4)), Roi((0, 0), (8, 8)), Coordinate((2, 2)))
    a = NumpyArray.from_gp_array(gp)
    assert a.num_channels == 2 and a.dims == 2 and a.roi == Roi((0, 0), (8, 8))
    with pytest.raises(TypeError, match="gunpowder-like"):
        NumpyArray.from_gp_array(np.zeros(3))
    with pytest.raises(ValueError, match="2 non-spatial axes"):
        NumpyArray.from_gp_array(_GpArray(np.ones((1, 2, 4, 4)), Roi((0, 0), (8, 8)), (2, 2)))


def test_as_numpy_array_reads_funlib_arrays(tmp_path):
    ds = prepare_ds(tmp_path / "a.zarr" / "x", shape=(4, 6), offset=(8, 4), voxel_size=(4, 2),
                    dtype=np.uint64, mode="w")
    ds[ds.roi] = np.arange(24, dtype=np.uint64).reshape(4, 6)
    a = as_numpy_array(ds)
    assert a.roi == Roi((8, 4), (16, 12)) and a.voxel_size == (4, 2)
    np.testing.assert_array_equal(a.data, np.arange(24).reshape(4, 6))
    assert as_numpy_array(a) is a
    with pytest.raises(TypeError, match="plain numpy arrays carry no voxel size"):
        as_numpy_array(np.zeros(3))


def test_array_types_say_how_to_resample():
    assert DistanceArray({0: "mito"}).interpolatable
    assert DistanceArray({0: "mito"}).max == 1.0
    assert IntensitiesArray().interpolatable
    assert not MaskArray().interpolatable
    assert not InstanceArray({0: "mito"}).interpolatable
