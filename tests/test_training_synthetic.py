"""Synthetic strong-supervision pairs: reference ranges, mirror padding, theta convention."""

import math

import numpy as np
import pytest
import torch

from weakalign.geometry import normalized_grid, sampling_grid, tps_identity, warp_image
from weakalign.training.synthetic import (
    SyntheticPairs,
    keyed_generator,
    keyed_seed,
    random_affine,
    random_tps,
    symmetric_pad,
    synth_pair,
)


def test_keyed_generator_is_stable_and_key_sensitive():
    assert keyed_seed(1, "train", 3) == keyed_seed(1, "train", 3)
    assert keyed_seed(1, "train", 3) != keyed_seed(1, "train", 4)
    a = torch.rand(5, generator=keyed_generator(7, "x"))
    b = torch.rand(5, generator=keyed_generator(7, "x"))
    assert torch.equal(a, b)


def test_random_affine_follows_the_reference_formula():
    th = random_affine(keyed_generator(0), 20000).double()
    u = torch.rand(20000, 7, generator=keyed_generator(0), dtype=torch.float64)  # same draws
    alpha = (u[:, 6] - 0.5) * 2 * math.pi / 6
    s = 1 + (u[:, [0, 1, 3, 4]] - 0.5) * 2 * 0.5
    expected = torch.stack((s[:, 0] * torch.cos(alpha), -s[:, 1] * torch.sin(alpha), (u[:, 2] - 0.5) * 2 * 0.5,
                            s[:, 2] * torch.sin(alpha), s[:, 3] * torch.cos(alpha), (u[:, 5] - 0.5) * 2 * 0.5), 1)
    assert torch.allclose(th, expected, atol=1e-6)
    # ranges: +-30 degrees, scales 0.5..1.5, translations +-0.5
    assert alpha.abs().max() <= math.pi / 6 and s.min() >= 0.5 and s.max() <= 1.5
    assert th[:, [2, 5]].abs().max() <= 0.5 and th[:, [2, 5]].abs().max() > 0.49


def test_random_tps_perturbs_the_identity_within_range():
    th = random_tps(keyed_generator(1), 5000)
    d = th - tps_identity(5000)
    assert d.abs().max() <= 0.4 + 1e-6 and d.abs().max() > 0.39
    assert abs(float(d.mean())) < 0.01


def test_symmetric_pad_matches_numpy_symmetric():
    img = torch.rand(3, 7, 10)
    out = symmetric_pad(img, 0.5)
    ref = np.pad(img.numpy(), ((0, 0), (3, 3), (5, 5)), mode="symmetric")
    assert out.shape == (3, 13, 20)
    assert np.array_equal(out.numpy(), ref)


@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_implicit_padding_equals_explicit_padding(kind):
    torch.manual_seed(0)
    img = torch.rand(3, 3, 48, 64)
    theta = random_affine(keyed_generator(3), 3) if kind == "affine" else random_tps(keyed_generator(3), 3)
    src, tgt = synth_pair(img, kind, theta, (24, 24), 0.5, 9 / 16)
    padded = symmetric_pad(img, 0.5)
    s = 0.5 * 9 / 16
    kw = {"theta_aff": theta} if kind == "affine" else {"theta_tps": theta}
    src_ref = warp_image(padded, normalized_grid(24, 24, 3) * s)
    tgt_ref = warp_image(padded, sampling_grid(kind, 24, 24, **kw) * s)
    assert torch.allclose(src, src_ref, atol=1e-5)
    assert torch.allclose(tgt, tgt_ref, atol=1e-5)


def test_grid_leaving_the_padded_image_reads_zeros_like_the_reference():
    img = torch.rand(1, 3, 20, 30)
    theta = torch.tensor([[5.0, 0.0, 0.0, 0.0, 5.0, 0.0]])  # far outside the padded image
    _, tgt = synth_pair(img, "affine", theta, (16, 16), 0.5, 9 / 16)
    ref = warp_image(symmetric_pad(img, 0.5), sampling_grid("affine", 16, 16, theta_aff=theta) * (0.5 * 9 / 16))
    assert torch.allclose(tgt, ref.clamp(0, 1), atol=1e-6)
    assert float(tgt[..., 0, 0].abs().sum()) == 0.0


