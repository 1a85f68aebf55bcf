"""The 4D correlation tensor of NCNet and its soft mutual nearest-neighbour filtering.

Layout (the reference's ``FeatureCorrelation(shape='4D')``)::

    corr[b, 0, yA, xA, yB, xB] = <fA[b, :, yA, xA], fB[b, :, yB, xB]>

``B x 1 x hA x wA x hB x wB``: image A (the **source**) and image B (the **target**) each keep
their own two spatial axes, rows before columns. (The 3D correlation of
:mod:`weakalign.models.correlation` used by CNNGeometric instead flattens A column-major into
channels.) Features are L2-normalised by the model before the correlation, so scores are
cosine similarities in [-1, 1]; unlike CNNGeometric's correlation no ReLU / L2-normalisation of
the scores follows (the reference builds ``FeatureCorrelation(shape='4D', normalization=False)``).
"""

from __future__ import annotations

import torch

MUTUAL_EPS = 1e-5  # the reference's eps in MutualMatching


def check_corr4d(corr: torch.Tensor, name: str = "correlation") -> None:
    """Raise ``ValueError`` unless ``corr`` is ``B x 1 x hA x wA x hB x wB``."""
    if corr.dim() != 6 or corr.shape[1] != 1:
        raise ValueError(f"{name} must be B x 1 x hA x wA x hB x wB, got shape {tuple(corr.shape)}")


def correlation_4d(feature_a: torch.Tensor, feature_b: torch.Tensor) -> torch.Tensor:
    """``B x C x hA x wA`` and ``B x C x hB x wB`` features -> ``B x 1 x hA x wA x hB x wB``."""
    if feature_a.dim() != 4 or feature_b.dim() != 4:
        raise ValueError(f"features must be B x C x h x w, got shapes {tuple(feature_a.shape)} and {tuple(feature_b.shape)}")
    b, c, ha, wa = feature_a.shape
    bb, cb, hb, wb = feature_b.shape
    if (b, c) != (bb, cb):
        raise ValueError(f"features disagree in batch size or channels: {tuple(feature_a.shape)} vs {tuple(feature_b.shape)}")
    scores = torch.bmm(feature_a.reshape(b, c, ha * wa).transpose(1, 2), feature_b.reshape(b, c, hb * wb))
    return scores.view(b, 1, ha, wa, hb, wb)


def swap_ab(corr: torch.Tensor) -> torch.Tensor:
    """Exchange the roles of the two images: ``B x 1 x hA x wA x hB x wB`` -> ``B x 1 x hB x wB x hA x wA``."""
    check_corr4d(corr)
    return corr.permute(0, 1, 4, 5, 2, 3)


def mutual_matching(corr: torch.Tensor, eps: float = MUTUAL_EPS) -> torch.Tensor:
    """Soft mutual nearest-neighbour filtering (the reference's ``MutualMatching``)::

        out = corr * (corr / (max over A positions + eps)) * (corr / (max over B positions + eps))

    A match that is the best for both of its cells keeps its score up to the ``eps`` factor
    (``(c / (c + eps))**2``); others are scaled down by both ratios. The product is symmetric:
    ``mutual_matching(swap_ab(c)) == swap_ab(mutual_matching(c))`` exactly.
    """
    check_corr4d(corr)
    max_over_a = corr.amax(dim=(2, 3), keepdim=True)  # best A cell for each B cell
    max_over_b = corr.amax(dim=(4, 5), keepdim=True)  # best B cell for each A cell
    return corr * ((corr / (max_over_a + eps)) * (corr / (max_over_b + eps)))
