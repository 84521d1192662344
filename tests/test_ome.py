"""OME-NGFF read and write, tested on files written by ome-zarr-py (the reference)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from innerdist.cli import app
from innerdist.ome import locate_level, multiscales_metadata, write_multiscales
from innerdist.volumes import open_volume

ome_writer = pytest.importorskip("ome_zarr.writer")
ome_format = pytest.importorskip("ome_zarr.format")

runner = CliRunner()


def _fmt(version: str):  # type: ignore[no-untyped-def]
    return ome_format.FormatV05() if version == "0.5" else ome_format.FormatV04()


def write_ome(
    path: Path,
    data: np.ndarray,
    *,
    version: str = "0.5",
    axes: str = "zyx",
    scale: dict[str, float] | None = None,
    unit: str | None = "micrometer",
    levels: int = 2,
    labels: dict[str, np.ndarray] | None = None,
) -> Path:
    """An OME-Zarr image (+ label images) written by ome-zarr-py."""
    root = zarr.open_group(path, mode="w", zarr_format=3 if version == "0.5" else 2)
    spatial = [a for a in axes if a in "zyx"]
    factors = [{a: (2 if a in "yx" else 1) for a in axes} for _ in range(levels - 1)]
    for i, f in enumerate(factors):
        for a in f:
            if a in "yx":
                f[a] = 2 ** (i + 1)
    units = {a: unit for a in spatial} if unit is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ome_writer.write_image(
            data,
            root,
            axes=axes,
            scale_factors=factors,
            scale=scale,
            axes_units=units,
            fmt=_fmt(version),
        )
        for name, lab in (labels or {}).items():
            ome_writer.write_labels(
                lab,
                root,
                name=name,
                axes=axes,
                scale_factors=factors,
                scale=scale,
                axes_units=units,
                fmt=_fmt(version),
            )
    return path


@pytest.fixture
def cells() -> np.ndarray:
    lab = np.zeros((4, 16, 16), dtype=np.uint32)
    lab[:, 2:8, 2:8] = 1
    lab[:, 9:15, 5:12] = 2
    return lab


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_reads_3d_micrometre_image_and_labels_in_nm(
    tmp_path: Path, cells: np.ndarray, version: str
) -> None:
    raw = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    path = write_ome(
        tmp_path / "img.ome.zarr",
        raw,
        version=version,
        scale={"z": 0.04, "y": 0.008, "x": 0.008},
        labels={"cells": cells},
    )
    image = open_volume(path)  # the group: level 0
    assert tuple(image.voxel_size) == (40, 8, 8)
    assert tuple(image.offset) == (0, 0, 0)
    assert list(image.units) == ["nm"] * 3
    np.testing.assert_array_equal(image[image.roi], raw)
    labels = open_volume(path / "labels" / "cells")
    assert tuple(labels.voxel_size) == (40, 8, 8)
    np.testing.assert_array_equal(labels[labels.roi], cells)
    # A level by path and by number; ome-zarr-py puts s1's origin at the centre of
    # s0's first 2x2 voxels (0.004 um = 4 nm on).
    found = locate_level(path, "labels/cells", 1)
    assert found is not None and found.is_label and found.num_levels >= 2
    assert found.voxel_size == (40, 16, 16)
    for s1 in (open_volume(path / "s1"), open_volume(path, level=1)):
        assert tuple(s1.voxel_size) == (40, 16, 16)
        assert tuple(s1.offset) == (0, 4, 4)
        assert s1.shape == (4, 8, 8)
    assert locate_level(path, "") is not None and not locate_level(path, "").is_label


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_reads_2d_nanometre_single_level(tmp_path: Path, version: str) -> None:
    raw = np.random.default_rng(0).random((12, 10)).astype(np.float32)
    path = write_ome(
        tmp_path / "img.ome.zarr",
        raw,
        version=version,
        axes="yx",
        scale={"y": 4.0, "x": 6.0},
        unit="nanometer",
        levels=1,
    )
    array = open_volume(path / "s0")
    assert tuple(array.voxel_size) == (4, 6)
    assert array.axis_names == ["y", "x"]
    np.testing.assert_array_equal(array[array.roi], raw)
    with pytest.raises(ValueError, match="level 1 does not exist"):
        open_volume(path, level=1)
    with pytest.raises(ValueError, match="is level 0 of"):
        open_volume(path / "s0", level=1)


def test_grid_aligned_levels_read_with_their_offset(tmp_path: Path) -> None:
    # Levels written with an integer translation (as innerdist writes them).
    root = zarr.open_group(tmp_path / "p.ome.zarr", mode="w", zarr_format=3)
    root.create_array("s0", data=np.ones((4, 8, 8), np.uint8))
    root.create_array("s1", data=np.full((4, 4, 4), 7, np.uint8))
    write_multiscales(
        tmp_path / "p.ome.zarr",
        ["s0", "s1"],
        [(40, 8, 8), (40, 16, 16)],
        [(80, 16, 32), (80, 16, 32)],
        unit="nm",
        num_channels=None,
    )
    s1 = open_volume(tmp_path / "p.ome.zarr", level=1)
    assert tuple(s1.voxel_size) == (40, 16, 16)
    assert tuple(s1.offset) == (80, 16, 32)
    assert int(s1[s1.roi].max()) == 7


def test_channel_and_time_axes(tmp_path: Path) -> None:
    data = np.arange(3 * 2 * 4 * 8 * 8, dtype=np.uint8).reshape(3, 2, 4, 8, 8)
    path = write_ome(
        tmp_path / "t.ome.zarr",
        data,
        axes="tczyx",
        scale={"z": 0.05, "y": 0.01, "x": 0.01},
        levels=1,
    )
    with pytest.raises(ValueError, match="t axis with 3 time points; choose one with --time"):
        open_volume(path)
    with pytest.raises(ValueError, match="time point 3 does not exist"):
        open_volume(path, time=3)
    array = open_volume(path, time=2)
    assert array.axis_names == ["c^", "z", "y", "x"]
    assert tuple(array.voxel_size) == (50, 10, 10)
    np.testing.assert_array_equal(array[array.roi], data[2])
    no_t = write_ome(tmp_path / "c.ome.zarr", data[0], axes="czyx", levels=1)
    with pytest.raises(ValueError, match="has no t axis"):
        open_volume(no_t, time=0)
    assert open_volume(no_t).axis_names == ["c^", "z", "y", "x"]


def test_axes_without_unit_are_pixels(tmp_path: Path) -> None:
    path = write_ome(
        tmp_path / "px.ome.zarr", np.zeros((8, 8), np.uint8), axes="yx", unit=None, levels=1
    )
    array = open_volume(path)
    assert list(array.units) == ["px", "px"]
    assert tuple(array.voxel_size) == (1, 1)


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    meta = json.loads((path / "zarr.json").read_text())
    change(meta["attributes"]["ome"]["multiscales"][0])
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("axes"), "axes: Field required"),
        (
            lambda m: m["datasets"][0]["coordinateTransformations"].__setitem__(
                0, {"type": "scale", "scale": [1.0, 2.0]}
            ),
            "inconsistent dimensionality",
        ),
        (
            lambda m: m["axes"][1].__setitem__("unit", "furlong"),
            "unit 'furlong' is not a length unit",
        ),
        (
            lambda m: m["datasets"][0]["coordinateTransformations"].__setitem__(
                0, {"type": "scale", "scale": [0.04, 0.0045, 0.008]}
            ),
            r"axis 'y' scale/translation \[0.0045, 0.0\] micrometer is not a whole number of nm",
        ),
    ],
)
def test_bad_metadata_is_one_clear_line_exit_2(
    tmp_path: Path,
    cells: np.ndarray,
    change,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    path = write_ome(
        tmp_path / "bad.ome.zarr", cells, levels=1, scale={"z": 0.04, "y": 0.008, "x": 0.008}
    )
    _edit(path, change)
    with pytest.raises(ValueError, match=message):
        open_volume(path)
    result = runner.invoke(app, ["targets", str(path), str(tmp_path / "o.zarr/t"), "-s", "25"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def _check_ome_output(group: Path, scale: list[int], *, label: bool) -> None:
    """``group`` validates as OME-NGFF 0.5 and ome-zarr-py reads its scale in nm."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    model = ImageLabel if label else Image
    model.from_zarr(zarr.open_group(group, mode="r"))
    meta = next(iter(Reader(parse_url(str(group)))())).metadata
    assert meta["coordinateTransformations"][0][0]["scale"] == scale
    spatial = [a for a in meta["axes"] if a["type"] == "space"]
    assert {a["unit"] for a in spatial} == {"nanometer"}
    attrs = json.loads((group / "zarr.json").read_text())["attributes"]["ome"]
    assert ("image-label" in attrs) == label


