import kornia.geometry.transform as KT
import pytest
import torch

from weakalign.geometry import (
    affine_grid,
    affine_identity,
    affine_points,
    normalized_grid,
    normalized_to_pixel,
    pixel_to_normalized,
    sampling_grid,
    tps_control_points,
    tps_grid,
    tps_identity,
    tps_points,
    transform_points,
    warp,
    warp_image,
)


def random_affine(b, g, scale=0.2, dtype=torch.float32):
    return affine_identity(b, dtype=dtype) + scale * (torch.rand(b, 6, generator=g, dtype=dtype) * 2 - 1)


def random_tps(b, g, scale=0.15, dtype=torch.float32):
    return tps_identity(b, dtype=dtype) + scale * (torch.rand(b, 18, generator=g, dtype=dtype) * 2 - 1)


def test_identity_parameters_give_identity_grids():
    base = normalized_grid(7, 9, 2)
    assert torch.allclose(affine_grid(affine_identity(2), 7, 9), base, atol=1e-6)
    assert torch.allclose(tps_grid(tps_identity(2), 7, 9), base, atol=1e-5)
    assert torch.allclose(tps_grid(tps_identity(2), 7, 9, reg_factor=0.2), base, atol=1e-5)
    img = torch.rand(2, 3, 7, 9)
    assert torch.allclose(warp(img, "affine_tps", affine_identity(2), tps_identity(2)), img, atol=1e-5)


def test_control_point_order_matches_reference_identity():
    # reference identity theta: X = [-1,-1,-1,0,0,0,1,1,1], Y = [-1,0,1,-1,0,1,-1,0,1]
    ref = torch.tensor([-1, -1, -1, 0, 0, 0, 1, 1, 1, -1, 0, 1, -1, 0, 1, -1, 0, 1], dtype=torch.float32)
    assert torch.equal(tps_identity(1)[0], ref)
    assert torch.equal(tps_control_points().reshape(-1), ref)


def test_affine_points_hand_computed():
    theta = torch.tensor([[2.0, 0.5, 0.1, -0.3, 1.0, 0.2]])
    p = torch.tensor([[[1.0, -0.5], [2.0, 0.25]]])  # points (1, 2) and (-0.5, 0.25)
    expected = torch.tensor([[[2 * 1 + 0.5 * 2 + 0.1, 2 * -0.5 + 0.5 * 0.25 + 0.1], [-0.3 * 1 + 2 + 0.2, -0.3 * -0.5 + 0.25 + 0.2]]])
    assert torch.allclose(affine_points(theta, p), expected)


