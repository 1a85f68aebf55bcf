"""NCNet (the reference's ``ImMatchNet``): backbone -> L2 norm -> 4D correlation ->
mutual matching -> neighbourhood consensus -> mutual matching.

Inputs are RGB images in [0, 1], ``B x 3 x H x W`` (any size; the default configuration uses
240 x 240, i.e. 15 x 15 features at stride 16); the model normalises them with its backbone's
mean/std, like every model of this suite. Image A is the **source**, image B the **target**;
the output is the filtered correlation ``B x 1 x hA x wA x hB x wB``
(:mod:`weakalign.ncnet.correlation`).

The backbone comes from the suite's registry (:func:`weakalign.models.backbones.build_backbone`,
wrapped in the same :class:`~weakalign.models.cnngeometric.FeatureExtraction`), so its weights
and cached features are interchangeable with CNNGeometric's. It is **frozen** (no gradients,
eval mode), as in the reference (``train_fe=False``, ``fe_finetune_params 0``);
:meth:`NCNet.set_finetune` unfreezes the last blocks, the reference's ``--fe_finetune_params``.

Module names and the reference checkpoint keys (:mod:`weakalign.ncnet.checkpoints`)::

    feature_extraction.backbone.body.*   <->  FeatureExtraction.model.*
    neigh_consensus.convs.<i>.weight     <->  NeighConsensus.conv.<2i>.weight (pre-permuted)
    neigh_consensus.convs.<i>.bias       <->  NeighConsensus.conv.<2i>.bias
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..models.backbones import build_backbone
from ..models.cnngeometric import FeatureExtraction
from .consensus import NeighConsensus
from .correlation import correlation_4d, mutual_matching


@dataclass
class NCNetConfig:
    """Everything needed to rebuild an :class:`NCNet`; stored in its checkpoints."""

    backbone: str = "efficientnet_lite0"
    image_size: tuple[int, int] = (240, 240)
    kernel_sizes: tuple[int, ...] = (3, 3, 3)
    channels: tuple[int, ...] = (16, 16, 1)
    symmetric: bool = True
    normalize_features: bool = True
    conv4d_impl: str = "auto"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("image_size", "kernel_sizes", "channels"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NCNetConfig":
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown NCNet config keys: {sorted(unknown)}")
        for key in ("image_size", "kernel_sizes", "channels"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


class NCNet(nn.Module):
    """Neighbourhood Consensus Network (Rocco et al., NeurIPS 2018)."""

    geometric_model = "ncnet"  # the checkpoint's model kind (weakalign.models.checkpoints layout)

    def __init__(self, config: NCNetConfig | None = None, backbone_weights: str = "imagenet", backbone: nn.Module | None = None):
        super().__init__()
        self.config = config or NCNetConfig()
        c = self.config
        bb = backbone if backbone is not None else build_backbone(c.backbone, weights=backbone_weights)
        self.feature_extraction = FeatureExtraction(bb, l2norm=c.normalize_features)
        self.neigh_consensus = NeighConsensus(c.kernel_sizes, c.channels, symmetric=c.symmetric, impl=c.conv4d_impl)
        self.set_finetune(0)

    # -- backbone ---------------------------------------------------------------------------

    def set_finetune(self, last_blocks: int = 0) -> list[str]:
        """Freeze the backbone except its last ``last_blocks`` blocks (ResNet: bottlenecks,
        EfficientNet: inverted-residual blocks; the reference's ``fe_finetune_params``).
        Returns a short description of what trains."""
        from ..training.weak import unfreeze_last_blocks

        for p in self.feature_extraction.parameters():
            p.requires_grad_(False)
        desc = ["neigh_consensus"]
        if last_blocks:
            n = unfreeze_last_blocks(self.feature_extraction.backbone, last_blocks)
            desc.append(f"last {n} backbone block(s)")
        return desc

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.feature_extraction.parameters())

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but the backbone stays in eval mode (BatchNorm statistics are
        never updated; the reference calls ``FeatureExtraction.eval()`` once, before training)."""
        super().train(mode)
        self.feature_extraction.eval()
        return self

    def feature_size(self, image_size=None) -> tuple[int, int]:
        """Feature-map size (h, w) for images of ``image_size`` (default: the config's)."""
        size = tuple(image_size or self.config.image_size)
        p = next(self.feature_extraction.parameters(), None)
        with torch.no_grad():
            dummy = torch.zeros(1, 3, *size, device=p.device if p is not None else None)
            h, w = self.feature_extraction(self.feature_extraction.normalize(dummy)).shape[-2:]
        return int(h), int(w)

    @staticmethod
    def _check_image(image: torch.Tensor, name: str) -> None:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"{name} must be B x 3 x H x W RGB in [0, 1], got shape {tuple(image.shape)}")

    def extract(self, image01: torch.Tensor) -> torch.Tensor:
        """L2-normalised features ``B x C x h x w`` of [0, 1] images (cacheable per image)."""
        self._check_image(image01, "image")
        return self.feature_extraction(self.feature_extraction.normalize(image01))

    # -- matching ---------------------------------------------------------------------------

    def forward_features(self, feature_a: torch.Tensor, feature_b: torch.Tensor) -> torch.Tensor:
        """Filtered correlation ``B x 1 x hA x wA x hB x wB`` from (cached) features."""
        corr = correlation_4d(feature_a, feature_b)
        corr = mutual_matching(corr)
        corr = self.neigh_consensus(corr)
        return mutual_matching(corr)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``source`` (A) and ``target`` (B): ``B x 3 x H x W`` RGB in [0, 1]."""
        self._check_image(source, "source")
        self._check_image(target, "target")
        if source.shape[0] != target.shape[0]:
            raise ValueError(f"source and target batch sizes differ: {source.shape[0]} vs {target.shape[0]}")
        return self.forward_features(self.extract(source), self.extract(target))


def build_ncnet(config: NCNetConfig | dict | None = None, backbone_weights: str = "imagenet", backbone: nn.Module | None = None) -> NCNet:
    """An :class:`NCNet` from a config (dataclass or dict)."""
    if isinstance(config, dict):
        config = NCNetConfig.from_dict(config)
    return NCNet(config, backbone_weights=backbone_weights, backbone=backbone)
