"""Evaluation metrics and their protocols."""

from .transfer import transfer_keypoints
from .pck import PCKProtocol, PCKResult, normalized_errors, pck, pck_from_errors, valid_keypoints

__all__ = ["PCKProtocol", "PCKResult", "normalized_errors", "pck", "pck_from_errors", "transfer_keypoints", "valid_keypoints"]
