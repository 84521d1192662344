"""Shared fixtures. The ``slow`` marker is registered in pyproject.toml: ``scripts/test.sh``
runs the default suite (``-m "not slow"``), CI runs the slow tests as well."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from nets import tiny_predictor as _tiny_predictor
from nets import tiny_unet as _tiny_unet

from innerdist.architecture import UNet
from innerdist.inner_distance import InnerDistancePredictor


@pytest.fixture
def tiny_unet() -> Callable[..., UNet]:
    """``tiny_unet(dims=2, **overrides)``: see :func:`nets.tiny_unet`."""
    return _tiny_unet


@pytest.fixture
def tiny_predictor() -> Callable[..., InnerDistancePredictor]:
    """``tiny_predictor(channels=2, scale_factor=40.0)``: see :func:`nets.tiny_predictor`."""
    return _tiny_predictor


@pytest.fixture
def tiny_checkpoint(tiny_unet: Callable[..., UNet]) -> Callable[..., Any]:
    """``tiny_checkpoint(dims=2, seed=0)``: a random checkpoint of a tiny U-Net for uint8 raw."""
    from nets import NORM_UINT8

    from innerdist.checkpoint import random_checkpoint

    def build(dims: int = 2, seed: int = 0, channels: int = 1) -> Any:
        return random_checkpoint(
            tiny_unet(dims), _tiny_predictor(channels), (4,) * dims, NORM_UINT8, seed=seed
        )

    return build


@pytest.fixture(autouse=True)
def _workers_as_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of parallel paths get the workers they ask for: with a start-up cost of 0 the
    planner never runs their tiny jobs in-process (test_plan sets the cost where it tests
    that choice)."""
    from innerdist.plan import STARTUP_ENV

    monkeypatch.setenv(STARTUP_ENV, "0")
