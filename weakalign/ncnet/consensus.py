"""The neighbourhood consensus network: a stack of 4D convolutions on the correlation tensor.

``NeighConsensus(kernel_sizes, channels)`` is ``Conv4d(1 -> c1, k1), ReLU, Conv4d(c1 -> c2, k2),
ReLU, ...`` with a ReLU after **every** layer, the last one included (as in the reference's
``nn.Sequential``); the last layer has one channel, so input and output are both
``B x 1 x hA x wA x hB x wB`` correlation tensors of the same size.

Symmetric mode (the reference's default, ``symmetric_mode=True``)::

    out = f(C) + swap(f(swap(C)))       swap = exchange the A and B axes (correlation.swap_ab)

which makes the output swap-equivariant, ``out(swap(C)) == swap(out(C))``: the result does not
depend on which image is called A. (Because of the ReLUs this is not the same as one
convolution with symmetrised filters.)

Reference defaults: kernels 5, 5, 5 and channels 16, 16, 1 (``train.py``; ``ImMatchNet``'s own
constructor defaults are 3, 3, 3 / 10, 10, 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv4d import Conv4d
from .correlation import check_corr4d, swap_ab


class NeighConsensus(nn.Module):
    """Stack of ``Conv4d`` + ReLU layers; ``convs[i]`` is layer ``i`` (reference: ``conv.{2i}``)."""

    def __init__(self, kernel_sizes=(3, 3, 3), channels=(16, 16, 1), symmetric: bool = True, impl: str = "auto"):
        super().__init__()
        kernel_sizes, channels = [int(k) for k in kernel_sizes], [int(c) for c in channels]
        if not kernel_sizes or len(kernel_sizes) != len(channels):
            raise ValueError(f"kernel_sizes and channels must be non-empty lists of the same length, got {kernel_sizes} and {channels}")
        if channels[-1] != 1:
            raise ValueError(f"the last consensus layer must have 1 channel (its output is a correlation tensor), got channels {channels}")
        if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"consensus kernel sizes must be odd ('same' padding), got {kernel_sizes}")
        self.kernel_sizes, self.channels, self.symmetric = kernel_sizes, channels, bool(symmetric)
        c_in = [1] + channels[:-1]
        self.convs = nn.ModuleList(Conv4d(ci, co, k, bias=True, impl=impl) for ci, co, k in zip(c_in, channels, kernel_sizes))

    def net(self, x: torch.Tensor) -> torch.Tensor:
        """``f``: the layer stack without the symmetrisation."""
        for conv in self.convs:
            x = F.relu(conv(x))
        return x

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        check_corr4d(corr, "NeighConsensus input")
        if not self.symmetric:
            return self.net(corr)
        b = corr.shape[0]
        if corr.shape[2:4] == corr.shape[4:6]:  # same grid for A and B: one batched pass
            y = self.net(torch.cat((corr, swap_ab(corr))))
            return y[:b] + swap_ab(y[b:])
        return self.net(corr) + swap_ab(self.net(swap_ab(corr)))

    def extra_repr(self) -> str:
        return f"kernel_sizes={self.kernel_sizes}, channels={self.channels}, symmetric={self.symmetric}"
