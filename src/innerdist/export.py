"""A checkpoint as a bioimage.io model package, and such a package read back as a checkpoint.

:func:`export_package` writes one zip (bioimage.io model spec 0.5) that other tools
(bioimage.io, Fiji/deepImageJ, ilastik, napari, ``bioimageio.core``) can run, and that
``innerdist predict`` accepts in place of the checkpoint it was made from::

    model.zip
    |- rdf.yaml              the model description; config.innerdist holds the checkpoint
    |                        minus its weights: architecture, predictor (scale factor),
    |                        voxel size (nm), normalisation, tuned post-processing
    |- weights.pt            PyTorch state dict (the checkpoint's weights, unchanged)
    |- innerdist_unet.py     the network as a torch-only source file (export_unet.py)
    |- weights_torchscript.pt  the same network traced to TorchScript
    |- test_input.npy        raw (batch, channel, [z,] y, x), the checkpoint's raw dtype
    |- test_output.npy       innerdist's prediction of it (float32)
    |- cover.png             a slice of raw / prediction / instances
    |- README.md             what the model predicts and how to segment with innerdist

The network sees ``(raw - min) / (max - min)`` (:func:`innerdist.normalize.normalize_raw`);
the package states it as the preprocessing ``ensure_dtype(float64)``,
``scale_linear(gain=1/(max-min), offset=-min/(max-min))``, ``ensure_dtype(float32)``, which
equals innerdist's normalisation up to float64 rounding before the cast to float32.

:func:`load_package` reads a package (the zip, its unpacked folder, or the folder's
``rdf.yaml``) back into a :class:`~innerdist.checkpoint.Checkpoint` with the same weights
(the same :meth:`~innerdist.checkpoint.Checkpoint.weights_hash`), normalisation and
post-processing, so a prediction made from it carries the same attributes and segments
to the same instances. It reads the files itself (no bioimage.io import, no network).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import string
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from innerdist.checkpoint import Checkpoint

__all__ = [
    "PACKAGE_CONFIG_KEY",
    "export_package",
    "is_package",
    "load_checkpoint_or_package",
    "load_package",
]

#: The key under the package's ``config`` that holds the innerdist checkpoint description.
PACKAGE_CONFIG_KEY = "innerdist"
_YAML_NAMES = ("rdf.yaml", "bioimageio.yaml", "model.yaml")
_INPUT_ID = "raw"
_OUTPUT_ID = "prediction"
_ARCHITECTURE_FILE = "innerdist_unet.py"
_ARCHITECTURE_CALLABLE = "InnerDistanceUNet"
_NAME_CHARACTERS = set(string.ascii_letters + string.digits + "_+- ()")


# --- reading ---------------------------------------------------------------------------


def _yaml_loader() -> type:
    """PyYAML's safe loader, reading numbers with an exponent as YAML 1.2 does.

    bioimage.io writes YAML 1.2, where ``1e-05`` is a float; PyYAML follows YAML 1.1,
    where a float needs a dot and a signed exponent, and would read a tiny level or
    intensity as the string ``'1e-05'``.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return Loader


def _yaml_in_zip(names: Sequence[str]) -> str | None:
    return next((n for n in _YAML_NAMES if n in names), None)


def is_package(path: str | Path) -> bool:
    """Whether ``path`` looks like a bioimage.io package: a zip with an ``rdf.yaml`` (or
    ``bioimageio.yaml``) at its top, a folder holding one, or that yaml file itself. A
    checkpoint (torch's zip format, without such a file) is not."""
    p = Path(path)
    if p.is_dir():
        return any((p / name).is_file() for name in _YAML_NAMES)
    if p.is_file() and p.name in _YAML_NAMES:
        return True
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            return _yaml_in_zip(z.namelist()) is not None
    return False


