import json

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from innerdist.volumes import (
    create_volume,
    is_complete,
    mark_complete,
    num_channels,
    open_volume,
    spatial_axis_names,
    split_volume_path,
)


def test_split_volume_path(tmp_path):
    assert split_volume_path("a/b.zarr/c/d") == (tmp_path.__class__("a/b.zarr"), "c/d")
    assert split_volume_path("x.n5/raw")[1] == "raw"
    with pytest.raises(ValueError, match="no dataset inside"):
        split_volume_path("a/b.zarr")
    with pytest.raises(ValueError, match="no container component"):
        split_volume_path("a/b/c")


def test_create_open_round_trip(tmp_path):
    path = tmp_path / "v.zarr" / "pred"
    a = create_volume(path, roi=Roi((40, 8, 16), (400, 80, 80)), voxel_size=(40, 8, 8),
                      dtype=np.float32, num_channels=2, chunk_shape=(5, 5, 5))
    assert not is_complete(a)
    a[a.roi] = np.ones((2, 10, 10, 10), np.float32)
    mark_complete(a)
    b = open_volume(path)
    assert is_complete(b)
    assert b.roi == Roi((40, 8, 16), (400, 80, 80))
    assert b.voxel_size == Coordinate((40, 8, 8))
    assert b.axis_names == ["c^", "z", "y", "x"]
    assert num_channels(b) == 2
    assert zarr.open_array(str(path)).chunks == (2, 5, 5, 5)
    assert b[b.roi].sum() == 2000


def test_create_volume_errors(tmp_path):
    path = tmp_path / "v.zarr" / "x"
    create_volume(path, roi=Roi((0, 0), (4, 4)), voxel_size=(1, 1), dtype=np.uint8)
    with pytest.raises(FileExistsError, match="--overwrite"):
        create_volume(path, roi=Roi((0, 0), (4, 4)), voxel_size=(1, 1), dtype=np.uint8)
    create_volume(path, roi=Roi((0, 0), (4, 4)), voxel_size=(1, 1), dtype=np.uint8,
                  overwrite=True)
    with pytest.raises(ValueError, match="not a multiple of the voxel size"):
        create_volume(tmp_path / "w.zarr/x", roi=Roi((0, 0), (3, 4)), voxel_size=(2, 2),
                      dtype=np.uint8)
    # An offset off the voxel grid (a coarse OME-NGFF level's) is kept as it is.
    off = create_volume(tmp_path / "w.zarr/o", roi=Roi((1, 0), (4, 4)), voxel_size=(2, 2),
                        dtype=np.uint8)
    assert tuple(open_volume(tmp_path / "w.zarr/o").offset) == (1, 0) and off.shape == (2, 2)
    with pytest.raises(ValueError, match="3 axes but voxel size"):
        create_volume(tmp_path / "w.zarr/x", roi=Roi((0, 0, 0), (4, 4, 4)), voxel_size=(2, 2),
                      dtype=np.uint8)
    with pytest.raises(ValueError, match="positive"):
        create_volume(tmp_path / "w.zarr/x", roi=Roi((0, 0), (4, 4)), voxel_size=(0, 2),
                      dtype=np.uint8)
    with pytest.raises(ValueError, match="chunk shape"):
        create_volume(tmp_path / "w.zarr/x", roi=Roi((0, 0), (4, 4)), voxel_size=(1, 1),
                      dtype=np.uint8, chunk_shape=(2, 2, 2))


def test_open_volume_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no container"):
        open_volume(tmp_path / "nope.zarr" / "raw")
    create_volume(tmp_path / "v.zarr" / "raw", roi=Roi((0, 0), (4, 4)), voxel_size=(1, 1),
                  dtype=np.uint8)
    with pytest.raises(FileNotFoundError, match=r"dataset 'labels' not found .*\['raw'\]"):
        open_volume(tmp_path / "v.zarr" / "labels")


