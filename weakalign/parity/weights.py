"""Seeded random weights written in the ORIGINAL checkpoint format (``.pth.tar``).

Both implementations load the same file: the original through its own loading code
(``eval.py``, ``ImMatchNet(checkpoint=...)``), this project through
:func:`weakalign.models.checkpoints.load_checkpoint` / :func:`weakalign.ncnet.load_ncnet_checkpoint`
(so the key mapping is part of what is compared).

Random, but not degenerate: BatchNorm statistics and affine parameters are drawn away from
their defaults (so eval-mode BatchNorm is exercised), and the regression heads are scaled so
that theta = identity + a perturbation of a few tenths (so keypoints land inside the images and
PCK is neither 0 nor 1 everywhere).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from ..geometry import affine_identity, tps_identity
from ..models.checkpoints import _atomic_torch_save

#: our module prefix -> the original's (inverse of weakalign.models.checkpoints.map_reference_keys)
_TO_REFERENCE = (("feature_extraction.backbone.body.", "FeatureExtraction.model."),
                 ("regression2.", "FeatureRegression2."), ("regression.", "FeatureRegression."))
_CNN_NAME = {"resnet101": "resnet101", "vgg16": "vgg"}


def to_reference_state_dict(model: nn.Module) -> dict:
    """A CNNGeometric / WeakAlign model's weights under the original's key names."""
    out = {}
    for key, value in model.state_dict().items():
        for ours, theirs in _TO_REFERENCE:
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value.detach().clone()
                break
        else:
            raise ValueError(f"no original name for {key!r}")
    return out


def _randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=gen))


def _near_identity(linear: nn.Linear, identity: torch.Tensor, gen: torch.Generator, spread: float) -> None:
    linear.weight.data.mul_(spread)
    linear.bias.data.copy_(identity.view(-1) + 0.05 * torch.randn(identity.numel(), generator=gen))


def random_cnngeometric(backbone: str = "resnet101", seed: int = 0, image_size: int = 240) -> nn.Module:
    """A seeded two-stage (affine + TPS) model with random weights (see module docstring)."""
    from ..models.cnngeometric import ModelConfig, build_model

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = build_model("affine_tps", ModelConfig(backbone=backbone, image_size=(image_size, image_size)), backbone_weights="random")
    with torch.no_grad():
        _randomize_batchnorm(model, gen)
        _near_identity(model.regression.linear, affine_identity(1), gen, 0.5)
        _near_identity(model.regression2.linear, tps_identity(1), gen, 0.5)
    return model.eval()


def write_cnngeometric_checkpoint(path: str | os.PathLike, backbone: str = "resnet101", seed: int = 0, image_size: int = 240) -> Path:
    """Write a seeded random two-stage model as the original's ``.pth.tar`` (``state_dict`` +
    the training ``args`` Namespace it pickles) and return the path."""
    model = random_cnngeometric(backbone, seed, image_size)
    args = argparse.Namespace(feature_extraction_cnn=_CNN_NAME[backbone], fr_kernel_sizes=[7, 5], fr_channels=[128, 64],
                              image_size=image_size, geometric_model="affine_tps")
    path = Path(path)
    _atomic_torch_save({"state_dict": to_reference_state_dict(model), "args": args, "epoch": 0}, path)
    return path


def random_ncnet(seed: int = 0, image_size: int = 240) -> nn.Module:
    """A seeded NCNet (ResNet-101 layer3 + 3 consensus layers) with random weights."""
    from ..ncnet import NCNetConfig, build_ncnet

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = build_ncnet(NCNetConfig(backbone="resnet101", image_size=(image_size, image_size), kernel_sizes=(3, 3, 3),
                                    channels=(10, 10, 1)), backbone_weights="random")  # the original's defaults
    with torch.no_grad():
        _randomize_batchnorm(model, gen)
    return model.eval()


def write_ncnet_checkpoint(path: str | os.PathLike, seed: int = 0, image_size: int = 240) -> Path:
    """Write a seeded random NCNet in the original ncnet ``.pth.tar`` format."""
    from ..ncnet import reference_checkpoint

    path = Path(path)
    _atomic_torch_save(reference_checkpoint(random_ncnet(seed, image_size), image_size), path)
    return path
