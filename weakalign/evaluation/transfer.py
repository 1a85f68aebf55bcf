"""Keypoint transfer: target-image pixels -> source-image pixels through an estimated transform."""

from __future__ import annotations

import torch

from ..geometry import normalized_to_pixel, pixel_to_normalized, transform_points


def transfer_keypoints(
    kind: str,
    target_points: torch.Tensor,
    target_size,
    source_size,
    theta_aff: torch.Tensor | None = None,
    theta_tps: torch.Tensor | None = None,
    origin: float = 1.0,
    tps_reg_factor: float = 0.0,
) -> torch.Tensor:
    """Transfer ``B x 2 x N`` target keypoints (pixels, ``origin``-based) into the source image.

    The images may have any size: the transform works in normalised coordinates, so
    ``target_size`` and ``source_size`` ((h, w) or ``B x 2``) are the *original* image sizes.
    Padded keypoints (-1) come out as garbage and must be excluded by the PCK's validity mask.
    """
    p = pixel_to_normalized(target_points, target_size, origin)
    q = transform_points(kind, p, theta_aff, theta_tps, tps_reg_factor=tps_reg_factor)
    return normalized_to_pixel(q, source_size, origin)
