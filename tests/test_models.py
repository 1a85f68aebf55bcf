import argparse
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from weakalign.geometry import affine_identity
from weakalign.models import (
    CNNGeometric,
    CheckpointFormatError,
    FeatureCorrelation,
    FeatureRegression,
    ModelConfig,
    TwoStageCNNGeometric,
    UnsafeCheckpointError,
    build_backbone,
    load_checkpoint,
    model_from_reference,
    save_checkpoint,
)

CFG = ModelConfig(backbone="tiny", image_size=(240, 240))


def images(b=2, seed=0, size=240):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.rand(b, 3, size, size, generator=g)


def test_correlation_layout_against_loops():
    g = torch.Generator().manual_seed(0)
    fa, fb = torch.randn(1, 5, 3, 4, generator=g), torch.randn(1, 5, 3, 4, generator=g)
    corr = FeatureCorrelation(normalize=False)(fa, fb)
    assert corr.shape == (1, 12, 3, 4)
    for xa in range(4):
        for ya in range(3):
            for xb in range(4):
                for yb in range(3):
                    expected = (fa[0, :, ya, xa] * fb[0, :, yb, xb]).sum()
                    assert torch.allclose(corr[0, xa * 3 + ya, yb, xb], expected, atol=1e-5)
    normed = FeatureCorrelation(normalize=True)(fa, fb)
    assert torch.all(normed >= 0)
    assert torch.allclose(normed.norm(dim=1), torch.ones(1, 3, 4), atol=1e-3)


@pytest.mark.parametrize("size", [(15, 15), (20, 12)])
def test_regression_head_is_sized_from_feature_map(size):
    head = FeatureRegression(18, feature_size=size)
    out = head(torch.rand(2, size[0] * size[1], *size))
    assert out.shape == (2, 18)
    assert list(head.state_dict())[:6] == ["conv.0.weight", "conv.0.bias", "conv.1.weight", "conv.1.bias", "conv.1.running_mean", "conv.1.running_var"]
    with pytest.raises(ValueError, match="too small"):
        FeatureRegression(6, feature_size=(8, 8))


def test_one_stage_model_forward(tiny_backbone):
    model = CNNGeometric("tps", CFG, backbone=tiny_backbone).eval()
    assert model.feature_size == (15, 15)
    src, tgt = images()
    theta, corr = model(src, tgt, return_correlation=True)
    assert theta.shape == (2, 18) and corr.shape == (2, 225, 15, 15)
    with pytest.raises(ValueError, match="resize"):
        model(torch.rand(1, 3, 200, 200), torch.rand(1, 3, 200, 200))
    with pytest.raises(ValueError, match="geometric_model"):
        CNNGeometric("homography", CFG, backbone=tiny_backbone)


def test_two_stage_second_stage_sees_warped_source(tiny_backbone):
    model = TwoStageCNNGeometric(CFG, backbone=tiny_backbone).eval()
    src, tgt = images()
    with torch.no_grad():
        out_id = model(src, tgt, theta_aff=affine_identity(2))
        # identity warp (align_corners=True grid hits pixel centres exactly): stage 2 = stage 1
        assert torch.allclose(out_id.corr_aff, out_id.corr_aff_tps, atol=1e-5)
        shifted = affine_identity(2)
        shifted[:, 2] = 0.3
        out_shift = model(src, tgt, theta_aff=shifted)
        assert not torch.allclose(out_shift.corr_aff_tps, out_id.corr_aff_tps, atol=1e-3)
        # the warp is of the source only: stage-1 outputs do not depend on theta_aff
        assert torch.allclose(out_shift.theta_aff, out_id.theta_aff)
        # precomputed features give the same result
        f_src, f_tgt = model.extract(src), model.extract(tgt)
        out_f = model(src, tgt, f_src=f_src, f_tgt=f_tgt)
        out = model(src, tgt)
    for a, b in zip(out, out_f):
        assert torch.allclose(a, b, atol=1e-6)


