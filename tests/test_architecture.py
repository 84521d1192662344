"""Tests for innerdist.architecture: UNet configuration, shape arithmetic and module."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from funlib.geometry import Coordinate
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import tiny_unet as tiny

from innerdist.architecture import ACTIVATIONS, Architecture, UNet

# --- a slow, obviously-correct reference for one axis ------------------------------------------


def reference_output_size(
    n: int,
    factors: list[int],
    down: list[list[int]],
    up: list[list[int]],
    same: bool,
) -> int | None:
    """Output size along one axis of a U-Net, or None if size ``n`` is invalid.

    Written recursively (level ``l`` wraps the U-Net of the levels below), independently of
    the iterative implementation under test. ``down``/``up`` hold per-level kernel sizes along
    this axis.
    """

    def conv(size: int, kernels: list[int]) -> int:
        return size if same else size - sum(k - 1 for k in kernels)

    def level(size: int, lv: int) -> int | None:
        size = conv(size, down[lv])
        if size < 1:
            return None
        if lv == len(factors):
            return size
        if size % factors[lv] != 0:
            return None
        inner = level(size // factors[lv], lv + 1)
        if inner is None:
            return None
        out = conv(inner * factors[lv], up[lv])
        return out if out >= 1 else None

    return level(n, 0)


def axis_config(unet: UNet, axis: int) -> tuple[list[int], list[list[int]], list[list[int]]]:
    factors = [f[axis] for f in unet.downsample_factors]
    down = [[k[axis] for k in lv] for lv in unet.kernel_size_down]
    up = [[k[axis] for k in lv] for lv in unet.kernel_size_up]
    return factors, down, up


def reference_shape(unet: UNet, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    sizes = []
    for axis, n in enumerate(shape):
        size = reference_output_size(n, *axis_config(unet, axis), unet.padding == "same")
        if size is None:
            return None
        sizes.append(size)
    return tuple(sizes)


def reference_smallest_valid(unet: UNet, min_shape: tuple[int, ...]) -> tuple[int, ...]:
    result = []
    for axis, n in enumerate(min_shape):
        while reference_output_size(n, *axis_config(unet, axis), unet.padding == "same") is None:
            n += 1
        result.append(n)
    return tuple(result)


@st.composite
def unet_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Random small U-Net configurations (input_shape still to be chosen)."""
    dims = draw(st.sampled_from([2, 3]))
    levels = draw(st.integers(0, 2))

    def kernel() -> list[int]:
        return [draw(st.sampled_from([1, 3, 5])) for _ in range(dims)]

    def kernel_level() -> list[list[int]]:
        return [kernel() for _ in range(draw(st.integers(1, 2)))]

    return {
        "dims": dims,
        "num_fmaps": draw(st.integers(1, 3)),
        "fmap_inc_factor": draw(st.integers(1, 2)),
        "downsample_factors": [
            [draw(st.integers(1, 3)) for _ in range(dims)] for _ in range(levels)
        ],
        "kernel_size_down": [kernel_level() for _ in range(levels + 1)],
        "kernel_size_up": [kernel_level() for _ in range(levels)],
        "padding": draw(st.sampled_from(["valid", "same"])),
        "upsample": draw(st.sampled_from(["transposed", "nearest"])),
    }


def build(config: dict[str, Any]) -> UNet:
    """A UNet for ``config`` whose input shape is the reference's smallest valid shape."""
    config = dict(config)
    dims = config.pop("dims")
    # No instance can be made without a valid shape, so the reference finds one.
    shape = []
    for axis in range(dims):
        factors = [f[axis] for f in config["downsample_factors"]]
        down = [[k[axis] for k in lv] for lv in config["kernel_size_down"]]
        up = [[k[axis] for k in lv] for lv in config["kernel_size_up"]]
        n = 1
        while reference_output_size(n, factors, down, up, config["padding"] == "same") is None:
            n += 1
        shape.append(n)
    return UNet(input_shape=shape, **config)


# --- shapes, hand-computed ---------------------------------------------------------------------


def test_2d_valid_shapes_by_hand() -> None:
    # 44 -conv3 conv3-> 40 -pool2-> 20 -conv3 conv3-> 16 -up2-> 32 -conv3 conv3-> 28
    unet = tiny()
    assert unet.dims == 2
    assert unet.output_shape((44, 44)) == Coordinate(28, 28)
    assert unet.output_shape((46, 60)) == Coordinate(30, 44)
    assert unet.context == Coordinate(8, 8)
    assert unet.output_step == Coordinate(2, 2)
    y = unet.module()(torch.zeros(1, 1, 46, 60))
    assert tuple(y.shape) == (1, 2, 30, 44)


