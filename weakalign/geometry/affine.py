"""Affine transformations.

``theta`` has 6 parameters per sample, ``[a11, a12, tx, a21, a22, ty]`` (shape ``B x 6`` or
``B x 2 x 3``) and maps **target** normalised coordinates to **source** normalised coordinates::

    x_src = a11 * x_tgt + a12 * y_tgt + tx
    y_src = a21 * x_tgt + a22 * y_tgt + ty

so that warping the source image with the grid sampled at every target pixel produces an image
aligned with the target (``torch.nn.functional.affine_grid`` semantics, ``align_corners=True``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .coords import _check_points

AFFINE_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _as_matrix(theta: torch.Tensor) -> torch.Tensor:
    if theta.dim() == 2 and theta.shape[1] == 6:
        return theta.view(-1, 2, 3)
    if theta.dim() == 3 and theta.shape[1:] == (2, 3):
        return theta
    raise ValueError(f"affine theta must be B x 6 or B x 2 x 3, got shape {tuple(theta.shape)}")


def affine_identity(batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """Identity parameters, ``B x 6``."""
    return torch.tensor(AFFINE_IDENTITY, dtype=dtype, device=device).repeat(batch, 1)


def affine_points(theta: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``theta`` to normalised target points ``B x 2 x N``; returns source points."""
    _check_points(points)
    m = _as_matrix(theta)
    return torch.baddbmm(m[:, :, 2:], m[:, :, :2], points)


def affine_compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The affine ``outer ∘ inner`` (``B x 6``): a target point goes through ``inner`` first, then
    ``outer``. For an estimate ``outer`` (target -> source) refined by ``inner`` estimated between
    the target and the source warped by ``outer`` (target -> warped source), the result maps
    target to source directly: ``affine_points(affine_compose(o, i), p) ==
    affine_points(o, affine_points(i, p))``."""
    mo, mi = _as_matrix(outer), _as_matrix(inner)
    lin = torch.bmm(mo[:, :, :2], mi[:, :, :2])
    trans = torch.baddbmm(mo[:, :, 2:], mo[:, :, :2], mi[:, :, 2:])
    return torch.cat([lin, trans], dim=2).reshape(-1, 6)


def affine_grid(theta: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Sampling grid ``B x H x W x 2`` for an ``out_h x out_w`` target (``align_corners=True``)."""
    m = _as_matrix(theta)
    return F.affine_grid(m, [m.shape[0], 1, out_h, out_w], align_corners=True)
