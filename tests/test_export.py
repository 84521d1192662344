"""Tests for innerdist.export: the bioimage.io package passes bioimage.io's own model test,
its networks equal the checkpoint's, its preprocessing is innerdist's normalisation, and a
prediction made from it segments to the checkpoint's instances; bad input and faults."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from nets import NORM_UINT8, tiny_predictor, tiny_unet
from test_safety import write
from typer.testing import CliRunner

from innerdist.attrs import POSTPROCESSING_ATTR, PREDICTOR_ATTR
from innerdist.checkpoint import Checkpoint, random_checkpoint, save_checkpoint
from innerdist.cli import app
from innerdist.export import _yaml_loader, export_package, is_package, load_package
from innerdist.export_unet import InnerDistanceUNet
from innerdist.normalize import normalize_raw
from innerdist.predict import predict_array, predict_volume
from innerdist.segment import segment_volume
from innerdist.synthetic import make_em_volume
from innerdist.volumes import open_volume

runner = CliRunner()
VOXEL = (4, 4)
#: TorchScript and state-dict networks vs the checkpoint's Model (measured: 0.0).
ATOL = 1e-6


def _raw_image(shape: tuple[int, ...], seed: int = 3) -> np.ndarray:
    """EM-like uint8 raw with objects, so that a random network's output has structure."""
    image = make_em_volume(shape, (4,) * len(shape), seed=seed).raw
    return np.round(image * 255).astype(np.uint8)