def test_2d_same_shapes() -> None:
    unet = tiny(input_shape=(16, 12), padding="same", downsample_factors=[(2, 2), (2, 1)])
    assert unet.output_shape((16, 12)) == Coordinate(16, 12)
    assert unet.context == Coordinate(0, 0)
    assert unet.output_step == Coordinate(4, 2)
    y = unet.module()(torch.zeros(2, 1, 16, 12))
    assert tuple(y.shape) == (2, 2, 16, 12)


def test_3d_valid_anisotropic_shapes_by_hand() -> None:
    unet = UNet(
        input_shape=(20, 44, 44),
        num_fmaps=2,
        downsample_factors=[(1, 2, 2), (2, 2, 2)],
        kernel_size_down=[[(1, 3, 3), (1, 3, 3)], [3, 3], [3]],
        kernel_size_up=[[(1, 3, 3), (1, 3, 3)], [3, 3]],
    )
    # z: 20 -(1,1)-> 20 -/1-> 20 -(3,3)-> 16 -/2-> 8 -(3)-> 6 -x2-> 12 -(3,3)-> 8 -x1-> 8 -> 8
    # y: 44 -> 40 -/2-> 20 -> 16 -/2-> 8 -> 6 -x2-> 12 -> 8 -x2-> 16 -> 12
    assert unet.output_shape((20, 44, 44)) == Coordinate(8, 12, 12)
    assert unet.context == Coordinate(6, 16, 16)
    assert unet.output_step == Coordinate(2, 4, 4)
    y = unet.module()(torch.zeros(1, 1, 20, 44, 44))
    assert tuple(y.shape) == (1, 2, 8, 12, 12)


def test_3d_same_anisotropic_nearest_batch_norm() -> None:
    unet = UNet(
        input_shape=(3, 8, 8),
        num_in_channels=2,
        num_fmaps=2,
        num_fmaps_out=5,
        downsample_factors=[(1, 2, 2)],
        padding="same",
        upsample="nearest",
        batch_norm=True,
    )
    assert unet.num_out_channels == 5
    assert unet.output_step == Coordinate(1, 2, 2)
    y = unet.module()(torch.zeros(2, 2, 3, 8, 8))
    assert tuple(y.shape) == (2, 5, 3, 8, 8)


def test_no_downsampling_is_a_conv_stack() -> None:
    unet = UNet(input_shape=(10, 9), num_fmaps=3, num_fmaps_out=4, downsample_factors=[])
    assert unet.num_levels == 0
    assert unet.output_shape((10, 9)) == Coordinate(6, 5)
    assert unet.output_step == Coordinate(1, 1)
    assert tuple(unet.module()(torch.zeros(1, 1, 10, 9)).shape) == (1, 4, 6, 5)


def test_default_config() -> None:
    unet = UNet(input_shape=(92, 92))
    assert unet.num_in_channels == 1
    assert unet.num_out_channels == 12
    assert unet.downsample_factors == (Coordinate(2, 2), Coordinate(2, 2))
    assert unet.kernel_size_down == (((3, 3), (3, 3)),) * 3
    assert unet.kernel_size_up == (((3, 3), (3, 3)),) * 2
    assert unet.eval_shape_increase == Coordinate(0, 0)
    assert [unet.fmaps_at(lv) for lv in range(3)] == [12, 24, 48]
    # 92 -> 88 -> 44 -> 40 -> 20 -> 16 -> 32 -> 28 -> 56 -> 52
    assert unet.output_shape((92, 92)) == Coordinate(52, 52)
    assert unet.context == Coordinate(20, 20)


def test_activation_and_channels_in_module() -> None:
    unet = tiny(activation="LeakyReLU", num_fmaps_out=3, fmap_inc_factor=3)
    module = unet.module()
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in module.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in module.modules())
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].out_channels == 2
    assert max(c.out_channels for c in convs) == 6  # level 1: 2 * 3
    assert convs[-1].out_channels == 3


