"""Matches from an NCNet correlation tensor, and keypoint transfer.

Coordinates follow ``docs/conventions.md``: normalised with ``align_corners=True`` semantics,
points ``B x 2 x N`` with row 0 = x, row 1 = y. The centre of feature cell ``(y, x)`` of an
``h x w`` map is at ``(linspace(-1, 1, w)[x], linspace(-1, 1, h)[y])`` (the reference's
``corr_to_matches(scale='centered')``): the first and last cells sit on the image's first and
last pixel centres.

Directions (A = source, B = target):

``"target_to_source"`` (B -> A, the reference's default): for every target cell, its best
    source cell. This is what keypoint transfer uses: the evaluation convention of this suite
    is *target keypoints expressed in source pixels* (``weakalign.evaluation.transfer``).
``"source_to_target"`` (A -> B, the reference's ``invert_matching_direction=True``): for every
    source cell, its best target cell.

Scores: with ``softmax=True`` (the reference's evaluation: ``corr_to_matches(do_softmax=True)``)
the scores of each cell's candidate matches are softmax-normalised first and the score of a
match is its softmax probability; otherwise the raw filtered correlation value.

Positions: ``method="argmax"`` (reference) takes the best candidate's cell centre;
``method="soft_argmax"`` the expected position under ``softmax(beta * scores)`` over the
candidates (sub-cell precision; ``beta`` sets the sharpness).

Keypoint transfer (:func:`transfer_points`) interpolates this target -> source *match field*
at the keypoints. ``interpolation="bilinear"`` is the reference's PF-PASCAL evaluation
(``eval_pf_pascal.py`` -> ``pck_metric`` -> ``bilinearInterpPointTnf``): the source positions
matched to the four target cells around a keypoint, weighted bilinearly. Here it is computed by
``grid_sample`` on the field (``align_corners=True``), which gives the same weights; points
outside the outermost cell centres use the border cells' matches (the reference indexes past
the grid there). ``interpolation="nearest"`` is the reference's ``nearestNeighPointTnf``: the
match of the nearest target cell centre.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..geometry import normalized_to_pixel, pixel_to_normalized
from .correlation import check_corr4d

DIRECTIONS = ("target_to_source", "source_to_target")
METHODS = ("argmax", "soft_argmax")
INTERPOLATIONS = ("bilinear", "nearest")


class Matches(NamedTuple):
    """One match per cell of the *query* image (``B x N`` each, ``N = h_q * w_q`` row-major).

    ``query_xy`` / ``match_xy``: ``B x 2 x N`` normalised positions in the query image and in
    the other image. For ``target_to_source`` the query is the target (B), matches lie in the
    source (A). ``index``: ``B x N`` row-major index of the best cell in the other image.
    """

    query_xy: torch.Tensor
    match_xy: torch.Tensor
    score: torch.Tensor
    index: torch.Tensor
    direction: str


def cell_centres(h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``2 x (h*w)`` normalised centres of an ``h x w`` cell grid, row-major (x first row)."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx.reshape(-1), gy.reshape(-1)))


def _candidates(corr: torch.Tensor, direction: str) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """``B x N_query x N_other`` scores, query grid (h, w), other grid (h, w)."""
    check_corr4d(corr)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    b, _, ha, wa, hb, wb = corr.shape
    flat = corr.reshape(b, ha * wa, hb * wb)  # [b, A cell, B cell]
    if direction == "target_to_source":
        return flat.transpose(1, 2), (hb, wb), (ha, wa)
    return flat, (ha, wa), (hb, wb)


def corr_to_matches(corr: torch.Tensor, direction: str = "target_to_source", softmax: bool = True,
                    method: str = "argmax", beta: float = 1.0) -> Matches:
    """Best match of every query cell (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    scores, (hq, wq), (ho, wo) = _candidates(corr, direction)
    probs = torch.softmax(scores, dim=2) if softmax else scores
    score, index = probs.max(dim=2)
    other = cell_centres(ho, wo, scores.dtype, scores.device)
    if method == "argmax":
        match = other[:, index].permute(1, 0, 2)  # B x 2 x N
    else:
        weights = torch.softmax(float(beta) * scores, dim=2)  # B x Nq x No
        match = torch.einsum("bqo,co->bcq", weights, other)
    query = cell_centres(hq, wq, scores.dtype, scores.device).unsqueeze(0).expand(scores.shape[0], 2, hq * wq)
    return Matches(query, match, score, index, direction)


def match_field(corr: torch.Tensor, direction: str = "target_to_source", softmax: bool = True,
                method: str = "argmax", beta: float = 1.0) -> torch.Tensor:
    """Matches as a dense field ``B x 2 x h_q x w_q``: for every query cell, the normalised
    position (x, y) of its match in the other image."""
    m = corr_to_matches(corr, direction, softmax, method, beta)
    b, _, ha, wa, hb, wb = corr.shape
    hq, wq = (hb, wb) if direction == "target_to_source" else (ha, wa)
    return m.match_xy.reshape(b, 2, hq, wq)


def _check_points(points: torch.Tensor, batch: int) -> None:
    if points.dim() != 3 or points.shape[1] != 2:
        raise ValueError(f"points must be B x 2 x N (row 0 = x, row 1 = y), got shape {tuple(points.shape)}")
    if points.shape[0] != batch:
        raise ValueError(f"points have batch size {points.shape[0]}, the correlation {batch}")


def sample_field(field: torch.Tensor, points: torch.Tensor, interpolation: str = "bilinear") -> torch.Tensor:
    """Values of a ``B x 2 x h x w`` field at ``B x 2 x N`` normalised points -> ``B x 2 x N``."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    _check_points(points, field.shape[0])
    h, w = field.shape[-2:]
    pts = points.to(field.dtype)
    if interpolation == "nearest":
        # nearest cell centre; (p + 1) / 2 * (L - 1) is the cell coordinate of p
        col = ((pts[:, 0] + 1) * 0.5 * (w - 1)).round().clamp(0, w - 1).long()
        row = ((pts[:, 1] + 1) * 0.5 * (h - 1)).round().clamp(0, h - 1).long()
        idx = (row * w + col).unsqueeze(1).expand(-1, 2, -1)
        return field.reshape(field.shape[0], 2, h * w).gather(2, idx)
    pts = pts.clamp(-1.0, 1.0)  # outside the outermost centres: the border cells' matches
    grid = pts.transpose(1, 2).unsqueeze(2)  # B x N x 1 x 2
    out = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[..., 0]


def transfer_points(corr: torch.Tensor, points: torch.Tensor, direction: str = "target_to_source",
                    interpolation: str = "bilinear", softmax: bool = True, method: str = "argmax",
                    beta: float = 1.0) -> torch.Tensor:
    """Transfer normalised ``B x 2 x N`` points of the query image into the other image.

    Default: target points -> source positions (what PCK needs), with the reference's
    evaluation settings (softmax scores, argmax, bilinear interpolation)."""
    check_corr4d(corr)
    _check_points(points, corr.shape[0])
    field = match_field(corr, direction, softmax, method, beta)
    return sample_field(field, points, interpolation)


def transfer_keypoints_ncnet(corr: torch.Tensor, target_points: torch.Tensor, target_size, source_size,
                             origin: float = 1.0, interpolation: str = "bilinear", method: str = "argmax",
                             beta: float = 1.0, frame: tuple[int, int] | None = None) -> torch.Tensor:
    """Target keypoints in target pixels (``B x 2 x N``, ``origin``-based, of the *original*
    image sizes (h, w) or ``B x 2``) -> their positions in source pixels.

    The same convention as :func:`weakalign.evaluation.transfer.transfer_keypoints`, including
    ``frame`` (``FRAME_224`` = the PF-PASCAL protocol of the reference's ``eval_pf_pascal.py``:
    keypoints rescaled to 224 x 224 first and transferred with image size 224); padded
    keypoints (-1) come out as garbage and are excluded by the PCK's validity mask."""
    from ..evaluation.transfer import transfer_in_frame

    def move(points, t_size, s_size):
        p = pixel_to_normalized(points, t_size, origin)
        q = transfer_points(corr, p, "target_to_source", interpolation, True, method, beta)
        return normalized_to_pixel(q, s_size, origin)

    return transfer_in_frame(move, target_points.to(corr.dtype), target_size, source_size, frame)