def test_commands_run_on_an_ome_label_image(tmp_path: Path, cells: np.ndarray) -> None:
    # The example: labels/cells of a 0.5 image in micrometre, scale 0.04/0.008;
    # targets -> segment (the targets are a perfect prediction) -> evaluate, all on it.
    path = write_ome(
        tmp_path / "img.ome.zarr",
        cells.astype(np.uint8),
        scale={"z": 0.04, "y": 0.008, "x": 0.008},
        labels={"cells": cells},
    )
    labels = str(path / "labels" / "cells" / "s0")
    out = tmp_path / "out.zarr"
    result = runner.invoke(app, ["targets", labels, str(out / "targets"), "-s", "10"])
    assert result.exit_code == 0, result.output
    targets = open_volume(out / "targets")
    assert tuple(targets.voxel_size) == (40, 8, 8)
    values = targets[targets.roi]
    assert values.shape[-3:] == cells.shape
    assert (values[..., cells == 0] <= 0).all() and (values[..., cells != 0] > 0).all()
    _check_ome_output(out / "targets", [1, 40, 8, 8], label=False)

    result = runner.invoke(app, ["segment", str(out / "targets"), str(out / "seg")])
    assert result.exit_code == 0, result.output
    _check_ome_output(out / "seg", [1, 40, 8, 8], label=True)
    seg = open_volume(out / "seg")
    found = seg[seg.roi][0]
    # Same objects as the ground truth, up to renumbering.
    pairs = {(int(a), int(b)) for a, b in zip(found.ravel(), cells.ravel(), strict=True)}
    assert (0, 0) in pairs and len(pairs) == 3
    assert len({a for a, _ in pairs}) == 3 and len({b for _, b in pairs}) == 3

    result = runner.invoke(app, ["evaluate", str(out / "seg"), str(path / "labels" / "cells")])
    assert result.exit_code == 0, result.output
    assert "instances: 2 predicted, 2 in ground truth" in result.output


