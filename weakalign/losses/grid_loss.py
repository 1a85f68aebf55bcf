"""Strong supervision: the transformed-grid loss of CNNGeometric.

A regular ``n x n`` grid of normalised target points (n = 20) is transformed by the predicted
and by the ground-truth parameters; the loss is the mean over points and batch of the squared
Euclidean distance between the two transformed grids.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry import transform_points
from ..geometry.coords import grid_to_points, normalized_grid


class TransformedGridLoss(nn.Module):
    def __init__(self, geometric_model: str = "affine", grid_size: int = 20, tps_grid_size: int = 3):
        super().__init__()
        if geometric_model not in ("affine", "tps"):
            raise ValueError(f"geometric_model must be 'affine' or 'tps', got {geometric_model!r}")
        self.geometric_model = geometric_model
        self.tps_grid_size = tps_grid_size
        self.register_buffer("points", grid_to_points(normalized_grid(grid_size, grid_size)), persistent=False)

    def _transform(self, theta: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if self.geometric_model == "affine":
            return transform_points("affine", p, theta_aff=theta)
        return transform_points("tps", p, theta_tps=theta, grid_size=self.tps_grid_size)

    def forward(self, theta: torch.Tensor, theta_gt: torch.Tensor) -> torch.Tensor:
        p = self.points.to(theta.dtype).expand(theta.shape[0], -1, -1)
        diff = self._transform(theta, p) - self._transform(theta_gt.to(theta.dtype), p)
        return (diff * diff).sum(1).mean()
