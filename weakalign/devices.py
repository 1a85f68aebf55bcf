"""Devices and mixed precision, one resolution for every stage.

**Device** (the ``device`` key of ``train_strong``, ``train_weak``, ``train_ncnet`` and
``evaluate``): one of

* ``auto`` -- ``cuda`` when ``torch.cuda.is_available()``, else ``cpu`` (the default everywhere;
  on a machine without a GPU it is exactly ``cpu``, so CPU numbers do not depend on the choice);
* ``cpu``;
* ``cuda`` -- the current CUDA device (``torch.cuda.current_device()``); under ``torchrun``
  each process takes ``cuda:$LOCAL_RANK`` (:mod:`weakalign.training.engine`);
* ``cuda:N`` -- GPU ``N`` (single process only; under ``torchrun`` use ``auto`` or ``cuda``).

:func:`resolve_device` turns the name into a :class:`torch.device`; a malformed name, or a CUDA
device on a machine without one, is a one-line :class:`weakalign.cli.UserError` naming the
params key and what to write instead. :func:`check_device_name` is the syntax half of it, run
when a block is validated (before any work starts).

**Mixed precision** (the ``amp`` key of the same blocks): ``none`` (default: float32
everywhere, the code path of a run without the option), ``bf16`` or ``fp16``.
:func:`set_backbone_amp` switches the autocast of every
:class:`~weakalign.models.cnngeometric.FeatureExtraction` in a model: the **backbone only** runs
under ``torch.autocast`` with that dtype; its output is cast back to float32 before the L2
normalisation, so the correlation, the regression / consensus layers, the geometry and every
loss stay in float32. ``fp16`` has a narrow exponent range and would need loss scaling when a
gradient passes through the backbone; the training blocks therefore refuse ``fp16`` unless the
backbone is frozen and nothing back-propagates through it (:func:`check_amp`), use ``bf16``
there. Feature caches made under autocast are keyed by the mode (never mixed with float32 ones).
"""

from __future__ import annotations

import re

import torch

AMP_MODES = ("none", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NAME = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def _user_error(msg: str) -> Exception:
    from weakalign.cli import UserError

    return UserError(msg)


def check_device_name(key: str, name) -> None:
    """Syntax of a ``device`` value (``auto``, ``cpu``, ``cuda``, ``cuda:N``); ``key`` names the
    params key in the error (e.g. ``evaluate.device``)."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise _user_error(f"{key} must be auto, cpu, cuda or cuda:N (N = GPU index), got {name!r}; "
                          "auto uses the GPU when there is one")


def resolve_device(name, key: str = "device") -> torch.device:
    """The :class:`torch.device` for a ``device`` value (module docstring).

    ``auto`` -> ``cuda:<current>`` when CUDA is available, else ``cpu``. An explicit CUDA
    device without CUDA, or a GPU index beyond ``torch.cuda.device_count()``, is a one-line
    ``UserError`` naming ``key``."""
    check_device_name(key, name)
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if available else torch.device("cpu")
    if not available:
        raise _user_error(f"{key}: {name!r} asked for, but CUDA is not available here (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'none'}); set {key}: auto or cpu")
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    index = int(name.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise _user_error(f"{key}: {name!r} asked for, but this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1}); set {key}: auto or a valid index")
    return torch.device("cuda", index)


def check_amp(key: str, mode, backbone_gradient: bool = False) -> None:
    """``mode`` is one of :data:`AMP_MODES`; ``fp16`` is refused when ``backbone_gradient``
    (a gradient flows through the backbone: training it, or back-propagating through it into a
    warp) because that needs loss scaling, which the training loop does not do."""
    if mode not in AMP_MODES:
        raise _user_error(f"{key} must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode == "fp16" and backbone_gradient:
        raise _user_error(f"{key}: fp16 with a gradient through the backbone needs loss scaling, which training does "
                          "not do; use bf16 (same exponent range as float32) or none")


def amp_dtype(mode: str) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` mode (``None`` for ``none``)."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    return AMP_DTYPES.get(mode)


def set_backbone_amp(model, mode: str):
    """Run every backbone of ``model`` (each
    :class:`~weakalign.models.cnngeometric.FeatureExtraction` in it) under autocast with
    ``mode``; ``none`` switches it off. Returns ``model``. The setting is a plain attribute, not
    part of the weights or checkpoints. Backbone modules are recognised by their class attribute
    ``AMP_CAPABLE`` (not by importing weakalign.models: this module stays light)."""
    amp_dtype(mode)
    if isinstance(model, torch.nn.Module):  # None (identity) or a method's non-module model: nothing to switch
        for m in model.modules():
            if getattr(type(m), "AMP_CAPABLE", False):
                m.amp = mode
    return model


def backbone_amp(model) -> str:
    """The ``amp`` mode of ``model``'s backbones (``none`` when unset or mixed)."""
    modes = {getattr(m, "amp", "none") for m in model.modules() if getattr(type(m), "AMP_CAPABLE", False)} if isinstance(model, torch.nn.Module) else set()
    return modes.pop() if len(modes) == 1 else "none"