def _tuned_checkpoint(raw: np.ndarray, dims: int = 2, channels: int = 1) -> Checkpoint:
    """A random tiny checkpoint whose post-processing levels are percentiles of its own
    prediction of ``raw``: a random network then still segments several objects."""
    ckpt = random_checkpoint(tiny_unet(dims), tiny_predictor(channels), (4,) * dims,
                             NORM_UINT8, seed=3)
    pred = predict_array(ckpt.build_model(), normalize_raw(raw, NORM_UINT8), device="cpu")[0]
    inside = pred[(pred > 0) & (pred < 1)]  # levels are in [0, 1]
    low, high = (float(v) for v in np.percentile(inside, [35, 85]))
    ckpt.postprocessing = {"foreground_level": low, "seed_level": high, "min_size": 2}
    return ckpt


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tuned 2-D checkpoint, its raw and its package (exported once for the module)."""
    where = tmp_path_factory.mktemp("export")
    raw = _raw_image((72, 80))
    ckpt = _tuned_checkpoint(raw)
    path = save_checkpoint(where / "model.pt", ckpt)
    raw_path = write(where / "in.zarr" / "raw", raw, VOXEL)
    before = path.read_bytes()
    package = export_package(path, where / "model.zip", raw=raw_path, authors=["A. Author"])
    assert path.read_bytes() == before  # the input is never modified
    return {"where": where, "raw": raw, "raw_path": raw_path, "checkpoint": path,
            "ckpt": ckpt, "package": package}


def _rdf(package: Path) -> dict[str, Any]:
    with zipfile.ZipFile(package) as z:
        return dict(yaml.load(z.read("rdf.yaml"), Loader=_yaml_loader()))  # YAML 1.2 floats


# --- the package ---------------------------------------------------------------------------


def test_package_layout_and_config(exported):
    package, ckpt = exported["package"], exported["ckpt"]
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        cover = z.read("cover.png")
        readme = z.read("README.md").decode()
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "innerdist_unet.py",
            "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names
    assert cover[:8] == b"\x89PNG\r\n\x1a\n"
    assert "40.0 nm" in readme and "innerdist segment" in readme
    rdf = _rdf(package)
    assert rdf["format_version"].startswith("0.5")
    config = rdf["config"]["innerdist"]
    assert config["postprocessing"] == ckpt.postprocessing
    assert config["normalization"] == ckpt.normalization
    assert config["voxel_size"] == list(VOXEL) and config["voxel_size_unit"] == "nm"
    assert config["predictor"]["scale_factor"] == 40.0
    assert config["weights_sha256"] == ckpt.weights_hash()
    axes = rdf["inputs"][0]["axes"]
    assert [a.get("id", a["type"]) for a in axes] == ["batch", "channel", "y", "x"]
    assert [(a["scale"], a["unit"]) for a in axes[2:]] == [(4.0, "nanometer")] * 2
    out_axes = rdf["outputs"][0]["axes"]
    # valid convolutions: the output is smaller by the context (8 voxels) on each side
    assert [a["size"]["offset"] for a in out_axes[2:]] == [-16, -16]


def test_test_input_is_the_middle_of_raw_and_output_the_checkpoints_prediction(exported):
    with zipfile.ZipFile(exported["package"]) as z:
        test_input = np.load(z.open("test_input.npy"))
        test_output = np.load(z.open("test_output.npy"))
    ckpt = exported["ckpt"]
    unet = ckpt.architecture
    shape = tuple(int(s) for s in unet.input_shape + unet.eval_shape_increase)
    assert test_input.shape == (1, 1, *shape) and test_input.dtype == np.uint8
    begin = [(have - s) // 2 for have, s in zip(exported["raw"].shape, shape, strict=True)]
    middle = exported["raw"][tuple(slice(b, b + s) for b, s in zip(begin, shape, strict=True))]
    np.testing.assert_array_equal(test_input[0, 0], middle)
    with torch.no_grad():
        expected = ckpt.build_model()(torch.from_numpy(normalize_raw(test_input, NORM_UINT8)))
    np.testing.assert_array_equal(test_output, expected.numpy())


# Each weight format costs bioimageio.core 3-7 s on 2 busy cores; both at once run in the
# slow suite, TorchScript (what most bioimage.io consumers run) in the default one.
@pytest.mark.parametrize(
    "formats",
    [("torchscript",), pytest.param(("torchscript", "pytorch_state_dict"), marks=pytest.mark.slow)],
    ids=["torchscript", "both"],
)
def test_package_passes_bioimageio_core_test_model(exported, formats):
    from bioimageio.core import test_model

    summary = test_model(exported["package"], weight_format=None if len(formats) > 1 else
                         formats[0])
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    # the weights were run on the test input and compared, not only validated
    reproduced = [d.name for d in summary.details if d.name.startswith("Reproduce test outputs")]
    assert sorted(reproduced) == sorted(
        f"Reproduce test outputs from test inputs ({f})" for f in formats
    ), reproduced


@pytest.mark.parametrize("weights", ["weights_torchscript.pt", "weights.pt"])
def test_package_networks_equal_checkpoint_forward(exported, weights, tmp_path):
    """TorchScript (traced at the test input's shape) and the state dict on the shipped
    architecture file equal the checkpoint's Model, also at another valid shape and batch."""
    with zipfile.ZipFile(exported["package"]) as z:
        z.extractall(tmp_path)
    ckpt = exported["ckpt"]
    if weights.endswith("torchscript.pt"):
        network = torch.jit.load(str(tmp_path / weights))
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("shipped", tmp_path / "innerdist_unet.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        kwargs = _rdf(exported["package"])["weights"]["pytorch_state_dict"]["architecture"]
        network = module.InnerDistanceUNet(**kwargs["kwargs"])
        network.load_state_dict(torch.load(tmp_path / weights, weights_only=True))
        network.eval()
    model = ckpt.build_model()
    unet = ckpt.architecture
    rng = np.random.default_rng(0)
    for batch, shape in [(1, unet.input_shape), (3, unet.input_shape + unet.output_step * 3)]:
        x = torch.from_numpy(rng.random((batch, 1, *shape), dtype=np.float32))
        with torch.no_grad():
            got, want = network(x), model(x)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= ATOL


ARCHITECTURES = {
    "2d": (2, {}),
    "3d-anisotropic": (3, {}),
    "batch-norm-prelu": (2, {"batch_norm": True, "activation": "PReLU"}),
    "nearest": (2, {"upsample": "nearest", "fmap_inc_factor": 3}),
    "same-padding": (2, {"padding": "same", "input_shape": (48, 48)}),
    "no-levels": (2, {"downsample_factors": [], "kernel_size_down": [[3, 3]],
                      "kernel_size_up": [], "input_shape": (20, 20), "num_fmaps_out": 3}),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_standalone_unet_equals_innerdist_model(name):
    dims, overrides = ARCHITECTURES[name]
    unet = tiny_unet(dims, **overrides)
    model = tiny_predictor(2).create_model(unet)
    with torch.no_grad():  # batch norm statistics that are not the identity
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name_, buffer in model.named_buffers():
            if name_.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    model.eval()
    network = InnerDistanceUNet(**unet.to_dict(), dims=dims, num_out_channels=2)
    network.load_state_dict(model.state_dict(), strict=True)  # the same names and shapes
    network.eval()
    x = torch.rand(2, 1, *unet.input_shape)
    with torch.no_grad():
        np.testing.assert_array_equal(network(x).numpy(), model(x).numpy())


def test_standalone_unet_needs_only_torch():
    source = (Path(__import__("innerdist").__file__).parent / "export_unet.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines()
               if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "typing", "torch"}, imports


@pytest.mark.parametrize(
    "norm",
    [NORM_UINT8, {"min": 103.7, "max": 4012.25, "dtype": "uint16"},
     {"min": -0.3, "max": 1.7, "dtype": "float32"}],
)
def test_preprocessing_reproduces_normalize_raw(tmp_path, norm):
    """The package's preprocessing, run by bioimageio.core's own operators, against
    normalize_raw on every uint8/uint16 value (floats: a random sample)."""
    from bioimageio.core import Tensor
    from bioimageio.core.proc_ops import EnsureDtype, ScaleLinear
    from bioimageio.spec.model import v0_5

    ckpt = random_checkpoint(tiny_unet(2), tiny_predictor(1), VOXEL, norm)
    path = save_checkpoint(tmp_path / "model.pt", ckpt)
    package = export_package(path, tmp_path / "model.zip")
    steps = _rdf(package)["inputs"][0]["preprocessing"]
    assert [s["id"] for s in steps] == ["ensure_dtype", "scale_linear", "ensure_dtype"]
    dtype = np.dtype(norm["dtype"])
    values = (np.arange(np.iinfo(dtype).max + 1, dtype=dtype) if dtype.kind == "u"
              else np.random.default_rng(0).uniform(-5, 5, 100_000).astype(dtype))
    x = Tensor(values, dims=("x",))
    member = "raw"
    ops = [EnsureDtype(input=member, output=member, dtype=steps[0]["kwargs"]["dtype"]),
           ScaleLinear(input=member, output=member, gain=steps[1]["kwargs"]["gain"],
                       offset=steps[1]["kwargs"]["offset"]),
           EnsureDtype(input=member, output=member, dtype=steps[2]["kwargs"]["dtype"])]
    for op in ops:
        x = op._apply(x, {})
    got = np.asarray(x.data)
    want = normalize_raw(values, norm)
    assert got.dtype == np.float32
    # float64 rounding of x * gain + offset vs (x - min) / (max - min): at most 1 ulp of
    # float32 apart, and for these ranges equal (measured)
    np.testing.assert_array_equal(got, want)
    assert v0_5.ScaleLinearDescr(kwargs=steps[1]["kwargs"])  # a valid spec op


# --- predict from a package --------------------------------------------------------------


def test_load_package_gives_back_the_checkpoint(exported, tmp_path):
    ckpt = exported["ckpt"]
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(exported["package"]) as z:
        z.extractall(folder)
    for source in (exported["package"], folder, folder / "rdf.yaml"):
        assert is_package(source)
        loaded = load_package(source)
        assert loaded.weights_hash() == ckpt.weights_hash()
        assert loaded.architecture == ckpt.architecture
        assert loaded.predictor.to_dict() == ckpt.predictor.to_dict()
        assert loaded.normalization == ckpt.normalization
        assert loaded.postprocessing == ckpt.postprocessing
        assert loaded.voxel_size == ckpt.voxel_size and loaded.iteration == ckpt.iteration
    assert not is_package(exported["checkpoint"])  # torch's zip format, no rdf.yaml


def test_numbers_with_exponents_survive_the_yaml(tmp_path):
    """bioimage.io writes YAML 1.2 (``1e-05``), which YAML 1.1 readers take for a string."""
    ckpt = random_checkpoint(tiny_unet(2), tiny_predictor(1, scale_factor=1.5e-7), VOXEL,
                             {"min": -3e-05, "max": 1e20, "dtype": "float32"})
    ckpt.postprocessing = {"foreground_level": 1e-05, "seed_level": 0.5, "min_size": 3,
                           "seed_dynamic": 2.5e-9}
    path = save_checkpoint(tmp_path / "model.pt", ckpt)
    package = export_package(path, tmp_path / "model.zip")
    text = zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert "e-05" in text and "e+20" in text  # written with exponents
    loaded = load_package(package)
    assert loaded.normalization == ckpt.normalization
    assert loaded.postprocessing == ckpt.postprocessing
    assert loaded.predictor.dt_scale_factor == 1.5e-7


def test_round_trip_export_predict_segment_equals_checkpoint(exported):
    """checkpoint -> predict -> segment and package -> predict -> segment: the same
    prediction, attributes and instances (several objects, from the stored levels)."""
    where = exported["where"]
    results = {}
    folder = where / "unpacked"
    with zipfile.ZipFile(exported["package"]) as z:
        z.extractall(folder)
    for name, model in [("checkpoint", exported["checkpoint"]),
                        ("package", exported["package"]), ("folder", folder)]:
        pred = predict_volume(model, exported["raw_path"], where / f"{name}.zarr" / "pred",
                              device="cpu", progress=False, pyramid=False,
                              block_shape=(24, 24))
        seg = segment_volume(pred, where / f"{name}.zarr" / "seg", progress=False,
                             pyramid=False, block_shape=(32, 32))
        results[name] = (open_volume(pred), open_volume(seg))
    ref_pred, ref_seg = results["checkpoint"]
    assert ref_pred.attrs[POSTPROCESSING_ATTR] == exported["ckpt"].postprocessing
    instances = np.asarray(ref_seg[ref_seg.roi])
    assert len(np.unique(instances[instances > 0])) >= 2, "the test needs several objects"
    for name in ("package", "folder"):
        pred, seg = results[name]
        np.testing.assert_array_equal(np.asarray(pred[pred.roi]),
                                      np.asarray(ref_pred[ref_pred.roi]))
        for attr in (POSTPROCESSING_ATTR, PREDICTOR_ATTR):
            assert pred.attrs[attr] == ref_pred.attrs[attr]
        np.testing.assert_array_equal(np.asarray(seg[seg.roi]), instances)


def test_cli_predict_accepts_a_package(exported):
    out = exported["where"] / "cli.zarr" / "pred"
    result = runner.invoke(app, ["predict", str(exported["package"]), exported["raw_path"],
                                 str(out), "--device", "cpu", "--no-pyramid"])
    assert result.exit_code == 0, result.output
    pred = open_volume(out)
    assert pred.attrs[POSTPROCESSING_ATTR] == exported["ckpt"].postprocessing
    expected = predict_array(exported["ckpt"].build_model(),
                             normalize_raw(exported["raw"], NORM_UINT8), device="cpu")
    np.testing.assert_array_equal(np.asarray(pred[pred.roi]), expected)


def test_cluster_worker_loads_a_package(exported, tmp_path):
    """block_predictor_function (what a cluster worker runs) takes the package path that
    predict records in its job, and checks its weights like a checkpoint's."""
    from innerdist.predict import block_predictor_function

    out = predict_volume(exported["package"], exported["raw_path"], tmp_path / "p.zarr" / "p",
                         device="cpu", progress=False, pyramid=False, dry_run=False)
    args = {"checkpoint": str(exported["package"]), "raw": exported["raw_path"],
            "out": str(out), "device": "cpu", "tile_shape": [8, 8], "batch_size": 1,
            "dtype": "float32"}
    process = block_predictor_function(weights_sha256=exported["ckpt"].weights_hash(), **args)
    assert process.normalization == exported["ckpt"].normalization
    with pytest.raises(ValueError, match="has changed since the job started"):
        block_predictor_function(weights_sha256="0" * 64, **args)


@pytest.mark.slow
def test_3d_two_channel_package_passes_test_model_and_loads_back(tmp_path):
    from bioimageio.core import test_model

    raw = _raw_image((24, 48, 48))
    ckpt = _tuned_checkpoint(raw, dims=3, channels=2)
    path = save_checkpoint(tmp_path / "model.pt", ckpt)
    package = export_package(path, tmp_path / "model.zip")  # a synthetic test input
    summary = test_model(package)
    assert summary.status == "passed", [d.name for d in summary.details if d.status == "failed"]
    rdf = _rdf(package)
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["c0", "c1"]
    assert [a["id"] for a in rdf["inputs"][0]["axes"][2:]] == ["z", "y", "x"]
    loaded = load_package(package)
    assert loaded.weights_hash() == ckpt.weights_hash()
    assert loaded.postprocessing == ckpt.postprocessing


# --- errors ----------------------------------------------------------------------------------


def _package_with(exported: dict[str, Any], where: Path, edit: Any) -> Path:
    """A copy of the package folder with ``edit(folder)`` applied."""
    folder = where / "edited"
    with zipfile.ZipFile(exported["package"]) as z:
        z.extractall(folder)
    edit(folder)
    return folder


def test_load_package_errors(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model package"):
        load_package(tmp_path / "missing.zip")
    with pytest.raises(ValueError, match="is not a bioimage.io package"):
        load_package(exported["checkpoint"])

    def foreign(folder: Path) -> None:  # a bioimage.io model from another tool
        rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
        del rdf["config"]["innerdist"]
        (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))

    with pytest.raises(ValueError, match="not exported by innerdist"):
        load_package(_package_with(exported, tmp_path / "a", foreign))

    def tamper(folder: Path) -> None:
        state = torch.load(folder / "weights.pt", weights_only=True)
        next(iter(state.values())).add_(1.0)
        torch.save(state, folder / "weights.pt")

    with pytest.raises(ValueError, match="does not match the sha256"):
        load_package(_package_with(exported, tmp_path / "b", tamper))

    def tamper_consistently(folder: Path) -> None:  # edited weights with a fixed sha256
        tamper(folder)
        rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
        digest = hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()
        rdf["weights"]["pytorch_state_dict"]["sha256"] = digest
        (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))

    with pytest.raises(ValueError, match="not the ones it was exported with"):
        load_package(_package_with(exported, tmp_path / "c", tamper_consistently))

    def drop_weights(folder: Path) -> None:
        (folder / "weights.pt").unlink()

    with pytest.raises(ValueError, match="lacks the file 'weights.pt'"):
        load_package(_package_with(exported, tmp_path / "d", drop_weights))


def _edit_rdf(change: Any) -> Any:
    def edit(folder: Path) -> None:
        rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
        change(rdf)
        (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    return edit


def _write_junk_weights(folder: Path) -> None:
    (folder / "weights.pt").write_bytes(b"junk")
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["weights"]["pytorch_state_dict"]["sha256"] = hashlib.sha256(b"junk").hexdigest()
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: (f / "rdf.yaml").write_text("config: [unclosed"), "unreadable rdf.yaml"),
        (_edit_rdf(lambda rdf: rdf["weights"].pop("pytorch_state_dict")),
         "has no pytorch_state_dict weights"),
        (_edit_rdf(lambda rdf: rdf["weights"]["pytorch_state_dict"].update(
            source="../../model.pt")), "names a file outside it"),
        (_write_junk_weights, "unreadable state dict"),
        (_edit_rdf(lambda rdf: rdf["config"]["innerdist"]["voxel_size"].append(4)),
         "is invalid: voxel_size"),
    ],
    ids=["bad-yaml", "no-state-dict", "outside", "junk-weights", "bad-config"],
)
def test_load_package_refuses_broken_packages(exported, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        load_package(_package_with(exported, tmp_path, edit))


def test_export_package_errors(exported, tmp_path):
    ckpt = exported["checkpoint"]
    (tmp_path / "dir.zip").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        export_package(ckpt, tmp_path / "dir.zip")
    copy = tmp_path / "model.zip"
    copy.write_bytes(Path(ckpt).read_bytes())
    with pytest.raises(ValueError, match="is the checkpoint"):
        export_package(copy, copy, overwrite=True)
    with pytest.raises(ValueError, match="authors must be a list of names"):
        export_package(ckpt, tmp_path / "m.zip", authors="A. Author")
    raw = _raw_image((72, 80))
    cases = {
        "voxel": (write(tmp_path / "r.zarr" / "voxel", raw, (8, 8)), "voxel size"),
        "dtype": (write(tmp_path / "r.zarr" / "dtype", raw.astype(np.uint16), VOXEL),
                  "is uint16; the network was trained on uint8"),
        "small": (write(tmp_path / "r.zarr" / "small", raw[:30, :30], VOXEL),
                  "smaller than the network's prediction input"),
        "channels": (write(tmp_path / "r.zarr" / "channels", np.stack([raw, raw]), VOXEL,
                           channels=True), "has 2 channel"),
    }
    for path, message in cases.values():
        with pytest.raises(ValueError, match=message):
            export_package(ckpt, tmp_path / "m.zip", raw=path)
    assert not (tmp_path / "m.zip").exists()


def _one_error_line(result: Any, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("innerdist export: error: "), lines
    return str(lines[0])


def test_px_unit_gives_axes_without_a_physical_unit(exported, tmp_path):
    package = export_package(exported["checkpoint"], tmp_path / "px.zip", unit="px")
    rdf = _rdf(package)
    assert [a.get("unit") for a in rdf["inputs"][0]["axes"][2:]] == [None, None]
    assert [a["scale"] for a in rdf["outputs"][0]["axes"][2:]] == [4.0, 4.0]
    assert rdf["config"]["innerdist"]["voxel_size_unit"] == "px"
    with pytest.raises(ValueError, match="unit must be 'nm' or 'px'"):
        export_package(exported["checkpoint"], tmp_path / "um.zip", unit="um")


def test_cli_export_writes_a_package(exported, tmp_path):
    out = tmp_path / "cli.zip"
    result = runner.invoke(app, ["export", str(exported["checkpoint"]), str(out),
                                 "--author", "B. Author", "--name", "tiny test model"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}"
    rdf = _rdf(out)
    assert rdf["name"] == "tiny test model" and rdf["authors"] == [{"name": "B. Author"}]
    assert load_package(out).weights_hash() == exported["ckpt"].weights_hash()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.zip"]  # no leftovers


def test_cli_export_bad_input(exported, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    line = _one_error_line(runner.invoke(app, ["export", str(junk), str(tmp_path / "m.zip")]), 2)
    assert "is not a checkpoint" in line
    line = _one_error_line(
        runner.invoke(app, ["export", str(tmp_path / "none.pt"), str(tmp_path / "m.zip")]), 2)
    assert "none.pt" in line
    ckpt = str(exported["checkpoint"])
    line = _one_error_line(runner.invoke(app, ["export", ckpt, str(tmp_path / "m.txt")]), 2)
    assert "must be a .zip file" in line
    line = _one_error_line(
        runner.invoke(app, ["export", ckpt, str(tmp_path / "no" / "such" / "m.zip")]), 2)
    assert "does not exist" in line
    line = _one_error_line(runner.invoke(app, ["export", ckpt, "m.zip", "--name", "a/b"]), 2)
    assert "name" in line
    line = _one_error_line(
        runner.invoke(app, ["export", ckpt, str(tmp_path / "m.zip"), "--license", "MINE"]), 2)
    assert line.endswith("license 'MINE' is not an SPDX license id (e.g. CC-BY-4.0, MIT, "
                         "BSD-3-Clause)")
    line = _one_error_line(
        runner.invoke(app, ["export", ckpt, str(tmp_path / "m.zip"), "--raw",
                            str(tmp_path / "none.zarr" / "raw")]), 2)
    assert "none.zarr" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]


def test_cli_export_refuses_existing_output_without_overwrite(exported, tmp_path):
    out = tmp_path / "model.zip"
    out.write_bytes(b"someone's file")
    line = _one_error_line(runner.invoke(app, ["export", str(exported["checkpoint"]),
                                               str(out)]), 2)
    assert "exists; pass --overwrite" in line
    assert out.read_bytes() == b"someone's file"
    result = runner.invoke(app, ["export", str(exported["checkpoint"]), str(out),
                                 "--overwrite"])
    assert result.exit_code == 0, result.output
    assert is_package(out)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True
    ).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_cli_export_read_only_output_is_a_fault(exported, read_only):
    line = _one_error_line(runner.invoke(app, ["export", str(exported["checkpoint"]),
                                               str(read_only / "m.zip")]), 1)
    assert "read-only file system (errno EROFS)" in line and str(read_only) in line


def test_failed_export_leaves_no_output(exported, tmp_path, monkeypatch):
    """A fault while the zip is written (here: a full disk) leaves neither OUT nor a
    partial file."""
    import bioimageio.spec

    def full_disk(*args: Any, **kwargs: Any) -> None:
        Path(kwargs["output_path"]).write_bytes(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", full_disk)
    line = _one_error_line(runner.invoke(app, ["export", str(exported["checkpoint"]),
                                               str(tmp_path / "m.zip")]), 1)
    assert "no space left on device" in line
    assert list(tmp_path.iterdir()) == []

