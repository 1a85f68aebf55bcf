"""Feature L2-normalisation and the correlation layer.

Layout (identical to the reference code, so released regressors apply unchanged):
``corr[b, k, yB, xB] = <fA[b, :, yA, xA], fB[b, :, yB, xB]>`` with ``k = xA * hA + yA``:
**source** (A) positions are the channels, enumerated column-major (x slowest), and **target**
(B) positions are the spatial grid. With ``normalize=True`` the scores go through ReLU and are
then L2-normalised over the channel dimension (each target position's match vector has unit norm).
"""

from __future__ import annotations

import torch
from torch import nn


def feature_l2norm(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Divide by ``sqrt(sum_c f_c^2 + eps)`` along dim 1 (the reference's ``featureL2Norm``)."""
    return features / torch.sqrt((features * features).sum(1, keepdim=True) + eps)


def correlation_channel_index(x: int, y: int, h: int) -> int:
    """Channel of source position (x, y) in a correlation tensor with source height ``h``."""
    return x * h + y


class FeatureCorrelation(nn.Module):
    """``B x C x hA x wA`` and ``B x C x hB x wB`` features -> ``B x (hA*wA) x hB x wB`` scores."""

    def __init__(self, normalize: bool = True):
        super().__init__()
        self.normalize = normalize

    def forward(self, feature_a: torch.Tensor, feature_b: torch.Tensor) -> torch.Tensor:
        b, c, ha, wa = feature_a.shape
        _, cb, hb, wb = feature_b.shape
        if c != cb:
            raise ValueError(f"feature channels differ: {c} vs {cb}")
        fa = feature_a.transpose(2, 3).reshape(b, c, ha * wa)  # column-major source positions
        fb = feature_b.reshape(b, c, hb * wb)
        corr = torch.bmm(fa.transpose(1, 2), fb).view(b, ha * wa, hb, wb)
        if self.normalize:
            corr = feature_l2norm(torch.relu(corr))
        return corr
