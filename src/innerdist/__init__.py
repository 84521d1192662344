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
}

__all__ = [
    "Architecture",
    "ArrayType",
    "DistanceArray",
    "InnerDistancePredictor",
    "InstanceArray",
    "IntensitiesArray",
    "MaskArray",
    "Model",
    "NumpyArray",
    "Predictor",
    "UNet",
    "balance_weights",
    "boundary_distance",
    "create_volume",
    "open_volume",
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
    from innerdist.distance import boundary_distance
    from innerdist.inner_distance import InnerDistancePredictor
    from innerdist.model import Model
    from innerdist.predictor import Predictor
    from innerdist.volumes import create_volume, open_volume
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