def test_theta_maps_target_to_source():
    """A pure translation: the target at pixel p shows what the source shows at p + t."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    img = torch.stack((xs, ys, xs * ys))[None]  # smooth, position-coding image
    shift = 0.25  # in crop-normalised units
    theta = torch.tensor([[1.0, 0.0, shift, 0.0, 1.0, 0.0]])
    src, tgt = synth_pair(img, "affine", theta, (33, 33), 0.5, 9 / 16)
    # crop spans [-1, 1] over 33 px -> 0.25 = 4 px; target column c == source column c + 4
    assert torch.allclose(tgt[..., :, :-4], src[..., :, 4:], atol=1e-4)


def test_synthetic_pairs_are_a_function_of_the_keys(tmp_path):
    from PIL import Image

    paths = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        Image.fromarray((np.random.default_rng(i).random((40, 50, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    data = {"load_size": [48, 64], "padding_factor": 0.5, "crop_factor": 9 / 16, "random_t": 0.5, "random_s": 0.5,
            "random_alpha": 1 / 6, "random_t_tps": 0.4}
    a = SyntheticPairs(paths, "affine", data, (24, 24), seed=1, tag="train", pairs_per_image=2)
    b = SyntheticPairs(paths, "affine", data, (24, 24), seed=1, tag="train", pairs_per_image=2)
    assert len(a) == 4
    assert torch.equal(a[3]["target_image"], b[3]["target_image"])
    assert not torch.equal(a.theta(2), a.theta(3))  # two pairs of one photo differ
    assert torch.equal(a[2]["source_image"], a[3]["source_image"])  # ... but share the source
    fixed = a.theta(1)
    a.set_epoch(5)
    assert torch.equal(a.theta(1), fixed)  # fixed pairs ignore the epoch
    fresh = SyntheticPairs(paths, "affine", data, (24, 24), seed=1, tag="train", fresh_each_epoch=True)
    t0 = fresh.theta(1)
    fresh.set_epoch(1)
    assert not torch.equal(fresh.theta(1), t0)  # --random-sample: new each epoch


@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_warp_on_device_equals_per_item_pairs(tmp_path, kind):
    """Issue 18: pairs made per batch by ``warp_batch`` (the training device's path) equal the
    per-item CPU generator's for the same seed, including a batch where one transformation
    leaves the padded image (zeros there; the batch then takes the padded-image path)."""
    from PIL import Image
    from torch.utils.data import default_collate

    from weakalign.training.synthetic import warp_batch

    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        Image.fromarray((np.random.default_rng(10 + i).random((40 + 7 * i, 50, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    data = {"load_size": [48, 64], "padding_factor": 0.5, "crop_factor": 9 / 16, "random_t": 0.5, "random_s": 0.5,
            "random_alpha": 1 / 6, "random_t_tps": 0.4}
    kw = dict(seed=3, tag="train", pairs_per_image=2, fresh_each_epoch=True)
    cpu = SyntheticPairs(paths, kind, data, (24, 24), **kw)
    dev = SyntheticPairs(paths, kind, data, (24, 24), warp_on_device=True, **kw)
    for ds in (cpu, dev):
        ds.set_epoch(2)
    batch = default_collate([dev[i] for i in range(len(dev))])
    assert set(batch) == {"photo", "theta", "index"} and batch["photo"].shape == (6, 3, 48, 64)
    made = warp_batch(batch, kind, (24, 24), 0.5, 9 / 16, device="cpu")
    for i in range(len(cpu)):
        ref = cpu[i]
        assert torch.equal(made["theta"][i], ref["theta"])
        torch.testing.assert_close(made["source_image"][i], ref["source_image"], atol=1e-5, rtol=0)
        torch.testing.assert_close(made["target_image"][i], ref["target_image"], atol=1e-5, rtol=0)
    # one transformation far outside the padded image: zeros are read there, the others unchanged
    big = batch["theta"].clone()
    big[0] = big[0] * 3.0
    made2 = warp_batch({**batch, "theta": big}, kind, (24, 24), 0.5, 9 / 16, device="cpu")
    assert float(made2["target_image"][0].min()) == 0.0
    torch.testing.assert_close(made2["target_image"][1:], made["target_image"][1:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="warp_on_device"):
        SyntheticPairs(paths, kind, data, (24, 24), 3, "train", warp_on_device=True, target_only=True)
