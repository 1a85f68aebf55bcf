"""Weak supervision: the soft-inlier count of WeakAlign.

The correlation tensor ``corr`` (``B x (h*w) x h x w``, see
:mod:`weakalign.models.correlation`) scores every match between a source cell (channel) and a
target cell (spatial position). An *identity mask* laid out the same way marks, for every target
cell, the source cell at the same position (optionally dilated by ``tolerance`` cells). Warping
that mask spatially with the estimated transformation (target -> source) moves each target
cell's mark to the source cell the transformation assigns it, so

    score = sum(normalise(warp(mask, theta)) * corr)

sums the scores of the matches that agree with ``theta`` (the soft inliers). Bilinear sampling
makes it differentiable in ``theta``.

Faithful details of the reference implementation (ignacio-rocco/weakalign ``model/loss.py``):

* ``offset_factor = 227/210``: the mask's normalised grid is shrunk by this factor before the
  transformation and the result is scaled back (``p_mask = o * T(p / o)``), accounting for
  feature-cell centres lying inside the image border. ``offset_factor=1.0`` gives the plain
  (paper-text) version.
* Normalisation divides the warped mask by ``sum(mask + eps)`` over all its elements
  (``eps = 1e-5``, so ``eps`` is added once per element, not once in total).
* The reference's ``--dilation-filter`` is a scipy connectivity: 0 = none, 1 = 4-neighbours
  (``tolerance=1, shape="cross"``), 2 = 8-neighbours (``tolerance=1, shape="square"``); its
  default is 0.
* The two-stage score is the affine count plus the affine∘TPS count, **both on the stage-1
  correlation**; the TPS of the loss uses the regularisation factor 0.2 (reference default).
* Composition (``composition=``): the reference (``geotnf/transformation.py``,
  ``ComposedGeometricTnf``) computes the affine grid over the mask cells, sets cells whose affine
  position is not strictly inside (-1, 1) to -1e10, bilinearly resamples that grid at the TPS
  positions, and sets cells whose TPS position is not strictly inside (-1, 1) to -1e10 as well.
  ``"reference"`` does exactly that (``weakalign parity``: equal to the original within 1e-7).
  ``"analytic"`` (the class's default until 2026-12-05, now ``"reference"`` like
  ``train_weak.loss.composition``; reports before 2026-12-04 trained with it) applies the
  affine to the TPS points analytically and keeps TPS positions up to 1 + 1e-5 inclusive: it
  differs from the original at the border (cells on the edge of [-1, 1], and cells whose
  resampled neighbourhood contains an affine-out-of-bounds cell), by ~1e-3 on a normalised
  score (``reports/parity/parity.md``).

``mask="none"`` is the ablation without an inlier mask: an all-ones mask is warped and
normalised the same way, so the score is the mean match score of the target cells that the
transformation keeps inside the source image; it no longer says which matches agree with theta.
"""

from __future__ import annotations

import torch
from torch import nn

from ..geometry import transform_points
from ..geometry.coords import grid_to_points, normalized_grid, points_to_grid
from ..geometry.warp import warp_image
from ..training.params import WeakLoss  # the loss's parameters and their defaults (train_weak.loss), defined once

REFERENCE_OFFSET_FACTOR = WeakLoss.offset_factor  # 227 / 210
_FAR = -10.0  # grid value far outside [-1, 1]: grid_sample reads zeros there
_BOUND_TOL = 1e-5  # inclusive bound, robust to float round-off at the border ("analytic")
_REF_FAR = -1e10  # the reference's value for out-of-bounds grid cells ("reference")
COMPOSITIONS = ("analytic", "reference")


def identity_mask(h: int, w: int, tolerance: int = WeakLoss.tolerance, shape: str = WeakLoss.shape, dtype=torch.float32) -> torch.Tensor:
    """``1 x (h*w) x h x w`` mask: channel ``x*h + y`` is 1 at target cells within ``tolerance``
    of (x, y) (Chebyshev distance for ``"square"``, Manhattan for ``"cross"``)."""
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    src_x = torch.arange(w).repeat_interleave(h)  # channel k = x*h + y
    src_y = torch.arange(h).repeat(w)
    dx = (xs[None] - src_x[:, None, None]).abs()
    dy = (ys[None] - src_y[:, None, None]).abs()
    if shape == "square":
        keep = torch.maximum(dx, dy) <= tolerance
    elif shape == "cross":
        keep = dx + dy <= tolerance
    else:
        raise ValueError(f"shape must be 'square' or 'cross', got {shape!r}")
    return keep.to(dtype).unsqueeze(0)


