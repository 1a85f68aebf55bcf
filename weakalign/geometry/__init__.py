"""Geometry: coordinate conventions, affine and thin-plate-spline transforms, warping.

Every function here maps **target** coordinates to **source** coordinates and uses
``align_corners=True`` normalised coordinates in [-1, 1]. Read ``docs/conventions.md``.
"""

from .affine import AFFINE_IDENTITY, affine_compose, affine_grid, affine_identity, affine_points
from .coords import (
    grid_to_points,
    normalized_grid,
    normalized_to_pixel,
    pixel_to_normalized,
    points_to_grid,
)
from .tps import tps_coefficients, tps_control_points, tps_grid, tps_identity, tps_points
from .warp import KINDS, sampling_grid, transform_points, warp, warp_image

__all__ = [
    "AFFINE_IDENTITY", "KINDS", "affine_compose", "affine_grid", "affine_identity", "affine_points", "grid_to_points",
    "normalized_grid", "normalized_to_pixel", "pixel_to_normalized", "points_to_grid", "sampling_grid",
    "tps_coefficients", "tps_control_points", "tps_grid", "tps_identity", "tps_points",
    "transform_points", "warp", "warp_image",
]
