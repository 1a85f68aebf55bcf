"""The regression head: correlation tensor -> transformation parameters.

conv k1 x k1 -> c1, BN, ReLU, conv k2 x k2 -> c2, BN, ReLU, linear -> output_dim
(reference defaults: kernels (7, 5), channels (128, 64), no padding). Module names and indices
(``conv.0``, ``conv.1``, ``conv.3``, ``conv.4``, ``linear``) equal the reference's, so released
checkpoints load 1:1. The linear layer is sized from the correlation grid size instead of a
hard-coded 15 x 15.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FeatureRegression(nn.Module):
    def __init__(
        self,
        output_dim: int,
        feature_size: tuple[int, int] = (15, 15),
        in_channels: int | None = None,
        kernel_sizes: Sequence[int] = (7, 5),
        channels: Sequence[int] = (128, 64),
        batch_norm: bool = True,
    ):
        super().__init__()
        if len(kernel_sizes) != len(channels):
            raise ValueError("kernel_sizes and channels must have the same length")
        h, w = feature_size
        ch_in = in_channels if in_channels is not None else h * w
        layers: list[nn.Module] = []
        for k, ch_out in zip(kernel_sizes, channels):
            layers.append(nn.Conv2d(ch_in, ch_out, kernel_size=k, padding=0))
            if batch_norm:
                layers.append(nn.BatchNorm2d(ch_out))
            layers.append(nn.ReLU(inplace=True))
            ch_in = ch_out
            h, w = h - k + 1, w - k + 1
        if h < 1 or w < 1:
            raise ValueError(
                f"correlation grid {feature_size} is too small for kernels {tuple(kernel_sizes)}; "
                "use a larger input image"
            )
        self.feature_size = tuple(feature_size)
        self.conv = nn.Sequential(*layers)
        self.linear = nn.Linear(ch_in * h * w, output_dim)

    def forward(self, correlation: torch.Tensor) -> torch.Tensor:
        x = self.conv(correlation)
        return self.linear(x.flatten(1))
