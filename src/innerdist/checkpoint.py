"""Checkpoints: one file with everything needed to predict with a trained network.

A checkpoint is written with ``torch.save`` and holds only tensors and plain Python values
(dicts, lists, strings, numbers, bools, ``None``), so that :func:`load_checkpoint` can read it
with ``torch.load(..., weights_only=True)``: loading never runs code from the file. Its
contents::

    format, format_version    "innerdist-checkpoint", 1
    architecture              UNet.to_dict() plus {"type": "UNet"}
    predictor                 InnerDistancePredictor.to_dict() plus {"type": ...}
    weights                   the Model's state_dict (CPU tensors)
    voxel_size                of the training raw, world units (e.g. nm), one per axis
    normalization             {"min": a, "max": b, "dtype": "uint8", ...}, see below
    iteration                 training iterations done
    postprocessing            None or {"foreground_level", "seed_level", "min_size"}, and
                              optionally "seed_dynamic" (world units)
    training_state            None or a dict (optimizer, scheduler, RNG states) for resuming

Intensity normalisation is linear and defined in raw units: ``x -> (x - min) / (max - min)``,
so ``min`` maps to 0 and ``max`` to 1 (values outside are not clipped); see
:mod:`innerdist.normalize`, which owns it. ``dtype`` records the dtype of the raw the network
was trained on, ``method`` (newer checkpoints) where ``min``/``max`` came from: measured
percentiles of the training data, the config, or (older checkpoints, without ``method``)
the dtype's full range.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import pickle
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from innerdist.architecture import UNet
from innerdist.inner_distance import InnerDistancePredictor
from innerdist.model import Model
from innerdist.normalize import check_normalization

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "checkpoint_from_dict",
    "load_checkpoint",
    "random_checkpoint",
    "save_checkpoint",
]

FORMAT = "innerdist-checkpoint"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Config types are looked up by name in these tables, never eval'd.
_ARCHITECTURES: dict[str, type[UNet]] = {"UNet": UNet}
_PREDICTORS: dict[str, type[InnerDistancePredictor]] = {
    "InnerDistancePredictor": InnerDistancePredictor
}
_REQUIRED_KEYS = (
    "format_version",
    "architecture",
    "predictor",
    "weights",
    "voxel_size",
    "normalization",
    "iteration",
)
POSTPROCESSING_KEYS = ("foreground_level", "seed_level", "min_size")


def _check_postprocessing(value: Any) -> dict[str, float | int] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"postprocessing must be a dict or None, got {type(value).__name__}")
    if not set(POSTPROCESSING_KEYS) <= set(value) <= {*POSTPROCESSING_KEYS, "seed_dynamic"}:
        raise ValueError(
            f"postprocessing must have exactly the keys {list(POSTPROCESSING_KEYS)} (and "
            f"optionally 'seed_dynamic'), got {sorted(value)}"
        )
    result: dict[str, float | int] = {}
    for key in ("foreground_level", "seed_level"):
        level = value[key]
        if isinstance(level, bool) or not isinstance(level, numbers.Real):
            raise TypeError(f"postprocessing[{key!r}] must be a number, got {level!r}")
        result[key] = float(level)
    min_size = value["min_size"]
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or min_size < 0:
        raise ValueError(
            f"postprocessing['min_size'] must be a non-negative integer (voxels), got {min_size!r}"
        )
    result["min_size"] = int(min_size)
    if "seed_dynamic" in value:  # world units; checkpoints before dynamic seeds lack it
        dynamic = value["seed_dynamic"]
        if (
            isinstance(dynamic, bool)
            or not isinstance(dynamic, numbers.Real)
            or not (math.isfinite(float(dynamic)) and float(dynamic) >= 0)
        ):
            raise ValueError(
                f"postprocessing['seed_dynamic'] must be a number >= 0 (world units), "
                f"got {dynamic!r}"
            )
        result["seed_dynamic"] = float(dynamic)
    return result


def _check_plain(value: Any, where: str) -> None:
    """Refuse values that ``torch.load(weights_only=True)`` would refuse to read back, at
    save time, where the mistake is made (not later when resuming fails)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}; "
                                "use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    hint = " (convert numpy arrays with torch.from_numpy)" if isinstance(value, np.ndarray) else ""
    raise TypeError(
        f"{where} is a {type(value).__name__}; a checkpoint holds only tensors, dicts, "
        f"lists, tuples, str, int, float, bool and None{hint}"
    )


