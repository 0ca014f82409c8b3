"""The uint8-input wrapper: normalisation folded into the model's first nodes (imports torch; build side and
the torch backend only).

A model exported through it takes what the servers already hold, uint8 BGR pixels at the input size, so
serving skips the float conversion and moves a quarter of the bytes; the graph does the rest, in this order:
transpose (still uint8: the cheapest place to move bytes), cast, channel order, (x - mean) / std.
"""

from __future__ import annotations

import torch
from torch import nn

from inference.spec import ModelSpec


class Uint8Input(nn.Module):
    """uint8 BGR [N, H, W, 3] or [N, 3, H, W] -> the float input `model` was trained on -> `model`."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        if spec.input_format == "float":
            raise ValueError("Uint8Input needs a uint8 input_format in the spec")
        self.model = model
        self.nhwc_in = spec.input_layout == "NHWC"
        self.nhwc_out = spec.layout == "NHWC"
        self.flip = spec.color == "RGB"  # the input is BGR; the network wants RGB
        # mean/std are in the network's channel order; x * (1/std) keeps it one Sub and one Mul.
        mean = torch.tensor(spec.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        inv_std = 1.0 / torch.tensor(spec.std, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("inv_std", inv_std, persistent=False)
        names = getattr(model, "output_names", None)
        if names:
            self.output_names = list(names)

    def forward(self, x: torch.Tensor) -> object:
        if self.nhwc_in:
            x = x.permute(0, 3, 1, 2)  # NCHW from here on
        x = x.float()
        if self.flip:
            x = x[:, [2, 1, 0]]  # a Gather on the channel axis
        x = (x - self.mean) * self.inv_std
        if self.nhwc_out:
            x = x.permute(0, 2, 3, 1).contiguous()
        return self.model(x)