def test_every_listed_activation_builds() -> None:
    for name in ACTIVATIONS:
        y = tiny(activation=name).module()(torch.zeros(1, 1, 44, 44))
        assert tuple(y.shape) == (1, 2, 28, 28)


def test_context_is_the_same_for_every_valid_shape() -> None:
    unet = tiny(input_shape=(44, 46), downsample_factors=[(2, 3)])
    base = unet.valid_input_shape((1, 1))
    for k in range(4):
        shape = base + unet.output_step * k
        out = unet.output_shape(shape)
        assert (shape - out) == unet.context * 2
        # Along the factor-3 axis outputs are 2 mod 3, not a multiple of output_step (see
        # its docstring); along the factor-2 axis they are multiples.
        assert out[1] % 3 == 2
        assert out[0] % 2 == 0


def test_scale_is_identity() -> None:
    unet = tiny()
    assert unet.scale((8, 4)) == Coordinate(8, 4)
    assert unet.scale([8.0, 4]) == Coordinate(8, 4)


# --- shapes, against the reference and against torch -------------------------------------------


@settings(max_examples=60, deadline=None)
@given(config=unet_configs(), data=st.data())
def test_output_shape_matches_reference_and_torch(
    config: dict[str, Any], data: st.DataObject
) -> None:
    unet = build(config)
    extra = data.draw(st.lists(st.integers(0, 12), min_size=unet.dims, max_size=unet.dims))
    shape = tuple(s + e for s, e in zip(unet.input_shape, extra, strict=True))
    expected = reference_shape(unet, shape)
    if expected is None:
        with pytest.raises(ValueError, match="is not valid for this U-Net"):
            unet.output_shape(shape)
        return
    assert unet.output_shape(shape) == Coordinate(expected)
    # torch agrees, on the meta device (shapes only).
    module = unet.module().to("meta")
    y = module(torch.empty(1, 1, *shape, device="meta"))
    assert tuple(y.shape[2:]) == expected
    assert y.shape[1] == unet.num_out_channels


@settings(max_examples=60, deadline=None)
@given(config=unet_configs(), data=st.data())
def test_valid_input_shape_is_valid_and_minimal(
    config: dict[str, Any], data: st.DataObject
) -> None:
    unet = build(config)
    min_shape = tuple(
        data.draw(st.lists(st.integers(1, 80), min_size=unet.dims, max_size=unet.dims))
    )
    result = unet.valid_input_shape(min_shape)
    assert isinstance(result, Coordinate)
    assert all(r >= m for r, m in zip(result, min_shape, strict=True))
    unet.output_shape(result)  # valid: does not raise
    assert tuple(result) == reference_smallest_valid(unet, min_shape)
    # Minimal: shrinking any one axis towards min_shape gives an invalid shape.
    for axis in range(unet.dims):
        for n in range(min_shape[axis], result[axis]):
            smaller = list(result)
            smaller[axis] = n
            with pytest.raises(ValueError):
                unet.output_shape(smaller)
    # Valid shapes repeat with period output_step.
    unet.output_shape(result + unet.output_step)
    assert unet.valid_input_shape(result + 1) == result + unet.output_step