def _voxel_size(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"voxel_size must be a sequence of {dims} integers, got {value!r}")
    sizes = list(value)
    if len(sizes) != dims:
        raise ValueError(
            f"voxel_size {sizes} has {len(sizes)} entries but the architecture is {dims}-D"
        )
    for v in sizes:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or v <= 0 or v != round(v):
            raise ValueError(
                f"voxel_size entries must be positive whole numbers (world units), got {sizes}"
            )
    return tuple(int(round(v)) for v in sizes)


@dataclass
class Checkpoint:
    """Everything needed to rebuild and run a trained network (see the module docstring).

    ``weights`` is a ``state_dict`` of the :class:`~innerdist.model.Model` made by
    ``predictor.create_model(architecture)``; :meth:`build_model` puts them together.
    ``voxel_size`` is in world units. ``training_state`` is for the trainer only and may
    hold tensors, dicts, lists, tuples and scalars.
    """

    architecture: UNet
    predictor: InnerDistancePredictor
    weights: dict[str, torch.Tensor]
    voxel_size: tuple[int, ...]
    normalization: dict[str, Any]
    iteration: int = 0
    postprocessing: dict[str, float | int] | None = None
    training_state: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, UNet):
            raise TypeError(
                f"architecture must be a UNet, got {type(self.architecture).__name__}"
            )
        if not isinstance(self.predictor, InnerDistancePredictor):
            raise TypeError(
                "predictor must be an InnerDistancePredictor, got "
                f"{type(self.predictor).__name__}"
            )
        if not isinstance(self.weights, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in self.weights.items()
        ):
            raise TypeError("weights must be a state_dict: a dict of names to tensors")
        self.weights = dict(self.weights)
        self.voxel_size = _voxel_size(self.voxel_size, self.architecture.dims)
        self.normalization = check_normalization(self.normalization)
        if (
            isinstance(self.iteration, bool)
            or not isinstance(self.iteration, numbers.Integral)
            or self.iteration < 0
        ):
            raise ValueError(f"iteration must be a non-negative integer, got {self.iteration!r}")
        self.iteration = int(self.iteration)
        self.postprocessing = _check_postprocessing(self.postprocessing)
        if self.training_state is not None:
            if not isinstance(self.training_state, Mapping):
                raise TypeError(
                    f"training_state must be a dict or None, got "
                    f"{type(self.training_state).__name__}"
                )
            _check_plain(self.training_state, "training_state")

    @classmethod
    def from_model(
        cls,
        model: Model,
        predictor: InnerDistancePredictor,
        *,
        voxel_size: Sequence[int],
        normalization: Mapping[str, Any],
        iteration: int = 0,
        postprocessing: Mapping[str, float | int] | None = None,
        training_state: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """A checkpoint of ``model`` (weights copied to the CPU, so training may go on)."""
        if not isinstance(model, Model):
            raise TypeError(f"model must be an innerdist Model, got {type(model).__name__}")
        if not isinstance(model.architecture, UNet):
            raise TypeError(
                f"only UNet models can be checkpointed, got {type(model.architecture).__name__}"
            )
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return cls(
            architecture=model.architecture,
            predictor=predictor,
            weights=weights,
            voxel_size=tuple(voxel_size),
            normalization=dict(normalization),
            iteration=iteration,
            postprocessing=dict(postprocessing) if postprocessing is not None else None,
            training_state=training_state,
        )

    def build_model(self) -> Model:
        """The model, weights loaded, in eval mode, on the CPU.

        Raises ``ValueError`` when the weights do not fit the architecture and predictor
        (names or shapes differ).
        """
        model = self.predictor.create_model(self.architecture)
        try:
            model.load_state_dict(self.weights, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise ValueError(
                "checkpoint weights do not fit its architecture and predictor: "
                + " ".join(line.strip() for line in first[:3])
            ) from e
        model.eval()
        return model

    def weights_hash(self) -> str:
        """SHA-256 of the weights (names, dtypes, shapes and values), to tell checkpoints
        apart when resuming a prediction."""
        digest = hashlib.sha256()
        for name in sorted(self.weights):
            tensor = self.weights[name].detach().to("cpu").contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            # reshape(-1): 0-dim tensors (batch norm's num_batches_tracked) cannot be viewed
            # as bytes directly.
            flat = tensor.reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The dict that :func:`save_checkpoint` writes (plain values and tensors only)."""
        from innerdist import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "innerdist_version": __version__,
            "architecture": {"type": type(self.architecture).__name__,
                             **self.architecture.to_dict()},
            "predictor": {"type": type(self.predictor).__name__, **self.predictor.to_dict()},
            "weights": {k: v.detach().to("cpu") for k, v in self.weights.items()},
            "voxel_size": list(self.voxel_size),
            "normalization": dict(self.normalization),
            "iteration": self.iteration,
            "postprocessing": dict(self.postprocessing) if self.postprocessing else None,
            "training_state": self.training_state,
        }


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically; returns the path.

    The file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so a reader (or a crash) never sees a half-written checkpoint; an existing
    file at ``path`` is replaced.
    """
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"checkpoint must be a Checkpoint, got {type(checkpoint).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {str(path)!r} is a directory; expected a file")
    directory = path.parent
    if not directory.is_dir():
        raise FileNotFoundError(
            f"directory {str(directory)!r} for checkpoint {str(path)!r} does not exist"
        )
    data = checkpoint.to_dict()
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _config_object(config: Any, what: str, registry: Mapping[str, type], path: Path) -> Any:
    if not isinstance(config, Mapping) or "type" not in config:
        raise ValueError(
            f"checkpoint {str(path)!r}: {what} config must be a dict with a 'type' key, "
            f"got {config!r}"
        )
    config = dict(config)
    kind = config.pop("type")
    if kind not in registry:
        raise ValueError(
            f"checkpoint {str(path)!r}: unknown {what} type {kind!r}; known: {sorted(registry)}"
        )
    try:
        cls = registry[kind]
        from_dict = getattr(cls, "from_dict", None)
        return from_dict(config) if from_dict is not None else cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(path)!r}: invalid {what} config: {e}") from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Uses ``torch.load(..., weights_only=True)``: a file holding pickled Python objects
    other than tensors and plain values is refused (``ValueError``) without running them.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is
    not an innerdist checkpoint, has an unsupported format version or lacks required keys.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is a directory; expected a checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise ValueError(
                f"refusing to load {str(path)!r}: it contains a pickled Python object "
                f"({found.group(1)}), not only tensors and plain values; innerdist loads "
                "checkpoints with weights_only=True so that no code from the file runs"
            ) from e
        raise ValueError(f"{str(path)!r} is not a checkpoint (unreadable pickle data)") from e
    except Exception as e:  # torch raises KeyError, RuntimeError, EOFError... for junk
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{str(path)!r} is not a checkpoint (unreadable: {reason})") from e
    return checkpoint_from_dict(data, path)