def test_written_metadata_is_valid_and_read_by_ome_zarr_py(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    group = tmp_path / "w.ome.zarr"
    root = zarr.open_group(group, mode="w", zarr_format=3)
    root.create_array("s0", data=np.zeros((2, 4, 8, 8), np.float32))
    root.create_array("s1", data=np.zeros((2, 4, 4, 4), np.float32))
    write_multiscales(
        group,
        ["s0", "s1"],
        [(40, 8, 8), (40, 16, 16)],
        [(0, 8, 8), (0, 8, 8)],
        unit="nm",
        num_channels=2,
    )
    Image.from_zarr(zarr.open_group(group, mode="r"))  # validates against the spec
    nodes = list(Reader(parse_url(str(group)))())
    meta = nodes[0].metadata
    assert [a["name"] for a in meta["axes"]] == ["c", "z", "y", "x"]
    assert [a.get("unit") for a in meta["axes"]] == [None, "nanometer", "nanometer", "nanometer"]
    scales = [t[0]["scale"] for t in meta["coordinateTransformations"]]
    assert scales == [[1, 40, 8, 8], [1, 40, 16, 16]]


def test_multiscales_metadata_errors() -> None:
    with pytest.raises(ValueError, match="one voxel size and offset per level"):
        multiscales_metadata(["s0"], [], [], unit="nm", num_channels=None, name="x")
    with pytest.raises(ValueError, match="world unit must be"):
        multiscales_metadata(["s0"], [(1, 1)], [(0, 0)], unit="um", num_channels=None, name="x")
    entry = multiscales_metadata(["s0"], [(2, 3)], [(4, 6)], unit="px", num_channels=None, name="x")
    assert entry["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]


def test_level_for_a_plain_array_is_an_error(tmp_path: Path) -> None:
    root = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    root.create_array("raw", data=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="not an OME-NGFF multiscale image"):
        locate_level(tmp_path / "plain.zarr", "raw", 0)
    with pytest.raises(ValueError, match="level must be a non-negative integer"):
        locate_level(tmp_path / "plain.zarr", "raw", -1)
    assert locate_level(tmp_path / "plain.zarr", "raw") is None


def test_predict_a_time_point_of_an_ome_raw(tmp_path: Path) -> None:
    from test_predict import NORM, predictor, random_checkpoint, save, unet_2d

    from innerdist.predict import normalize_raw, predict_array

    rng = np.random.default_rng(3)
    series = rng.integers(0, 256, (3, 37, 45), dtype=np.uint8)  # t, y, x
    raw = write_ome(
        tmp_path / "movie.ome.zarr",
        series,
        axes="tyx",
        scale={"y": 0.006, "x": 0.004},
        levels=1,
    )
    ckpt = random_checkpoint(unet_2d(), predictor(), (6, 4), NORM, seed=4)
    model_path = save(tmp_path, ckpt)
    expected = predict_array(ckpt.build_model(), normalize_raw(series[1], NORM))
    out = tmp_path / "out.zarr" / "pred"
    result = runner.invoke(app, ["predict", model_path, str(raw), str(out)])
    assert result.exit_code == 2
    assert "t axis with 3 time points; choose one with --time T" in result.output
    result = runner.invoke(
        app, ["predict", model_path, str(raw), str(out), "--time", "1", "--block-shape", "24,24"]
    )
    assert result.exit_code == 0, result.output
    pred = open_volume(out)
    assert tuple(pred.voxel_size) == (6, 4)
    np.testing.assert_allclose(pred[pred.roi], expected, atol=1e-5)
    # Chunks of 24: one pyramid level (the means of 2 x 2 windows of level 0).
    _check_ome_output(out, [1, 6, 4], label=False)
    s1 = zarr.open_array(out / "s1")[...]
    assert s1.shape == (2, 19, 23)
    windows = expected[:, :36, :44].reshape(2, 18, 2, 22, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(s1[:, :18, :22], windows, atol=1e-5)
    assert not (out / "s2").exists()


def test_level_and_no_pyramid_options(tmp_path: Path, cells: np.ndarray) -> None:
    big = np.kron(cells, np.ones((1, 2, 2), dtype=np.uint32))  # (4, 32, 32)
    path = write_ome(
        tmp_path / "img.ome.zarr",
        big.astype(np.uint8),
        scale={"z": 0.04, "y": 0.004, "x": 0.004},
        labels={"cells": big},
    )
    out = tmp_path / "out.zarr"
    labels = str(path / "labels" / "cells")
    result = runner.invoke(
        app,
        [
            "targets",
            labels,
            str(out / "t1"),
            "-s",
            "10",
            "--level",
            "1",
            "--no-pyramid",
            "--block-shape",
            "4,8,8",
        ],
    )
    assert result.exit_code == 0, result.output
    t1 = open_volume(out / "t1")
    assert tuple(t1.voxel_size) == (40, 8, 8) and t1.shape[-2:] == (16, 16)
    assert not (out / "t1" / "s1").exists()
    result = runner.invoke(app, ["targets", labels, str(out / "t9"), "-s", "10", "--level", "9"])
    assert result.exit_code == 2 and "level 9 does not exist" in result.output


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_segmentation_goes_under_labels_of_an_image(
    tmp_path: Path, cells: np.ndarray, version: str
) -> None:
    path = write_ome(
        tmp_path / "img.ome.zarr",
        cells.astype(np.uint8) * 50,
        version=version,
        scale={"z": 0.04, "y": 0.008, "x": 0.008},
        labels={"cells": cells},
    )
    out = tmp_path / "out.zarr" / "targets"
    args = ["targets", str(path / "labels" / "cells"), str(out), "-s", "10", "--no-pyramid"]
    assert runner.invoke(app, args).exit_code == 0
    root_meta = (path / ("zarr.json" if version == "0.5" else ".zattrs")).read_text()
    image = np.asarray(zarr.open_array(path / "s0")[...])
    result = runner.invoke(app, ["segment", str(out), str(path / "seg")])
    if version == "0.4":
        assert result.exit_code == 2
        assert "is an OME-NGFF 0.4 (zarr v2) image" in result.output
        assert not (path / "labels" / "seg").exists()
        return
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(path / "labels" / "seg"))
    labels_meta = json.loads((path / "labels" / "zarr.json").read_text())["attributes"]["ome"]
    assert labels_meta["labels"] == ["cells", "seg"]
    _check_ome_output(path / "labels" / "seg", [1, 40, 8, 8], label=True)
    # The image itself is untouched.
    assert (path / "zarr.json").read_text() == root_meta
    np.testing.assert_array_equal(zarr.open_array(path / "s0")[...], image)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    names = [str(n.zarr.path) for n in Reader(parse_url(str(path)))()]
    assert any(n.rstrip("/").endswith("labels/seg") for n in names), names


def test_training_sources_take_ome_paths(tmp_path: Path, cells: np.ndarray) -> None:
    from innerdist.crops import VolumeSource, open_sources

    raw = (cells * 100).astype(np.uint8)
    path = write_ome(
        tmp_path / "img.ome.zarr",
        raw,
        scale={"z": 0.04, "y": 0.008, "x": 0.008},
        labels={"cells": cells},
    )
    source = VolumeSource(raw=str(path), labels=str(path / "labels" / "cells"))
    (opened,) = open_sources([source], ["cells"])
    assert tuple(opened.voxel_size) == (40, 8, 8)
    assert opened.roi == open_volume(path).roi


def test_pixel_data_stays_in_px_end_to_end(tmp_path: Path) -> None:
    import tifffile

    labels = np.zeros((24, 24), dtype=np.uint16)
    labels[2:11, 2:20] = 1
    labels[13:22, 4:22] = 2
    tifffile.imwrite(tmp_path / "labels.tif", labels, metadata=None)
    data = tmp_path / "data.zarr"
    args = [
        "import-tiff",
        str(tmp_path / "labels.tif"),
        str(data / "labels"),
        "--voxel-size",
        "1,1",
        "--unit",
        "px",
    ]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["targets", str(data / "labels"), str(data / "t"), "-s", "2"])
    assert result.exit_code == 0, result.output
    targets = open_volume(data / "t")
    assert list(targets.units) == ["px", "px"]
    meta = json.loads((data / "t" / "zarr.json").read_text())["attributes"]["ome"]
    assert all("unit" not in a for a in meta["multiscales"][0]["axes"])  # no physical unit
    assert runner.invoke(app, ["segment", str(data / "t"), str(data / "seg")]).exit_code == 0
    assert list(open_volume(data / "seg").units) == ["px", "px"]
    result = runner.invoke(app, ["evaluate", str(data / "seg"), str(data / "labels")])
    assert result.exit_code == 0, result.output
    assert "voxel size (1, 1) (px)" in result.output
    assert "instances: 2 predicted, 2 in ground truth" in result.output


def _hand_image(tmp_path: Path, ome: dict, shape: tuple[int, ...] = (4, 4)) -> Path:
    group = tmp_path / "h.ome.zarr"
    root = zarr.open_group(group, mode="w", zarr_format=3)
    root.create_array("s0", shape=shape, dtype=np.uint8)
    meta = json.loads((group / "zarr.json").read_text())
    meta["attributes"] = {"ome": ome}
    (group / "zarr.json").write_text(json.dumps(meta))
    return group


def _ms(axes: list, scale: list, path: str = "s0", **extra: object) -> dict:
    return {
        "version": "0.5",
        "multiscales": [
            {
                "axes": axes,
                "datasets": [
                    {"path": path, "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
                **extra,
            }
        ],
    }


YX = [
    {"name": "y", "type": "space", "unit": "nanometer"},
    {"name": "x", "type": "space", "unit": "nanometer"},
]


@pytest.mark.parametrize(
    ("ome", "shape", "message"),
    [
        ({**_ms(YX, [2, 2]), "version": "0.3"}, (4, 4), "has version '0.3'"),
        ({"version": "0.5", "multiscales": []}, (4, 4), "expected a non-empty list"),
        (
            _ms([{"name": "c", "type": "channel"}, {"name": "x", "type": "space"}], [1, 2]),
            (4, 4),
            r"axes: Value error, Length of space axes \(1\) not valid",
        ),
        (
            _ms(
                [
                    {"name": "y", "type": "space", "unit": "nanometer"},
                    {"name": "x", "type": "space"},
                ],
                [2, 2],
            ),
            (4, 4),
            "mixes spatial axes with and without a length unit",
        ),
        (_ms(YX, [2, 2], path="nope"), (4, 4), "lists level 'nope'"),
        (_ms(YX, [-2, 2]), (4, 4), "spatial scale must be positive"),
        (
            _ms([{"name": "w", "type": "wavelength"}, *YX], [1, 2, 2]),
            (2, 4, 4),
            "axis 'w' of type 'wavelength'",
        ),
        (
            {
                "version": "0.5",
                "multiscales": [
                    {
                        "axes": YX,
                        "datasets": [
                            {
                                "path": "s0",
                                "coordinateTransformations": [
                                    {"type": "scale", "path": "scale.bin"}
                                ],
                            }
                        ],
                    }
                ],
            },
            (4, 4),
            "scale given by path is not supported",
        ),
    ],
)
def test_bad_hand_written_metadata(
    tmp_path: Path, ome: dict, shape: tuple[int, ...], message: str
) -> None:
    path = _hand_image(tmp_path, ome, shape)
    with pytest.raises(ValueError, match=message):
        open_volume(path)


def test_multiscale_transformations_compose(tmp_path: Path) -> None:
    # The multiscale's own scale/translation apply after the level's.
    ome = _ms(
        YX,
        [2, 3],
        coordinateTransformations=[
            {"type": "scale", "scale": [2, 2]},
            {"type": "translation", "translation": [10, 20]},
        ],
    )
    array = open_volume(_hand_image(tmp_path, ome))
    assert tuple(array.voxel_size) == (4, 6) and tuple(array.offset) == (10, 20)


def test_more_error_branches(tmp_path: Path) -> None:
    from innerdist.ome import _set_dimension_names
    from innerdist.volumes import level_path

    path = _hand_image(tmp_path, _ms(YX, [2, 2]))
    zarr.open_group(path, mode="a").create_array("extra", shape=(2, 2), dtype=np.uint8)
    assert locate_level(path, "extra") is None  # next to the image, not a level of it
    with pytest.raises(ValueError, match="was given but .* is an array"):
        locate_level(path, "extra", 0)
    with pytest.raises(ValueError, match="time must be a non-negative integer"):
        open_volume(path, time=-1)
    assert level_path(path, None) == str(path)
    assert level_path(path, 0) == str(path / "s0")
    assert level_path(tmp_path / "missing.zarr" / "x", 1).endswith("missing.zarr/x")
    with pytest.raises(ValueError, match="not a zarr v3 array"):
        _set_dimension_names(path, ["y", "x"])
    with pytest.raises(ValueError, match="not one axis per name"):
        _set_dimension_names(path / "s0", ["x"])
    (path / "zarr.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read zarr metadata"):
        open_volume(path)


def test_time_series_is_read_only(tmp_path: Path) -> None:
    path = write_ome(tmp_path / "t.ome.zarr", np.zeros((2, 4, 4), np.uint8), axes="tyx", levels=1)
    with pytest.raises(ValueError, match="one time point of it can only be read"):
        open_volume(path, mode="r+", time=0)
