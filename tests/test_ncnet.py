"""NCNet (weakalign.ncnet): Conv4d, mutual matching, consensus symmetry, loss, keypoint transfer,
checkpoints (suite and reference layouts), predictions for the evaluation cache, training.

Everything is small: hand-made feature maps, the tiny stride-16 backbone of ``tiny_backbone.py``.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_backbone import TinyBackbone

from weakalign.cli import UserError
from weakalign.models.checkpoints import CheckpointFormatError, safe_load
from weakalign.ncnet import (
    Conv4d,
    NCNet,
    NCNetConfig,
    NeighConsensus,
    conv4d,
    corr_to_matches,
    correlation_4d,
    load_ncnet_checkpoint,
    match_field,
    matching_score,
    mutual_matching,
    predict_pairs_ncnet,
    reference_checkpoint,
    save_ncnet_checkpoint,
    swap_ab,
    to_reference_state_dict,
    transfer_keypoints_ncnet,
    transfer_points,
    weak_loss,
)
from weakalign.ncnet.checkpoints import map_reference_ncnet_keys, ncnet_from_reference
from weakalign.ncnet.params import resolve_ncnet

TINY = NCNetConfig(backbone="tiny", image_size=(96, 112), kernel_sizes=(3, 3), channels=(4, 1))


def direct_conv4d(x, w, b):
    """Definition of the 4D 'same' cross-correlation: a sum over every kernel offset."""
    k = w.shape[2:]
    p = [s // 2 for s in k]
    xp = F.pad(x, (p[3], p[3], p[2], p[2], p[1], p[1], p[0], p[0]))
    size = x.shape[2:]
    out = torch.zeros(x.shape[0], w.shape[0], *size, dtype=x.dtype)
    for a, bb, c, d in itertools.product(*(range(s) for s in k)):
        win = xp[:, :, a:a + size[0], bb:bb + size[1], c:c + size[2], d:d + size[3]]
        out = out + torch.einsum("oc,bcijkl->boijkl", w[:, :, a, bb, c, d], win)
    return out + b.view(1, -1, 1, 1, 1, 1)


def unit_features(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=1)


# --- Conv4d ----------------------------------------------------------------------------------


@pytest.mark.parametrize("c_in,c_out,k", [(1, 3, (3, 3, 3, 3)), (2, 3, (3, 5, 1, 3)), (3, 1, (5, 3, 3, 3))])
def test_conv4d_equals_direct_computation(c_in, c_out, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, 4, 5, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c_out, c_in, *k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=g, dtype=torch.float64, requires_grad=True)
    want = direct_conv4d(x, w, b)
    gout = torch.randn(want.shape, generator=g, dtype=torch.float64)
    ref = torch.autograd.grad(want, (x, w, b), gout)
    for impl in ("loop", "stack_input", "stack_output", "auto"):
        got = conv4d(x, w, b, impl)
        assert got.shape == want.shape == (2, c_out, 4, 5, 3, 6)
        assert torch.allclose(got, want, atol=1e-10), impl
        for a, r in zip(torch.autograd.grad(got, (x, w, b), gout), ref):
            assert torch.allclose(a, r, atol=1e-9), impl


def test_conv4d_module_init_and_errors():
    torch.manual_seed(0)
    m = Conv4d(2, 4, 3)
    bound = 1 / np.sqrt(2 * 3**4)
    assert m.weight.shape == (4, 2, 3, 3, 3, 3) and m.weight.abs().max() <= bound and m.bias.abs().max() <= bound
    assert m.weight.std() > bound / 3  # not degenerate
    with pytest.raises(ValueError, match="6 dims"):
        m(torch.zeros(1, 2, 3, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        m(torch.zeros(1, 3, 3, 3, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        Conv4d(1, 1, 4)
    with pytest.raises(ValueError, match="impl"):
        conv4d(torch.zeros(1, 1, 3, 3, 3, 3), torch.zeros(1, 1, 3, 3, 3, 3), impl="fast")


# --- correlation and mutual matching ----------------------------------------------------------


def test_correlation_layout():
    fa, fb = unit_features(2, 5, 3, 4), unit_features(2, 5, 2, 6, seed=1)
    corr = correlation_4d(fa, fb)
    assert corr.shape == (2, 1, 3, 4, 2, 6)
    assert torch.isclose(corr[1, 0, 2, 1, 0, 5], (fa[1, :, 2, 1] * fb[1, :, 0, 5]).sum())
    with pytest.raises(ValueError, match="disagree"):
        correlation_4d(fa, unit_features(2, 4, 3, 4))
    with pytest.raises(ValueError, match="B x C x h x w"):
        correlation_4d(fa[0], fb)


def test_mutual_matching_is_symmetric_and_keeps_mutual_best_matches():
    corr = correlation_4d(unit_features(2, 6, 3, 4), unit_features(2, 6, 4, 3, seed=1)).relu()
    out = mutual_matching(corr)
    assert torch.equal(mutual_matching(swap_ab(corr)), swap_ab(out))  # exactly swap-equivariant
    flat = corr.reshape(2, 12, 12)
    best_b = flat.argmax(2)  # best B cell of every A cell
    best_a = flat.argmax(1)  # best A cell of every B cell
    mutual = torch.zeros_like(flat, dtype=torch.bool)
    for n in range(2):
        for i in range(12):
            if best_a[n, best_b[n, i]] == i:
                mutual[n, i, best_b[n, i]] = True
    assert mutual.any() and (~mutual).any()
    o = out.reshape(2, 12, 12)
    assert torch.allclose(o[mutual], flat[mutual], rtol=1e-4)  # value unchanged (up to eps)
    assert (o[~mutual] < flat[~mutual] * (1 - 1e-4) + 1e-12).all()  # everything else scaled down
    with pytest.raises(ValueError, match="hA x wA x hB x wB"):
        mutual_matching(corr[:, 0])


@pytest.mark.parametrize("shape", [(4, 4, 4, 4), (3, 4, 5, 2)])
def test_symmetric_consensus_is_swap_equivariant(shape):
    torch.manual_seed(0)
    nc = NeighConsensus((3, 3), (2, 1), symmetric=True).double()
    with torch.no_grad():
        for conv in nc.convs:  # positive filters: no dead ReLUs, a non-trivial output
            conv.weight.abs_()
    corr = torch.rand(2, 1, *shape, dtype=torch.float64)
    out = nc(corr)
    assert out.shape == corr.shape and (out >= 0).all() and (out > 0).any()
    assert torch.allclose(nc(swap_ab(corr)), swap_ab(out), atol=1e-12)
    plain = NeighConsensus((3, 3), (2, 1), symmetric=False).double()
    plain.load_state_dict(nc.state_dict())
    assert not torch.allclose(plain(swap_ab(corr)), swap_ab(plain(corr)))  # the test can fail
    with pytest.raises(ValueError, match="1 channel"):
        NeighConsensus((3, 3), (4, 2))
    with pytest.raises(ValueError, match="B x 1"):
        nc(torch.rand(2, 2, *shape))


# --- loss ------------------------------------------------------------------------------------


def test_matching_score_values():
    corr = torch.zeros(1, 1, 2, 2, 2, 2)
    assert matching_score(corr).item() == pytest.approx(0.25)  # uniform softmax over 4 cells
    peaked = torch.zeros(1, 1, 2, 2, 2, 2)
    for y, x in itertools.product(range(2), range(2)):
        peaked[0, 0, y, x, y, x] = 10.0
    assert matching_score(peaked).item() > 0.99


def test_weak_loss_separates_positives_from_negatives_after_training():
    torch.manual_seed(0)
    n, c, h, w = 6, 8, 5, 5
    fa = F.normalize(torch.randn(n, c, h, w), dim=1)
    fb = F.normalize(fa.roll(1, dims=3) + 0.3 * torch.randn(n, c, h, w), dim=1)  # B = shifted A + noise
    model = NCNet(TINY, backbone=TinyBackbone())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    loss0, s0 = weak_loss(model, fa, fb)
    for _ in range(15):
        opt.zero_grad()
        loss, _ = weak_loss(model, fa, fb)
        loss.backward()
        opt.step()
    loss1, s1 = weak_loss(model, fa, fb)
    assert loss1 < loss0 - 0.03
    assert (s1["score_pos"] > s1["score_neg"] + 0.03).all()  # every positive beats every negative
    assert (s1["score_pos"] - s1["score_neg"]).mean() > (s0["score_pos"] - s0["score_neg"]).mean() + 0.03
    assert loss0.requires_grad and s0["score_pos"].shape == (n,)
    assert all(p.grad is None for p in model.feature_extraction.parameters())  # backbone frozen
    with pytest.raises(ValueError, match="batch sizes"):
        weak_loss(model, fa, fb[:3])


# --- matches and keypoint transfer -----------------------------------------------------------


def _grid_points(h, w):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack((xs.reshape(-1), ys.reshape(-1)))


def test_identical_images_transfer_points_to_themselves():
    f = unit_features(1, 16, 5, 7).float()
    corr = mutual_matching(correlation_4d(f, f))
    m = corr_to_matches(corr)
    assert torch.equal(m.index[0], torch.arange(35))
    assert torch.allclose(m.match_xy, m.query_xy)
    pts = torch.tensor([[[-1.0, -0.3, 0.25, 1.0], [-1.0, 0.6, -0.1, 1.0]]])  # between cell centres too
    assert torch.allclose(transfer_points(corr, pts), pts, atol=1e-6)
    # pixels, different image sizes: a target pixel goes to the same relative position
    src_hw, tgt_hw = (100, 200), (50, 70)
    tgt_px = torch.tensor([[[1.0, 35.5, 70.0], [1.0, 25.5, 50.0]]])
    src_px = transfer_keypoints_ncnet(corr, tgt_px, tgt_hw, src_hw)
    want = torch.tensor([[[1.0, 1 + 34.5 * 199 / 69, 200.0], [1.0, 1 + 24.5 * 99 / 49, 100.0]]])
    assert torch.allclose(src_px, want, atol=1e-3)


def test_shifted_features_give_the_shift():
    h, w = 6, 8
    fa = unit_features(1, 32, h, w, seed=3).float()
    fb = fa[..., 1:]  # target = source without its first column: target cell x is source cell x + 1
    corr = mutual_matching(correlation_4d(fa, fb))
    field = match_field(corr)  # target -> source
    centres_a = _grid_points(h, w).reshape(2, h, w)
    assert field.shape == (1, 2, h, w - 1)
    assert torch.allclose(field[0], centres_a[:, :, 1:])
    back = match_field(corr, "source_to_target")  # source cell x -> target cell x - 1 (x >= 1)
    centres_b = _grid_points(h, w - 1).reshape(2, h, w - 1)
    assert torch.allclose(back[0, :, :, 1:], centres_b)
    # a target point half-way between two cell centres lands half-way between their matches
    tx = torch.tensor([[[-1 + 1 / 6], [0.2]]])  # x half-way between target cells 0 and 1 (step 1/3)
    got = transfer_points(corr, tx)
    assert torch.allclose(got, torch.tensor([[[-1 + 2 / 7 + 1 / 7], [0.2]]]), atol=1e-5)
    near = transfer_points(corr, torch.tensor([[[-0.95], [-1.0]]]), interpolation="nearest")
    assert torch.allclose(near, torch.tensor([[[-1 + 2 / 7], [-1.0]]]), atol=1e-6)
    soft = corr_to_matches(corr * 50, softmax=True, method="soft_argmax", beta=1.0)
    assert torch.allclose(soft.match_xy, field.reshape(1, 2, -1), atol=0.05)


def test_transfer_rejects_bad_inputs():
    corr = torch.rand(2, 1, 3, 3, 4, 4)
    with pytest.raises(ValueError, match="B x 2 x N"):
        transfer_points(corr, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="batch size"):
        transfer_points(corr, torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="direction"):
        corr_to_matches(corr, direction="a_to_b")
    with pytest.raises(ValueError, match="interpolation"):
        transfer_points(corr, torch.zeros(2, 2, 5), interpolation="cubic")
    with pytest.raises(ValueError, match="B x 1 x hA"):
        corr_to_matches(corr[:, 0])


# --- model and checkpoints -------------------------------------------------------------------


def test_model_forward_and_errors():
    torch.manual_seed(0)
    model = NCNet(TINY, backbone=TinyBackbone()).eval()
    assert model.feature_size() == (6, 7)
    src, tgt = torch.rand(2, 3, 96, 112), torch.rand(2, 3, 96, 112)
    with torch.no_grad():
        corr = model(src, tgt)
        assert corr.shape == (2, 1, 6, 7, 6, 7)
        assert torch.allclose(corr, model.forward_features(model.extract(src), model.extract(tgt)))
        # symmetric consensus + symmetric mutual matching: swapping the images swaps the output
        assert torch.allclose(model(tgt, src), swap_ab(corr), atol=1e-6)
    assert not any(p.requires_grad for p in model.feature_extraction.parameters())
    model.train()
    assert model.neigh_consensus.training and not model.feature_extraction.training
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        model(src[:, :2], tgt)
    with pytest.raises(ValueError, match="batch sizes"):
        model(src, tgt[:1])
    assert model.set_finetune(1) == ["neigh_consensus", "last 1 backbone block(s)"] and not model.backbone_frozen


def test_suite_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = NCNet(TINY, backbone=TinyBackbone()).eval()
    save_ncnet_checkpoint(tmp_path / "nc.pt", model, meta={"stage": "test"})
    ckpt = safe_load(tmp_path / "nc.pt")
    assert ckpt["geometric_model"] == "ncnet" and ckpt["config"]["channels"] == [4, 1]
    loaded, _ = load_ncnet_checkpoint(tmp_path / "nc.pt", backbone_factory=TinyBackbone)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.rand(1, 3, 96, 112)
    with torch.no_grad():
        assert torch.equal(model(x, x.flip(-1)), loaded(x, x.flip(-1)))
    with pytest.raises(CheckpointFormatError, match="neither"):
        load_ncnet_checkpoint({"state_dict": {"foo": torch.zeros(1)}})


def test_reference_checkpoint_layout_and_round_trip():
    torch.manual_seed(0)
    model = NCNet(NCNetConfig(backbone="tiny", image_size=(96, 96), kernel_sizes=(3, 5), channels=(2, 1)), backbone=TinyBackbone())
    ref = reference_checkpoint(model)
    sd = ref["state_dict"]
    # reference names and the pre-permuted filter layout k1 x C_out x C_in x k2 x k3 x k4
    assert sd["NeighConsensus.conv.0.weight"].shape == (3, 2, 1, 3, 3, 3)
    assert sd["NeighConsensus.conv.2.weight"].shape == (5, 1, 2, 5, 5, 5)
    assert sd["NeighConsensus.conv.2.bias"].shape == (1,)
    assert "FeatureExtraction.model.0.weight" in sd and ref["args"].ncons_channels == [2, 1]
    # a reference-layout filter bank applied the reference's way (a 3D convolution per slice of
    # the first axis, filters[p] for offset p) equals our Conv4d with the mapped weights
    wref, bias = sd["NeighConsensus.conv.2.weight"].double(), sd["NeighConsensus.conv.2.bias"].double()
    x = torch.rand(1, 2, 5, 4, 6, 5, dtype=torch.float64)
    pad = wref.shape[0] // 2
    xp = F.pad(x, (0, 0, 0, 0, 0, 0, pad, pad))
    slices = []
    for i in range(x.shape[2]):
        acc = sum(F.conv3d(xp[:, :, i + p], wref[p], padding=pad) for p in range(wref.shape[0]))
        slices.append(acc + bias.view(1, -1, 1, 1, 1))
    want = torch.stack(slices, dim=2)
    mapped = map_reference_ncnet_keys(sd)
    assert torch.allclose(conv4d(x, mapped["neigh_consensus.convs.1.weight"].double(), bias), want, atol=1e-10)
    # full round trip through the loader
    loaded = ncnet_from_reference(ref, backbone_factory=TinyBackbone)
    assert loaded.config.kernel_sizes == (3, 5) and loaded.config.channels == (2, 1) and loaded.config.image_size == (96, 96)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    again = to_reference_state_dict(loaded)
    assert all(torch.equal(v, again[k]) for k, v in sd.items())
    model2, _ = load_ncnet_checkpoint(ref, backbone_factory=TinyBackbone)
    assert torch.equal(model2.neigh_consensus.convs[0].weight, model.neigh_consensus.convs[0].weight)


def test_reference_checkpoint_errors():
    torch.manual_seed(0)
    model = NCNet(TINY, backbone=TinyBackbone())
    ref = reference_checkpoint(model)
    ref["args"].ncons_channels = [16, 1]
    with pytest.raises(CheckpointFormatError, match="ncons_channels"):
        ncnet_from_reference(ref, backbone_factory=TinyBackbone)
    ref = reference_checkpoint(model)
    ref["state_dict"]["Something.else"] = torch.zeros(1)
    with pytest.raises(CheckpointFormatError, match="unexpected keys"):
        ncnet_from_reference(ref, backbone_factory=TinyBackbone)
    ref = reference_checkpoint(model)
    ref["state_dict"]["NeighConsensus.conv.0.weight"] = ref["state_dict"]["NeighConsensus.conv.0.weight"].permute(1, 2, 0, 3, 4, 5)
    with pytest.raises(CheckpointFormatError, match="pre-permuted"):
        ncnet_from_reference(ref, backbone_factory=TinyBackbone)
    ref = reference_checkpoint(model)
    del ref["state_dict"]["NeighConsensus.conv.2.weight"], ref["state_dict"]["NeighConsensus.conv.2.bias"]
    ref["args"].ncons_channels, ref["args"].ncons_kernel_sizes = None, None
    with pytest.raises(CheckpointFormatError, match="1 channel"):
        ncnet_from_reference(ref, backbone_factory=TinyBackbone)


def test_reference_resnet101_keys_map_onto_the_suite_backbone():
    """The released files' backbone keys (FeatureExtraction.model.<i>.*, ResNet-101 to layer3)
    are exactly the suite's resnet101 body keys."""
    from weakalign.models.backbones import build_backbone

    body = build_backbone("resnet101", weights="random").body.state_dict()
    sd = {f"FeatureExtraction.model.{k}": v for k, v in body.items() if not k.endswith("num_batches_tracked")}
    sd["NeighConsensus.conv.0.weight"] = torch.zeros(5, 16, 1, 5, 5, 5)
    sd["NeighConsensus.conv.0.bias"] = torch.zeros(16)
    sd["NeighConsensus.conv.2.weight"] = torch.zeros(5, 16, 16, 5, 5, 5)
    sd["NeighConsensus.conv.2.bias"] = torch.zeros(16)
    sd["NeighConsensus.conv.4.weight"] = torch.zeros(5, 1, 16, 5, 5, 5)
    sd["NeighConsensus.conv.4.bias"] = torch.zeros(1)
    mapped = map_reference_ncnet_keys(sd)
    assert {k[len("feature_extraction.backbone.body."):] for k in mapped if k.startswith("feature_extraction.")} == \
        {k for k in body if not k.endswith("num_batches_tracked")}
    from weakalign.ncnet.checkpoints import reference_ncnet_config

    cfg = reference_ncnet_config({"state_dict": sd, "args": {"ncons_kernel_sizes": [5, 5, 5], "ncons_channels": [16, 16, 1]}})
    assert (cfg.backbone, cfg.image_size, cfg.kernel_sizes, cfg.channels) == ("resnet101", (400, 400), (5, 5, 5), (16, 16, 1))