class _PackageFiles:
    """Files of a package by their name in ``rdf.yaml``, from a zip or a folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.root: Path | None = path
        elif path.name in _YAML_NAMES:
            self.root = path.parent
        else:
            self.root = None
            self._zip = zipfile.ZipFile(path)
        yaml_name = (
            _yaml_in_zip(self._zip.namelist()) if self._zip is not None
            else path.name if path.name in _YAML_NAMES
            else next(n for n in _YAML_NAMES if (path / n).is_file())
        )
        assert yaml_name is not None  # is_package said so
        self.yaml_name = yaml_name

    def read(self, name: str) -> bytes:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"package {str(self.path)!r} names a file outside it: {name!r}")
        try:
            if self._zip is not None:
                return self._zip.read(name)
            assert self.root is not None
            return (self.root / name).read_bytes()
        except KeyError:
            raise ValueError(f"package {str(self.path)!r} lacks the file {name!r}") from None
        except FileNotFoundError:
            raise ValueError(f"package {str(self.path)!r} lacks the file {name!r}") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def load_package(path: str | Path) -> Checkpoint:
    """The checkpoint inside a package written by :func:`export_package`.

    ``path`` is the zip, its unpacked folder or the folder's ``rdf.yaml``. The weights are
    the package's PyTorch state dict (checked against its sha256 when the description
    gives one), read with ``torch.load(weights_only=True)``. Raises ``FileNotFoundError``
    for a missing path and ``ValueError`` for anything that is not such a package (a
    bioimage.io model made by another tool has no ``config.innerdist``).
    """
    import torch
    import yaml

    from innerdist.checkpoint import checkpoint_from_dict

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no model package at {str(p)!r}")
    if not is_package(p):
        raise ValueError(
            f"{str(p)!r} is not a bioimage.io package (a .zip or folder with an rdf.yaml)"
        )
    files = _PackageFiles(p)
    try:
        try:
            rdf = yaml.load(files.read(files.yaml_name), Loader=_yaml_loader())  # a SafeLoader
        except yaml.YAMLError as e:
            raise ValueError(f"package {str(p)!r}: unreadable {files.yaml_name}: {e}") from None
        config = rdf.get("config") if isinstance(rdf, dict) else None
        described = config.get(PACKAGE_CONFIG_KEY) if isinstance(config, dict) else None
        if not isinstance(described, dict):
            raise ValueError(
                f"package {str(p)!r} was not exported by innerdist (its {files.yaml_name} "
                f"has no config.{PACKAGE_CONFIG_KEY}); innerdist predict needs an "
                "innerdist export"
            )
        weights_entry = (rdf.get("weights") or {}).get("pytorch_state_dict")
        if not isinstance(weights_entry, dict) or "source" not in weights_entry:
            raise ValueError(f"package {str(p)!r} has no pytorch_state_dict weights")
        data = files.read(str(weights_entry["source"]))
    finally:
        files.close()
    expected = weights_entry.get("sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(
            f"package {str(p)!r}: the state dict {weights_entry['source']!r} does not match "
            "the sha256 its description gives (a damaged or edited package)"
        )
    try:
        weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for junk
        raise ValueError(f"package {str(p)!r}: unreadable state dict ({e})") from None
    checkpoint = checkpoint_from_dict({**described, "weights": weights}, p)
    recorded = described.get("weights_sha256")
    if recorded is not None and checkpoint.weights_hash() != recorded:
        raise ValueError(
            f"package {str(p)!r}: its weights are not the ones it was exported with "
            f"(weights_sha256 differs)"
        )
    return checkpoint


def load_checkpoint_or_package(path: str | Path) -> Checkpoint:
    """A checkpoint file (:func:`innerdist.checkpoint.load_checkpoint`) or a package from
    :func:`export_package` (:func:`load_package`), whichever ``path`` is."""
    from innerdist.checkpoint import load_checkpoint

    return load_package(path) if is_package(path) else load_checkpoint(path)


# --- writing ---------------------------------------------------------------------------


def _config(checkpoint: Checkpoint, unit: str) -> dict[str, Any]:
    """The checkpoint as plain YAML values, without weights and training state."""
    data = checkpoint.to_dict()
    del data["weights"]
    data["training_state"] = None
    data["weights_sha256"] = checkpoint.weights_hash()
    data["voxel_size_unit"] = unit
    # A round trip through JSON turns tuples into lists: what YAML stores and reads back.
    return dict(json.loads(json.dumps(data)))


def _test_input(checkpoint: Checkpoint, raw: str | None, time: int | None) -> np.ndarray:
    """``(1, C, *eval_input_shape)`` in the checkpoint's raw dtype: the middle of ``raw``,
    or, without it, a synthetic EM-like image spread over the normalisation's range."""
    unet = checkpoint.architecture
    shape = tuple(int(s) for s in unet.input_shape + unet.eval_shape_increase)
    channels = unet.num_in_channels
    dtype = np.dtype(checkpoint.normalization["dtype"])
    if raw is None:
        from innerdist.synthetic import make_em_volume

        image = make_em_volume(shape, checkpoint.voxel_size, seed=0).raw.astype(np.float64)
        lo, hi = checkpoint.normalization["min"], checkpoint.normalization["max"]
        values = lo + image * (hi - lo)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = np.clip(np.round(values), info.min, info.max)
        data = np.broadcast_to(values.astype(dtype), (channels, *shape))
        return np.ascontiguousarray(data[np.newaxis])
    from funlib.geometry import Coordinate, Roi

    from innerdist.volumes import num_channels, open_volume

    array = open_volume(raw, time=time)
    voxel = Coordinate(array.voxel_size)
    if array.spatial_dims != unet.dims or voxel != Coordinate(checkpoint.voxel_size):
        raise ValueError(
            f"raw {raw!r} has {array.spatial_dims} spatial axes and voxel size "
            f"{tuple(voxel)}; the checkpoint's network is {unet.dims}-D at voxel size "
            f"{tuple(checkpoint.voxel_size)} (world units)"
        )
    if (num_channels(array) or 1) != channels:
        raise ValueError(
            f"raw {raw!r} has {num_channels(array) or 1} channel(s); the network takes "
            f"{channels}"
        )
    if np.dtype(array.dtype) != dtype:
        raise ValueError(f"raw {raw!r} is {np.dtype(array.dtype).name}; the network was "
                         f"trained on {dtype.name} raw")
    have = array.roi.shape / voxel
    if any(h < s for h, s in zip(have, shape, strict=True)):
        raise ValueError(
            f"raw {raw!r} has shape {tuple(have)} voxels, smaller than the network's "
            f"prediction input {shape}; give a larger raw for the test input"
        )
    begin = array.roi.begin + (have - Coordinate(shape)) / 2 * voxel
    data = np.asarray(array[Roi(begin, Coordinate(shape) * voxel)])
    if array.channel_dims == 0:
        data = data[np.newaxis]
    return np.ascontiguousarray(data[np.newaxis])


