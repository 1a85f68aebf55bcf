"""Models: backbones, correlation, regression heads, CNNGeometric / two-stage models, checkpoints."""

from .backbones import build_backbone, list_backbones
from .checkpoints import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    load_checkpoint,
    model_from_reference,
    safe_load,
    save_checkpoint,
)
from .cnngeometric import CNNGeometric, ModelConfig, TwoStageCNNGeometric, TwoStageOutput, build_model
from .correlation import FeatureCorrelation, feature_l2norm
from .regression import FeatureRegression

__all__ = [
    "CNNGeometric", "CheckpointFormatError", "FeatureCorrelation", "FeatureRegression", "ModelConfig",
    "TwoStageCNNGeometric", "TwoStageOutput", "UnsafeCheckpointError", "build_backbone", "build_model",
    "feature_l2norm", "list_backbones", "load_checkpoint", "model_from_reference", "safe_load", "save_checkpoint",
]
