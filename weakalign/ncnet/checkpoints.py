"""NCNet checkpoints: this suite's format and the released reference ``.pth.tar`` files.

**Suite format** (written by ``weakalign train-ncnet``): the layout of
:func:`weakalign.models.checkpoints.save_checkpoint` -- ``format``
(``weakalign-checkpoint/1``), ``geometric_model`` = ``"ncnet"``, ``config``
(:class:`~weakalign.ncnet.model.NCNetConfig` as a dict), ``state_dict``, ``meta`` -- read back
by :func:`load_ncnet_checkpoint`. (:func:`weakalign.models.load_checkpoint` only knows the
CNNGeometric kinds.)

**Reference format** (ignacio-rocco/ncnet: ``ncnet_pfpascal.pth.tar``, ``ncnet_ivd.pth.tar``):
``{"state_dict", "args", ...}`` with ``args.ncons_kernel_sizes`` / ``args.ncons_channels`` and
keys::

    FeatureExtraction.model.<i>.*     (older files: FeatureExtraction.vgg.<i>.*)
                                      -> feature_extraction.backbone.body.<i>.*
    NeighConsensus.conv.<2i>.weight   -> neigh_consensus.convs.<i>.weight
    NeighConsensus.conv.<2i>.bias     -> neigh_consensus.convs.<i>.bias

(``conv.<odd>`` are the parameter-free ReLUs.) The reference ``Conv4d`` keeps its filters
*pre-permuted* for its slicing loop: a reference weight is ``k1 x C_out x C_in x k2 x k3 x k4``
and becomes ``weight.permute(1, 2, 0, 3, 4, 5)`` here (``C_out x C_in x k1 x k2 x k3 x k4``).
The backbone is ResNet-101 up to ``layer3`` unless ``args.feature_extraction_cnn`` says
otherwise (the reference ``train.py`` never changes it); the input size is ``args.image_size``
(reference default 400). The InLoc-only options (``relocalization_k_size``, half precision)
are not supported.

All loading goes through :func:`weakalign.models.checkpoints.safe_load` (restricted unpickler).
"""

from __future__ import annotations

import argparse
import os
import re

import torch

from ..models.backbones import list_backbones
from ..models.checkpoints import FORMAT, CheckpointFormatError, load_reference_file, reference_backbone_key, safe_load, save_checkpoint
from .model import NCNet, NCNetConfig

REFERENCE_BACKBONES = {"resnet101": "resnet101", "vgg": "vgg16", "vgg16": "vgg16"}
REFERENCE_IMAGE_SIZE = 400  # train.py / eval_pf_pascal.py --image_size default
_NC_KEY = re.compile(r"NeighConsensus\.conv\.(\d+)\.(weight|bias)")


def save_ncnet_checkpoint(path: str | os.PathLike, model: NCNet, meta: dict | None = None, **extra) -> None:
    """Write ``model`` in the suite format, atomically (see the module docstring)."""
    if getattr(model, "geometric_model", None) != "ncnet":
        raise TypeError(f"save_ncnet_checkpoint expects an NCNet, got {type(model).__name__}")
    save_checkpoint(path, model, meta=meta, **extra)


def is_reference_ncnet(state_dict: dict) -> bool:
    return any(k.startswith("NeighConsensus.") for k in state_dict)