class SoftInlierCount(nn.Module):
    """Soft-inlier score for ``kind`` in ``"affine"``, ``"tps"``, ``"affine_tps"`` (composed)."""

    def __init__(
        self,
        h: int = 15,
        w: int = 15,
        tolerance: int = WeakLoss.tolerance,
        shape: str = WeakLoss.shape,
        mask: str = WeakLoss.mask,
        normalize: bool = WeakLoss.normalize,
        offset_factor: float = WeakLoss.offset_factor,
        tps_reg_factor: float = WeakLoss.tps_reg_factor,
        tps_grid_size: int = 3,
        eps: float = 1e-5,
        composition: str = WeakLoss.composition,
    ):
        super().__init__()
        if composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {composition!r}")
        self.composition = composition
        if mask == "identity":
            m = identity_mask(h, w, tolerance, shape)
        elif mask == "none":
            m = torch.ones(1, h * w, h, w)
        else:
            raise ValueError(f"mask must be 'identity' or 'none', got {mask!r}")
        self.register_buffer("mask", m, persistent=False)
        self.register_buffer("grid", grid_to_points(normalized_grid(h, w)), persistent=False)
        self.h, self.w = h, w
        self.mask_kind, self.tolerance, self.shape = mask, tolerance, shape
        self.normalize, self.offset_factor, self.eps = normalize, offset_factor, eps
        self.tps_reg_factor, self.tps_grid_size = tps_reg_factor, tps_grid_size

    def mask_grid(self, kind: str, theta_aff=None, theta_tps=None) -> torch.Tensor:
        """Where each target cell samples the mask: ``o * T(p / o)``, in mask coordinates."""
        ref = theta_aff if theta_aff is not None else theta_tps
        o = self.offset_factor
        p = self.grid.to(ref.dtype).expand(ref.shape[0], -1, -1) / o
        kw = dict(tps_reg_factor=self.tps_reg_factor, grid_size=self.tps_grid_size)
        if kind == "affine_tps" and self.composition == "reference":
            return self._reference_composition(p, theta_aff, theta_tps, kw)
        if kind == "affine_tps":
            q = o * transform_points("tps", p, theta_tps=theta_tps, **kw)
            inside = (q.abs() <= 1 + _BOUND_TOL).all(1, keepdim=True)
            out = o * transform_points("affine", q / o, theta_aff=theta_aff)
            out = torch.where(inside, out, torch.full_like(out, _FAR))
        else:
            out = o * transform_points(kind, p, theta_aff=theta_aff, theta_tps=theta_tps, **kw)
        return points_to_grid(out, self.h, self.w)

    def _reference_composition(self, p, theta_aff, theta_tps, kw) -> torch.Tensor:
        """The original's ``ComposedGeometricTnf`` (see the module docstring), step by step."""
        o = self.offset_factor

        def inside(grid):  # B x H x W x 2 -> B x H x W x 1: strictly inside (-1, 1)
            return ((grid > -1) & (grid < 1)).all(-1, keepdim=True)

        aff = points_to_grid(o * transform_points("affine", p, theta_aff=theta_aff), self.h, self.w)
        aff = torch.where(inside(aff), aff, torch.full_like(aff, _REF_FAR))
        tps = points_to_grid(o * transform_points("tps", p, theta_tps=theta_tps, **kw), self.h, self.w)
        comp = warp_image(aff.permute(0, 3, 1, 2), tps).permute(0, 2, 3, 1)
        return torch.where(inside(tps), comp, torch.full_like(comp, _REF_FAR))

    def warped_mask(self, kind: str, theta_aff=None, theta_tps=None) -> torch.Tensor:
        grid = self.mask_grid(kind, theta_aff, theta_tps)
        m = warp_image(self.mask.to(grid.dtype).expand(grid.shape[0], -1, -1, -1), grid)
        if self.normalize:
            m = m / (m + self.eps).sum(dim=(1, 2, 3), keepdim=True)
        return m

    def forward(self, corr: torch.Tensor, kind: str, theta_aff=None, theta_tps=None) -> torch.Tensor:
        """Per-sample scores, shape ``B``."""
        if corr.shape[1:] != (self.h * self.w, self.h, self.w):
            raise ValueError(f"correlation must be B x {self.h * self.w} x {self.h} x {self.w}, got {tuple(corr.shape)}")
        return (self.warped_mask(kind, theta_aff, theta_tps) * corr).sum(dim=(1, 2, 3))


class TwoStageInlierScore(nn.Module):
    """WeakAlign's training objective: affine count + affine∘TPS count on the stage-1
    correlation. ``loss = -mean(score)``."""

    def __init__(self, h: int = 15, w: int = 15, **kw):
        super().__init__()
        self.count = SoftInlierCount(h, w, **kw)

    def forward(self, theta_aff: torch.Tensor, theta_aff_tps: torch.Tensor, corr_aff: torch.Tensor) -> torch.Tensor:
        return self.count(corr_aff, "affine", theta_aff=theta_aff) + self.count(corr_aff, "affine_tps", theta_aff=theta_aff, theta_tps=theta_aff_tps)

    def loss(self, theta_aff, theta_aff_tps, corr_aff) -> torch.Tensor:
        return -self.forward(theta_aff, theta_aff_tps, corr_aff).mean()
