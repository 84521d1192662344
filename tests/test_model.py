"""Tests for innerdist.model.Model: shapes, eval activation, He init, tile consistency."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from funlib.geometry import Coordinate
from nets import tiny_unet

from innerdist.architecture import Architecture, UNet
from innerdist.model import Model

unet_2d = partial(tiny_unet, 2)
unet_3d = partial(tiny_unet, 3)  # anisotropic: level 0 pools and convolves in-plane only


def with_head(architecture: Architecture, channels: int = 3, **kwargs: object) -> Model:
    conv = torch.nn.Conv2d if architecture.dims == 2 else torch.nn.Conv3d
    return Model(architecture, conv(architecture.num_out_channels, channels, 1), **kwargs)  # type: ignore[arg-type]


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_2d_shapes(padding: str) -> None:
    unet = unet_2d(padding=padding, eval_shape_increase=(4, 8))
    model = with_head(unet, channels=3)
    expected = (28, 28) if padding == "valid" else (44, 44)
    expected_eval = (32, 36) if padding == "valid" else (48, 52)
    assert model.num_in_channels == 1
    assert model.num_out_channels == 3
    assert model.input_shape == Coordinate(44, 44)
    assert model.output_shape == Coordinate(expected)
    assert model.eval_input_shape == Coordinate(48, 52)
    assert model.eval_output_shape == Coordinate(expected_eval)
    assert model.compute_output_shape((48, 52)) == (3, Coordinate(expected_eval))
    y = model(torch.zeros(2, 1, 48, 52))
    assert tuple(y.shape) == (2, 3, *expected_eval)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_3d_anisotropic_shapes(padding: str) -> None:
    unet = unet_3d(padding=padding, num_in_channels=2)
    model = with_head(unet, channels=1)
    expected = (8, 12, 12) if padding == "valid" else (20, 44, 44)
    assert model.dims == 3
    assert model.num_in_channels == 2
    assert model.num_out_channels == 1
    assert model.output_shape == Coordinate(expected)
    assert model.eval_output_shape == Coordinate(expected)
    y = model(torch.zeros(1, 2, 20, 44, 44))
    assert tuple(y.shape) == (1, 1, *expected)
    # compute_output_shape agrees with the arithmetic of the architecture
    bigger = unet.valid_input_shape((21, 50, 47))
    assert model.compute_output_shape(bigger) == (1, unet.output_shape(bigger))


def test_compute_output_shape_does_not_touch_weights() -> None:
    model = with_head(unet_2d(batch_norm=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.compute_output_shape((46, 46))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(v.device.type == "cpu" for v in after.values())


def test_scale() -> None:
    model = with_head(unet_3d())
    assert model.scale((40, 8, 8)) == Coordinate(40, 8, 8)


# --- eval activation ---------------------------------------------------------------------------


def test_eval_activation_only_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = with_head(unet_2d(), channels=2, eval_activation=torch.nn.Sigmoid())
    x = torch.randn(1, 1, 44, 44)
    model.train()
    raw = model(x)
    assert torch.equal(raw, model.chain(x))
    assert raw.min() < 0  # raw outputs are not squashed
    model.eval()
    with torch.no_grad():
        squashed = model(x)
    torch.testing.assert_close(squashed, torch.sigmoid(raw.detach()))


def test_no_eval_activation_means_identity_in_eval() -> None:
    model = with_head(unet_2d())
    model.eval()
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        assert torch.equal(model(x), model.chain(x))


# --- initialisation ----------------------------------------------------------------------------


def test_kaiming_init_std_and_zero_bias() -> None:
    torch.manual_seed(1)
    unet = UNet(input_shape=(36, 36, 36), num_fmaps=16, downsample_factors=[(2, 2, 2)])
    model = with_head(unet, channels=8)
    checked = 0
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv3d):
            fan_in = layer.in_channels * math.prod(layer.kernel_size)
        elif isinstance(layer, torch.nn.ConvTranspose3d):
            # kernel == stride: every output voxel sums in_channels inputs
            assert layer.kernel_size == layer.stride == (2, 2, 2)
            fan_in = layer.in_channels
        else:
            continue
        weights = layer.weight.detach()
        expected = math.sqrt(2.0 / fan_in)
        # relative standard error of a std estimate is ~1/sqrt(2 n): <= 3.6% for n >= 400
        if weights.numel() >= 400:
            assert weights.std().item() == pytest.approx(expected, rel=0.12)
            assert abs(weights.mean().item()) < 0.12 * expected
            checked += 1
        assert layer.bias is not None
        assert torch.count_nonzero(layer.bias) == 0
    # all 6 convolutions of the body (the smallest, 1 -> 16 channels, has 432 weights) and
    # the transposed one; only the 1x1 head (128 weights) is too small to estimate a std
    assert checked == 7


# --- tile consistency --------------------------------------------------------------------------


def predict_tiles(
    model: Model, tile: Coordinate, offset: Coordinate
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Coordinate]:
    """Predict the union of two tiles (offset by ``offset``) and each tile on its own."""
    torch.manual_seed(2)
    big = tile + offset
    x = torch.randn(1, model.num_in_channels, *big)
    model.eval()
    with torch.no_grad():
        y_big = model(x)
        y_a = model(crop(x, tile * 0, tile))
        y_b = model(crop(x, offset, tile))
    return y_big, y_a, y_b, Coordinate(y_a.shape[2:])


def crop(y: torch.Tensor, start: Coordinate, shape: Coordinate) -> torch.Tensor:
    """The spatial window ``[start, start + shape)`` of a ``(N, C, *spatial)`` tensor."""
    for axis, (s, n) in enumerate(zip(start, shape, strict=True)):
        y = y.narrow(2 + axis, s, n)
    return y


@pytest.mark.parametrize("upsample", ["transposed", "nearest"])
def test_tiles_equal_union_2d(upsample: str) -> None:
    unet = unet_2d(
        num_fmaps=3, downsample_factors=[(2, 2), (2, 2)], upsample=upsample, input_shape=(92, 92)
    )
    step = unet.output_step
    assert step == Coordinate(4, 4)
    tile = unet.valid_input_shape((60, 64))
    offset = step * Coordinate(3, 2)  # tiles overlap: the offset is smaller than the output
    y_big, y_a, y_b, out = predict_tiles(with_head(unet), tile, offset)
    assert all(o < n for o, n in zip(offset, out, strict=True))
    torch.testing.assert_close(crop(y_big, Coordinate(0, 0), out), y_a, atol=1e-5, rtol=0)
    # output voxel i of a block sits over input voxel i + context, so offsets carry over
    torch.testing.assert_close(crop(y_big, offset, out), y_b, atol=1e-5, rtol=0)


def test_tiles_equal_union_3d_anisotropic() -> None:
    unet = unet_3d(num_fmaps=3)
    assert unet.output_step == Coordinate(2, 4, 4)
    tile = unet.valid_input_shape((22, 48, 48))
    offset = Coordinate(2, 4, 8)
    y_big, y_a, y_b, out = predict_tiles(with_head(unet), tile, offset)
    torch.testing.assert_close(crop(y_big, Coordinate(0, 0, 0), out), y_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(crop(y_big, offset, out), y_b, atol=1e-5, rtol=0)


def test_tiles_off_the_step_grid_differ() -> None:
    # The constraint is real: a tile whose input offset is not a multiple of output_step sees
    # different max-pooling windows than the whole volume, so its prediction differs.
    unet = unet_2d(num_fmaps=3)
    assert unet.output_step == Coordinate(2, 2)
    tile = unet.valid_input_shape((48, 48))
    big = tile + Coordinate(4, 4)
    model = with_head(unet)
    model.eval()
    torch.manual_seed(3)
    x = torch.randn(1, 1, *big)
    with torch.no_grad():
        y_big = model(x)
        for offset, consistent in [((2, 4), True), ((2, 3), False), ((1, 2), False)]:
            y_tile = model(crop(x, Coordinate(offset), tile))
            expected = crop(y_big, Coordinate(offset), Coordinate(y_tile.shape[2:]))
            assert torch.allclose(expected, y_tile, atol=1e-5) == consistent, offset


# --- other architectures, devices, dtypes ------------------------------------------------------


class PointwiseArchitecture(Architecture):
    """A minimal architecture: one 1x1 convolution, no shape change."""

    @property
    def input_shape(self) -> Coordinate:
        return Coordinate(5, 7)

    @property
    def num_in_channels(self) -> int:
        return 2

    @property
    def num_out_channels(self) -> int:
        return 4

    def module(self) -> torch.nn.Module:
        return torch.nn.Conv2d(2, 4, 1)


def test_model_works_with_any_architecture() -> None:
    arch = PointwiseArchitecture()
    assert arch.dims == 2
    assert arch.eval_shape_increase == Coordinate(0, 0)
    model = Model(arch, torch.nn.Conv2d(4, 3, 1), torch.nn.Tanh())
    assert model.num_out_channels == 3
    assert model.output_shape == Coordinate(5, 7)
    assert model.eval_input_shape == Coordinate(5, 7)
    assert model.scale((4, 4)) == Coordinate(4, 4)
    model.eval()
    y = model(torch.randn(1, 2, 5, 7))
    assert y.abs().max() < 1


def test_model_moves_to_other_devices_and_dtypes() -> None:
    model = with_head(unet_2d()).to(torch.float64)
    y = model(torch.zeros(1, 1, 44, 44, dtype=torch.float64))
    assert y.dtype == torch.float64
    # Nothing is pinned to the CPU: the whole model runs on the meta device as well.
    meta = with_head(unet_2d()).to("meta")
    y = meta(torch.empty(1, 1, 44, 44, device="meta"))
    assert y.device.type == "meta" and tuple(y.shape) == (1, 3, 28, 28)
    assert meta.compute_output_shape((46, 46)) == (3, Coordinate(30, 30))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_on_cuda_matches_cpu() -> None:
    model = with_head(unet_2d())
    model.eval()
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        expected = model(x)
        got = model.to("cuda")(x.to("cuda")).cpu()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_state_dict_round_trip_through_config() -> None:
    model = with_head(unet_2d(batch_norm=True))
    rebuilt = with_head(UNet.from_dict(model.architecture.to_dict()))  # type: ignore[attr-defined]
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    x = torch.randn(1, 1, 44, 44)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


# --- errors ------------------------------------------------------------------------------------


def test_constructor_errors() -> None:
    unet = unet_2d()
    head = torch.nn.Conv2d(2, 1, 1)
    with pytest.raises(TypeError, match="architecture must be an innerdist Architecture, got dict"):
        Model(unet.to_dict(), head)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prediction_head must be a torch.nn.Module, got builtin"):
        Model(unet, torch.sigmoid)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="eval_activation must be a torch.nn.Module .* got"):
        Model(unet, head, torch.sigmoid)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"prediction_head does not accept the architecture's output \(2 channels"
    ):
        Model(unet, torch.nn.Conv2d(5, 1, 1))


def test_compute_output_shape_errors() -> None:
    model = with_head(unet_2d())
    with pytest.raises(TypeError, match="input_shape must be a sequence"):
        model.compute_output_shape(44)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"input_shape must have 2 entries .* got \[44\]"):
        model.compute_output_shape((44,))
    with pytest.raises(ValueError, match=r"positive integers \(voxels\), got \[44, 0\]"):
        model.compute_output_shape((44, 0))
    with pytest.raises(ValueError, match=r"positive integers \(voxels\), got \[44, 44.0\]"):
        model.compute_output_shape((44, 44.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"input shape \(45, 44\) \(voxels\) is not valid"):
        model.compute_output_shape((45, 44))


def test_forward_rejects_wrong_input() -> None:
    model = with_head(unet_2d())
    with pytest.raises(ValueError, match="expected 1 input channels"):
        model(torch.zeros(1, 2, 44, 44))
    with pytest.raises(ValueError, match=r"input shape \(44, 45\) \(voxels\) is not valid"):
        model(torch.zeros(1, 1, 44, 45))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_shape_arithmetic_for_a_pointwise_head_equals_the_meta_pass(padding: str) -> None:
    # The usual model (UNet + 1x1 conv) skips the meta-device pass; a head wrapped in a
    # Sequential takes it. Both must agree, also for shapes the U-Net rejects.
    unet = UNet((44, 44), num_fmaps=2, downsample_factors=[(2, 2)], padding=padding)
    fast = Model(unet, torch.nn.Conv2d(unet.num_out_channels, 3, 1))
    slow = Model(unet, torch.nn.Sequential(torch.nn.Conv2d(unet.num_out_channels, 3, 1)))
    for shape in [(44, 44), (60, 52), (92, 44)]:
        assert fast.compute_output_shape(shape) == slow.compute_output_shape(shape)
    with pytest.raises(ValueError) as fast_error:
        fast.compute_output_shape((45, 44))
    with pytest.raises(ValueError) as slow_error:
        slow.compute_output_shape((45, 44))
    assert str(fast_error.value) == str(slow_error.value)
