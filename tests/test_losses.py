import math

import pytest
import torch
from scipy.ndimage import binary_dilation, generate_binary_structure

from weakalign.geometry import affine_identity, tps_identity
from weakalign.losses import REFERENCE_OFFSET_FACTOR, SoftInlierCount, TransformedGridLoss, TwoStageInlierScore, identity_mask
from weakalign.models.correlation import FeatureCorrelation, feature_l2norm

H = W = 15


def test_grid_loss_hand_computed():
    loss = TransformedGridLoss("affine")
    ident = affine_identity(2)
    assert loss(ident, ident).item() == pytest.approx(0.0, abs=1e-12)
    shifted = ident.clone()
    shifted[:, 2] += 0.1  # every point moves by 0.1 in x: squared distance 0.01
    assert loss(shifted, ident).item() == pytest.approx(0.01, rel=1e-5)
    scaled = ident.clone()
    scaled[:, 0] = 2.0  # x -> 2x: mean of x^2 over a 20-point linspace(-1, 1) grid
    xs = torch.linspace(-1, 1, 20, dtype=torch.float64)
    assert loss(scaled, ident).item() == pytest.approx(float((xs**2).mean()), rel=1e-5)


def test_grid_loss_tps():
    loss = TransformedGridLoss("tps")
    t = tps_identity(3)
    assert loss(t, t).item() == pytest.approx(0.0, abs=1e-10)
    moved = t + 0.05  # all control points shifted by (0.05, 0.05): a pure translation
    assert loss(moved, t).item() == pytest.approx(2 * 0.05**2, rel=1e-4)


@pytest.mark.parametrize("tol,shape,connectivity", [(0, "square", None), (1, "cross", 1), (1, "square", 2)])
def test_identity_mask_matches_reference_dilation(tol, shape, connectivity):
    m = identity_mask(5, 5, tol, shape)[0]
    for k in range(25):
        x, y = divmod(k, 5)  # channel k = x * h + y
        base = torch.zeros(5, 5, dtype=torch.bool)
        base[y, x] = True
        expected = base.numpy() if connectivity is None else binary_dilation(base.numpy(), generate_binary_structure(2, connectivity))
        assert torch.equal(m[k].bool(), torch.from_numpy(expected))


def test_identity_mask_layout_matches_correlation():
    torch.manual_seed(0)
    f = feature_l2norm(torch.randn(1, 256, H, W))  # random high-dimensional: near-orthogonal cells
    corr = FeatureCorrelation(normalize=True)(f, f)
    assert torch.equal(corr.argmax(1), identity_mask(H, W)[0].argmax(0).unsqueeze(0))


def _pair_with_known_shift(cells: int, seed: int = 0):
    """Target features = source features shifted by ``cells`` columns; returns corr and true theta."""
    g = torch.Generator().manual_seed(seed)
    fa = feature_l2norm(torch.randn(1, 128, H, W, generator=g))
    fb = feature_l2norm(torch.randn(1, 128, H, W, generator=g))
    fb[..., : W - cells] = fa[..., cells:]  # target cell x shows source cell x + cells
    corr = FeatureCorrelation()(fa, fb)
    theta = affine_identity(1)
    theta[0, 2] = cells * (2 / (W - 1)) / REFERENCE_OFFSET_FACTOR  # one cell in mask coordinates
    return corr, theta


def test_soft_inlier_count_peaks_at_true_transform():
    corr, theta_true = _pair_with_known_shift(2)
    count = SoftInlierCount(H, W)
    best = count(corr, "affine", theta_aff=theta_true).item()
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        perturbed = theta_true + 0.1 * torch.randn(1, 6, generator=g)
        assert count(corr, "affine", theta_aff=perturbed).item() < best
    assert count(corr, "affine", theta_aff=affine_identity(1)).item() < best


def test_soft_inlier_count_has_gradient():
    corr, theta_true = _pair_with_known_shift(2)
    count = SoftInlierCount(H, W, tolerance=1)
    theta = (theta_true + torch.tensor([[0.03, -0.02, 0.05, 0.01, 0.02, -0.04]])).requires_grad_()
    count(corr, "affine", theta_aff=theta).sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    # a small step along the gradient increases the score (gradient ascent works)
    with torch.no_grad():
        before = count(corr, "affine", theta_aff=theta).item()
        after = count(corr, "affine", theta_aff=theta + 1e-3 * theta.grad / theta.grad.norm()).item()
    assert after > before


def test_reference_normalisation_adds_eps_per_element():
    count = SoftInlierCount(H, W)
    m = count.warped_mask("affine", theta_aff=affine_identity(1))
    raw = SoftInlierCount(H, W, normalize=False).warped_mask("affine", theta_aff=affine_identity(1))
    expected = raw / (raw.sum() + 1e-5 * raw.numel())
    assert torch.allclose(m, expected)


def test_two_stage_with_identity_tps_equals_twice_affine():
    # the closed-form composition (the reference's resampled one differs at the border by ~1e-3)
    corr, theta_true = _pair_with_known_shift(1)
    score = TwoStageInlierScore(H, W, composition="analytic")
    aff = score.count(corr, "affine", theta_aff=theta_true)
    both = score(theta_true, tps_identity(1), corr)
    assert torch.allclose(both, 2 * aff, rtol=1e-5)


def test_two_stage_composes_tps_then_affine():
    corr, _ = _pair_with_known_shift(1)
    count = SoftInlierCount(H, W, offset_factor=1.0, tps_reg_factor=0.0, composition="analytic")
    theta_aff = affine_identity(1)
    theta_aff[0, 2] = 2 / 14  # shift one cell
    theta_tps = tps_identity(1)
    theta_tps[0, :9] += 2 / 14  # TPS that is also a one-cell shift
    composed = count(corr, "affine_tps", theta_aff=theta_aff, theta_tps=theta_tps)
    two_cells = affine_identity(1)
    two_cells[0, 2] = 4 / 14
    assert torch.allclose(composed, count(corr, "affine", theta_aff=two_cells), rtol=1e-4)


def test_no_mask_variant_ignores_which_matches_agree():
    corr, theta_true = _pair_with_known_shift(2)
    count = SoftInlierCount(H, W, mask="none")
    # identity and the true shift keep (almost) the same cells in view: scores are close,
    # whereas the identity mask separates them clearly
    s_true = count(corr, "affine", theta_aff=theta_true).item()
    s_id = count(corr, "affine", theta_aff=affine_identity(1)).item()
    ref = SoftInlierCount(H, W)
    gap_mask = ref(corr, "affine", theta_aff=theta_true).item() - ref(corr, "affine", theta_aff=affine_identity(1)).item()
    assert abs(s_true - s_id) < 0.2 * gap_mask


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask"):
        SoftInlierCount(mask="ones")
    with pytest.raises(ValueError, match="correlation must be"):
        SoftInlierCount(H, W)(torch.zeros(1, 10, 15, 15), "affine", theta_aff=affine_identity(1))
    with pytest.raises(ValueError):
        TransformedGridLoss("homography")


def test_losses_move_between_devices_and_dtypes():
    loss = TransformedGridLoss("tps").to(torch.float64)  # nn.Module._apply must not be shadowed
    t = tps_identity(2, dtype=torch.float64)
    assert loss(t + 0.05, t).dtype == torch.float64
    SoftInlierCount(H, W).to(torch.float64)
