"""Mirror augmentation of strong-supervision pairs (this project's addition; not in the reference).

Mirroring both images of a synthetic pair left-right gives another valid pair whose ground truth
is the mirrored transformation ``theta' = F o theta o F`` with ``F: (x, y) -> (-x, y)`` in the
normalised frame of ``docs/conventions.md`` (theta maps target to source):

* affine ``[a11, a12, tx, a21, a22, ty]`` -> ``[a11, -a12, -tx, -a21, a22, ty]``;
* TPS (control points ``k = i g + j`` at ``(x_i, y_j)``, x varying slowest,
  :mod:`weakalign.geometry.tps`): the point at ``(x, y)`` takes the mirrored source position of
  the point at ``(-x, y)``, i.e. ``X'_k = -X_{m(k)}``, ``Y'_k = Y_{m(k)}`` with
  ``m(i g + j) = (g - 1 - i) g + j``.

For cached *features* the pair is mirrored by flipping both feature maps along their width. The
correlation of two flipped maps is exactly the original correlation with its positions permuted,
so the regression head sees a correlation tensor that a mirror-equivariant backbone would give
for the mirrored photos; the ground truth above is exact for it. ``tests/test_training_mirror.py``
checks the transformations against warping mirrored images.
"""

from __future__ import annotations

import torch


def mirror_theta(theta: torch.Tensor, grid_size: int = 3) -> torch.Tensor:
    """``... x 6`` (affine) or ``... x 2g^2`` (TPS) parameters of the left-right mirrored pair."""
    n = theta.shape[-1]
    if n == 6:
        sign = theta.new_tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
        return theta * sign
    g = grid_size
    if n != 2 * g * g:
        raise ValueError(f"theta has {n} numbers: expected 6 (affine) or {2 * g * g} (TPS, grid {g})")
    k = torch.arange(g * g, device=theta.device)
    m = (g - 1 - k // g) * g + k % g
    x, y = theta[..., : g * g], theta[..., g * g:]
    return torch.cat((-x[..., m], y[..., m]), dim=-1)


def mirror_features(f: torch.Tensor) -> torch.Tensor:
    """Feature map(s) ``... x H x W`` of the mirrored image (flip along the width)."""
    return f.flip(-1)
