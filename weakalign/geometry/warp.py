"""Dense warping and the two-stage composition.

Composition (test time and weak loss): stage 1 estimates an affine ``theta_aff`` between source
and target; stage 2 estimates a TPS ``theta_tps`` between the *affine-warped source* and the
target. Because both map target -> source, a target point goes through the TPS first and then
through the affine::

    p_src = affine(theta_aff, tps(theta_tps, p_tgt))

All grids follow ``torch.nn.functional.grid_sample`` with ``align_corners=True``; samples that
fall outside the source image read zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .affine import affine_grid, affine_points
from .coords import grid_to_points, normalized_grid, points_to_grid
from .tps import tps_grid, tps_points

KINDS = ("affine", "tps", "affine_tps")


def transform_points(kind: str, points: torch.Tensor, theta_aff=None, theta_tps=None, *, tps_reg_factor: float = 0.0, grid_size: int = 3) -> torch.Tensor:
    """Map normalised target points ``B x 2 x N`` to source points with the named transform."""
    if kind == "affine":
        return affine_points(theta_aff, points)
    if kind == "tps":
        return tps_points(theta_tps, points, grid_size, tps_reg_factor)
    if kind == "affine_tps":
        return affine_points(theta_aff, tps_points(theta_tps, points, grid_size, tps_reg_factor))
    raise ValueError(f"unknown transform kind {kind!r}; expected one of {KINDS}")


def sampling_grid(kind: str, out_h: int, out_w: int, theta_aff=None, theta_tps=None, *, tps_reg_factor: float = 0.0, grid_size: int = 3) -> torch.Tensor:
    """``B x H x W x 2`` sampling grid in source normalised coordinates."""
    if kind == "affine":
        return affine_grid(theta_aff, out_h, out_w)
    if kind == "tps":
        return tps_grid(theta_tps, out_h, out_w, grid_size, tps_reg_factor)
    if kind == "affine_tps":
        ref = theta_aff if theta_aff is not None else theta_tps
        base = normalized_grid(out_h, out_w, ref.shape[0], ref.dtype, ref.device)
        pts = transform_points(kind, grid_to_points(base), theta_aff, theta_tps, tps_reg_factor=tps_reg_factor, grid_size=grid_size)
        return points_to_grid(pts, out_h, out_w)
    raise ValueError(f"unknown transform kind {kind!r}; expected one of {KINDS}")


def warp_image(image: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``image`` (``B x C x H x W``) at ``grid`` (``B x h x w x 2``), ``align_corners=True``."""
    if image.dim() != 4:
        raise ValueError(f"image must be B x C x H x W, got shape {tuple(image.shape)}")
    return F.grid_sample(image, grid.to(image.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


def warp(image: torch.Tensor, kind: str, theta_aff=None, theta_tps=None, out_size=None, **kw) -> torch.Tensor:
    """Warp the source ``image`` into the target frame (output ``out_size`` = (h, w), default: same)."""
    h, w = out_size if out_size is not None else image.shape[-2:]
    return warp_image(image, sampling_grid(kind, h, w, theta_aff, theta_tps, **kw))
