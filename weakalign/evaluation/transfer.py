"""Keypoint transfer: target-image pixels -> source-image pixels through an estimated transform."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..geometry import normalized_to_pixel, pixel_to_normalized, transform_points
from .pck import from_frame, to_frame


def transfer_in_frame(
    transfer: Callable[[torch.Tensor, object, object], torch.Tensor],
    target_points: torch.Tensor,
    target_size,
    source_size,
    frame: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Run ``transfer(points, target_size, source_size)`` (pixels in, pixels out) in ``frame``.

    ``frame=None``: in the original images. ``frame=(h, w)`` (the PF-PASCAL protocol,
    :data:`weakalign.evaluation.pck.FRAME_224`): the original code's order of operations --
    the target keypoints are first rescaled per axis into the frame (``x * 224 / w``,
    :func:`~weakalign.evaluation.pck.to_frame`), transferred there with both image sizes set to
    the frame, and the result is expressed back in source pixels (``x' * w / 224``) so that
    every prediction cache holds source pixels. Sizes are (h, w) or ``B x 2``.
    """
    if frame is None:
        return transfer(target_points, target_size, source_size)
    fh, fw = int(frame[0]), int(frame[1])
    moved = transfer(to_frame(target_points, target_size, (fh, fw)), (fh, fw), (fh, fw))
    return from_frame(moved, source_size, (fh, fw))


def transfer_keypoints(
    kind: str,
    target_points: torch.Tensor,
    target_size,
    source_size,
    theta_aff: torch.Tensor | None = None,
    theta_tps: torch.Tensor | None = None,
    origin: float = 1.0,
    tps_reg_factor: float = 0.0,
    frame: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Transfer ``B x 2 x N`` target keypoints (pixels, ``origin``-based) into the source image.

    The images may have any size: the transform works in normalised coordinates, so
    ``target_size`` and ``source_size`` ((h, w) or ``B x 2``) are the *original* image sizes.
    ``frame``: where the transfer is made (:func:`transfer_in_frame`; ``FRAME_224`` for the
    PF-PASCAL protocol). The result is in source pixels either way.
    Padded keypoints (-1) come out as garbage and must be excluded by the PCK's validity mask.
    """

    def move(points, t_size, s_size):
        p = pixel_to_normalized(points, t_size, origin)
        q = transform_points(kind, p, theta_aff, theta_tps, tps_reg_factor=tps_reg_factor)
        return normalized_to_pixel(q, s_size, origin)

    return transfer_in_frame(move, target_points, target_size, source_size, frame)