def test_affine_grid_agrees_with_kornia(rng):
    b, h, w = 3, 20, 28
    theta = random_affine(b, rng)
    img = torch.rand(b, 3, h, w, generator=rng)
    ours = warp_image(img, affine_grid(theta, h, w))
    # kornia: pixel matrix mapping source -> destination. Ours maps target -> source in
    # normalised coordinates; conjugate with the align_corners=True pixel<->normalised map.
    n = torch.tensor([[(w - 1) / 2, 0, (w - 1) / 2], [0, (h - 1) / 2, (h - 1) / 2], [0, 0, 1.0]])
    full = torch.cat((theta.view(b, 2, 3), torch.tensor([[[0, 0, 1.0]]]).expand(b, 1, 3)), 1)
    tgt_to_src_px = n @ full @ torch.linalg.inv(n)
    m = torch.linalg.inv(tgt_to_src_px)[:, :2]
    theirs = KT.warp_affine(img, m, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("reg", [0.0, 0.2])
def test_tps_points_agree_with_scipy_rbf(rng, reg):
    # Independent oracle: scipy's thin-plate RBF with a degree-1 polynomial. Its kernel is
    # r^2 log r = U(d^2) / 2, so its smoothing equals our reg_factor / 2. (kornia's
    # get_tps_transform builds its kernel matrix between the two point sets rather than among
    # the control points, so it is not an interpolating TPS and cannot serve as the oracle.)
    from scipy.interpolate import RBFInterpolator

    b = 3
    theta = random_tps(b, rng, dtype=torch.float64)
    pts = torch.rand(b, 2, 50, generator=rng, dtype=torch.float64) * 2 - 1
    ours = tps_points(theta, pts, reg_factor=reg)
    ctrl = tps_control_points(dtype=torch.float64).t().numpy()
    for i in range(b):
        rbf = RBFInterpolator(ctrl, theta[i].view(2, 9).t().numpy(), kernel="thin_plate_spline", degree=1, smoothing=reg / 2)
        theirs = torch.from_numpy(rbf(pts[i].t().numpy())).t()
        assert torch.allclose(ours[i], theirs, atol=1e-9)


def test_tps_interpolates_control_points(rng):
    theta = random_tps(2, rng, dtype=torch.float64)
    ctrl = tps_control_points(dtype=torch.float64).unsqueeze(0).expand(2, 2, 9)
    assert torch.allclose(tps_points(theta, ctrl), theta.view(2, 2, 9), atol=1e-10)
    # with regularisation the spline smooths: it no longer interpolates a non-affine theta
    assert not torch.allclose(tps_points(theta, ctrl, reg_factor=0.5), theta.view(2, 2, 9), atol=1e-3)


def test_tps_gradcheck(rng):
    theta = random_tps(2, rng, dtype=torch.float64).requires_grad_()
    pts = (torch.rand(2, 2, 7, generator=rng, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, p: tps_points(t, p), (theta, pts))
    assert torch.autograd.gradcheck(lambda t, p: tps_points(t, p, reg_factor=0.2), (theta, pts))
    # exactly on a control point (d = 0) the gradient must stay finite
    on_ctrl = tps_control_points(dtype=torch.float64).unsqueeze(0).clone().requires_grad_()
    out = tps_points(theta[:1], on_ctrl)
    out.sum().backward()
    assert torch.isfinite(on_ctrl.grad).all()


def test_tps_after_inference_mode_still_differentiable(rng):
    """The cached L^-1 must not become an inference tensor when first built during evaluation."""
    from weakalign.geometry import tps as tps_module

    tps_module._l_inverse_cpu64.cache_clear()
    theta = random_tps(2, rng, dtype=torch.float64)
    pts = torch.rand(2, 2, 5, generator=rng, dtype=torch.float64) * 2 - 1
    with torch.inference_mode():
        tps_points(theta, pts)
    theta = theta.clone().requires_grad_()
    tps_points(theta, pts).sum().backward()
    assert torch.isfinite(theta.grad).all()


def test_composition_is_tps_then_affine(rng):
    ta, tt = random_affine(2, rng), random_tps(2, rng)
    p = torch.rand(2, 2, 30, generator=rng) * 2 - 1
    expected = affine_points(ta, tps_points(tt, p))
    assert torch.allclose(transform_points("affine_tps", p, ta, tt), expected)
    assert not torch.allclose(expected, tps_points(tt, affine_points(ta, p)), atol=1e-3)
    g = sampling_grid("affine_tps", 5, 6, ta, tt)
    assert torch.allclose(g.reshape(2, 30, 2).transpose(1, 2), affine_points(ta, tps_points(tt, normalized_grid(5, 6, 2).reshape(2, 30, 2).transpose(1, 2))))


def test_translation_by_one_pixel_shifts_image():
    img = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 6)
    theta = torch.tensor([[1.0, 0, 2 / 5, 0, 1.0, 0]])  # one pixel in x for w = 6
    out = warp(img, "affine", theta_aff=theta)
    assert torch.allclose(out[..., :-1], img[..., 1:], atol=1e-5)
    assert torch.all(out[..., -1] == 0)  # outside the source: zeros


@pytest.mark.parametrize("origin", [0.0, 1.0])
def test_pixel_normalized_round_trip(origin, rng):
    size = torch.tensor([[40.0, 60.0], [17.0, 33.0]])
    pts = torch.rand(2, 2, 11, generator=rng) * 50
    back = normalized_to_pixel(pixel_to_normalized(pts, size, origin), size, origin)
    assert torch.allclose(back, pts, atol=1e-4)
    corners = torch.tensor([[[origin, 59 + origin], [origin, 39 + origin]]])
    assert torch.allclose(pixel_to_normalized(corners, (40, 60), origin), torch.tensor([[[-1.0, 1.0], [-1.0, 1.0]]]))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="B x 2 x N"):
        affine_points(affine_identity(1), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="B x 6"):
        affine_grid(torch.zeros(1, 5), 4, 4)
    with pytest.raises(ValueError, match="B x 18"):
        tps_points(torch.zeros(1, 17), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="unknown transform"):
        transform_points("homography", torch.zeros(1, 2, 3))


def test_tps_grid_with_cached_kernel_equals_pointwise_tps(rng):
    """tps_grid caches the theta-independent kernel of the regular grid: the grid must equal the
    point-wise spline of the same grid points bit for bit, in every size, after an
    inference-mode first call, and keep its gradient."""
    from weakalign.geometry import grid_to_points, normalized_grid, points_to_grid, tps_grid, tps_points

    for h, w in ((7, 5), (12, 12), (7, 5)):
        with torch.inference_mode():
            tps_grid(torch.rand(1, 18, generator=rng), h, w)
        theta = (torch.rand(3, 18, generator=rng) - 0.5).requires_grad_(True)
        ref = points_to_grid(tps_points(theta, grid_to_points(normalized_grid(h, w, 3))), h, w)
        got = tps_grid(theta, h, w)
        assert torch.equal(got, ref)
        got.square().sum().backward()
        assert theta.grad is not None and torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
