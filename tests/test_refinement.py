"""Test-time affine refinement (``affine_refinements`` in an ``evaluate.models`` spec): an option
of this project, not the paper's model. Composition checked against applying the two affines one
after the other and against a hand-computed case; the model's refinement loop checked with a
regressor whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from weakalign.geometry import affine_compose, affine_identity, affine_points
from weakalign.models.checkpoints import save_checkpoint
from weakalign.models.cnngeometric import ModelConfig, TwoStageCNNGeometric, build_model

CFG = ModelConfig(backbone="tiny", image_size=(240, 240))


def test_affine_compose_equals_applying_inner_then_outer():
    g = torch.Generator().manual_seed(0)
    outer = affine_identity(4) + 0.3 * torch.randn(4, 6, generator=g)
    inner = affine_identity(4) + 0.3 * torch.randn(4, 6, generator=g)
    pts = torch.rand(4, 2, 7, generator=g) * 2 - 1
    composed = affine_compose(outer, inner)
    assert composed.shape == (4, 6)
    assert torch.allclose(affine_points(composed, pts), affine_points(outer, affine_points(inner, pts)), atol=1e-6)
    # identity is neutral on both sides
    assert torch.allclose(affine_compose(outer, affine_identity(4)), outer, atol=1e-7)
    assert torch.allclose(affine_compose(affine_identity(4), inner), inner, atol=1e-7)


def test_affine_compose_hand_computed():
    # inner: rotate 90 degrees (x, y) -> (-y, x); outer: scale 2 then shift x by 0.5
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    inner = torch.tensor([[c, -s, 0.0, s, c, 0.0]])
    outer = torch.tensor([[2.0, 0.0, 0.5, 0.0, 2.0, 0.0]])
    # (1, 0) -> inner (0, 1) -> outer (0.5, 2)
    p = torch.tensor([[[1.0], [0.0]]])
    assert torch.allclose(affine_points(affine_compose(outer, inner), p), torch.tensor([[[0.5], [2.0]]]), atol=1e-6)


def _images(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 240, 240, generator=g), torch.rand(b, 3, 240, 240, generator=g)


def test_refinement_composes_the_regressors_answers(tiny_backbone):
    """A regressor that always answers a shift of 0.1 in x: after N refinements the affine is a
    shift of 0.1 * (N + 1), and the TPS stage sees the source warped by it."""
    model = TwoStageCNNGeometric(CFG, backbone=tiny_backbone).eval()
    shift = torch.tensor([1.0, 0.0, 0.1, 0.0, 1.0, 0.0])
    model.regression.forward = lambda corr: shift.expand(corr.shape[0], 6).clone()
    src, tgt = _images()
    with torch.no_grad():
        for n in (1, 2):
            model.affine_refinements = n
            out = model(src, tgt)
            want = torch.tensor([1.0, 0.0, 0.1 * (n + 1), 0.0, 1.0, 0.0]).expand(2, 6)
            assert torch.allclose(out.theta_aff, want, atol=1e-6)
            ref = model(src, tgt, theta_aff=want.clone())  # theta_aff given: no refinement, warp with it
            assert torch.allclose(out.theta_aff_tps, ref.theta_aff_tps, atol=1e-6)
            assert torch.allclose(out.corr_aff_tps, ref.corr_aff_tps, atol=1e-6)


def test_refinement_gradient_flows(tiny_backbone):
    model = TwoStageCNNGeometric(CFG, backbone=tiny_backbone).eval()
    model.affine_refinements = 1
    src, tgt = _images(1)
    out = model(src, tgt)
    out.theta_aff.sum().backward()
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.regression.parameters())


def test_spec_sets_refinements_and_refuses_one_stage(tmp_path, tiny_backbone):
    from weakalign.methods import get_method

    cfg = ModelConfig(backbone="efficientnet_lite0", image_size=(240, 240))
    two = build_model("affine_tps", cfg, backbone_weights="random")
    save_checkpoint(tmp_path / "two.pt", two)
    one = build_model("affine", cfg, backbone_weights="random")
    save_checkpoint(tmp_path / "one.pt", one)
    m = get_method("cnngeometric")
    assert TwoStageCNNGeometric.affine_refinements == 0  # the paper's model unless a spec asks
    assert m.load({"checkpoint": "two.pt"}, tmp_path).affine_refinements == 0
    assert m.load({"checkpoint": "two.pt", "affine_refinements": 2}, tmp_path).affine_refinements == 2
    with pytest.raises(ValueError, match="two-stage"):
        m.load({"checkpoint": "one.pt", "affine_refinements": 1}, tmp_path)


@pytest.mark.parametrize("spec, pattern", [
    ("{checkpoint: m.pt, affine_refinements: -1}", r"affine_refinements must be an integer >= 0, got -1"),
    ("{checkpoint: m.pt, affine_refinements: 1.5}", r"affine_refinements must be an integer >= 0, got 1.5"),
    ("{type: ncnet, checkpoint: m.pt, affine_refinements: 1}", r"two-stage CNNGeometric / WeakAlign models only"),
])
def test_bad_refinement_specs_are_one_line(tmp_path, spec, pattern):
    from weakalign.evaluation.commands import load_block

    p = tmp_path / "params.yaml"
    p.write_text(f"evaluate:\n  models:\n    refined: {spec}\n")
    with pytest.raises(Exception, match=pattern) as exc:
        load_block(p)
    assert "\n" not in str(exc.value)
