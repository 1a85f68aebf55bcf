"""CNNGeometric (one stage) and the two-stage affine -> TPS model of WeakAlign.

Inputs are RGB images in [0, 1], ``B x 3 x H x W``; each model normalises them with its
backbone's own mean/std. Stage 2 warps the *normalised* source image with the stage-1 affine
(zeros outside, i.e. the mean colour), as the reference code does.

Module names map onto the reference checkpoints (see :mod:`weakalign.models.checkpoints`)::

    feature_extraction.backbone.body.*  <->  FeatureExtraction.model.*
    regression.*                        <->  FeatureRegression.*
    regression2.*                       <->  FeatureRegression2.*
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from ..geometry import affine_compose, affine_grid, warp_image
from .backbones import build_backbone
from .correlation import FeatureCorrelation, feature_l2norm
from .regression import FeatureRegression

OUTPUT_DIM = {"affine": 6, "tps": 18}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint this suite writes."""

    backbone: str = "efficientnet_lite0"
    image_size: tuple[int, int] = (240, 240)
    kernel_sizes: tuple[int, ...] = (7, 5)
    channels: tuple[int, ...] = (128, 64)
    normalize_features: bool = True
    normalize_matches: bool = True
    batch_norm: bool = True
    tps_grid_size: int = 3
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["kernel_sizes"] = list(self.kernel_sizes)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        for key in ("image_size", "kernel_sizes", "channels"):
            if key in d:
                d[key] = tuple(d[key])
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


class FeatureExtraction(nn.Module):
    """Backbone + optional feature L2-normalisation. ``forward`` takes *normalised* images.

    ``amp`` (``none`` | ``bf16`` | ``fp16``, set by :func:`weakalign.devices.set_backbone_amp`;
    not part of the weights): the backbone alone runs under ``torch.autocast`` with that dtype
    and its output is cast back to float32 before the L2 normalisation; ``none`` runs exactly
    the float32 code."""

    #: marks the modules :func:`weakalign.devices.set_backbone_amp` switches (no import of this
    #: module there: the data stages import weakalign.devices through the params checks)
    AMP_CAPABLE = True

    def __init__(self, backbone: nn.Module, l2norm: bool = True):
        super().__init__()
        self.backbone = backbone
        self.l2norm = l2norm
        self.amp = "none"

    def normalize(self, image01: torch.Tensor) -> torch.Tensor:
        return self.backbone.normalize(image01)

    def run_backbone(self, image: torch.Tensor, backbone: nn.Module | None = None) -> torch.Tensor:
        """``(backbone or self.backbone)(image)``, under autocast when ``amp`` is set (float32 out)."""
        backbone = backbone if backbone is not None else self.backbone
        mode = getattr(self, "amp", "none")
        if mode == "none":
            return backbone(image)
        from ..devices import amp_dtype

        with torch.autocast(image.device.type, dtype=amp_dtype(mode)):
            f = backbone(image)
        return f.float()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.run_backbone(image)
        return feature_l2norm(f) if self.l2norm else f


def _feature_size(fe: FeatureExtraction, image_size) -> tuple[int, int]:
    was_training = fe.training
    fe.eval()
    try:
        p = next(fe.parameters(), None)
        with torch.no_grad():
            dummy = torch.zeros(1, 3, *image_size, device=p.device if p is not None else None)
            h, w = fe(dummy).shape[-2:]
    finally:
        fe.train(was_training)
    return int(h), int(w)


class _Base(nn.Module):
    def __init__(self, config: ModelConfig, backbone_weights: str, backbone: nn.Module | None):
        super().__init__()
        self.config = config
        bb = backbone if backbone is not None else build_backbone(config.backbone, weights=backbone_weights)
        self.feature_extraction = FeatureExtraction(bb, l2norm=config.normalize_features)
        self.correlation = FeatureCorrelation(normalize=config.normalize_matches)
        self.feature_size = _feature_size(self.feature_extraction, config.image_size)

    def _regressor(self, kind: str) -> FeatureRegression:
        c = self.config
        return FeatureRegression(OUTPUT_DIM[kind], self.feature_size, kernel_sizes=c.kernel_sizes, channels=c.channels, batch_norm=c.batch_norm)

    def _check_input(self, image: torch.Tensor, name: str) -> None:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"{name} must be B x 3 x H x W RGB in [0, 1], got shape {tuple(image.shape)}")
        if tuple(image.shape[-2:]) != tuple(self.config.image_size):
            raise ValueError(
                f"{name} is {tuple(image.shape[-2:])} but the model was built for "
                f"{tuple(self.config.image_size)}: resize the images first (weakalign.data)"
            )

    def extract(self, image01: torch.Tensor) -> torch.Tensor:
        """L2-normalised features of [0, 1] images (cacheable per image)."""
        self._check_input(image01, "image")
        return self.feature_extraction(self.feature_extraction.normalize(image01))