# --- predictions for the evaluation cache ----------------------------------------------------


def test_predictions_have_the_evaluation_format(tiny_willow):
    from weakalign.evaluation.commands import compute_metrics
    from weakalign.evaluation.metrics import pck_table
    from weakalign.evaluation.pck import PCKProtocol

    torch.manual_seed(0)
    model = NCNet(NCNetConfig(backbone="tiny", image_size=(128, 128), kernel_sizes=(3,), channels=(1,)), backbone=TinyBackbone())
    pred = predict_pairs_ncnet(model, tiny_willow, batch_size=5, progress=False, optimize=False, reuse_memory=False)
    assert pred["kinds"] == ["ncnet"] and pred["theta_aff"] is None and pred["theta_tps"] is None
    assert pred["transferred"]["ncnet"].shape == pred["target_points"].shape == (12, 2, 10)
    assert pred["source_size"].shape == (12, 2) and pred["dataset"] == "pf-willow" and pred["seconds"] > 0
    # one pair at a time through the full model gives the same points
    from weakalign.data.images import load_image, to_tensor

    r = tiny_willow.records[3]
    src = load_image(tiny_willow.image_root / r.source, exif_transpose=False)
    tgt = load_image(tiny_willow.image_root / r.target, exif_transpose=False)
    with torch.no_grad():
        corr = model(to_tensor(src, (128, 128))[None], to_tensor(tgt, (128, 128))[None])
    one = transfer_keypoints_ncnet(corr, pred["target_points"][3:4], tgt.shape[:2], src.shape[:2])
    assert torch.allclose(one, pred["transferred"]["ncnet"][3:4], atol=1e-3)
    # the metrics code takes it as it is
    res = pck_table(pred, PCKProtocol("bbox", (0.1,)), "ncnet")["result"]
    assert 0.0 <= res.pck[0.1] <= 1.0 and res.num_pairs == 12
    status = {"pf-willow": {"available": True, "pairs": 12, "models": {"ncnet": {"available": True, "predictions": "x"}}}}
    metrics, tables, curves = compute_metrics(status, lambda rel: pred, [0.05, 0.1])
    assert "ncnet" in metrics["pf-willow"]["models"]["ncnet"] and "| ncnet | ncnet |" in tables
    with pytest.raises(TypeError, match="NCNet"):
        predict_pairs_ncnet(torch.nn.Linear(2, 2), tiny_willow)


