"""Tiny networks shared by the tests (built in milliseconds, a few hundred weights).

Import the builders where a module-level helper needs them (``from nets import
tiny_unet``); tests can also take the :mod:`conftest` fixtures of the same name. Per-file
variants are ``functools.partial`` of :func:`tiny_unet`, so a test can still override any
of their settings by keyword.
"""

from __future__ import annotations

from typing import Any

from innerdist.architecture import UNet
from innerdist.inner_distance import InnerDistancePredictor

#: Normalisation of checkpoints built in tests: uint8 raw mapped from [0, 255] to [0, 1].
NORM_UINT8: dict[str, Any] = {"min": 0, "max": 255, "dtype": "uint8"}

_BASE: dict[int, dict[str, Any]] = {
    # One level, 2 feature maps: context 8 per side, output step 2.
    2: {"input_shape": (44, 44), "num_fmaps": 2, "downsample_factors": [(2, 2)]},
    # Anisotropic like (40, 8, 8) nm EM: level 0 pools and convolves in-plane only.
    3: {
        "input_shape": (20, 44, 44),
        "num_fmaps": 2,
        "downsample_factors": [(1, 2, 2), (2, 2, 2)],
        "kernel_size_down": [[(1, 3, 3), (1, 3, 3)], [3, 3], [3]],
        "kernel_size_up": [[(1, 3, 3), (1, 3, 3)], [3, 3]],
    },
}


def tiny_unet(dims: int = 2, **overrides: Any) -> UNet:
    """A tiny 2-D or 3-D U-Net; keyword arguments override the base settings above."""
    if dims not in _BASE:
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    return UNet(**{**_BASE[dims], **overrides})


def tiny_predictor(channels: int = 2, scale_factor: float = 40.0, **kwargs: Any
                   ) -> InnerDistancePredictor:
    """An inner-distance predictor with channels ``c0``, ``c1``, ..."""
    return InnerDistancePredictor([f"c{i}" for i in range(channels)], scale_factor, **kwargs)
