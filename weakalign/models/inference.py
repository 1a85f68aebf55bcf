"""CPU inference speed-ups that leave results unchanged up to float round-off.

:func:`optimized_backbone` returns a stand-in for ``model.feature_extraction.backbone`` whose
``body`` is traced with TorchScript, frozen (BatchNorm folded into the convolutions, constants
propagated) and fed ``channels_last`` tensors, which oneDNN runs faster on CPU. Measured on the
project machine (2 cores) for EfficientNet-Lite0 at 240x240, batch 16: 0.62 s -> 0.26 s per
batch (see ``benchmarks/``). The traced body is checked against the original on an example
batch and discarded (falling back to plain ``channels_last``) if it disagrees or cannot be traced.

``onednn_fusion=True`` (the evaluation fast path) also runs the frozen graph through PyTorch's
oneDNN Graph fuser (``torch.jit.enable_onednn_fusion``, switched on only while the body runs
without gradient): convolution + ReLU and convolution + residual add + ReLU become single oneDNN
kernels with pre-packed weights, the same kernels ``torch.compile`` emits on CPU but without its
tens of seconds of compilation. Same float32 arithmetic up to round-off (checked like the
trace); ResNet-101 at 240x240, batch 16, 2 cores: 0.62x the time per image of the frozen graph
without it (``reports/benchmarks/variants_resnet101.md``). Training keeps the default ``False``.

:func:`flush_denormals` matters even more: with ImageNet weights on real photos, EfficientNet
activations underflow into denormal floats, which x86 CPUs process very slowly. Flushing them to
zero halved the PF-WILLOW evaluation time (54 s -> 26 s, 900 pairs, 2 cores); it changes values
only below ~1e-38.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn


@contextlib.contextmanager
def flush_denormals(enabled: bool = True):
    """Context manager: flush denormal floats to zero on CPU (restores the previous setting)."""
    if not enabled:
        yield
        return
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def _onednn_fusion(enabled: bool):
    """Switch TorchScript's oneDNN Graph fuser on for the duration (restores the setting)."""
    if not enabled:
        yield
        return
    before = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(before)


class _FastBackbone(nn.Module):
    def __init__(self, original: nn.Module, body, onednn_fusion: bool = False):
        super().__init__()
        self.original = original
        self.fast_body = body
        self.onednn_fusion = bool(onednn_fusion and isinstance(body, torch.jit.ScriptModule))
        for attr in ("name", "out_channels", "stride", "mean", "std"):
            setattr(self, attr, getattr(original, attr))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return self.original.normalize(x01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _onednn_fusion(self.onednn_fusion and not torch.is_grad_enabled()):
            return self.fast_body(x.contiguous(memory_format=torch.channels_last)).contiguous()


def optimized_backbone(backbone: nn.Module, example: torch.Tensor, rtol: float = 1e-3, check_images: int = 2,
                       onednn_fusion: bool = False) -> nn.Module:
    """A faster, numerically equivalent backbone for inference on ``example``-shaped inputs.

    The body is traced on the first image of ``example`` and checked against the eager original
    on the first ``check_images`` (default 2): tracing on one image and checking on two catches a
    batch size baked into the trace, and costs a few backbone passes instead of 3 per example
    image (a full batch of 16 used to be traced and checked).
    Only the first ``check_images`` of ``example`` are used; its height and width must be those
    of the later inputs (tracing may bake spatial sizes, e.g. TF 'same' padding). ``onednn_fusion``:
    see the module docstring (the check then runs the fused graph: it is run twice, as the
    TorchScript profiling executor only optimises a graph on its second call)."""
    backbone = copy.deepcopy(backbone).eval().to(memory_format=torch.channels_last)
    example = example[: max(1, int(check_images))]
    with torch.no_grad():
        ref = backbone(example)
        xc = example.contiguous(memory_format=torch.channels_last)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                body = torch.jit.freeze(torch.jit.trace(backbone.body, xc[:1], check_trace=False))
                with _onednn_fusion(onednn_fusion):
                    out = body(xc)
                    if onednn_fusion:
                        out = body(xc)
            scale = ref.abs().max().clamp(min=1e-6)
            if out.shape != ref.shape or not torch.allclose(out, ref, rtol=0, atol=rtol * float(scale)):
                raise RuntimeError("traced backbone disagrees with the original")
        except Exception:  # tracing is an optimisation only: fall back to eager channels_last
            body = backbone.body
    return _FastBackbone(backbone, body, onednn_fusion)


def optimize_for_inference(model: nn.Module, batch_size: int = 16, onednn_fusion: bool = False) -> nn.Module:
    """Copy of ``model`` whose backbone is :func:`optimized_backbone` (CPU only; on other devices,
    or with the backbone under autocast, the model is returned unchanged). ``batch_size`` is no longer used (kept for callers): the
    trace is made on one image and checked on two."""
    p = next(model.parameters())
    if p.device.type != "cpu" or getattr(model.feature_extraction, "amp", "none") != "none":
        return model  # the traced float32 graph is for CPU without autocast (weakalign.devices)
    fast = copy.copy(model)
    fast._modules = dict(model._modules)
    fe = copy.copy(model.feature_extraction)
    fe._modules = dict(model.feature_extraction._modules)
    h, w = model.config.image_size
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))  # traced on 1, checked on 2
    fe.backbone = optimized_backbone(model.feature_extraction.backbone, fe.normalize(example), onednn_fusion=onednn_fusion)
    fast.feature_extraction = fe
    return fast.eval()
