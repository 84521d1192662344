"""innerdist: inner-distance targets and blockwise segmentation of microscopy volumes.

The public API is re-exported here and loaded lazily, so that ``import innerdist`` (and the
command line's ``--help``) does not pay for torch or numba until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ArrayType": "innerdist.arrays",
    "DistanceArray": "innerdist.arrays",
    "InstanceArray": "innerdist.arrays",
    "IntensitiesArray": "innerdist.arrays",
    "MaskArray": "innerdist.arrays",
    "NumpyArray": "innerdist.arrays",
    "Architecture": "innerdist.architecture",
    "UNet": "innerdist.architecture",
    "Model": "innerdist.model",
    "Predictor": "innerdist.predictor",
    "InnerDistancePredictor": "innerdist.inner_distance",
    "balance_weights": "innerdist.weights",
    "boundary_distance": "innerdist.distance",
    "open_volume": "innerdist.volumes",
    "create_volume": "innerdist.volumes",
    "write_pyramid": "innerdist.pyramid",
    "Checkpoint": "innerdist.checkpoint",
    "load_checkpoint": "innerdist.checkpoint",
    "save_checkpoint": "innerdist.checkpoint",
    "export_package": "innerdist.export",
    "load_package": "innerdist.export",
    "predict_array": "innerdist.predict",
    "predict_volume": "innerdist.predict",
    "instances": "innerdist.watershed",
    "threshold_mask": "innerdist.watershed",
    "segment_volume": "innerdist.segment",
    "evaluate_volumes": "innerdist.evaluate",
    "binary_scores": "innerdist.evaluate",
    "instance_scores": "innerdist.evaluate",
    "measure_volume": "innerdist.measure",
    "compute_targets": "innerdist.targets",
    "TrainConfig": "innerdist.config",
    "load_config": "innerdist.config",
    "train": "innerdist.train",
    "run_demo": "innerdist.demo",
}

__all__ = [
    "Architecture",
    "ArrayType",
    "Checkpoint",
    "DistanceArray",
    "InnerDistancePredictor",
    "InstanceArray",
    "IntensitiesArray",
    "MaskArray",
    "Model",
    "NumpyArray",
    "Predictor",
    "TrainConfig",
    "UNet",
    "balance_weights",
    "binary_scores",
    "boundary_distance",
    "compute_targets",
    "create_volume",
    "evaluate_volumes",
    "export_package",
    "instance_scores",
    "instances",
    "load_checkpoint",
    "load_config",
    "load_package",
    "measure_volume",
    "open_volume",
    "predict_array",
    "predict_volume",
    "run_demo",
    "save_checkpoint",
    "segment_volume",
    "threshold_mask",
    "train",
    "write_pyramid",
]

if TYPE_CHECKING:
    from innerdist.architecture import Architecture, UNet
    from innerdist.arrays import (
        ArrayType,
        DistanceArray,
        InstanceArray,
        IntensitiesArray,
        MaskArray,
        NumpyArray,
    )
    from innerdist.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from innerdist.config import TrainConfig, load_config
    from innerdist.demo import run_demo
    from innerdist.distance import boundary_distance
    from innerdist.evaluate import binary_scores, evaluate_volumes, instance_scores
    from innerdist.export import export_package, load_package
    from innerdist.inner_distance import InnerDistancePredictor
    from innerdist.measure import measure_volume
    from innerdist.model import Model
    from innerdist.predict import predict_array, predict_volume
    from innerdist.predictor import Predictor
    from innerdist.pyramid import write_pyramid
    from innerdist.segment import segment_volume
    from innerdist.targets import compute_targets
    from innerdist.train import train
    from innerdist.volumes import create_volume, open_volume
    from innerdist.watershed import instances, threshold_mask
    from innerdist.weights import balance_weights


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'innerdist' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
