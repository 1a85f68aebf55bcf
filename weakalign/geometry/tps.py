"""Thin-plate-spline (TPS) transformations.

Control points: a regular ``g x g`` grid on [-1, 1]^2 (``g = 3`` by default, 9 points), in the
reference code's order, **x varying slowest**::

    k = i * g + j   ->   (x_k, y_k) = (linspace(-1, 1, g)[i], linspace(-1, 1, g)[j])

``theta`` (``B x 2g^2``, 18 numbers for g = 3) holds ``[X_1..X_{g^2}, Y_1..Y_{g^2}]``: the
**source**-frame positions of the target control points. The spline interpolates those
correspondences, so like the affine case it maps target coordinates to source coordinates.
The identity is ``theta = [x_1..x_9, y_1..y_9]`` of the control grid itself.

Kernel: ``U(d^2) = d^2 * log(d^2)`` with ``U(0) = 0`` (the reference code's choice, equal to
``2 r^2 log r``; the interpolant is the same as with ``r^2 log r``). An optional
regularisation factor ``lambda`` adds ``lambda * I`` to the kernel matrix (smoothing spline;
``lambda = 0`` interpolates exactly).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .coords import _check_points, grid_to_points, normalized_grid, points_to_grid


def tps_control_points(grid_size: int = 3, dtype=torch.float32, device=None) -> torch.Tensor:
    """Control points as a ``2 x g^2`` tensor (row 0: x, row 1: y), x varying slowest."""
    axis = torch.linspace(-1.0, 1.0, grid_size, dtype=dtype, device=device)
    return torch.stack((axis.repeat_interleave(grid_size), axis.repeat(grid_size)))


def tps_identity(batch: int = 1, grid_size: int = 3, dtype=torch.float32, device=None) -> torch.Tensor:
    """Identity parameters, ``B x 2g^2``."""
    return tps_control_points(grid_size, dtype, device).reshape(1, -1).repeat(batch, 1)


def _kernel(d2: torch.Tensor) -> torch.Tensor:
    # U(d^2) = d^2 log d^2, U(0) = 0; the ``where`` keeps gradients finite at d = 0
    safe = torch.where(d2 > 0, d2, torch.ones_like(d2))
    return d2 * torch.log(safe)


@lru_cache(maxsize=32)
def _l_inverse_cpu64(grid_size: int, reg_factor: float) -> torch.Tensor:
    # Cached across calls, so it must never be an inference tensor: a first call made under
    # ``torch.inference_mode`` (evaluation) would otherwise poison later autograd (training).
    with torch.inference_mode(False):
        return _solve_l_inverse(grid_size, reg_factor)


def _solve_l_inverse(grid_size: int, reg_factor: float) -> torch.Tensor:
    p = tps_control_points(grid_size, dtype=torch.float64)
    n = p.shape[1]
    d2 = ((p[:, :, None] - p[:, None, :]) ** 2).sum(0)
    k = _kernel(d2) + reg_factor * torch.eye(n, dtype=torch.float64)
    pm = torch.cat((torch.ones(n, 1, dtype=torch.float64), p.t()), dim=1)  # n x 3: [1, x, y]
    top = torch.cat((k, pm), dim=1)
    bottom = torch.cat((pm.t(), torch.zeros(3, 3, dtype=torch.float64)), dim=1)
    return torch.linalg.inv(torch.cat((top, bottom), dim=0))


def tps_coefficients(theta: torch.Tensor, grid_size: int = 3, reg_factor: float = 0.0):
    """Solve for the spline: returns ``(W, A)`` with W ``B x 2 x g^2`` and A ``B x 2 x 3``."""
    n = grid_size * grid_size
    if theta.dim() != 2 or theta.shape[1] != 2 * n:
        raise ValueError(f"TPS theta must be B x {2 * n} for grid_size={grid_size}, got {tuple(theta.shape)}")
    li = _l_inverse_cpu64(grid_size, float(reg_factor)).to(theta.device, theta.dtype)
    q = theta.view(-1, 2, n)  # B x 2 x n
    coef = torch.matmul(q, li[:, :n].t())  # B x 2 x (n + 3)
    return coef[:, :, :n], coef[:, :, n:]


def tps_points(theta: torch.Tensor, points: torch.Tensor, grid_size: int = 3, reg_factor: float = 0.0) -> torch.Tensor:
    """Apply the TPS ``theta`` to normalised target points ``B x 2 x N``; returns source points."""
    _check_points(points)
    w, a = tps_coefficients(theta, grid_size, reg_factor)
    ctrl = tps_control_points(grid_size, points.dtype, points.device)  # 2 x n
    d2 = ((points.unsqueeze(-1) - ctrl[None, :, None, :]) ** 2).sum(1)  # B x N x n
    u = _kernel(d2)
    affine = a[:, :, :1] + a[:, :, 1:2] * points[:, :1] + a[:, :, 2:3] * points[:, 1:2]
    return affine + torch.matmul(w, u.transpose(1, 2))


@lru_cache(maxsize=16)
def _grid_kernel(out_h: int, out_w: int, grid_size: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points 1 x 2 x N, U 1 x N x n)`` of the regular target grid: they do not depend on
    theta, so :func:`tps_grid` computes them once per size (same operations as
    :func:`tps_points`, hence the same values). Never inference tensors (see above)."""
    with torch.inference_mode(False), torch.no_grad():
        pts = grid_to_points(normalized_grid(out_h, out_w, 1, dtype, torch.device(device)))
        ctrl = tps_control_points(grid_size, dtype, torch.device(device))
        u = _kernel(((pts.unsqueeze(-1) - ctrl[None, :, None, :]) ** 2).sum(1))
    return pts, u


def tps_grid(theta: torch.Tensor, out_h: int, out_w: int, grid_size: int = 3, reg_factor: float = 0.0) -> torch.Tensor:
    """Sampling grid ``B x H x W x 2`` for an ``out_h x out_w`` target (``align_corners=True``)."""
    n = grid_size * grid_size
    if theta.dim() != 2 or theta.shape[1] != 2 * n:
        raise ValueError(f"TPS theta must be B x {2 * n} for grid_size={grid_size}, got {tuple(theta.shape)}")
    pts, u = _grid_kernel(int(out_h), int(out_w), int(grid_size), theta.dtype, str(theta.device))
    w, a = tps_coefficients(theta, grid_size, reg_factor)
    affine = a[:, :, :1] + a[:, :, 1:2] * pts[:, :1] + a[:, :, 2:3] * pts[:, 1:2]
    return points_to_grid(affine + torch.matmul(w, u.transpose(1, 2)), out_h, out_w)