# --- validation errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_shape": 44}, TypeError, "input_shape must be a sequence"),
        ({"input_shape": "44"}, TypeError, "input_shape must be a sequence"),
        ({"input_shape": (44,)}, ValueError, r"2 or 3 entries .*\[44\]"),
        ({"input_shape": (4, 4, 4, 4)}, ValueError, "2 or 3 entries"),
        ({"input_shape": (44, 0)}, ValueError, "input_shape entry 1 must be >= 1, got 0"),
        ({"input_shape": (44, 44.0)}, TypeError, r"input_shape entry 1 must be an integer"),
        ({"input_shape": (44, True)}, TypeError, r"input_shape entry 1 must be an integer"),
        ({"num_in_channels": 0}, ValueError, "num_in_channels must be >= 1, got 0"),
        ({"num_fmaps": "2"}, TypeError, "num_fmaps must be an integer"),
        ({"num_fmaps_out": 0}, ValueError, "num_fmaps_out must be >= 1"),
        ({"fmap_inc_factor": 0}, ValueError, "fmap_inc_factor must be >= 1"),
        ({"downsample_factors": 2}, TypeError, "downsample_factors must be a list"),
        (
            {"downsample_factors": [(2, 2), (2, 2, 2)]},
            ValueError,
            r"downsample_factors level 1 must have 2 entries \(one per axis\), got \[2, 2, 2\]",
        ),
        ({"downsample_factors": [(2, 0)]}, ValueError, "downsample_factors level 0 entry 1"),
        (
            {"kernel_size_down": [[3, 3]]},
            ValueError,
            r"kernel_size_down must have len\(downsample_factors\) \+ 1 = 2 levels, got 1",
        ),
        (
            {"kernel_size_up": [[3], [3]]},
            ValueError,
            r"kernel_size_up must have len\(downsample_factors\) = 1 levels, got 2",
        ),
        ({"kernel_size_up": 3}, TypeError, "kernel_size_up must be a list"),
        ({"kernel_size_down": [[3], 3]}, TypeError, "kernel_size_down level 1 must be a list"),
        (
            {"kernel_size_down": [[3], []]},
            ValueError,
            "kernel_size_down level 1 must list at least one kernel size",
        ),
        (
            {"kernel_size_down": [[3], [(3, 3, 3)]]},
            ValueError,
            r"kernel_size_down level 1 conv 0 must have 2 entries",
        ),
        (
            {"kernel_size_up": [[3, (3, 2)]]},
            ValueError,
            r"kernel_size_up level 0 conv 1: kernel size \[3, 2\] has even entries",
        ),
        ({"kernel_size_up": [[0]]}, ValueError, "kernel_size_up level 0 conv 0 must be >= 1"),
        ({"padding": "reflect"}, ValueError, r"padding must be one of \['valid', 'same'\]"),
        ({"activation": "Softmax"}, ValueError, "activation must be one of"),
        ({"activation": "eval('1')"}, ValueError, "activation must be one of"),
        ({"upsample": "bilinear"}, ValueError, "upsample must be one of"),
        ({"batch_norm": 1}, TypeError, "batch_norm must be a bool"),
        ({"eval_shape_increase": (2,)}, ValueError, "eval_shape_increase must have 2 entries"),
        ({"eval_shape_increase": (2, -2)}, ValueError, "eval_shape_increase entry 1 must be >= 0"),
        (
            {"eval_shape_increase": (2, 1)},
            ValueError,
            r"eval_shape_increase \[2, 1\] makes the prediction input shape .* \(46, 45\) "
            r"invalid: level 0: .*multiple of output_step \(2, 2\)",
        ),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        tiny(**kwargs)


def test_invalid_input_shape_not_divisible_names_level_and_shapes() -> None:
    with pytest.raises(
        ValueError,
        match=r"input_shape \(45, 44\) \(voxels\) is not valid for this U-Net: level 0: the "
        r"shape \(41, 40\) after the down convolutions \[\[3, 3\], \[3, 3\]\] is not divisible "
        r"by the downsample factor \(2, 2\); the smallest valid shape >= it is \(46, 44\)",
    ):
        tiny(input_shape=(45, 44))


def test_invalid_shape_at_second_level() -> None:
    unet = tiny(input_shape=(92, 92), downsample_factors=[(2, 2), (2, 2)])
    # 90 -> 86 -> 43 -> 39: not divisible by 2 at level 1
    with pytest.raises(
        ValueError, match=r"level 1: the shape \(39, 39\) after the down convolutions"
    ):
        unet.output_shape((90, 90))


def test_too_small_at_the_bottom() -> None:
    unet = tiny()
    # 12 -> 8 -> 4 -> 0
    with pytest.raises(
        ValueError,
        match=r"level 1 \(bottom\): the convolutions \[\[3, 3\], \[3, 3\]\] shrink \(4, 4\) "
        r"to \(0, 0\)",
    ):
        unet.output_shape((12, 12))


def test_too_small_at_level_0_down() -> None:
    with pytest.raises(
        ValueError, match=r"level 0: the down convolutions \[\[3, 3\], \[3, 3\]\] shrink"
    ):
        tiny().output_shape((4, 44))


def test_too_small_in_the_up_path() -> None:
    unet = tiny(input_shape=(20, 20), kernel_size_down=[[3], [1]], kernel_size_up=[[9, 9]])
    # 10 -> 8 -> 4 -> 4 -> 8 -> 8 - 16 = -8
    with pytest.raises(
        ValueError,
        match=r"level 0: the up convolutions \[\[9, 9\], \[9, 9\]\] shrink the upsampled "
        r"shape \(8, 8\) to \(-8, -8\)",
    ):
        unet.output_shape((10, 10))