def test_from_stages_copies_regressors(tiny_backbone):
    aff = CNNGeometric("affine", CFG, backbone=tiny_backbone)
    tps = CNNGeometric("tps", CFG, backbone=tiny_backbone)
    two = TwoStageCNNGeometric.from_stages(aff, tps).eval()
    src, tgt = images(1)
    with torch.no_grad():
        assert torch.allclose(two(src, tgt).theta_aff, aff.eval()(src, tgt), atol=1e-6)
    with pytest.raises(ValueError):
        TwoStageCNNGeometric.from_stages(tps, aff)


def _build(kind, backbone):
    cfg = ModelConfig(backbone=backbone)
    if kind == "affine_tps":
        return TwoStageCNNGeometric(cfg, backbone_weights="random").eval()
    return CNNGeometric(kind, cfg, backbone_weights="random").eval()


def test_suite_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _build("affine_tps", "efficientnet_lite0")
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta={"epoch": 3})
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["meta"] == {"epoch": 3} and isinstance(loaded, TwoStageCNNGeometric)
    src, tgt = images(1)
    with torch.no_grad():
        for a, b in zip(model(src, tgt), loaded(src, tgt)):
            assert torch.equal(a, b)
    assert not list(tmp_path.glob(".m.pt.*")), "temporary files left behind"


def _reference_state_dict(model, old_vgg_names=True):
    """Write a state dict exactly as the reference code names it (PyTorch 0.2/0.3 era)."""
    sd = OrderedDict()
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # did not exist before PyTorch 0.4
        k = k.replace("feature_extraction.backbone.body.", "FeatureExtraction.vgg." if old_vgg_names else "FeatureExtraction.model.")
        k = k.replace("regression2.", "FeatureRegression2.") if k.startswith("regression2.") else k.replace("regression.", "FeatureRegression.", 1) if k.startswith("regression.") else k
        sd[k] = v.clone()
    return sd


@pytest.mark.parametrize("kind", ["affine", "affine_tps"])
def test_released_checkpoint_format_loads(tmp_path, kind):
    torch.manual_seed(1)
    model = _build(kind, "vgg16")
    # BN statistics that differ from the defaults, so a wrong mapping cannot pass unnoticed
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    args = argparse.Namespace(feature_extraction_cnn="vgg", image_size=240, fr_kernel_sizes=[7, 5], fr_channels=[128, 64], lr=5e-8)
    ckpt = {
        "epoch": 5, "args": args, "state_dict": _reference_state_dict(model),
        "best_test_loss": np.float64(-0.7), "train_loss": np.zeros(10), "test_loss": np.arange(10.0),
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-8, "params": [0, 1]}]},
    }
    path = tmp_path / "best_checkpoint.pth.tar"
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)  # legacy format, as 0.x wrote
    loaded = model_from_reference(path)
    assert loaded.geometric_model == kind and loaded.config.backbone == "vgg16"
    src, tgt = images(1, seed=3)
    with torch.no_grad():
        a, b = model(src, tgt), loaded(src, tgt)
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(x, y)
    via_generic, _ = load_checkpoint(path)
    assert type(via_generic) is type(model)


def test_released_checkpoint_with_bad_keys_is_rejected(tmp_path):
    path = tmp_path / "bad.pth.tar"
    torch.save({"state_dict": {"FeatureRegression.linear.weight": torch.zeros(6, 1600), "Other.x": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointFormatError, match="unexpected keys"):
        model_from_reference(path)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.target),))


# torch warns about the pickle protocol before refusing; the refusal is what is checked
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    _Exploit.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth.tar"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Exploit()}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_corrupt_and_missing_checkpoint(tmp_path):
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises((CheckpointFormatError, UnsafeCheckpointError)):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_library_has_no_device_assumptions():
    root = Path(__file__).resolve().parents[1] / "weakalign"
    offenders = [str(p) for p in root.rglob("*.py") if ".cuda()" in p.read_text()]
    assert not offenders, f".cuda() calls: {offenders}"