def checkpoint_from_dict(data: Any, path: str | Path) -> Checkpoint:
    """The checkpoint in ``data``, a dict as :meth:`Checkpoint.to_dict` makes it (read back
    from a file, or a bioimage.io package's config plus its weights); ``path`` names the
    source in error messages. Raises ``ValueError`` as :func:`load_checkpoint` does."""
    path = Path(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not an innerdist checkpoint (no 'format': {FORMAT!r} entry)"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is missing the keys {missing}")
    version = data["format_version"]
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"checkpoint {str(path)!r} has format version {version!r}; this innerdist reads "
            f"versions {list(SUPPORTED_VERSIONS)}"
        )
    architecture = _config_object(data["architecture"], "architecture", _ARCHITECTURES, path)
    predictor = _config_object(data["predictor"], "predictor", _PREDICTORS, path)
    try:
        return Checkpoint(
            architecture=architecture,
            predictor=predictor,
            weights=data["weights"],
            voxel_size=data["voxel_size"],
            normalization=data["normalization"],
            iteration=data["iteration"],
            postprocessing=data.get("postprocessing"),
            training_state=data.get("training_state"),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(path)!r} is invalid: {e}") from e


def random_checkpoint(
    architecture: UNet,
    predictor: InnerDistancePredictor,
    voxel_size: Sequence[int],
    normalization: Mapping[str, Any],
    seed: int = 0,
) -> Checkpoint:
    """A checkpoint of a freshly initialised model (iteration 0), for tests and as the start
    of training. The same ``seed`` gives the same weights; torch's global RNG is left as
    it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = predictor.create_model(architecture)
    return Checkpoint.from_model(
        model, predictor, voxel_size=voxel_size, normalization=normalization
    )