def test_same_padding_needs_divisible_shapes() -> None:
    unet = tiny(input_shape=(8, 8), padding="same", downsample_factors=[(2, 2), (2, 2)])
    with pytest.raises(ValueError, match=r"level 1: the shape \(3, 4\) .* factor \(2, 2\)"):
        unet.output_shape((6, 8))
    assert unet.valid_input_shape((6, 9)) == Coordinate(8, 12)


def test_shape_argument_errors() -> None:
    unet = tiny()
    with pytest.raises(ValueError, match=r"input_shape must have 2 entries .* got \[44, 44, 44\]"):
        unet.output_shape((44, 44, 44))
    with pytest.raises(TypeError, match="input_shape must be a sequence"):
        unet.output_shape(44)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_shape must have 2 entries"):
        unet.valid_input_shape((44,))
    with pytest.raises(ValueError, match="min_shape entry 0 must be >= 1, got 0"):
        unet.valid_input_shape((0, 44))


def test_scale_errors() -> None:
    unet = tiny()
    with pytest.raises(ValueError, match=r"voxel_size must have 2 entries .* got \[4, 4, 4\]"):
        unet.scale((4, 4, 4))
    with pytest.raises(TypeError, match="voxel_size must be a sequence"):
        unet.scale(4)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="voxel_size entries must be numbers"):
        unet.scale(("4", 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"positive whole numbers .* got \[0, 4\]"):
        unet.scale((0, 4))
    with pytest.raises(ValueError, match=r"positive whole numbers .* got \[4.5, 4\]"):
        unet.scale((4.5, 4))


def test_module_forward_errors() -> None:
    module = tiny(num_in_channels=2).module()
    with pytest.raises(ValueError, match=r"expected a 4-D tensor .* got shape \(2, 44, 44\)"):
        module(torch.zeros(2, 44, 44))
    with pytest.raises(ValueError, match=r"expected 2 input channels, got shape \(1, 1, 44, 44\)"):
        module(torch.zeros(1, 1, 44, 44))
    with pytest.raises(ValueError, match=r"input shape \(45, 44\) \(voxels\) is not valid"):
        module(torch.zeros(1, 2, 45, 44))


# --- serialisation -----------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip_through_json() -> None:
    unet = UNet(
        input_shape=(20, 44, 44),
        num_in_channels=2,
        num_fmaps=3,
        num_fmaps_out=4,
        fmap_inc_factor=3,
        downsample_factors=[(1, 2, 2), (2, 2, 2)],
        kernel_size_down=[[(1, 3, 3), (1, 3, 3)], [3, 3], [3]],
        kernel_size_up=[[(1, 3, 3), (1, 3, 3)], [3, 3]],
        padding="valid",
        activation="ELU",
        eval_shape_increase=(2, 8, 8),
        upsample="nearest",
        batch_norm=True,
    )
    d = unet.to_dict()
    text = json.dumps(d)
    assert "(" not in text  # lists, not tuples or Coordinates
    assert d["kernel_size_down"][1] == [[3, 3, 3], [3, 3, 3]]
    again = UNet.from_dict(json.loads(text))
    assert again == unet
    assert hash(again) == hash(unet)
    assert again.to_dict() == d
    assert again.eval_shape_increase == Coordinate(2, 8, 8)
    assert repr(again).startswith("UNet(input_shape=[20, 44, 44], num_in_channels=2")
    assert unet != tiny()
    assert unet != "UNet"


def test_from_dict_defaults_are_resolved() -> None:
    d = UNet.from_dict({"input_shape": [92, 92]}).to_dict()
    assert d["num_fmaps_out"] == 12
    assert d["downsample_factors"] == [[2, 2], [2, 2]]
    assert d["eval_shape_increase"] == [0, 0]


def test_from_dict_errors() -> None:
    with pytest.raises(TypeError, match="config must be a mapping"):
        UNet.from_dict([("input_shape", [44, 44])])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown UNet config keys \['fmaps'\]"):
        UNet.from_dict({"input_shape": [44, 44], "fmaps": 3})
    with pytest.raises(ValueError, match="missing the required key 'input_shape'"):
        UNet.from_dict({"num_fmaps": 3})


def test_architecture_is_abstract() -> None:
    with pytest.raises(TypeError):
        Architecture()  # type: ignore[abstract]
