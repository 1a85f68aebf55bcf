"""Pixel <-> normalised coordinate conversion: the one place that defines it.

Conventions (see ``docs/conventions.md``):

* Points are tensors of shape ``B x 2 x N``: row 0 holds x (column), row 1 holds y (row).
* Normalised coordinates follow ``align_corners=True``: -1 is the centre of the first pixel and
  +1 the centre of the last one, for each axis separately.
* Pixel coordinates are **1-based** by default (``origin=1``), as in the MATLAB-made annotation
  files of PF-WILLOW / PF-PASCAL and in the reference code (``PointsToUnitCoords``). Pass
  ``origin=0`` for 0-based pixel coordinates.

With ``L`` the size of an axis in pixels::

    u = (x - origin - (L - 1) / 2) * 2 / (L - 1)        # pixel -> normalised
    x = u * (L - 1) / 2 + (L - 1) / 2 + origin          # normalised -> pixel
"""

from __future__ import annotations

import torch

Size = "torch.Tensor | tuple[int, int]"


def _sizes(size, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-batch (h, w) as ``B x 1`` tensors broadcastable against ``B x N``."""
    s = torch.as_tensor(size, dtype=points.dtype, device=points.device)
    if s.dim() == 1:
        s = s.unsqueeze(0).expand(points.shape[0], 2)
    if s.shape != (points.shape[0], 2):
        raise ValueError(f"size must be (h, w) or B x 2, got shape {tuple(s.shape)}")
    if bool((s < 2).any()):
        raise ValueError("every image side must be at least 2 pixels to normalise coordinates")
    return s[:, 0:1], s[:, 1:2]


def _check_points(points: torch.Tensor) -> None:
    if points.dim() != 3 or points.shape[1] != 2:
        raise ValueError(f"points must be B x 2 x N, got shape {tuple(points.shape)}")


def pixel_to_normalized(points: torch.Tensor, size, origin: float = 1.0) -> torch.Tensor:
    """Map pixel coordinates (``B x 2 x N``) of an image of ``size`` = (h, w) to [-1, 1]."""
    _check_points(points)
    h, w = _sizes(size, points)
    x = (points[:, 0] - origin - (w - 1) / 2) * 2 / (w - 1)
    y = (points[:, 1] - origin - (h - 1) / 2) * 2 / (h - 1)
    return torch.stack((x, y), dim=1)


def normalized_to_pixel(points: torch.Tensor, size, origin: float = 1.0) -> torch.Tensor:
    """Inverse of :func:`pixel_to_normalized`."""
    _check_points(points)
    h, w = _sizes(size, points)
    x = points[:, 0] * (w - 1) / 2 + (w - 1) / 2 + origin
    y = points[:, 1] * (h - 1) / 2 + (h - 1) / 2 + origin
    return torch.stack((x, y), dim=1)


def normalized_grid(h: int, w: int, batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """The ``align_corners=True`` grid of an ``h x w`` output, as ``B x H x W x 2`` (x, y)."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).unsqueeze(0).expand(batch, h, w, 2)


def grid_to_points(grid: torch.Tensor) -> torch.Tensor:
    """``B x H x W x 2`` grid -> ``B x 2 x (H*W)`` points (row-major)."""
    b, h, w, _ = grid.shape
    return grid.reshape(b, h * w, 2).transpose(1, 2)


def points_to_grid(points: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``B x 2 x (H*W)`` points -> ``B x H x W x 2`` grid (row-major)."""
    return points.transpose(1, 2).reshape(points.shape[0], h, w, 2)