class CNNGeometric(_Base):
    """One-stage model: ``theta = regression(correlation(f(source), f(target)))``."""

    def __init__(self, geometric_model: str = "affine", config: ModelConfig | None = None, backbone_weights: str = "imagenet", backbone: nn.Module | None = None):
        if geometric_model not in OUTPUT_DIM:
            raise ValueError(f"geometric_model must be one of {sorted(OUTPUT_DIM)}, got {geometric_model!r}")
        super().__init__(config or ModelConfig(), backbone_weights, backbone)
        self.geometric_model = geometric_model
        self.regression = self._regressor(geometric_model)

    def forward_features(self, f_src: torch.Tensor, f_tgt: torch.Tensor):
        corr = self.correlation(f_src, f_tgt)
        return self.regression(corr), corr

    def forward(self, source: torch.Tensor, target: torch.Tensor, return_correlation: bool = False):
        self._check_input(source, "source")
        theta, corr = self.forward_features(self.extract(source), self.extract(target))
        return (theta, corr) if return_correlation else theta


class TwoStageOutput(NamedTuple):
    theta_aff: torch.Tensor  # B x 6, target -> source
    theta_aff_tps: torch.Tensor  # B x 18, target -> affine-warped source
    corr_aff: torch.Tensor  # stage-1 correlation (source vs target)
    corr_aff_tps: torch.Tensor  # stage-2 correlation (affine-warped source vs target)


class TwoStageCNNGeometric(_Base):
    """Affine stage, then a TPS stage on the affine-warped source (WeakAlign's model).

    ``affine_refinements`` (default 0, the paper's model): an evaluation-time option of this
    project, not in the paper or the reference code. Each refinement warps the source with the
    current affine estimate, runs the affine stage again between the warped source and the target
    and composes the two (:func:`weakalign.geometry.affine_compose`); the TPS stage then works on
    the source warped by the refined affine. It is not a model weight and is not saved in
    checkpoints: the evaluation sets it from a model spec (``affine_refinements: N``)."""

    geometric_model = "affine_tps"
    affine_refinements: int = 0

    def __init__(self, config: ModelConfig | None = None, backbone_weights: str = "imagenet", backbone: nn.Module | None = None):
        super().__init__(config or ModelConfig(), backbone_weights, backbone)
        self.regression = self._regressor("affine")
        self.regression2 = self._regressor("tps")

    def forward(self, source: torch.Tensor, target: torch.Tensor, f_src: torch.Tensor | None = None, f_tgt: torch.Tensor | None = None,
                theta_aff: torch.Tensor | None = None, stage2_features=None) -> TwoStageOutput:
        """Run both stages. ``f_src``/``f_tgt`` may be precomputed features of the same images;
        ``theta_aff`` replaces the stage-1 estimate for the warp (e.g. ground truth);
        ``stage2_features`` (a callable on the *normalised* warped source) replaces
        ``self.feature_extraction`` for the stage-2 features (e.g. a faster frozen copy run
        without gradient: then no gradient reaches ``theta_aff`` through the warped image)."""
        self._check_input(source, "source")
        src_n = self.feature_extraction.normalize(source)
        if f_src is None:
            f_src = self.feature_extraction(src_n)
        if f_tgt is None:
            self._check_input(target, "target")
            f_tgt = self.feature_extraction(self.feature_extraction.normalize(target))
        corr1 = self.correlation(f_src, f_tgt)
        theta1 = self.regression(corr1)
        h, w = src_n.shape[-2:]
        if theta_aff is None:
            for _ in range(int(self.affine_refinements)):
                src_ref = warp_image(src_n, affine_grid(theta1, h, w))
                delta = self.regression(self.correlation((stage2_features or self.feature_extraction)(src_ref), f_tgt))
                theta1 = affine_compose(theta1, delta)
        warp_theta = theta1 if theta_aff is None else theta_aff
        src_wrp = warp_image(src_n, affine_grid(warp_theta, h, w))
        corr2 = self.correlation((stage2_features or self.feature_extraction)(src_wrp), f_tgt)
        theta2 = self.regression2(corr2)
        return TwoStageOutput(theta1, theta2, corr1, corr2)

    @classmethod
    def from_stages(cls, affine: CNNGeometric, tps: CNNGeometric) -> "TwoStageCNNGeometric":
        """Assemble from strong one-stage models (backbone taken from the affine model)."""
        if affine.geometric_model != "affine" or tps.geometric_model != "tps":
            raise ValueError("from_stages expects an affine model and a TPS model")
        if affine.config.to_dict() != tps.config.to_dict():
            raise ValueError(f"stage configs differ: {affine.config} vs {tps.config}")
        model = cls(affine.config, backbone=copy.deepcopy(affine.feature_extraction.backbone))
        model.regression.load_state_dict(affine.regression.state_dict())
        model.regression2.load_state_dict(tps.regression.state_dict())
        return model


def build_model(geometric_model: str, config: ModelConfig | None = None, backbone_weights: str = "imagenet", backbone: nn.Module | None = None) -> nn.Module:
    """``"affine"`` / ``"tps"`` -> :class:`CNNGeometric`; ``"affine_tps"`` -> :class:`TwoStageCNNGeometric`."""
    if geometric_model == "affine_tps":
        return TwoStageCNNGeometric(config, backbone_weights, backbone)
    return CNNGeometric(geometric_model, config, backbone_weights, backbone)
