"""TIFF import: round trips of 2-D/3-D/channel stacks, metadata, streaming, every error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from funlib.geometry import Coordinate, Roi
from typer.testing import CliRunner

import innerdist.tiff as tiff_module
from innerdist.cli import app
from innerdist.tiff import import_tiff, tiff_axes, tiff_voxel_size
from innerdist.volumes import is_complete, open_volume

runner = CliRunner()


def _data(shape: tuple[int, ...], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=shape).astype(dtype)


def _read(path: Path | str) -> np.ndarray:
    array = open_volume(path)
    return np.asarray(array[array.roi])


# ---------------------------------------------------------------------------------------
# Round trips


def test_2d_round_trip(tmp_path: Path) -> None:
    data = _data((13, 17))
    tifffile.imwrite(tmp_path / "a.tif", data)
    out = tmp_path / "o.zarr" / "raw"
    array = import_tiff(tmp_path / "a.tif", out, voxel_size=(8, 4), offset=(16, -8))
    assert array.axis_names == ["y", "x"]
    reopened = open_volume(out)
    assert reopened.voxel_size == Coordinate(8, 4)
    assert reopened.offset == Coordinate(16, -8)
    assert reopened.dtype == np.uint16
    assert is_complete(reopened)
    np.testing.assert_array_equal(_read(out), data)


def test_3d_stack_round_trip_plain_pages_and_compressed(tmp_path: Path) -> None:
    data = _data((7, 9, 11), "float32")
    tifffile.imwrite(tmp_path / "plain.tif", data, metadata=None)  # axes IYX: page sequence
    tifffile.imwrite(tmp_path / "zlib.tif", data, compression="zlib", metadata=None)
    tifffile.imwrite(tmp_path / "shaped.tif", data)  # tifffile's own metadata, axes QYX
    for name in ("plain.tif", "zlib.tif", "shaped.tif"):
        out = tmp_path / "o.zarr" / name
        array = import_tiff(tmp_path / name, out, voxel_size=[40, 8, 8], chunk_shape=(2, 4, 4))
        assert array.axis_names == ["z", "y", "x"]
        assert array.voxel_size == Coordinate(40, 8, 8)
        assert zarr.open_array(out, mode="r").chunks == (2, 4, 4)
        np.testing.assert_array_equal(_read(out), data)


@pytest.mark.parametrize(
    ("axes", "shape", "expected_order"),
    [
        ("czyx", (2, 5, 6, 7), (0, 1, 2, 3)),
        ("zcyx", (5, 2, 6, 7), (1, 0, 2, 3)),
        ("cyx", (3, 6, 7), (0, 1, 2)),
        ("yxc", (6, 7, 3), (2, 0, 1)),
        ("xyz", (7, 6, 5), (2, 1, 0)),
    ],
)
def test_explicit_axes_put_channels_first(
    tmp_path: Path, axes: str, shape: tuple[int, ...], expected_order: tuple[int, ...]
) -> None:
    data = _data(shape, "uint8")
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="minisblack")  # keeps the shape
    spatial = sum(a in "zyx" for a in axes)
    out = tmp_path / "o.zarr" / "raw"
    array = import_tiff(tmp_path / "a.tif", out, voxel_size=(2,) * spatial, axes=axes.upper())
    names = [a for a in "czyx" if a in axes]
    assert array.axis_names == [("c^" if n == "c" else n) for n in names]
    np.testing.assert_array_equal(_read(out), data.transpose(expected_order))


def test_imagej_hyperstack_metadata_gives_axes_and_voxel_size(tmp_path: Path) -> None:
    data = _data((4, 2, 6, 5))  # z, c, y, x
    tifffile.imwrite(
        tmp_path / "ij.tif",
        data,
        imagej=True,
        resolution=(1 / 0.008, 1 / 0.008),  # pixels per micrometre
        metadata={"axes": "ZCYX", "spacing": 0.04, "unit": "micron"},
    )
    assert tiff_axes(tmp_path / "ij.tif") == ("ZCYX", (4, 2, 6, 5))
    assert tiff_voxel_size(tmp_path / "ij.tif") == (40, 8, 8)
    out = tmp_path / "o.zarr" / "raw"
    array = import_tiff(tmp_path / "ij.tif", out)
    assert array.axis_names == ["c^", "z", "y", "x"]
    assert array.voxel_size == Coordinate(40, 8, 8)
    np.testing.assert_array_equal(_read(out), data.transpose(1, 0, 2, 3))


def test_imagej_2d_in_nm_and_explicit_voxel_size_wins(tmp_path: Path) -> None:
    data = _data((6, 5))
    tifffile.imwrite(
        tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 4, 1 / 6), metadata={"unit": "nm"}
    )
    assert tiff_voxel_size(tmp_path / "ij.tif") == (6, 4)  # (y, x)
    assert import_tiff(tmp_path / "ij.tif", tmp_path / "a.zarr" / "r").voxel_size == (6, 4)
    explicit = import_tiff(tmp_path / "ij.tif", tmp_path / "b.zarr" / "r", voxel_size=(3, 3))
    assert explicit.voxel_size == Coordinate(3, 3)


def test_ome_metadata_gives_voxel_size(tmp_path: Path) -> None:
    data = _data((5, 4, 6))
    tifffile.imwrite(
        tmp_path / "a.ome.tif",
        data,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeZ": 0.05,
            "PhysicalSizeY": 0.004,
            "PhysicalSizeX": 4,
            "PhysicalSizeXUnit": "nm",
        },
    )
    out = tmp_path / "o.zarr" / "raw"
    array = import_tiff(tmp_path / "a.ome.tif", out)
    assert array.voxel_size == Coordinate(50, 4, 4)
    np.testing.assert_array_equal(_read(out), data)


def test_big_endian_tiff_becomes_native(tmp_path: Path) -> None:
    data = _data((5, 4, 6), "int32") - 100
    tifffile.imwrite(tmp_path / "be.tif", data, byteorder=">")
    out = tmp_path / "o.zarr" / "raw"
    array = import_tiff(tmp_path / "be.tif", out, voxel_size=(1, 1, 1))
    assert array.dtype == np.dtype("int32") and array.dtype.isnative
    np.testing.assert_array_equal(_read(out), data)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_streams_in_slabs_of_whole_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str | None
) -> None:
    data = _data((2, 11, 6, 5))  # c, z, y, x
    tifffile.imwrite(
        tmp_path / "a.tif", data, photometric="minisblack", compression=compression
    )
    reads: list[tuple[slice, ...]] = []
    original = tiff_module._read_slab

    def spy(pixels: object, key: tuple[slice, ...]) -> np.ndarray:
        reads.append(key)
        # Memory-mapped for uncompressed files, read page by page otherwise.
        assert isinstance(pixels, np.memmap) == (compression is None)
        return original(pixels, key)

    monkeypatch.setattr(tiff_module, "_read_slab", spy)
    # One z plane is 2 * 6 * 5 * 2 bytes = 120; allow 3 chunks of 2 planes per slab.
    monkeypatch.setattr(tiff_module, "_SLAB_BYTES", 3 * 2 * 120)
    out = tmp_path / "o.zarr" / "raw"
    import_tiff(tmp_path / "a.tif", out, voxel_size=(4, 2, 2), axes="czyx", chunk_shape=(2, 3, 3))
    assert [k[1] for k in reads] == [slice(0, 6), slice(6, 11)]
    assert all(k[0] == slice(None) for k in reads)
    np.testing.assert_array_equal(_read(out), data)


def test_failure_midway_leaves_output_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data((6, 5, 7))
    tifffile.imwrite(tmp_path / "a.tif", data, metadata=None)
    calls = 0
    original = tiff_module._read_slab

    def failing(pixels: object, key: tuple[slice, ...]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk went away")
        return original(pixels, key)

    monkeypatch.setattr(tiff_module, "_read_slab", failing)
    monkeypatch.setattr(tiff_module, "_SLAB_BYTES", 2 * 5 * 7 * 2)
    out = tmp_path / "o.zarr" / "raw"
    with pytest.raises(OSError, match="disk went away"):
        import_tiff(tmp_path / "a.tif", out, voxel_size=(1, 1, 1), chunk_shape=(2, 5, 7))
    assert not is_complete(open_volume(out))
    # Rerunning needs --overwrite and then completes.
    monkeypatch.setattr(tiff_module, "_read_slab", original)
    with pytest.raises(FileExistsError):
        import_tiff(tmp_path / "a.tif", out, voxel_size=(1, 1, 1))
    import_tiff(tmp_path / "a.tif", out, voxel_size=(1, 1, 1), overwrite=True)
    assert is_complete(open_volume(out))
    np.testing.assert_array_equal(_read(out), data)


def test_overwrite_replaces_output(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((4, 4), seed=1))
    tifffile.imwrite(tmp_path / "b.tif", _data((5, 3), seed=2))
    out = tmp_path / "o.zarr" / "raw"
    import_tiff(tmp_path / "a.tif", out, voxel_size=(1, 1))
    with pytest.raises(FileExistsError, match="already exists"):
        import_tiff(tmp_path / "b.tif", out, voxel_size=(1, 1))
    import_tiff(tmp_path / "b.tif", out, voxel_size=(1, 1), overwrite=True)
    np.testing.assert_array_equal(_read(out), _data((5, 3), seed=2))


# ---------------------------------------------------------------------------------------
# Errors


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such TIFF file"):
        import_tiff(tmp_path / "nope.tif", tmp_path / "o.zarr" / "raw", voxel_size=(1, 1))
    with pytest.raises(IsADirectoryError, match="expected a TIFF file"):
        import_tiff(tmp_path, tmp_path / "o.zarr" / "raw", voxel_size=(1, 1))
    with pytest.raises(TypeError, match="must be a str or Path"):
        import_tiff(3, tmp_path / "o.zarr" / "raw")  # type: ignore[arg-type]


def test_not_a_tiff(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_text("hello")
    with pytest.raises(ValueError, match="cannot read .* as a TIFF"):
        import_tiff(tmp_path / "a.tif", tmp_path / "o.zarr" / "raw", voxel_size=(1, 1))


def test_bad_output_path(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((4, 4)))
    with pytest.raises(ValueError, match="no container component"):
        import_tiff(tmp_path / "a.tif", tmp_path / "out" / "raw", voxel_size=(1, 1))


@pytest.mark.parametrize(
    ("voxel_size", "error", "match"),
    [
        ((40, 8), ValueError, r"must have 3 entries, one per spatial axis .*'zyx'.*got 2"),
        ((40, 8, 8, 8), ValueError, "must have 3 entries"),
        ((40, 0, 8), ValueError, "must be positive"),
        ((40, -8, 8), ValueError, "must be positive"),
        ((40, 8.5, 8), ValueError, "must contain integers"),
        ("40,8,8", TypeError, "must be a sequence of integers"),
    ],
)
def test_bad_voxel_size(
    tmp_path: Path, voxel_size: object, error: type[Exception], match: str
) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((5, 6, 7)), metadata=None)
    with pytest.raises(error, match=match):
        import_tiff(tmp_path / "a.tif", tmp_path / "o.zarr" / "raw", voxel_size=voxel_size)  # type: ignore[arg-type]


def test_bad_offset_and_chunk_shape(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((5, 6, 7)), metadata=None)
    out = tmp_path / "o.zarr" / "raw"
    with pytest.raises(ValueError, match="offset must have 3 entries"):
        import_tiff(tmp_path / "a.tif", out, voxel_size=(4, 2, 2), offset=(0, 0))
    with pytest.raises(ValueError, match=r"offset \(4, 1, 0\) must be a multiple"):
        import_tiff(tmp_path / "a.tif", out, voxel_size=(4, 2, 2), offset=(4, 1, 0))
    with pytest.raises(ValueError, match="chunk_shape must be positive"):
        import_tiff(tmp_path / "a.tif", out, voxel_size=(4, 2, 2), chunk_shape=(1, 0, 2))
    assert not out.exists()


def test_no_voxel_size_anywhere(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((5, 6, 7)), metadata=None)
    assert tiff_voxel_size(tmp_path / "a.tif") is None
    with pytest.raises(ValueError, match=r"no voxel size in its metadata.*--voxel-size 40,8,8"):
        import_tiff(tmp_path / "a.tif", tmp_path / "o.zarr" / "raw")
    tifffile.imwrite(tmp_path / "ij.tif", _data((4, 4)), imagej=True)  # uncalibrated ImageJ
    with pytest.raises(ValueError, match=r"--voxel-size 8,8"):
        import_tiff(tmp_path / "ij.tif", tmp_path / "o.zarr" / "raw")


def test_incomplete_or_odd_metadata(tmp_path: Path) -> None:
    out = tmp_path / "o.zarr" / "raw"
    # A calibrated ImageJ stack without z spacing.
    tifffile.imwrite(
        tmp_path / "noz.tif",
        _data((5, 6, 7)),
        imagej=True,
        resolution=(0.25, 0.25),
        metadata={"axes": "ZYX", "unit": "nm"},
    )
    with pytest.raises(ValueError, match="ImageJ metadata has no voxel size along z"):
        import_tiff(tmp_path / "noz.tif", out)
    # Fractional nm cannot be integer world units.
    tifffile.imwrite(
        tmp_path / "frac.tif",
        _data((4, 4)),
        imagej=True,
        resolution=(1 / 4.5, 1 / 4.5),
        metadata={"unit": "nm"},
    )
    with pytest.raises(ValueError, match=r"voxel size \(4.5, 4.5\) nm, which is not"):
        import_tiff(tmp_path / "frac.tif", out)
    # A unit that is no length.
    tifffile.imwrite(
        tmp_path / "unit.tif",
        _data((4, 4)),
        imagej=True,
        resolution=(1, 1),
        metadata={"unit": "sec"},
    )
    with pytest.raises(ValueError, match="unit 'sec' is not a length unit"):
        import_tiff(tmp_path / "unit.tif", out)
    # OME with only some physical sizes.
    tifffile.imwrite(
        tmp_path / "ome.tif",
        _data((5, 6, 7)),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.004},
    )
    with pytest.raises(ValueError, match="OME metadata has no PhysicalSize along z"):
        import_tiff(tmp_path / "ome.tif", out)
    assert not out.exists()


@pytest.mark.parametrize(
    ("axes", "match"),
    [
        ("yx", "has 2 letters but the TIFF's image has 3 dimensions"),
        ("czyx", "has 4 letters but the TIFF's image has 3 dimensions"),
        ("zyq", "letters c, z, y, x"),
        ("zzx", "letters c, z, y, x"),
        ("czy", "include y and x"),
    ],
)
def test_bad_axes(tmp_path: Path, axes: str, match: str) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((5, 6, 7)), metadata=None)
    with pytest.raises(ValueError, match=match):
        import_tiff(tmp_path / "a.tif", tmp_path / "o.zarr" / "raw", voxel_size=(1, 1), axes=axes)


def test_axes_type_error(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((4, 4)))
    with pytest.raises(TypeError, match="axes must be a string"):
        import_tiff(tmp_path / "a.tif", tmp_path / "o.zarr" / "r", voxel_size=(1, 1), axes=2)  # type: ignore[arg-type]


def test_ambiguous_axes_need_explicit_axes(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((2, 5, 6, 7)), metadata=None)  # axes IYX? no: 4-D
    tifffile.imwrite(tmp_path / "q.tif", _data((2, 5, 6, 7)))  # tifffile axes QQYX
    assert tiff_axes(tmp_path / "q.tif")[0] == "QQYX"
    with pytest.raises(ValueError, match=r"cannot tell which axes.*'QQYX'.*--axes czyx"):
        import_tiff(tmp_path / "q.tif", tmp_path / "o.zarr" / "raw", voxel_size=(1, 1, 1))
    array = import_tiff(
        tmp_path / "q.tif", tmp_path / "o.zarr" / "raw", voxel_size=(1, 1, 1), axes="czyx"
    )
    assert array.shape == (2, 5, 6, 7)


def test_unsupported_dtype(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((4, 4), dtype=np.complex64))
    with pytest.raises(ValueError, match="pixel type complex64 is not supported"):
        import_tiff(tmp_path / "c.tif", tmp_path / "o.zarr" / "raw", voxel_size=(1, 1))
    assert not (tmp_path / "o.zarr" / "raw").exists()


# ---------------------------------------------------------------------------------------
# CLI


def test_cli_import_tiff(tmp_path: Path) -> None:
    data = _data((5, 4, 6))
    tifffile.imwrite(tmp_path / "a.tif", data, metadata=None)
    out = str(tmp_path / "o.zarr" / "raw")
    result = CliRunner().invoke(
        app,
        [
            "import-tiff",
            str(tmp_path / "a.tif"),
            out,
            "--voxel-size",
            "40,8,8",
            "--offset",
            "-40,0,16",
            "--chunk-shape",
            "2,2,2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "voxel size (40, 8, 8) nm" in result.stdout
    assert "offset (-40, 0, 16) nm" in result.stdout
    array = open_volume(out)
    assert array.offset == Coordinate(-40, 0, 16)
    np.testing.assert_array_equal(_read(out), data)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--voxel-size", "40,8"], "must have 3 entries"),
        (["--voxel-size", "40,8,a8"], "--voxel-size: expected comma-separated integers"),
        (["--voxel-size", "40,0,8"], "--voxel-size: expected positive integers"),
        (["--voxel-size", "40,8,8", "--offset", "a"], "--offset: expected comma-separated"),
        (["--voxel-size", "40,8,8", "--chunk-shape", "0,1,1"], "--chunk-shape: expected positive"),
        (["--voxel-size", "40,8,8", "--axes", "yx"], "has 2 letters"),
        ([], "no voxel size in its metadata"),
    ],
)
def test_cli_import_tiff_bad_input_exits_2_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((5, 4, 6)), metadata=None)
    out = str(tmp_path / "o.zarr" / "raw")
    result = CliRunner().invoke(app, ["import-tiff", str(tmp_path / "a.tif"), out, *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("innerdist import-tiff: error:")
    assert message in lines[0]


def test_cli_import_tiff_missing_file_and_existing_output(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["import-tiff", str(tmp_path / "x.tif"), "o.zarr/raw"])
    assert result.exit_code == 2 and "no such file" in result.stderr
    tifffile.imwrite(tmp_path / "a.tif", _data((4, 5)))
    out = str(tmp_path / "o.zarr" / "raw")
    args = ["import-tiff", str(tmp_path / "a.tif"), out, "--voxel-size", "8,8"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "already exists; pass --overwrite" in result.stderr
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_cli_import_tiff_in_pixels(tmp_path: Path) -> None:
    # Light microscopy without a calibration: the volume says px, not nm.
    data = _data((6, 7))
    tifffile.imwrite(tmp_path / "a.tif", data, metadata=None)
    out = str(tmp_path / "o.zarr" / "raw")
    args = ["import-tiff", str(tmp_path / "a.tif"), out, "--voxel-size", "1,1", "--unit", "px"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "voxel size (1, 1) px, offset (0, 0) px" in result.stdout
    array = open_volume(out)
    assert list(array.units) == ["px", "px"]
    np.testing.assert_array_equal(_read(out), data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unit": "px"}, "unit px needs the voxel size in pixels"),
        ({"unit": "um", "voxel_size": (1, 1)}, "unit must be nm or px, got 'um'"),
        ({"unit": "parsnip", "voxel_size": (1, 1)}, "'parsnip' is not a length unit"),
    ],
)
def test_import_tiff_bad_unit(tmp_path: Path, kwargs: dict, message: str) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((3, 3)), metadata=None)
    with pytest.raises(ValueError, match=message):
        import_tiff(tmp_path / "a.tif", tmp_path / "o.zarr" / "raw", **kwargs)


def test_imagej_unit_pixel_is_uncalibrated_and_micron_converts(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "p.tif", _data((4, 4)), imagej=True, resolution=(1, 1),
                     metadata={"unit": "pixel"})
    assert tiff_voxel_size(tmp_path / "p.tif") is None
    tifffile.imwrite(tmp_path / "m.tif", _data((4, 4)), imagej=True,
                     resolution=(1 / 0.25, 1 / 0.125), metadata={"unit": "micron"})
    assert tiff_voxel_size(tmp_path / "m.tif") == (125, 250)
# ---------------------------------------------------------------------------------------
# A region (--roi) and export


def test_import_a_region_keeps_its_world_coordinates(tmp_path: Path) -> None:
    data = _data((6, 20, 30))
    tifffile.imwrite(tmp_path / "s.tif", data)
    # Voxels z 2..5, y 4..14, x 10..30 of a stack at offset (40, 0, 80) nm, voxel (10, 4, 4).
    roi = Roi((60, 16, 120), (30, 40, 80))
    out = tmp_path / "o.zarr" / "part"
    array = import_tiff(tmp_path / "s.tif", out, voxel_size=(10, 4, 4), offset=(40, 0, 80),
                        roi=roi, chunk_shape=(2, 4, 4))
    assert array.roi == roi
    np.testing.assert_array_equal(_read(out), data[2:5, 4:14, 10:30])
    # Channels ride along; the CLI takes the region in nm as 'BEGIN:END'.
    rgb = _data((12, 10, 3), "uint8")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    result = runner.invoke(app, ["import-tiff", str(tmp_path / "rgb.tif"),
                                 str(tmp_path / "o.zarr" / "rgb"), "--voxel-size", "2,2",
                                 "--roi", "4,2:20,10"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(_read(tmp_path / "o.zarr" / "rgb"),
                                  rgb[2:10, 1:5].transpose(2, 0, 1))


@pytest.mark.parametrize(
    ("roi", "message"),
    [
        ("0,0:80,200", r"not inside the image, which covers \(0, 0\)\.\.\(80, 120\) nm"),
        ("0,2:40,40", "not on the image's voxel grid"),
        ("0,0,0:4,4,4", "has 3 axes but the TIFF has 2"),
        ("0,0:0,8", "end must be greater than begin"),
    ],
)
def test_import_region_errors(tmp_path: Path, roi: str, message: str) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _data((20, 30)))
    result = runner.invoke(app, ["import-tiff", str(tmp_path / "a.tif"),
                                 str(tmp_path / "o.zarr" / "r"), "--voxel-size", "4,4",
                                 "--roi", roi])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert re.search(message, result.output), result.output
    with pytest.raises(TypeError, match="must be a funlib.geometry.Roi"):
        import_tiff(tmp_path / "a.tif", tmp_path / "o.zarr" / "t", voxel_size=(4, 4),
                    roi=[0, 0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty or unbounded"):
        import_tiff(tmp_path / "a.tif", tmp_path / "o.zarr" / "t", voxel_size=(4, 4),
                    roi=Roi((0, 0), (0, 8)))


def _volume(path: Path, data: np.ndarray, voxel: tuple[int, ...], offset: tuple[int, ...],
            channels: int | None = None) -> str:
    from innerdist.volumes import create_volume, mark_complete

    spatial = data.shape[1:] if channels else data.shape
    roi = Roi(offset, Coordinate(spatial) * Coordinate(voxel))
    array = create_volume(str(path), roi=roi, voxel_size=voxel, dtype=data.dtype,
                          num_channels=channels)
    array[roi] = data
    mark_complete(array)
    return str(path)


def test_export_a_one_channel_2d_prediction_as_a_plain_calibrated_image(tmp_path: Path) -> None:
    pred = np.random.default_rng(0).random((1, 12, 16)).astype(np.float32)
    volume = _volume(tmp_path / "p.zarr" / "pred", pred, (8, 4), (16, 40), channels=1)
    assert open_volume(volume).shape == (1, 12, 16)  # what a Python user reads back
    result = runner.invoke(app, ["export-tiff", volume, str(tmp_path / "pred.tif")])
    assert result.exit_code == 0, result.output
    assert "axes YX, shape (12, 16), float32" in result.output
    with tifffile.TiffFile(tmp_path / "pred.tif") as tif:
        np.testing.assert_array_equal(tif.asarray(), pred[0])
        meta = tif.imagej_metadata
        assert meta is not None and meta["unit"] == "nm"
        # Pixels per nm: 1/4 along x, 1/8 along y; origin in voxels, ImageJ's sign.
        x_num, x_den = tif.pages.first.tags["XResolution"].value
        y_num, y_den = tif.pages.first.tags["YResolution"].value
        assert (x_den / x_num, y_den / y_num) == (4.0, 8.0)
        assert (meta["xorigin"], meta["yorigin"]) == (-10, -2)
    # And innerdist reads the calibration back.
    assert tiff_voxel_size(tmp_path / "pred.tif") == (8, 4)
    # ... and the origin: a round trip keeps world coordinates.
    back = import_tiff(tmp_path / "pred.tif", tmp_path / "back.zarr" / "pred")
    assert back.roi == Roi((16, 40), (96, 64)) and back.voxel_size == Coordinate(8, 4)
    np.testing.assert_array_equal(_read(tmp_path / "back.zarr" / "pred"), pred[0])
    # A fractional ImageJ origin (not on the voxel grid) is ignored: offset 0.
    tifffile.imwrite(tmp_path / "frac.tif", pred[0], imagej=True, resolution=(0.25, 0.125),
                     metadata={"unit": "nm", "xorigin": 1.5})
    assert import_tiff(tmp_path / "frac.tif", tmp_path / "back.zarr" / "f").roi.offset == (0, 0)


def test_export_3d_channels_and_labels_round_trip(tmp_path: Path) -> None:
    data = _data((2, 5, 6, 7), "uint8")
    volume = _volume(tmp_path / "v.zarr" / "raw", data, (40, 8, 8), (0, 0, 0), channels=2)
    path = tmp_path / "v.tif"
    from innerdist.tiff import export_tiff

    export_tiff(volume, path)
    assert tiff_axes(path) == ("ZCYX", (5, 2, 6, 7))
    again = import_tiff(path, tmp_path / "back.zarr" / "raw")  # calibration from the file
    assert again.voxel_size == Coordinate(40, 8, 8)
    np.testing.assert_array_equal(_read(tmp_path / "back.zarr" / "raw"), data)

    # uint64 instance ids: uint16 when they fit, float32 (exact) up to 2^24, else an error.
    ids = np.zeros((3, 4, 5), np.uint64)
    ids[0, 0, 0], ids[1, 2, 3] = 7, 65535
    export_tiff(_volume(tmp_path / "l.zarr" / "a", ids, (4, 4, 4), (0, 0, 0)), tmp_path / "a.tif")
    assert tifffile.imread(tmp_path / "a.tif").dtype == np.uint16
    ids[2, 3, 4] = 2**24
    export_tiff(_volume(tmp_path / "l.zarr" / "b", ids, (4, 4, 4), (0, 0, 0)), tmp_path / "b.tif")
    back = tifffile.imread(tmp_path / "b.tif")
    assert back.dtype == np.float32 and back[2, 3, 4] == 2**24
    np.testing.assert_array_equal(back.astype(np.uint64), ids)
    ids[2, 3, 4] = 2**24 + 1
    big = _volume(tmp_path / "l.zarr" / "c", ids, (4, 4, 4), (0, 0, 0))
    with pytest.raises(ValueError, match="no ImageJ pixel type"):
        export_tiff(big, tmp_path / "c.tif")
    assert not (tmp_path / "c.tif").exists() and not list(tmp_path.glob(".c.tif*"))
    # A region in world units.
    export_tiff(volume, tmp_path / "r.tif", roi=Roi((40, 8, 16), (80, 16, 24)))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "r.tif"),
                                  data[:, 1:3, 1:3, 2:5].transpose(1, 0, 2, 3))


def test_export_errors(tmp_path: Path) -> None:
    volume = _volume(tmp_path / "e.zarr" / "raw", _data((4, 4), "uint8"), (4, 4), (0, 0))

    def error(*args: str) -> str:
        result = runner.invoke(app, ["export-tiff", *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("innerdist export-tiff: error: ")
        return lines[0]

    assert "must end in .tif" in error(volume, str(tmp_path / "x.png"))
    (tmp_path / "there.tif").write_bytes(b"")
    assert "already exists; pass --overwrite" in error(volume, str(tmp_path / "there.tif"))
    assert "does not exist" in error(volume, str(tmp_path / "no" / "x.tif"))
    assert "not inside the image" in error(volume, str(tmp_path / "x.tif"), "--roi", "0,0:8,80")
    assert "not found" in error(str(tmp_path / "e.zarr" / "nope"), str(tmp_path / "x.tif"))
    result = runner.invoke(app, ["export-tiff", volume, str(tmp_path / "there.tif"),
                                 "--overwrite"])
    assert result.exit_code == 0, result.output


def test_a_truncated_tiff_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _data((8, 16, 16)))
    data = path.read_bytes()
    path.write_bytes(data[:3000])  # pixels end at 256 + 4096 bytes: the last ones are missing
    result = runner.invoke(app, ["import-tiff", str(path), str(tmp_path / "o.zarr" / "raw"),
                                 "--voxel-size", "40,8,8"])
    assert result.exit_code == 2, result.output
    assert "is truncated: its pixels need" in result.output
    assert not (tmp_path / "o.zarr" / "raw").exists()