def _instances_of(prediction: np.ndarray, checkpoint: Checkpoint) -> np.ndarray:
    """Instances of the first channel with the checkpoint's post-processing (defaults
    without it), as ``innerdist segment`` would make them; for the cover."""
    post = checkpoint.postprocessing or {}
    with warnings.catch_warnings():
        # An untrained network's values below -1 have no inner distance (NaN relief, which
        # seeds nothing); the cover shows what segment makes of them, without the warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        return _instances(checkpoint, prediction, post)


def _instances(checkpoint: Checkpoint, prediction: np.ndarray, post: Mapping[str, Any]
               ) -> np.ndarray:
    from innerdist.watershed import DEFAULT_FOREGROUND_LEVEL, DEFAULT_SEED_LEVEL, instances

    return instances(
        prediction,
        foreground_level=float(post.get("foreground_level", DEFAULT_FOREGROUND_LEVEL)),
        seed_level=float(post.get("seed_level", DEFAULT_SEED_LEVEL)),
        min_size_voxels=float(post.get("min_size", 0)),
        seed_dynamic=float(post.get("seed_dynamic", 0.0)),
        scale=checkpoint.predictor.dt_scale_factor,
    )


def _crop_like(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The middle of ``image`` with the shape of ``like``: the raw under a valid output."""
    start = [(a - b) // 2 for a, b in zip(image.shape, like.shape, strict=True)]
    return image[tuple(slice(s, s + n) for s, n in zip(start, like.shape, strict=True))]


def _readme(checkpoint: Checkpoint, name: str, unit: str) -> str:
    predictor = checkpoint.predictor
    unet = checkpoint.architecture
    axes = "zyx"[3 - unet.dims:]
    voxel = " x ".join(f"{v} {unit}" for v in checkpoint.voxel_size)
    norm = checkpoint.normalization
    post = checkpoint.postprocessing
    if post is None:
        tuned = (
            "The checkpoint holds no tuned post-processing; `innerdist segment` uses its "
            "defaults (or pass `--foreground-level`, `--seed-level`, `--min-size`)."
        )
    else:
        units = {"min_size": " voxels", "seed_dynamic": f" {unit}"}
        items = ", ".join(f"`{k}` = {v}{units.get(k, '')}" for k, v in post.items())
        tuned = (
            f"Tuned on validation data and stored in `config.innerdist.postprocessing`: "
            f"{items}. `innerdist predict` writes them into the prediction, where "
            "`innerdist segment` finds them, so the two commands below reproduce the "
            "author's instances."
        )
    context = ", ".join(str(c) for c in unet.context)
    validation = (
        "The post-processing above was chosen on validation data during training (the "
        "best score of `innerdist train`'s sweep over the levels)."
        if post is not None
        else "This checkpoint carries no validation results."
    )
    return f"""# {name}

A {unet.dims}-D U-Net trained with innerdist to predict the **inner distance** of every
voxel to the boundary of its object: `tanh(d / s)` with `d` the distance in {unit} and
scale factor `s` = {predictor.dt_scale_factor} {unit}, one output channel per class
({", ".join(predictor.channels)}); 0 outside objects, rising towards 1 deep inside them.

- Input `{_INPUT_ID}`: axes batch, channel, {", ".join(axes)}; voxel size {voxel}
  ({axes}); {norm["dtype"]} intensities, normalised as `(raw - {norm["min"]:g}) /
  ({norm["max"]:g} - {norm["min"]:g})` (the package's preprocessing; no clipping).
- Output `{_OUTPUT_ID}`: float32, the same voxel size, smaller than the input by the
  network's context ({context} voxels per side, {axes}) when it uses valid convolutions.
- Trained for {checkpoint.iteration} iterations.

## Instances

{tuned}

```bash
innerdist predict model.zip data.zarr/raw data.zarr/prediction
innerdist segment data.zarr/prediction data.zarr/instances
```

`innerdist predict` takes this package in place of a checkpoint and predicts volumes
of any size blockwise. With other tools: the foreground is the prediction above the
foreground level; seeds are the components above the seed level (with `seed_dynamic`
> 0, also the maxima of the inner distance `s * atanh(prediction)` that rise that far
above their saddles); the seeds grow by a watershed on the negated prediction over the
foreground, and objects below `min_size` voxels are dropped.

## Validation

{validation}
`bioimageio test model.zip` (bioimageio.core) runs both weight formats on the test input
and compares with `test_output.npy`, innerdist's own prediction of it.

## Files

`weights.pt` (PyTorch state dict; architecture `{_ARCHITECTURE_FILE}`, torch only),
`weights_torchscript.pt` (TorchScript), `test_input.npy` / `test_output.npy`,
`cover.png` (raw / prediction / instances of the test input).
"""


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix.lower() != ".zip":
        raise ValueError(f"output {str(out)!r} must be a .zip file (a bioimage.io package)")
    if out.is_dir():
        raise IsADirectoryError(f"output {str(out)!r} is a directory; expected a .zip file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"output {str(out)!r} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"directory {str(out.parent)!r} for {str(out)!r} does not exist")


def _axes(checkpoint: Checkpoint, v0_5: Any, unit: str) -> tuple[list, list]:
    """Input and output axes: the U-Net's valid input sizes (``min + n * step``) and the
    output size as input size plus a fixed offset (minus twice the context when valid)."""
    from innerdist.units import ome_unit  # "nanometer" (bioimage.io's name too), px: None

    unet = checkpoint.architecture
    names = "zyx"[3 - unet.dims:]
    smallest = unet.valid_input_shape((1,) * unet.dims)
    step = unet.output_step
    shrink = [o - i for o, i in zip(unet.output_shape(smallest), smallest, strict=True)]
    channels = unet.num_in_channels
    inputs: list[Any] = [
        v0_5.BatchAxis(),
        v0_5.ChannelAxis(
            channel_names=["raw"] if channels == 1 else [f"raw{i}" for i in range(channels)]
        ),
    ]
    outputs: list[Any] = [
        v0_5.BatchAxis(),
        v0_5.ChannelAxis(channel_names=list(checkpoint.predictor.channels)),
    ]
    for axis, voxel, low, s, offset in zip(
        names, checkpoint.voxel_size, smallest, step, shrink, strict=True
    ):
        common = {"id": v0_5.AxisId(axis), "unit": ome_unit(unit), "scale": float(voxel)}
        inputs.append(
            v0_5.SpaceInputAxis(size=v0_5.ParameterizedSize(min=int(low), step=int(s)), **common)
        )
        outputs.append(
            v0_5.SpaceOutputAxis(
                size=v0_5.SizeReference(
                    tensor_id=v0_5.TensorId(_INPUT_ID), axis_id=v0_5.AxisId(axis),
                    offset=int(offset),
                ),
                **common,
            )
        )
    return inputs, outputs


def _describe(
    v0_5: Any,
    ckpt: Checkpoint,
    folder: Path,
    *,
    name: str,
    authors: Sequence[str],
    license: str,
    test_input: np.ndarray,
    unit: str,
) -> Any:
    """The model description of the files written to ``folder``."""
    import torch

    unet = ckpt.architecture
    dims = unet.dims
    norm = ckpt.normalization
    span = norm["max"] - norm["min"]
    input_axes, output_axes = _axes(ckpt, v0_5, unit)
    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    return v0_5.ModelDescr(
        name=name,
        description=(
            f"Inner distance (tanh of the distance to the object boundary over "
            f"{ckpt.predictor.dt_scale_factor:g} {unit}) of {', '.join(ckpt.predictor.channels)}"
            f", {dims}-D, for innerdist segment"
        )[:1024],
        authors=[v0_5.Author(name=a) for a in authors],
        license=license,
        documentation=v0_5.FileDescr(source=folder / "README.md"),
        covers=[v0_5.FileDescr(source=folder / "cover.png")],
        tags=["innerdist", "inner-distance", "instance-segmentation", f"{dims}d", "unet"],
        inputs=[
            v0_5.InputTensorDescr(
                id=v0_5.TensorId(_INPUT_ID),
                axes=input_axes,
                test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type=str(test_input.dtype)),
                preprocessing=[
                    v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float64")),
                    v0_5.ScaleLinearDescr(
                        kwargs=v0_5.ScaleLinearKwargs(
                            gain=1.0 / span, offset=0.0 - norm["min"] / span
                        )
                    ),
                    v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
                ],
            )
        ],
        outputs=[
            v0_5.OutputTensorDescr(
                id=v0_5.TensorId(_OUTPUT_ID),
                axes=output_axes,
                test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32"),
            )
        ],
        weights=v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                source=folder / "weights.pt",
                architecture=v0_5.ArchitectureFromFileDescr(
                    source=folder / _ARCHITECTURE_FILE,
                    callable=v0_5.Identifier(_ARCHITECTURE_CALLABLE),
                    kwargs={
                        **unet.to_dict(),
                        "dims": dims,
                        "num_out_channels": ckpt.predictor.embedding_dims,
                    },
                ),
                pytorch_version=torch_version,
            ),
            torchscript=v0_5.TorchscriptWeightsDescr(
                source=folder / "weights_torchscript.pt",
                pytorch_version=torch_version,
                parent="pytorch_state_dict",
            ),
        ),
        config=v0_5.Config(**{PACKAGE_CONFIG_KEY: _config(ckpt, unit)}),
    )


def export_package(
    checkpoint: str | Path,
    out: str | Path,
    *,
    raw: str | None = None,
    time: int | None = None,
    name: str | None = None,
    authors: Sequence[str] = ("innerdist user",),
    license: str = "CC-BY-4.0",
    unit: str = "nm",
    overwrite: bool = False,
) -> Path:
    """Write the checkpoint at ``checkpoint`` as a bioimage.io model package ``out`` (.zip).

    ``raw`` (a volume path, the checkpoint's voxel size and dtype) gives the test input:
    the middle of it, the network's prediction input shape; without it a synthetic
    EM-like image is used. ``unit`` is the world unit of the checkpoint's voxel size
    (checkpoints do not record it): ``"nm"``, or ``"px"`` for a network trained on
    uncalibrated data (axes without a physical unit). The package is built in a
    temporary folder and zip next to ``out`` and renamed to ``out`` only when complete;
    an existing ``out`` is replaced only with ``overwrite``. Returns ``out``. The layout
    and what ``config.innerdist`` holds: the module docstring and ``docs/export.md``.
    """
    import torch

    from innerdist.checkpoint import load_checkpoint
    from innerdist.export_unet import InnerDistanceUNet
    from innerdist.normalize import normalize_raw
    from innerdist.plots import plot_slices

    out = Path(out)
    _check_out(out, overwrite)
    if Path(checkpoint).resolve() == out.resolve():
        raise ValueError(f"output {str(out)!r} is the checkpoint; choose another output path")
    if isinstance(authors, str) or not authors or not all(
        isinstance(a, str) and a.strip() for a in authors
    ):
        raise ValueError(f"authors must be a list of names, got {authors!r}")
    if name is not None and (
        not isinstance(name, str) or not 5 <= len(name) <= 128 or set(name) - _NAME_CHARACTERS
    ):
        raise ValueError(
            f"model name must be 5 to 128 letters, digits, spaces or _+-(), got {name!r}"
        )
    if unit not in ("nm", "px"):
        raise ValueError(f"unit must be 'nm' or 'px' (the voxel size world unit), got {unit!r}")
    ckpt = load_checkpoint(checkpoint)
    unet = ckpt.architecture
    if name is None:
        name = f"innerdist {unet.dims}D inner distance U-Net"
    test_input = _test_input(ckpt, raw, time)

    model = ckpt.build_model()
    network = InnerDistanceUNet(
        **unet.to_dict(), dims=unet.dims, num_out_channels=ckpt.predictor.embedding_dims
    )
    network.load_state_dict(ckpt.weights, strict=True)
    network.eval()
    normalized = torch.from_numpy(normalize_raw(test_input, ckpt.normalization))
    with torch.no_grad(), warnings.catch_warnings():
        # torch >= 2.9 deprecates TorchScript; bioimage.io runs it, so it is written anyway.
        warnings.simplefilter("ignore", DeprecationWarning)
        test_output = model(normalized).numpy()
        traced = torch.jit.trace(network, normalized, check_trace=False)

    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5
    from pydantic import ValidationError

    with tempfile.TemporaryDirectory(prefix=".innerdist-export-", dir=out.parent) as tmp:
        folder = Path(tmp)
        torch.save({k: v.detach().cpu() for k, v in ckpt.weights.items()}, folder / "weights.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(traced, str(folder / "weights_torchscript.pt"))
        shutil.copyfile(Path(__file__).with_name("export_unet.py"), folder / _ARCHITECTURE_FILE)
        np.save(folder / "test_input.npy", test_input)
        np.save(folder / "test_output.npy", test_output)
        dims = unet.dims
        plot_slices(
            {
                "raw": (_crop_like(test_input[0, 0], test_output[0, 0]), "intensity"),
                f"prediction ({ckpt.predictor.channels[0]})": (test_output[0, 0], "distance"),
                "instances": (_instances_of(test_output[0, 0], ckpt), "labels"),
            },
            folder / "cover.png",
            dims=dims,
        )
        (folder / "README.md").write_text(_readme(ckpt, name, unit), encoding="utf-8")

        try:
            description = _describe(
                v0_5, ckpt, folder, name=name, authors=authors, license=license,
                test_input=test_input, unit=unit,
            )
        except ValidationError as e:  # e.g. a license that is not an SPDX id
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"] if "[" not in str(p))
            if where == "license":
                raise ValueError(
                    f"license {license!r} is not an SPDX license id (e.g. CC-BY-4.0, MIT, "
                    "BSD-3-Clause)"
                ) from None
            raise ValueError(
                f"invalid package description: {where}: {first['msg'][:200]}"
            ) from None
        fd, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".zip")
        os.close(fd)
        try:
            save_bioimageio_package(description, output_path=Path(partial))
            os.replace(partial, out)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    return out

