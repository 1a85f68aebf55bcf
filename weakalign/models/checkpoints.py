"""Checkpoints: this suite's own format and the released reference ``.pth.tar`` files.

Loading never runs arbitrary code: files are read with ``torch.load(weights_only=True)``
(PyTorch's restricted unpickler), extended only with the few plain types the reference files
pickle: ``argparse.Namespace`` (the training arguments) and NumPy arrays/scalars (loss curves).
A file that needs anything else is refused with :class:`UnsafeCheckpointError`.

Reference key mapping (ignacio-rocco/weakalign and cnngeometric_pytorch)::

    FeatureExtraction.model.<i>.*   (older files: FeatureExtraction.vgg.<i>.*)
                                    -> feature_extraction.backbone.body.<i>.*
    FeatureRegression.*             -> regression.*
    FeatureRegression2.*            -> regression2.*   (two-stage models)

Old files lack BatchNorm's ``num_batches_tracked`` buffers; those (and only those) may be missing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cnngeometric import ModelConfig, build_model

FORMAT = "weakalign-checkpoint/1"
_BACKBONE_FROM_REFERENCE = {"vgg": "vgg16", "vgg16": "vgg16", "resnet101": "resnet101"}


class UnsafeCheckpointError(RuntimeError):
    """The file asks the unpickler for code it will not run."""


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint this suite understands (names the file and the problem)."""


def _numpy_globals() -> list:
    """NumPy reconstruction helpers under both their NumPy 1.x and 2.x import paths."""
    from numpy._core import multiarray as ma  # NumPy >= 2

    out: list = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(ma, name)
        out += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    out += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return out


_ALLOW_LOCK = threading.RLock()


@contextlib.contextmanager
def _allowed_globals(extra: list):
    """Like ``torch.serialization.safe_globals(extra)``, but on exit the process-wide
    allow-list is restored exactly as it was found (torch's context manager removes ``extra``
    even when someone else had added those entries before)."""
    ser = torch.serialization
    with _ALLOW_LOCK:
        before = list(ser.get_safe_globals())
        ser.add_safe_globals(extra)
        try:
            yield
        finally:
            ser.clear_safe_globals()
            ser.add_safe_globals(before)


