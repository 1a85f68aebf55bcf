"""``weakalign parity``: the harness pieces that need no original code (fast, unmarked) and the
comparisons with the original (marked ``reference``; skipped unless ``WEAKALIGN_REFERENCE_DIR`` /
``WEAKALIGN_REFERENCE_NCNET_DIR`` point at checkouts of ignacio-rocco/weakalign / ncnet)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from tiny_backbone import TinyBackbone

from weakalign.geometry import affine_identity, tps_identity
from weakalign.losses import SoftInlierCount
from weakalign.models.checkpoints import load_checkpoint, map_reference_keys, model_from_reference
from weakalign.models.cnngeometric import ModelConfig, TwoStageCNNGeometric
from weakalign.parity.checkout import ReferenceCheckoutError, open_checkout
from weakalign.parity.fixtures import subset_rows, write_pf_pascal_fixture
from weakalign.parity.harness import Item, max_abs_diff, pck_item, speed_summary
from weakalign.parity.report import markdown, write_report
from weakalign.parity.weights import to_reference_state_dict, write_cnngeometric_checkpoint


# -- fast: no original code needed ---------------------------------------------------------------

def test_reference_state_dict_inverts_the_loaders_key_mapping():
    torch.manual_seed(0)
    model = TwoStageCNNGeometric(ModelConfig(image_size=(240, 240)), backbone=TinyBackbone())
    ref = to_reference_state_dict(model)
    assert any(k.startswith("FeatureExtraction.model.") for k in ref)
    assert any(k.startswith("FeatureRegression2.") for k in ref) and any(k.startswith("FeatureRegression.") for k in ref)
    back = map_reference_keys(ref)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_random_checkpoint_round_trips_through_the_projects_loader(tmp_path):
    path = write_cnngeometric_checkpoint(tmp_path / "vgg.pth.tar", "vgg16", seed=3, image_size=240)
    raw = torch.load(path, weights_only=False)
    assert raw["args"].feature_extraction_cnn == "vgg" and "FeatureRegression2.linear.bias" in raw["state_dict"]
    model, _ = load_checkpoint(path)
    assert model.geometric_model == "affine_tps" and model.config.backbone == "vgg16"
    ours = to_reference_state_dict(model)
    assert ours.keys() == raw["state_dict"].keys()
    assert all(torch.equal(ours[k], v) for k, v in raw["state_dict"].items())
    # near-identity heads: the biases are identity + a small perturbation
    assert max_abs_diff(model.regression.linear.bias[None], affine_identity(1)) < 0.3
    assert max_abs_diff(model.regression2.linear.bias[None], tps_identity(1)) < 0.3
    # seeded: the same file twice
    again = torch.load(write_cnngeometric_checkpoint(tmp_path / "again.pth.tar", "vgg16", seed=3), weights_only=False)
    assert all(torch.equal(again["state_dict"][k], v) for k, v in raw["state_dict"].items())
    assert model_from_reference(raw).geometric_model == "affine_tps"


def test_wrong_directory_is_one_clear_error(tmp_path, capsys):
    from weakalign.cli import main

    (tmp_path / "eval.py").write_text("")
    with pytest.raises(ReferenceCheckoutError, match="not a checkout of ignacio-rocco/weakalign"):
        open_checkout(tmp_path, "weakalign")
    assert main(["parity", "--reference-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a checkout of ignacio-rocco/weakalign" in err[0] and "Traceback" not in err[0]
    assert main(["parity", "--reference-dir", str(tmp_path / "missing")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_items_and_report(tmp_path):
    ok = Item("g", "grid", 1e-7, 1e-5)
    bad = Item("g", "theta", 2e-3, 1e-4)
    nan = Item("g", "nan", math.nan, 1.0)
    info = Item("g", "default variant", 1e-3, 1e-5, "differs", gate=False)
    assert ok.passed and not bad.passed and not nan.passed and not info.passed
    same = pck_item("p", "pck", [0.1, 0.5, 1.0], torch.tensor([0.1, 0.5, 1.0], dtype=torch.float32))  # float32 round-off
    assert same.passed and same.max_diff == 0
    diff = pck_item("p", "pck", [0.1, 0.5, 1.0], [0.1, 0.6, 0.9])
    assert not diff.passed and diff.max_diff == 2
    speed = speed_summary({"original": [10.0, 12.0, 11.0], "ours": [2.0, 3.0, 2.5], "pairs": 20})
    assert speed["original_median_s"] == 11.0 and speed["ours_median_s"] == 2.5 and speed["ratio"] == pytest.approx(4.4)
    doc = {"command": "weakalign parity --reference-dir X", "checkouts": [{"repository": "ignacio-rocco/weakalign", "path": "X", "commit": "abc"}],
           "versions": {"torch": "2"}, "inputs": "seed 0", "items": [i.to_dict() for i in (ok, bad, info, same)],
           "speed": [{"backbone": "ResNet-101", "threads": 2, "conditions": "idle", **speed}], "passed": False, "notes": ["n"]}
    j, m = write_report(tmp_path / "parity", doc)
    assert json.loads(j.read_text())["items"][1]["passed"] is False
    text = m.read_text()
    assert text == markdown(doc)
    assert "**2 of 3 parity items pass**, 1 FAIL." in text and "**FAIL**" in text and "differs (info)" in text
    assert "4.40x" in text and "`abc`" in text and "weakalign parity --reference-dir X" in text
    assert not list((tmp_path / "parity").glob(".*"))  # no temp files left behind


def test_subset_rows_spread_over_the_list():
    assert subset_rows(900, 20) == list(range(0, 900, 45))
    assert subset_rows(3, 10) == [0, 1, 2]
    with pytest.raises(ValueError):
        subset_rows(900, 0)


def test_pf_pascal_fixture_images_hold_their_keypoints(tmp_path):
    from PIL import Image

    csv = tmp_path / "test_pairs_pf_pascal.csv"
    csv.write_text("source_image,target_image,class,XA,YA,XB,YB\n"
                   "JPEGImages/a.jpg,JPEGImages/b.jpg,1,10;300.5,20;40,5;6,7;250\n"
                   "JPEGImages/b.jpg,JPEGImages/c.jpg,2,400;1,2;3,50;60,70;80\n")
    out = write_pf_pascal_fixture(csv, tmp_path / "fx", seed=1)
    assert out.read_text() == csv.read_text()
    sizes = {n: Image.open(out.parent / "JPEGImages" / f"{n}.jpg").size for n in "abc"}
    assert sizes["a"][0] > 300.5 and sizes["a"][1] > 40
    assert sizes["b"][0] > 400 and sizes["b"][1] > 250  # the largest extent over both rows it appears in
    assert sizes["c"][0] > 60 and sizes["c"][1] > 80


def test_reference_composition_equals_analytic_away_from_the_border():
    # everything stays well inside (-1, 1): resampling the (linear) affine grid bilinearly is
    # exact, so the original's composition and the analytic one agree
    g = torch.Generator().manual_seed(0)
    corr = torch.rand(2, 225, 15, 15, generator=g)
    ta = torch.tensor([[0.8, 0.05, 0.02, -0.03, 0.75, 0.01]]).repeat(2, 1)
    tt = 0.5 * tps_identity(2)
    ref = SoftInlierCount(composition="reference")(corr, "affine_tps", ta, tt)
    ana = SoftInlierCount(composition="analytic")(corr, "affine_tps", ta, tt)
    assert torch.allclose(ref, ana, rtol=1e-5, atol=1e-7)
    # a TPS that sends every cell out of bounds leaves nothing to count in the reference composition
    far = SoftInlierCount(composition="reference", normalize=False)(corr, "affine_tps", ta, tps_identity(2) + 3.0)
    assert torch.equal(far, torch.zeros(2))
    with pytest.raises(ValueError, match="composition"):
        SoftInlierCount(composition="bilinear")


# -- reference: against the original code ----------------------------------------------------------

def _checkout(var: str, kind: str):
    d = os.environ.get(var)
    if not d:
        pytest.skip(f"{var} is not set: point it at a checkout of the original code to compare with it")
    for mod in ("pandas", "skimage", "scipy"):
        pytest.importorskip(mod)
    try:
        return open_checkout(d, kind)
    except ReferenceCheckoutError as exc:
        pytest.skip(f"{var}: {exc}")


def _assert_all_pass(items):
    failed = [f"{it.group}: {it.name}: {it.max_diff:.3g} > {it.tolerance:g}" for it in items if it.gate and not it.passed]
    assert not failed, failed


@pytest.mark.reference
def test_geometry_losses_and_inlier_counts_equal_the_original(tmp_path):
    from weakalign.parity.harness import geometry_items, inlier_items

    ref = _checkout("WEAKALIGN_REFERENCE_DIR", "weakalign")
    items = geometry_items(ref, tmp_path / "g") + inlier_items(ref, tmp_path / "i")
    assert len([i for i in items if i.gate]) == 13
    _assert_all_pass(items)


@pytest.fixture
def pf_willow_subset(tmp_path):
    from weakalign.data.paths import data_root
    from weakalign.parity.fixtures import write_pf_willow_subset

    d = data_root(None) / "pf-willow"
    if not (d / "test_pairs_pf.csv").is_file():
        pytest.skip("PF-WILLOW is not prepared under data/")
    csv, _ = write_pf_willow_subset(d, tmp_path / "data", 2)
    return csv.parent.parent, csv


@pytest.mark.reference
@pytest.mark.slow
def test_vgg16_two_stage_theta_and_pck_equal_the_original(tmp_path, pf_willow_subset):
    from weakalign.parity.harness import model_items

    ref = _checkout("WEAKALIGN_REFERENCE_DIR", "weakalign")
    items, timing = model_items(ref, tmp_path, *pf_willow_subset, "vgg16", seed=1, threads=2)
    assert timing["pairs"] == 2
    _assert_all_pass(items)


@pytest.mark.reference
@pytest.mark.slow
def test_pf_pascal_299_pairs_per_pair_pck_equals_the_original(tmp_path):
    from weakalign.parity.commands import _pf_pascal_csv
    from weakalign.parity.harness import REPORT_ALPHAS, pf_pascal_items

    ref = _checkout("WEAKALIGN_REFERENCE_DIR", "weakalign")
    real = _pf_pascal_csv(None)
    if real is None:
        pytest.skip("no test_pairs_pf_pascal.csv in data/ or the mirror")
    items = pf_pascal_items(ref, tmp_path, write_pf_pascal_fixture(real, tmp_path / "data"))
    assert len(items) == len(REPORT_ALPHAS) + 1 and "299 pairs" in items[0].detail
    _assert_all_pass(items)


@pytest.mark.reference
@pytest.mark.slow
def test_ncnet_consensus_and_transfer_equal_the_original(tmp_path, pf_willow_subset):
    from weakalign.parity.harness import ncnet_items

    ref = _checkout("WEAKALIGN_REFERENCE_NCNET_DIR", "ncnet")
    _assert_all_pass(ncnet_items(ref, tmp_path, *pf_willow_subset, seed=2, n_pairs=1))