# --- training --------------------------------------------------------------------------------


def _write_pairs(root: Path) -> None:
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    names = []
    for i in range(10):
        rng = np.random.default_rng(200 + i)
        a = gaussian_filter(rng.random((60, 80, 3)), sigma=(3, 3, 0))
        a = (a - a.min()) / (a.max() - a.min() + 1e-9)
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray((a * 255).astype(np.uint8)).save(root / f"img/{i}.png")
        names.append(f"img/{i}.png")
    rows = lambda idx: "".join(f"{names[i]},{names[j]},c,{i % 2}\n" for i, j in idx)  # noqa: E731
    (root / "train.csv").write_text("source_image,target_image,class,flip\n" + rows([(i, (i + 1) % 6) for i in range(6)]))
    (root / "val.csv").write_text("source_image,target_image,class,flip\n" + rows([(6 + i, 6 + (i + 1) % 4) for i in range(4)]))


def _train_cfg(root: Path, out: Path, **over) -> dict:
    block = {
        "model": {"backbone": "tiny", "backbone_weights": "random", "image_size": [96, 96], "kernel_sizes": [3], "channels": [1]},
        "data": {"train": {"csv": str(root / "train.csv"), "image_root": str(root)},
                 "val": {"csv": str(root / "val.csv"), "image_root": str(root)}, "max_train_pairs": 0},
        "batch_size": 3,  # 6 pairs: 2 steps per epoch
        "schedule": [{"epochs": 2, "lr": 1e-2}],
        "checkpoint_every": 1,
        "cache_dir": str(out / "cache"),
        "outputs": {"checkpoint": str(out / "ncnet.pt"), "state": str(out / "state" / "ncnet.pt"), "metrics": str(out / "m.json"),
                    "plot": str(out / "curve.csv"), "steps_plot": str(out / "steps.csv")},
    }
    return resolve_ncnet({"train_ncnet": block}, overrides=over)


