"""Losses: strong transformed-grid loss and weak soft-inlier count."""

from .grid_loss import TransformedGridLoss
from .inlier import REFERENCE_OFFSET_FACTOR, SoftInlierCount, TwoStageInlierScore, identity_mask

__all__ = ["REFERENCE_OFFSET_FACTOR", "SoftInlierCount", "TransformedGridLoss", "TwoStageInlierScore", "identity_mask"]
