"""The trainable network: an :class:`~innerdist.architecture.Architecture` plus a prediction head.

``Model(architecture, head)`` is ``head(architecture.module()(x))``, with He-initialised
convolutions and an optional activation that is applied in eval mode only (train against raw
outputs with a loss that includes the activation, predict with it). Shapes are spatial and in
voxels; tensors are ``(batch, channels, *spatial)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from funlib.geometry import Coordinate
from torch.func import functional_call

from innerdist.architecture import Architecture, UNet

__all__ = ["Model"]

_CONVS = (torch.nn.Conv2d, torch.nn.Conv3d)
_TRANSPOSED_CONVS = (torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


def _he_init(layer: torch.nn.Module) -> None:
    """Kaiming (He) normal init for ReLU-like nets: ``std = sqrt(2 / fan_in)``, zero bias.

    ``fan_in`` is the number of inputs summed into one output value: ``in_channels / groups
    * prod(kernel)`` for a convolution. For a transposed convolution each output only sees
    ``prod(kernel / stride)`` kernel positions per input channel (1 when kernel == stride, as
    in the U-Net's upsampling); torch's own fan-in rule would count output channels there.
    """
    if isinstance(layer, _CONVS):
        fan_in = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    elif isinstance(layer, _TRANSPOSED_CONVS):
        positions = math.prod(
            max(1, k // s) for k, s in zip(layer.kernel_size, layer.stride, strict=True)
        )
        fan_in = layer.in_channels // layer.groups * positions
    else:
        return
    with torch.no_grad():
        layer.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
        if layer.bias is not None:
            layer.bias.zero_()


class Model(torch.nn.Module):
    """``prediction_head(architecture.module()(x))``, plus ``eval_activation`` in eval mode.

    Parameters
    ----------
    architecture
        The network body; ``architecture.module()`` is built once here.
    prediction_head
        Maps ``architecture.num_out_channels`` feature maps to the predicted channels, e.g.
        ``nn.Conv3d(architecture.num_out_channels, C, 1)``.
    eval_activation
        Applied to the output only when ``not self.training`` (e.g. ``nn.Sigmoid()``), so
        that losses can work on raw outputs during training.

    Attributes
    ----------
    chain
        ``nn.Sequential(architecture.module(), prediction_head)``.
    num_in_channels, num_out_channels
        Input channels of the architecture, output channels of the head.
    input_shape, output_shape
        Spatial training input shape and the matching output shape, in voxels.
    eval_input_shape, eval_output_shape
        The same at prediction time: ``input_shape + architecture.eval_shape_increase``.

    All convolutions (including the head's) are He-initialised: normal weights with
    ``std = sqrt(2 / fan_in)``, zero bias. Nothing is tied to a device; move the model with
    ``.to(device)`` and feed it tensors on the same device.
    """

    def __init__(
        self,
        architecture: Architecture,
        prediction_head: torch.nn.Module,
        eval_activation: torch.nn.Module | None = None,
    ) -> None:
        if not isinstance(architecture, Architecture):
            raise TypeError(
                f"architecture must be an innerdist Architecture, got {type(architecture).__name__}"
            )
        if not isinstance(prediction_head, torch.nn.Module):
            raise TypeError(
                f"prediction_head must be a torch.nn.Module, got {type(prediction_head).__name__}"
            )
        if eval_activation is not None and not isinstance(eval_activation, torch.nn.Module):
            raise TypeError(
                "eval_activation must be a torch.nn.Module (e.g. torch.nn.Sigmoid()) or None, "
                f"got {type(eval_activation).__name__}"
            )
        super().__init__()
        self.architecture = architecture
        self.chain = torch.nn.Sequential(architecture.module(), prediction_head)
        self.eval_activation = eval_activation
        self.chain.apply(_he_init)

        self.num_in_channels: int = architecture.num_in_channels
        self.input_shape: Coordinate = Coordinate(architecture.input_shape)
        self.eval_input_shape: Coordinate = self.input_shape + architecture.eval_shape_increase
        try:
            channels, self.output_shape = self.compute_output_shape(self.input_shape)
        except RuntimeError as error:
            # A head whose input channels do not match the architecture fails here, once,
            # with a message that says so instead of a shape error deep in training.
            raise ValueError(
                f"prediction_head does not accept the architecture's output "
                f"({architecture.num_out_channels} channels, spatial shape from input "
                f"{tuple(self.input_shape)}): {error}"
            ) from error
        self.num_out_channels: int = channels
        self.eval_output_shape: Coordinate = self.compute_output_shape(self.eval_input_shape)[1]

    @property
    def dims(self) -> int:
        """Number of spatial axes."""
        return self.architecture.dims

    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, Coordinate]:
        """``(channels, spatial shape)`` of ``chain``'s output for a spatial ``input_shape``.

        Found by a dry forward pass on the ``meta`` device (shapes only: no memory, no
        arithmetic, weights untouched), so it holds for any architecture and head; for a
        :class:`~innerdist.architecture.UNet` with a pointwise (1x1) convolution head, the
        usual case, by the U-Net's own shape arithmetic instead, which gives the same
        answer without the seconds that torch's meta machinery takes to import on first
        use. ``eval_activation`` is assumed to keep the shape. An input shape the
        architecture rejects raises its ``ValueError``.
        """
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
            raise TypeError(f"input_shape must be a sequence of integers, got {input_shape!r}")
        if len(input_shape) != self.dims:
            raise ValueError(
                f"input_shape must have {self.dims} entries (one per spatial axis), "
                f"got {list(input_shape)}"
            )
        if any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
            for s in input_shape
        ):
            raise ValueError(
                f"input_shape entries must be positive integers (voxels), got {list(input_shape)}"
            )
        head = self.chain[1]
        if (
            isinstance(self.architecture, UNet)
            and isinstance(head, _CONVS)
            and head.in_channels == self.architecture.num_out_channels
            and all(k == 1 for k in head.kernel_size)
            and all(st == 1 for st in head.stride)
            and head.padding in ("valid", (0,) * self.dims)
        ):
            shape = self.architecture.output_shape(tuple(int(s) for s in input_shape))
            return int(head.out_channels), Coordinate(shape)
        meta = {
            name: torch.empty_like(tensor, device="meta")
            for name, tensor in [*self.chain.named_parameters(), *self.chain.named_buffers()]
        }
        # Batch of 2: batch norm in training mode refuses a single value per channel.
        x = torch.empty((2, self.num_in_channels, *(int(s) for s in input_shape)), device="meta")
        with torch.no_grad():
            y = functional_call(self.chain, meta, (x,))
        return int(y.shape[1]), Coordinate(int(s) for s in y.shape[2:])

    def scale(self, voxel_size: Sequence[float]) -> Coordinate:
        """Voxel size of the output (world units) for input ``voxel_size``; see
        :meth:`Architecture.scale`."""
        return self.architecture.scale(voxel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.chain(x)
        if not self.training and self.eval_activation is not None:
            y = self.eval_activation(y)
        return y