def test_training_outputs_and_resume(tmp_path):
    from weakalign.ncnet.train import train_ncnet
    from weakalign.training.engine import StopTraining

    _write_pairs(tmp_path / "data")
    ref = train_ncnet(_train_cfg(tmp_path / "data", tmp_path / "a"), progress=False, backbone_factory=TinyBackbone)
    assert (ref["epochs"], ref["steps"], ref["train_pairs"], ref["heldout_pairs"]) == (2, 4, 6, 2)
    assert ref["features_cached"] is True and ref["train_parts"] == ["neigh_consensus"]
    assert ref["heldout_loss_before"] != ref["heldout_loss_after"]
    assert ref["config"]["model"]["channels"] == [1] and ref["model"]["backbone"] == "tiny"
    saved = json.loads((tmp_path / "a" / "m.json").read_text())
    assert saved["heldout_loss_after"] == ref["heldout_loss_after"] and saved["selection"]["uses_keypoints"] is False
    curve = (tmp_path / "a" / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,step,lr,train_loss,val_loss") and len(curve) == 3
    model, ckpt = load_ncnet_checkpoint(tmp_path / "a" / "ncnet.pt", backbone_factory=TinyBackbone)
    assert ckpt["meta"]["stage"] == "train-ncnet" and model.config.image_size == (96, 96)
    # a crash after step 3 and --resume give the same weights as the uninterrupted run
    def crash(state):
        if state["global_step"] == 3:
            raise StopTraining("crash")
    with pytest.raises(StopTraining):
        train_ncnet(_train_cfg(tmp_path / "data", tmp_path / "b"), progress=False, backbone_factory=TinyBackbone, on_step=crash)
    again = train_ncnet(_train_cfg(tmp_path / "data", tmp_path / "b"), resume="must", progress=False, backbone_factory=TinyBackbone)
    wa, wb = safe_load(tmp_path / "a" / "ncnet.pt")["state_dict"], safe_load(tmp_path / "b" / "ncnet.pt")["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert again["heldout_loss_after"] == ref["heldout_loss_after"]


def test_params_validation_and_documented_block():
    with pytest.raises(UserError, match="batch_size"):
        resolve_ncnet({"train_ncnet": {"batch_size": 1}})
    with pytest.raises(UserError, match="unknown key"):
        resolve_ncnet({"train_ncnet": {"lr": 1e-3}})
    with pytest.raises(UserError, match="end with 1"):
        resolve_ncnet({}, overrides={"model": {"channels": [16, 16]}})
    with pytest.raises(UserError, match="odd"):
        resolve_ncnet({}, overrides={"model": {"kernel_sizes": [4, 3]}})
    # the YAML documented in docs/ncnet.md resolves for every profile
    import yaml

    doc_text = (Path(__file__).resolve().parents[1] / "docs" / "ncnet.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc_text, re.S)]
    params = next(b for b in blocks if isinstance(b, dict) and "train_ncnet" in b)
    profiles = next(b for b in blocks if isinstance(b, dict) and "profiles" in b)
    doc = {**params, **profiles}
    default = resolve_ncnet(doc)
    assert default.model.image_size == (240, 240) and default.profile == "default"
    paper = resolve_ncnet(doc, profile="paper")
    assert (paper.model.backbone, paper.model.image_size, paper.model.kernel_sizes, paper.model.channels) == \
        ("resnet101", (400, 400), (5, 5, 5), (16, 16, 1))
    assert paper.to_dict()["schedule"] == [{"epochs": 5, "lr": 5.0e-4}] and paper.batch_size == 16
    assert resolve_ncnet(doc, profile="smoke").data.max_train_pairs > 0