def safe_load(path: str | os.PathLike, map_location="cpu") -> dict:
    """``torch.load`` with the restricted unpickler plus argparse.Namespace and NumPy arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"{path}: empty file, not a checkpoint (an interrupted copy "
                                    "or save?); delete it or replace it with a complete checkpoint")
    allowed = [argparse.Namespace, *_numpy_globals()]
    try:
        with _allowed_globals(allowed):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle (it needs code outside the allow-list; only load files "
            f"you trust with plain torch.load). Details: {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            IndexError, TypeError, AttributeError, MemoryError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointFormatError(
            f"{path}: not a readable PyTorch checkpoint (truncated or damaged? {first}); delete "
            "it or replace it with a complete checkpoint") from exc
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict | None = None, **extra) -> None:
    """Write ``model`` (config + weights) and JSON-able ``meta`` atomically; ``extra`` entries
    (optimizer state, RNG state, ...) are stored as they are."""
    obj = {
        "format": FORMAT,
        "geometric_model": model.geometric_model,
        "config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "meta": meta or {},
        **extra,
    }
    _atomic_torch_save(obj, Path(path))


# Sane bounds for checkpoint metadata, checked BEFORE anything is allocated (a crafted
# image_size of [60000, 60000] would otherwise ask for tens of GB while building the model).
CONFIG_BOUNDS = {
    "image_size": (16, 2048),  # pixels, each side
    "kernel_sizes": (1, 31),
    "channels": (1, 4096),
    "layers": (1, 8),  # number of regression conv layers
    "tps_grid_size": (2, 10),
}
GEOMETRIC_MODELS = ("affine", "tps", "affine_tps")


def _int_in(value, lo, hi) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def validate_config(config: ModelConfig, source: str = "checkpoint") -> None:
    """Refuse model metadata outside :data:`CONFIG_BOUNDS` or naming an unknown backbone."""
    from .backbones import list_backbones

    b = CONFIG_BOUNDS
    if config.backbone not in list_backbones():
        raise CheckpointFormatError(f"{source}: unknown backbone {config.backbone!r} "
                                    f"(known: {', '.join(list_backbones())})")
    size = tuple(config.image_size)
    if len(size) != 2 or not all(_int_in(v, *b["image_size"]) for v in size):
        raise CheckpointFormatError(f"{source}: image_size {list(config.image_size)} outside the sane "
                                    f"range [{b['image_size'][0]}, {b['image_size'][1]}] per side; refused")
    ks, ch = tuple(config.kernel_sizes), tuple(config.channels)
    if not (_int_in(len(ks), *b["layers"]) and len(ks) == len(ch)
            and all(_int_in(k, *b["kernel_sizes"]) for k in ks)
            and all(_int_in(c, *b["channels"]) for c in ch)):
        raise CheckpointFormatError(f"{source}: regression layers kernel_sizes={list(ks)}, channels={list(ch)} "
                                    "outside sane bounds (1-8 layers, kernels 1-31, channels 1-4096); refused")
    if not _int_in(config.tps_grid_size, *b["tps_grid_size"]):
        raise CheckpointFormatError(f"{source}: tps_grid_size {config.tps_grid_size!r} outside 2-10; refused")
    for key in ("normalize_features", "normalize_matches", "batch_norm"):
        if not isinstance(getattr(config, key), bool):
            raise CheckpointFormatError(f"{source}: {key} must be true or false, got {getattr(config, key)!r}")


def check_finite_weights(state_dict: dict, source: str = "checkpoint") -> None:
    """Refuse a state dict holding NaN or infinite values (or entries that are not tensors)."""
    bad = []
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointFormatError(f"{source}: state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        if v.is_floating_point() or v.is_complex():
            if not bool(torch.isfinite(v).all()):
                bad.append(k)
    if bad:
        raise CheckpointFormatError(f"{source}: {len(bad)} weight tensor(s) hold NaN or infinite values "
                                    f"(e.g. {bad[0]}); the model would produce garbage, refused")


def _ncnet_hint(ckpt: dict, source: str) -> None:
    sd = ckpt.get("state_dict")
    if ckpt.get("geometric_model") == "ncnet" or (
            isinstance(sd, dict) and any(str(k).startswith("NeighConsensus.") for k in sd)):
        raise CheckpointFormatError(
            f"{source}: an NCNet checkpoint; this loader takes CNNGeometric / WeakAlign models "
            "(NCNet predicts matches, not a transformation: evaluate it with "
            "`weakalign evaluate` or load it with weakalign.ncnet.load_ncnet_checkpoint)")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model from a checkpoint written by :func:`save_checkpoint` or a reference file.
    Returns ``(model, checkpoint_dict)``; the model is in eval mode. Every problem with the file
    is a :class:`CheckpointFormatError` (or :class:`UnsafeCheckpointError`) naming it."""
    source = str(path)
    ckpt = safe_load(path, map_location)
    _ncnet_hint(ckpt, source)
    sd = ckpt.get("state_dict")
    if ckpt.get("format") == FORMAT:
        if not isinstance(sd, dict):
            raise CheckpointFormatError(f"{source}: no 'state_dict' entry")
        if "config" not in ckpt:
            raise CheckpointFormatError(f"{source}: no 'config' entry (the model description); "
                                        "not a complete weakalign checkpoint")
        kind = ckpt.get("geometric_model")
        if kind not in GEOMETRIC_MODELS:
            raise CheckpointFormatError(f"{source}: geometric_model {kind!r} is not one of {', '.join(GEOMETRIC_MODELS)}")
        if not isinstance(ckpt["config"], dict):
            raise CheckpointFormatError(f"{source}: 'config' must be a mapping, got {type(ckpt['config']).__name__}")
        try:
            config = ModelConfig.from_dict(ckpt["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"{source}: bad model config ({exc})") from exc
        validate_config(config, source)
        check_finite_weights(sd, source)
        try:
            model = build_model(kind, config, backbone_weights="random")
        except ValueError as exc:  # e.g. a correlation grid too small for the kernels
            raise CheckpointFormatError(f"{source}: its config does not describe a buildable model ({exc})") from exc
        try:
            model.load_state_dict(sd)
        except (RuntimeError, KeyError, TypeError) as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise CheckpointFormatError(
                f"{source}: weights do not fit the model its config describes "
                f"({' '.join(lines[1:3]) or lines[0] if lines else exc})"[:600]) from exc
    elif isinstance(sd, dict) and any(str(k).startswith("FeatureRegression") for k in sd):
        check_finite_weights(sd, source)
        model = model_from_reference(ckpt, source=source)
    else:
        raise CheckpointFormatError(f"{source}: neither a weakalign checkpoint nor a reference .pth.tar (keys: {sorted(map(str, ckpt))[:8]})")
    return model.eval(), ckpt


# --- reference (released) checkpoints -------------------------------------------------------

def reference_backbone_key(key: str) -> str | None:
    """This suite's name for a reference ``FeatureExtraction.model.*`` key (older files spell it
    ``FeatureExtraction.vgg.*``); None for any other key. Shared by the CNNGeometric/WeakAlign
    and NCNet loaders."""
    if key.startswith("FeatureExtraction.vgg."):
        key = "FeatureExtraction.model." + key[len("FeatureExtraction.vgg."):]
    if key.startswith("FeatureExtraction.model."):
        return "feature_extraction.backbone.body." + key[len("FeatureExtraction.model."):]
    return None


def map_reference_keys(state_dict: dict, source: str = "checkpoint") -> dict:
    """Rename reference keys to this suite's module names (see module docstring)."""
    out = {}
    unknown = []
    for key, value in state_dict.items():
        if (ours := reference_backbone_key(key)) is not None:
            out[ours] = value
        elif key.startswith("FeatureRegression2."):
            out["regression2." + key[len("FeatureRegression2."):]] = value
        elif key.startswith("FeatureRegression."):
            out["regression." + key[len("FeatureRegression."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointFormatError(f"{source}: unexpected keys {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return out


def _reference_args(ckpt: dict) -> dict:
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}


def reference_config(ckpt: dict, source: str = "checkpoint") -> tuple[str, ModelConfig]:
    """Infer (geometric_model, config) from a reference checkpoint's args and weights."""
    sd = ckpt["state_dict"]
    args = _reference_args(ckpt)
    if any(k.startswith("FeatureRegression2.") for k in sd):
        kind = "affine_tps"
    else:
        out_dim = sd["FeatureRegression.linear.weight"].shape[0]
        kind = {6: "affine", 18: "tps"}.get(out_dim)
        if kind is None:
            raise CheckpointFormatError(f"{source}: regression output size {out_dim} is neither 6 nor 18")
    cnn = args.get("feature_extraction_cnn")
    if cnn is None:  # very old files: guess from the weights
        cnn = "resnet101" if any(".layer" in k or k.startswith("FeatureExtraction.model.4.0.") for k in sd) else "vgg"
    if cnn not in _BACKBONE_FROM_REFERENCE:
        raise CheckpointFormatError(f"{source}: backbone {cnn!r} is not supported (supported: vgg, resnet101)")
    try:
        size = int(args.get("image_size", 240))
        config = ModelConfig(
            backbone=_BACKBONE_FROM_REFERENCE[cnn],
            image_size=(size, size),
            kernel_sizes=tuple(int(k) for k in args.get("fr_kernel_sizes", (7, 5))),
            channels=tuple(int(c) for c in args.get("fr_channels", (128, 64))),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointFormatError(f"{source}: bad training arguments in the file ({exc})") from exc
    validate_config(config, source)
    return kind, config


def load_reference_state_dict(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Load mapped reference weights; only ``num_batches_tracked`` buffers may be missing."""
    mapped = map_reference_keys(state_dict, source)
    expected = model.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        raise CheckpointFormatError(f"{source}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for k, v in mapped.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointFormatError(f"{source}: {k} has shape {tuple(v.shape)}, model expects {tuple(expected[k].shape)}")
    model.load_state_dict(mapped, strict=False)


def load_reference_file(ckpt: dict | str | os.PathLike, source: str | None = None) -> tuple[dict, str]:
    """A released ``.pth.tar`` (path or already-loaded dict) with a name for messages; fails
    clearly when it has no ``state_dict``. Shared by the CNNGeometric/WeakAlign and NCNet loaders."""
    if not isinstance(ckpt, dict):
        source = source or str(ckpt)
        ckpt = safe_load(ckpt)
    source = source or "checkpoint"
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointFormatError(f"{source}: no 'state_dict' entry")
    return ckpt, source


def model_from_reference(ckpt: dict | str | os.PathLike, source: str | None = None) -> nn.Module:
    """Build and load a model from a released ``.pth.tar`` (path or already-loaded dict)."""
    ckpt, source = load_reference_file(ckpt, source)
    map_reference_keys(ckpt["state_dict"], source)  # fail on foreign keys before building anything
    kind, config = reference_config(ckpt, source)
    model = build_model(kind, config, backbone_weights="random")
    load_reference_state_dict(model, ckpt["state_dict"], source)
    return model.eval()