def test_open_ome_ngff_multiscale(tmp_path):
    root = tmp_path / "img.ome.zarr"
    group = zarr.open_group(str(root), mode="w", zarr_format=2)
    group.create_array("0", shape=(1, 4, 6), dtype=np.uint16)[:] = np.arange(24).reshape(1, 4, 6)
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "nm"},
                 {"name": "x", "type": "space", "unit": "nm"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 8, 4]},
            {"type": "translation", "translation": [0, 16, 40]}]}],
    }]
    a = open_volume(root / "0")
    assert a.voxel_size == Coordinate((8, 4))
    assert a.roi == Roi((16, 40), (32, 24))
    assert num_channels(a) == 1
    assert json.loads((root / ".zattrs").read_text())["multiscales"][0]["version"] == "0.4"


def test_spatial_axis_names():
    assert spatial_axis_names(2) == ["y", "x"]
    assert spatial_axis_names(3) == ["z", "y", "x"]
    with pytest.raises(ValueError, match="2 or 3"):
        spatial_axis_names(4)


def _on_disk(tmp_path, data, voxel, offset, channels=False):
    spatial = data.ndim - (1 if channels else 0)
    roi = Roi(offset, Coordinate(data.shape[-spatial:]) * Coordinate(voxel))
    a = create_volume(
        tmp_path / "r.zarr" / "a",
        roi=roi,
        voxel_size=voxel,
        dtype=data.dtype,
        num_channels=data.shape[0] if channels else None,
        overwrite=True,
    )
    a[a.roi] = data
    return open_volume(tmp_path / "r.zarr" / "a")


def test_read_padded_by_hand(tmp_path):
    from innerdist.volumes import read_padded

    data = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    a = _on_disk(tmp_path, data, (10, 10), (10, 20))
    # One voxel before on y, one after on x.
    roi = Roi((0, 20), (30, 30))
    np.testing.assert_array_equal(
        read_padded(a, roi, "zero"), [[0, 0, 0], [1, 2, 0], [3, 4, 0]]
    )
    np.testing.assert_array_equal(
        read_padded(a, roi, "edge"), [[1, 2, 2], [1, 2, 2], [3, 4, 4]]
    )
    np.testing.assert_array_equal(read_padded(a, Roi((100, 100), (20, 10))), [[0], [0]])
    with pytest.raises(ValueError, match="fill must be 'zero' or 'edge'"):
        read_padded(a, roi, "reflect")


def test_read_upsampled_by_hand(tmp_path):
    from innerdist.volumes import read, read_upsampled

    data = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    a = _on_disk(tmp_path, data, (8, 8), (0, 0))
    # A 4 nm grid, starting inside the first voxel and running one 4 nm voxel past x.
    out = read_upsampled(a, Roi((4, 4), (12, 16)), (2, 2), "zero")
    np.testing.assert_array_equal(out, [[1, 2, 2, 0], [3, 4, 4, 0], [3, 4, 4, 0]])
    np.testing.assert_array_equal(read_upsampled(a, a.roi, (1, 1)), data)
    np.testing.assert_array_equal(read(a, Roi((8, 0), (8, 16))), [[3, 4]])
    with pytest.raises(ValueError, match="factor must be positive"):
        read_upsampled(a, a.roi, (0, 2))
    with pytest.raises(ValueError, match="factor must be positive"):
        read_upsampled(a, a.roi, (2, 2, 2))
    chans = _on_disk(tmp_path, np.stack([data, data * 10]), (8, 8), (0, 0), channels=True)
    out = read_upsampled(chans, Roi((0, 0), (8, 16)), (2, 1))
    np.testing.assert_array_equal(out, [[[1, 2], [1, 2]], [[10, 20], [10, 20]]])


def test_zarr_array_path(tmp_path):
    from innerdist.volumes import zarr_array_path

    a = _on_disk(tmp_path, np.zeros((2, 2), np.uint8), (1, 1), (0, 0))
    assert zarr_array_path(a) == str(tmp_path / "r.zarr" / "a")
    assert zarr.open_array(zarr_array_path(a)).shape == (2, 2)
    from funlib.persistence import Array

    assert zarr_array_path(Array(np.zeros((2, 2)), voxel_size=(1, 1))) is None