def load_ncnet_checkpoint(path_or_ckpt, map_location="cpu", backbone_factory=None) -> tuple[NCNet, dict]:
    """``(model, checkpoint dict)`` from a suite NCNet checkpoint or a reference ``.pth.tar``
    (path or already-loaded dict); the model is in eval mode. ``backbone_factory()`` replaces
    building the backbone from the registry (tests)."""
    if isinstance(path_or_ckpt, dict):
        ckpt, source = path_or_ckpt, "checkpoint"
    else:
        source = str(path_or_ckpt)
        ckpt = safe_load(path_or_ckpt, map_location)
    if ckpt.get("format") == FORMAT:
        if ckpt.get("geometric_model") != "ncnet":
            raise CheckpointFormatError(f"{source}: holds a {ckpt.get('geometric_model')!r} model, not an NCNet "
                                        "(load it with weakalign.models.load_checkpoint)")
        try:
            config = NCNetConfig.from_dict(ckpt["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"{source}: bad NCNet config: {exc}") from exc
        model = NCNet(config, backbone_weights="random", backbone=backbone_factory() if backbone_factory else None)
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise CheckpointFormatError(f"{source}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    elif isinstance(ckpt.get("state_dict"), dict) and is_reference_ncnet(ckpt["state_dict"]):
        model = ncnet_from_reference(ckpt, source=source, backbone_factory=backbone_factory)
    else:
        raise CheckpointFormatError(f"{source}: neither a weakalign NCNet checkpoint nor a reference NCNet .pth.tar "
                                    f"(keys: {sorted(ckpt)[:8]})")
    return model.eval(), ckpt


# --- reference files ---------------------------------------------------------------------------

def _args(ckpt: dict) -> dict:
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}


def _consensus_layers(state_dict: dict, source: str) -> list[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """``[(reference index, weight, bias)]`` of the consensus convolutions, in order."""
    found: dict[int, dict] = {}
    for key, value in state_dict.items():
        m = _NC_KEY.fullmatch(key)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = value
        elif key.startswith("NeighConsensus."):
            raise CheckpointFormatError(f"{source}: unexpected consensus key {key!r}")
    idx = sorted(found)
    if not idx or idx != list(range(0, 2 * len(idx), 2)):
        raise CheckpointFormatError(f"{source}: consensus convolutions must be NeighConsensus.conv.0, .2, .4, ...; found indices {idx}")
    out = []
    for i in idx:
        if "weight" not in found[i]:
            raise CheckpointFormatError(f"{source}: NeighConsensus.conv.{i}.weight is missing")
        out.append((i, found[i]["weight"], found[i].get("bias")))
    return out


def _from_reference_weight(w: torch.Tensor, bias: torch.Tensor | None, c_in: int, key: str, source: str) -> torch.Tensor:
    """Reference pre-permuted ``k1 x C_out x C_in x k2 x k3 x k4`` -> ``C_out x C_in x k1 x k2 x k3 x k4``."""
    if w.dim() != 6:
        raise CheckpointFormatError(f"{source}: {key} must have 6 dimensions, has shape {tuple(w.shape)}")
    k1, c_out, ci = w.shape[:3]
    if ci != c_in or (bias is not None and tuple(bias.shape) != (c_out,)) or tuple(w.shape[3:]) != (k1, k1, k1):
        raise CheckpointFormatError(
            f"{source}: {key} has shape {tuple(w.shape)}; expected the reference's pre-permuted "
            f"k x C_out x C_in x k x k x k with C_in = {c_in}" + (f" and C_out = {bias.shape[0]} (its bias)" if bias is not None else ""))
    return w.permute(1, 2, 0, 3, 4, 5).contiguous()


def reference_ncnet_config(ckpt: dict, source: str = "checkpoint", any_backbone: bool = False) -> NCNetConfig:
    """The :class:`NCNetConfig` of a reference checkpoint (architecture from the weights,
    cross-checked with ``args``). ``args.feature_extraction_cnn`` may also name a backbone of
    this suite's registry (files exported by :func:`reference_checkpoint`), or anything when
    ``any_backbone`` (a backbone factory supplies the module)."""
    sd = ckpt["state_dict"]
    args = _args(ckpt)
    layers = _consensus_layers(sd, source)
    kernels, channels, c_in = [], [], 1
    for i, w, b in layers:
        if w.dim() != 6:
            raise CheckpointFormatError(f"{source}: NeighConsensus.conv.{i}.weight must have 6 dimensions, has shape {tuple(w.shape)}")
        kernels.append(int(w.shape[0]))
        channels.append(int(w.shape[1]))
        _from_reference_weight(w, b, c_in, f"NeighConsensus.conv.{i}.weight", source)
        c_in = channels[-1]
    if channels[-1] != 1:
        raise CheckpointFormatError(f"{source}: the last consensus layer must have 1 channel, the weights have channels {channels}")
    for name, got in (("ncons_kernel_sizes", kernels), ("ncons_channels", channels)):
        if args.get(name) is not None and [int(v) for v in args[name]] != got:
            raise CheckpointFormatError(f"{source}: args.{name} = {list(args[name])} but the weights have {got}")
    cnn = args.get("feature_extraction_cnn") or "resnet101"
    if cnn not in REFERENCE_BACKBONES and cnn not in list_backbones() and not any_backbone:
        raise CheckpointFormatError(f"{source}: backbone {cnn!r} is not supported (supported: "
                                    f"{', '.join(dict.fromkeys([*REFERENCE_BACKBONES, *list_backbones()]))})")
    size = int(args.get("image_size") or REFERENCE_IMAGE_SIZE)
    return NCNetConfig(backbone=REFERENCE_BACKBONES.get(cnn, cnn), image_size=(size, size), kernel_sizes=tuple(kernels),
                       channels=tuple(channels), symmetric=True, normalize_features=True)


def map_reference_ncnet_keys(state_dict: dict, source: str = "checkpoint") -> dict:
    """Reference state dict -> this suite's names and weight layout (module docstring)."""
    out = {}
    c_in = 1
    for n, (i, w, b) in enumerate(_consensus_layers(state_dict, source)):
        out[f"neigh_consensus.convs.{n}.weight"] = _from_reference_weight(w, b, c_in, f"NeighConsensus.conv.{i}.weight", source)
        if b is not None:
            out[f"neigh_consensus.convs.{n}.bias"] = b
        c_in = int(w.shape[1])
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("NeighConsensus."):
            continue
        if (ours := reference_backbone_key(key)) is not None:
            out[ours] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointFormatError(f"{source}: unexpected keys {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return out


def load_reference_ncnet_state_dict(model: NCNet, state_dict: dict, source: str = "checkpoint") -> None:
    """Load reference-named weights into ``model``; only BatchNorm ``num_batches_tracked``
    buffers may be missing (files saved before PyTorch 0.4)."""
    mapped = map_reference_ncnet_keys(state_dict, source)
    expected = model.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        raise CheckpointFormatError(f"{source}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in mapped.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise CheckpointFormatError(f"{source}: shape mismatches {bad[:5]}")
    model.load_state_dict(mapped, strict=False)


def ncnet_from_reference(ckpt, source: str | None = None, backbone_factory=None) -> NCNet:
    """Build and load an :class:`NCNet` from a released reference file (path or loaded dict)."""
    ckpt, source = load_reference_file(ckpt, source)
    map_reference_ncnet_keys(ckpt["state_dict"], source)  # fail on foreign keys before building anything
    config = reference_ncnet_config(ckpt, source, any_backbone=backbone_factory is not None)
    model = NCNet(config, backbone_weights="random", backbone=backbone_factory() if backbone_factory else None)
    load_reference_ncnet_state_dict(model, ckpt["state_dict"], source)
    return model.eval()


def to_reference_state_dict(model: NCNet) -> dict:
    """``model``'s weights under the reference's key names and filter layout (for exporting to
    the reference code, and for round-trip tests)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("feature_extraction.backbone.body."):
            out["FeatureExtraction.model." + key[len("feature_extraction.backbone.body."):]] = value.clone()
        elif key.startswith("neigh_consensus.convs."):
            n, kind = key[len("neigh_consensus.convs."):].split(".")
            out[f"NeighConsensus.conv.{2 * int(n)}.{kind}"] = value.permute(2, 0, 1, 3, 4, 5).contiguous() if kind == "weight" else value.clone()
        else:
            raise ValueError(f"no reference name for {key!r}")
    return out


def reference_checkpoint(model: NCNet, image_size: int | None = None) -> dict:
    """A reference-style checkpoint dict (``state_dict`` + ``args``) for ``model``."""
    args = argparse.Namespace(ncons_kernel_sizes=list(model.config.kernel_sizes), ncons_channels=list(model.config.channels),
                              image_size=int(image_size or model.config.image_size[0]))
    if model.config.backbone != "resnet101":  # the reference's default needs no entry
        args.feature_extraction_cnn = {"vgg16": "vgg"}.get(model.config.backbone, model.config.backbone)
    return {"state_dict": to_reference_state_dict(model), "args": args}


__all__ = [
    "load_ncnet_checkpoint", "load_reference_ncnet_state_dict", "map_reference_ncnet_keys", "ncnet_from_reference",
    "reference_checkpoint", "reference_ncnet_config", "save_ncnet_checkpoint", "to_reference_state_dict",
]
