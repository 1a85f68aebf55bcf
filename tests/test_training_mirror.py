"""Mirror augmentation of cached strong pairs (weakalign/training/mirror.py)."""

from __future__ import annotations

import pytest
import torch

from weakalign.geometry import affine_identity, tps_identity, warp
from weakalign.models.correlation import FeatureCorrelation
from weakalign.training.mirror import mirror_features, mirror_theta
from weakalign.training.strong import CachedPairs


def _warp(image, theta):
    kind = "affine" if theta.shape[-1] == 6 else "tps"
    return warp(image, kind, theta_aff=theta if kind == "affine" else None, theta_tps=theta if kind == "tps" else None)


@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_mirrored_theta_warps_the_mirrored_image(kind):
    """Oracle: warping the mirrored source with theta' gives the mirrored target (the image grid
    is symmetric under x -> -x with align_corners=True, so this holds to round-off)."""
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 40, 40, generator=g), 3, 1, 1)
    base = affine_identity(2) if kind == "affine" else tps_identity(2)
    theta = base + 0.15 * torch.randn(base.shape, generator=g)
    target = _warp(image, theta)
    mirrored = _warp(image.flip(-1), mirror_theta(theta))
    torch.testing.assert_close(mirrored, target.flip(-1), atol=1e-5, rtol=0)
    assert not torch.allclose(mirror_theta(theta), theta)
    torch.testing.assert_close(mirror_theta(mirror_theta(theta)), theta)  # an involution
    torch.testing.assert_close(mirror_theta(base), base)  # the identity is mirror-symmetric


def test_mirrored_features_permute_the_correlation():
    """The correlation of two mirrored maps is the original one with both position sets
    mirrored: corr'[(xA, yA), yB, xB] = corr[(w-1-xA, yA), yB, w-1-xB]."""
    g = torch.Generator().manual_seed(1)
    fa, fb = torch.randn(1, 8, 5, 6, generator=g), torch.randn(1, 8, 5, 6, generator=g)
    corr = FeatureCorrelation()
    c, cm = corr(fa, fb), corr(mirror_features(fa), mirror_features(fb))
    h, w = fa.shape[-2:]
    c4 = c.reshape(1, w, h, h, w)  # channel k = xA * h + yA
    expected = c4.flip(1).flip(-1).reshape(c.shape)
    torch.testing.assert_close(cm, expected)
    assert not torch.allclose(cm, c)


def test_cached_pairs_mirroring_is_keyed_and_exact():
    f_src, f_tgt = torch.randn(3, 4, 5, 5), torch.randn(6, 4, 5, 5)
    theta = affine_identity(6) + 0.1 * torch.randn(6, 6)
    plain = CachedPairs(f_src, f_tgt, theta, 2)
    assert all(torch.equal(plain[i]["theta"], theta[i]) for i in range(6))
    always = plain.with_mirroring(1.0, seed=1)
    item = always[3]
    assert torch.equal(item["f_src"], f_src[1].flip(-1)) and torch.equal(item["f_tgt"], f_tgt[3].flip(-1))
    assert torch.equal(item["theta"], mirror_theta(theta[3]))
    half_a, half_b = plain.with_mirroring(0.5, seed=1), plain.with_mirroring(0.5, seed=1)
    flags = [half_a.mirrored(i) for i in range(6)]
    assert flags == [half_b.mirrored(i) for i in reversed(range(6))][::-1]  # order-independent
    many = CachedPairs(f_src, torch.randn(400, 4, 5, 5), affine_identity(400), 200).with_mirroring(0.5, seed=1)
    share = sum(many.mirrored(i) for i in range(400)) / 400
    assert 0.4 < share < 0.6
    before = [many.mirrored(i) for i in range(50)]
    many.set_epoch(1)
    assert [many.mirrored(i) for i in range(50)] != before  # new draws every epoch


def test_mirror_prob_validation():
    from weakalign.cli import UserError
    from weakalign.training.params import resolve

    doc = {"train_strong": {"mirror_prob": 1.5}}
    with pytest.raises(UserError, match="mirror_prob"):
        resolve("train_strong", doc)
    with pytest.raises(UserError, match="mirror_prob"):
        resolve("train_strong", {"train_strong": {"mirror_prob": 0.5, "pairs": "random"}})
    assert resolve("train_strong", {"train_strong": {"mirror_prob": 0.5}}).mirror_prob == 0.5
    with pytest.raises(ValueError, match="expected 6"):
        mirror_theta(torch.zeros(7))
