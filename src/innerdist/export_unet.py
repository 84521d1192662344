"""The innerdist U-Net and its 1x1 head as one file that needs nothing but torch.

:func:`innerdist.export.export_package` copies this file into a bioimage.io package as
the architecture of the PyTorch state-dict weights, so that bioimage.io tools (and
anyone with torch) can rebuild the network without installing innerdist. It is also the
module that the package's TorchScript weights are traced from.

``InnerDistanceUNet(**kwargs)`` takes the keys of ``UNet.to_dict()`` that shape the
network (not the shapes used for training) plus ``num_out_channels``, the predictor's
channels. Its ``state_dict`` has the same names as innerdist's
``Model`` (``chain.0.down.0.0.weight``, ..., ``chain.1.weight``), and its forward pass is
the same arithmetic on the same layers, so the weights of a checkpoint load as they are.
Input ``(N, C, *spatial)`` with a valid spatial shape (the checks live in innerdist, not
here); with valid padding the output is smaller by the U-Net's context on each side.

Keep this file self-contained: it is read and run on its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["InnerDistanceUNet"]

# The element-wise activations innerdist allows (innerdist.architecture.ACTIVATIONS).
_ACTIVATIONS = (
    "ReLU", "LeakyReLU", "PReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish", "ReLU6",
    "Hardswish", "Tanh", "Sigmoid", "Softplus", "Softsign",
)


def _conv_block(
    dims: int,
    in_channels: int,
    out_channels: int,
    kernels: list[list[int]],
    padding: str,
    activation: str,
    batch_norm: bool,
) -> nn.Sequential:
    conv: Any = nn.Conv2d if dims == 2 else nn.Conv3d  # Any: kernel sizes are lists here
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    layers: list[nn.Module] = []
    channels = in_channels
    for kernel in kernels:
        layers.append(conv(channels, out_channels, tuple(kernel), padding=padding))
        if batch_norm:
            layers.append(norm(out_channels))
        layers.append(getattr(nn, activation)())
        channels = out_channels
    return nn.Sequential(*layers)


def _center_crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` cropped on its spatial axes to those of ``like``, equally on both sides."""
    for axis in range(2, x.dim()):
        start = (x.shape[axis] - like.shape[axis]) // 2
        x = x.narrow(axis, start, like.shape[axis])
    return x


class _Body(nn.Module):
    def __init__(
        self,
        dims: int,
        num_in_channels: int,
        num_fmaps: int,
        num_fmaps_out: int,
        fmap_inc_factor: int,
        downsample_factors: list[list[int]],
        kernel_size_down: list[list[list[int]]],
        kernel_size_up: list[list[list[int]]],
        padding: str,
        activation: str,
        upsample: str,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        levels = len(downsample_factors)
        self.levels = levels
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        transposed: Any = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d

        def fmaps(level: int) -> int:
            return num_fmaps * fmap_inc_factor**level

        def block(in_channels: int, out_channels: int, kernels: list[list[int]]) -> nn.Module:
            return _conv_block(
                dims, in_channels, out_channels, kernels, padding, activation, batch_norm
            )

        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        channels = num_in_channels
        for level in range(levels + 1):
            out = num_fmaps_out if (level == 0 and levels == 0) else fmaps(level)
            self.down.append(block(channels, out, kernel_size_down[level]))
            channels = out
            if level < levels:
                factor = tuple(downsample_factors[level])
                self.pool.append(pool(factor, stride=factor))
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(levels):
            factor = tuple(downsample_factors[level])
            if upsample == "transposed":
                self.upsample.append(transposed(fmaps(level + 1), fmaps(level), factor, factor))
                concatenated = 2 * fmaps(level)
            else:
                self.upsample.append(
                    nn.Upsample(scale_factor=tuple(float(f) for f in factor), mode="nearest")
                )
                concatenated = fmaps(level + 1) + fmaps(level)
            out = num_fmaps_out if level == 0 else fmaps(level)
            self.up.append(block(concatenated, out, kernel_size_up[level]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in range(self.levels):
            x = self.down[level](x)
            skips.append(x)
            x = self.pool[level](x)
        x = self.down[self.levels](x)
        for level in reversed(range(self.levels)):
            x = self.upsample[level](x)
            x = self.up[level](torch.cat([_center_crop(skips[level], x), x], dim=1))
        return x


class InnerDistanceUNet(nn.Module):
    """The U-Net body followed by a 1x1 convolution to ``num_out_channels`` channels
    (see the module docstring); extra keyword arguments (``input_shape``...) are ignored."""

    def __init__(
        self,
        *,
        num_in_channels: int,
        num_fmaps: int,
        num_fmaps_out: int,
        fmap_inc_factor: int,
        downsample_factors: list[list[int]],
        kernel_size_down: list[list[list[int]]],
        kernel_size_up: list[list[list[int]]],
        padding: str,
        activation: str,
        upsample: str,
        batch_norm: bool,
        num_out_channels: int,
        dims: int,
        **ignored: Any,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(_ACTIVATIONS)}, got {activation!r}")
        if upsample not in ("transposed", "nearest") or padding not in ("valid", "same"):
            raise ValueError(f"unknown upsample {upsample!r} or padding {padding!r}")
        body = _Body(
            dims, num_in_channels, num_fmaps, num_fmaps_out, fmap_inc_factor,
            downsample_factors, kernel_size_down, kernel_size_up, padding, activation,
            upsample, batch_norm,
        )
        head = (nn.Conv2d if dims == 2 else nn.Conv3d)(num_fmaps_out, num_out_channels, 1)
        self.chain = nn.Sequential(body, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.chain(x)
