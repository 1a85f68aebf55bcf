"""4D convolution built from ``torch.nn.functional.conv3d`` (no custom kernels, any device).

Conventions:

* Input ``B x C_in x I x J x K x L``, output ``B x C_out x I x J x K x L``: stride 1, dilation 1,
  zero **'same'** padding (``k // 2`` on both sides of every axis), so kernel sizes must be odd.
* It is a cross-correlation, like every PyTorch convolution::

      out[b, o, i, j, k, l] = bias[o] + sum_{c, a, b', c', d} weight[o, c, a, b', c', d]
                              * x[b, c, i + a - p1, j + b' - p2, k + c' - p3, l + d - p4]

  with ``p = kernel // 2`` and zeros outside the tensor.
* ``weight`` has PyTorch's layout ``C_out x C_in x k1 x k2 x k3 x k4``. (The reference NCNet
  stores its filters *pre-permuted* as ``k1 x C_out x C_in x k2 x k3 x k4``;
  :mod:`weakalign.ncnet.checkpoints` converts.)

The first kernel axis is handled by a loop over its ``k1`` offsets, each a 3D convolution over
the last three axes with the ``I`` axis folded into the batch. Three equivalent arrangements
of that loop (same result up to float round-off, ``tests/test_ncnet.py`` checks them against a
direct computation) trade memory for speed:

``loop``          ``k1`` conv3d calls on the shifted input slabs, accumulated (least memory)
``stack_input``   the ``k1`` shifted slabs stacked as channels, one conv3d with
                  ``k1 * C_in`` input channels (fast when ``C_in`` is small: the first layer)
``stack_output``  one conv3d with ``k1 * C_out`` output channels on the unshifted input, then
                  ``k1`` shifted additions (fast when ``C_out`` is small: the last layer)

``impl="auto"`` picks ``stack_input`` for ``C_in == 1``, ``stack_output`` for ``C_out == 1``
and ``loop`` otherwise; on the 2-core CPU this is ~1.6x faster than ``loop`` everywhere for
the 1 -> 16 -> 16 -> 1 consensus network (see ``docs/ncnet.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("auto", "loop", "stack_input", "stack_output")


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight.dim() != 6:
        raise ValueError(f"conv4d weight must be C_out x C_in x k1 x k2 x k3 x k4, got shape {tuple(weight.shape)}")
    if x.dim() != 6:
        raise ValueError(f"conv4d input must be B x C x I x J x K x L (6 dims), got shape {tuple(x.shape)}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"conv4d input has {x.shape[1]} channels, the weight expects {weight.shape[1]}")
    if any(k % 2 == 0 for k in weight.shape[2:]):
        raise ValueError(f"conv4d needs odd kernel sizes for 'same' padding, got {tuple(weight.shape[2:])}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"conv4d bias must have {weight.shape[0]} entries, got shape {tuple(bias.shape)}")


def _auto(c_in: int, c_out: int) -> str:
    if c_in == 1:
        return "stack_input"
    if c_out == 1:
        return "stack_output"
    return "loop"


def conv4d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """4D 'same' cross-correlation of ``x`` (``B x C_in x I x J x K x L``) with ``weight``
    (``C_out x C_in x k1 x k2 x k3 x k4``); see the module docstring."""
    _check(x, weight, bias)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    b, c_in, i_, j_, k_, l_ = x.shape
    c_out, _, k1, k2, k3, k4 = weight.shape
    p1 = k1 // 2
    pad3 = (k2 // 2, k3 // 2, k4 // 2)
    if impl == "auto":
        impl = _auto(c_in, c_out)

    if impl == "stack_output":
        # one conv3d producing, for every input slab i and every offset a, its contribution
        # weight[:, :, a] * x[i]; output slab i then sums the contributions of slabs i + a - p1
        xs = x.transpose(1, 2).reshape(b * i_, c_in, j_, k_, l_)
        w = weight.permute(2, 0, 1, 3, 4, 5).reshape(k1 * c_out, c_in, k2, k3, k4)
        y = F.conv3d(xs, w, padding=pad3).view(b, i_, k1, c_out, j_, k_, l_)
        y = F.pad(y, (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, p1, p1))  # zero slabs before/after along I
        out = y[:, 0:i_, 0]
        for a in range(1, k1):
            out = out + y[:, a:a + i_, a]
        if bias is not None:
            out = out + bias.view(1, 1, c_out, 1, 1, 1)
        return out.transpose(1, 2)

    # slabs along I first (I' x B x C_in x J x K x L), zero-padded by p1 on both sides: any
    # window of I consecutive slabs is then a contiguous block that reshapes without a copy
    xp = F.pad(x, (0, 0, 0, 0, 0, 0, p1, p1)).permute(2, 0, 1, 3, 4, 5).contiguous()
    if impl == "stack_input":
        stacked = torch.stack([xp[a:a + i_] for a in range(k1)], dim=3)  # I x B x C_in x k1 x J x K x L
        w = weight.reshape(c_out, c_in * k1, k2, k3, k4)
        out = F.conv3d(stacked.reshape(i_ * b, c_in * k1, j_, k_, l_), w, bias, padding=pad3)
    else:  # loop
        out = None
        for a in range(k1):
            slab = xp[a:a + i_].reshape(i_ * b, c_in, j_, k_, l_)
            y = F.conv3d(slab, weight[:, :, a], bias if a == p1 else None, padding=pad3)
            out = y if out is None else out + y
    return out.view(i_, b, c_out, j_, k_, l_).permute(1, 2, 0, 3, 4, 5)


class Conv4d(nn.Module):
    """4D convolution layer (stride 1, 'same' zero padding, odd kernel sizes).

    ``weight``: ``C_out x C_in x k x k x k x k``; ``bias``: ``C_out``. Initialised like
    PyTorch's ``nn.Conv3d`` (and the reference, which subclasses ``_ConvNd``): uniform in
    ``+-1/sqrt(fan_in)`` with ``fan_in = C_in * k^4``, for the weight and the bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple = 3, bias: bool = True, impl: str = "auto"):
        super().__init__()
        ks = (kernel_size,) * 4 if isinstance(kernel_size, int) else tuple(int(k) for k in kernel_size)
        if len(ks) != 4 or any(k < 1 or k % 2 == 0 for k in ks):
            raise ValueError(f"Conv4d kernel_size must be an odd int or 4 odd ints, got {kernel_size!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"Conv4d channels must be >= 1, got {in_channels} -> {out_channels}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.in_channels, self.out_channels, self.kernel_size, self.impl = int(in_channels), int(out_channels), ks, impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *ks))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv4d(x, self.weight, self.bias, self.impl)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}, impl={self.impl!r}"
