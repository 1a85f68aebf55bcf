"""Caltech-101 and TSS wired through the evaluation: predict (cached transforms) -> metrics.

The real files are not in the offline mirror, so tiny datasets in the official CSV formats are
built here and read by the real dataset classes."""

import numpy as np
import pytest
import torch
from PIL import Image

from weakalign.data.datasets import CaltechDataset, TSSDataset
from weakalign.evaluation.commands import compute_metrics
from weakalign.evaluation.dense import write_flo
from weakalign.evaluation.predict import _load_images, _pair_table, predict_pairs
from weakalign.models import ModelConfig, TwoStageCNNGeometric


def _img(path, h, w, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def tiny_caltech(tmp_path):
    base = tmp_path / "caltech-101" / "101_ObjectCategories"
    _img(base / "Faces" / "image_0001.jpg", 60, 80, 0)
    _img(base / "Faces" / "image_0002.jpg", 70, 90, 1)
    _img(base / "accordion" / "image_0001.jpg", 50, 50, 2)
    csv = tmp_path / "caltech-101" / "pairs.csv"
    rows = ["source_image,target_image,class,XA,YA,XB,YB",
            # identical image and polygon: the identity transform is perfect
            'Faces/image_0001.jpg,Faces/image_0001.jpg,1,"10,40,40,10","10,10,40,40","10,40,40,10","10,10,40,40"',
            'Faces/image_0001.jpg,Faces/image_0002.jpg,1,"10,40,40,10","10,10,40,40","20,60,60,20","15,15,50,50"',
            'accordion/image_0001.jpg,accordion/image_0001.jpg,2,"5,30,30","5,5,30","5,30,30","5,5,30"']
    csv.write_text("\n".join(rows) + "\n")
    return CaltechDataset(root=tmp_path, csv=csv)


@pytest.fixture
def tiny_tss(tmp_path):
    base = tmp_path / "tss"
    for i, sub in enumerate(("FG3DCar/s1", "JODS/s2", "PASCAL/s3")):
        _img(base / sub / "image1.png", 40, 50, 10 + i)
        _img(base / sub / "image2.png", 40, 50, 10 + i)
        write_flo(base / sub / "flow2.flo", np.zeros((40, 50, 2), np.float32))  # identical images: zero flow
    csv = base / "pairs.csv"
    csv.write_text("source,target,flow_direction,flip,category\n"
                   "FG3DCar/s1/image1.png,FG3DCar/s1/image2.png,2,0,1\n"
                   "JODS/s2/image1.png,JODS/s2/image2.png,2,0,2\n"
                   "PASCAL/s3/image1.png,PASCAL/s3/image2.png,2,1,3\n")
    return TSSDataset(root=tmp_path, csv=csv)


def _status(ds, preds):
    return {"available": True, "pairs": len(ds), "models": {name: {"available": True, "predictions": name} for name in preds}}


def test_caltech_identity_and_model_through_predict_and_metrics(tiny_caltech):
    torch.manual_seed(0)
    model = TwoStageCNNGeometric(ModelConfig(backbone="efficientnet_lite0", image_size=(176, 176)), backbone_weights="random").eval()
    preds = {"identity": predict_pairs(None, tiny_caltech, progress=False),
             "random": predict_pairs(model, tiny_caltech, batch_size=2, progress=False, optimize=False)}
    assert preds["random"]["theta_aff"].shape == (3, 6) and preds["random"]["theta_tps"].shape == (3, 18)
    metrics, tables, curves = compute_metrics({"caltech-101": _status(tiny_caltech, preds)}, preds.__getitem__, [0.1],
                                              load_dataset=lambda name: tiny_caltech)
    m = metrics["caltech-101"]
    assert m["available"] and m["kind"] == "dense" and m["pairs"] == 3
    ident = m["models"]["identity"]["identity"]
    assert set(m["models"]["random"]) == {"affine", "affine_tps"}
    assert 0 < ident["IoU"] < 1  # pair 2 differs, pairs 1 and 3 are perfect
    per_cat = ident["per_category"]
    assert per_cat["accordion"]["IoU"] == pytest.approx(1.0) and per_cat["accordion"]["LT-ACC"] == pytest.approx(1.0)
    assert "| identity | identity |" in tables and "LT-ACC" in tables
    assert curves == {}


def test_tss_flip_and_flow_pck_through_predict_and_metrics(tiny_tss):
    recs, paths, index = _pair_table(tiny_tss)
    flipped = [k for k in paths if k[1]]
    assert len(flipped) == 1 and flipped[0][0].parent.name == "s3"  # only the flip=1 source is mirrored
    imgs, _ = _load_images(paths, None, progress=False)
    i_plain = paths.index((flipped[0][0], False)) if (flipped[0][0], False) in paths else None
    assert i_plain is None  # the flipped source is never also loaded unflipped here
    src = Image.open(flipped[0][0]).convert("RGB")
    expected = torch.from_numpy(np.asarray(src)[:, ::-1].copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(imgs[paths.index(flipped[0])], expected, atol=1e-6)

    preds = {"identity": predict_pairs(None, tiny_tss, progress=False)}
    assert preds["identity"]["transferred"] == {} and preds["identity"]["flip"] == [0, 0, 1]
    metrics, tables, _ = compute_metrics({"tss": _status(tiny_tss, preds)}, preds.__getitem__, [0.1],
                                         load_dataset=lambda name: tiny_tss)
    r = metrics["tss"]["models"]["identity"]["identity"]
    # zero ground-truth flow and the identity: every pixel is right except the image border,
    # which the reference's th_sampling_grid_to_np_flow marks unknown (strict |x| < 1 test),
    # and unknown estimates count as errors: 38 * 48 interior pixels of 40 * 50
    interior = 38 * 48 / (40 * 50)
    assert r["FG3D"] == r["JODS"] == r["PASC"] == r["average"] == pytest.approx(interior)
    assert "| identity | identity | 0.912 | 0.912 | 0.912 | 0.912 |" in tables


def test_unknown_benchmark_is_a_clear_error(tmp_path, monkeypatch):
    from weakalign.cli import UserError
    from weakalign.evaluation import commands

    p = tmp_path / "params.yaml"
    p.write_text("evaluate:\n  benchmarks: [pf-wilow]\n")
    monkeypatch.setattr("weakalign.data.paths.project_root", lambda: tmp_path)
    args = type("A", (), {"params": str(p), "quiet": True})()
    with pytest.raises(UserError, match="unknown benchmark 'pf-wilow'"):
        commands._predict(args)


def test_profile_overrides_evaluate_block_and_subset_is_even(tmp_path, tiny_caltech):
    from weakalign.evaluation.commands import load_block, subset

    p = tmp_path / "params.yaml"
    p.write_text("profile: smoke\nevaluate:\n  batch_size: 4\nprofiles:\n  smoke:\n    evaluate: {max_pairs: 2}\n")
    cfg = load_block(p)
    assert cfg.max_pairs == 2 and cfg.batch_size == 4
    p.write_text("profile: default\nevaluate:\n  batch_size: 4\nprofiles:\n  smoke:\n    evaluate: {max_pairs: 2}\n")
    assert load_block(p).max_pairs == 0
    sub = subset(tiny_caltech, 2)
    assert [r.line for r in sub.records] == [tiny_caltech.records[0].line, tiny_caltech.records[2].line]
    assert sub.pairs_total == 3 and len(tiny_caltech.records) == 3  # the original is untouched
    assert subset(tiny_caltech, 0) is tiny_caltech and subset(tiny_caltech, 10) is tiny_caltech


def test_ncnet_through_evaluate_predict_and_metrics(tmp_path, monkeypatch, tiny_willow, tiny_caltech):
    """An NCNet spec is predicted on keypoint benchmarks, marked not applicable on dense ones,
    scored from its cache, and appears in the methods table with its evaluation time."""
    import json

    import weakalign.ncnet as ncnet
    from tiny_backbone import TinyBackbone
    from weakalign.evaluation import commands
    from weakalign.ncnet import NCNet, NCNetConfig, save_ncnet_checkpoint
    from weakalign.reports import methods_frame

    torch.manual_seed(0)
    save_ncnet_checkpoint(tmp_path / "models" / "nc.pt", NCNet(NCNetConfig(backbone="tiny", image_size=(96, 112), kernel_sizes=(3, 3),
                                                                         channels=(4, 1)), backbone=TinyBackbone()).eval())
    real_load = ncnet.load_ncnet_checkpoint
    monkeypatch.setattr(ncnet, "load_ncnet_checkpoint", lambda p, **kw: real_load(p, backbone_factory=TinyBackbone))
    monkeypatch.setattr("weakalign.data.paths.project_root", lambda: tmp_path)
    monkeypatch.setattr("weakalign.data.registry.get_dataset",
                        lambda name, root=None: {"pf-willow": tiny_willow, "caltech-101": tiny_caltech}[name])
    # a released NCNet file dropped into models/reference is recognised as NCNet, not CNNGeometric
    (tmp_path / "models" / "reference").mkdir(parents=True)
    (tmp_path / "models" / "reference" / "ncnet_pfpascal.pth.tar").write_bytes(b"")
    specs = commands.model_specs(commands.EvaluateParams(), tmp_path)
    assert specs["released:ncnet_pfpascal"]["type"] == "ncnet" and specs["released:ncnet_pfpascal"]["optional"]
    (tmp_path / "models" / "reference" / "ncnet_pfpascal.pth.tar").unlink()
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        commands.load_model({"type": "ncnet", "checkpoint": "models/absent.pt"}, tmp_path)

    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  batch_size: 4\n  benchmarks: [pf-willow, caltech-101]\n"
                      "  models:\n    identity: {type: identity}\n    ncnet: {type: ncnet, checkpoint: models/nc.pt}\n"
                      "    later: {type: ncnet, checkpoint: models/later.pt, optional: true}\n")
    args = type("A", (), {"params": str(params), "quiet": True})()
    assert commands._predict(args) == 0
    status = json.loads((tmp_path / "data" / "predictions" / "status.json").read_text())
    # an optional model not trained yet is a counted skip whose reason names the file relative to the project
    later = status["pf-willow"]["models"]["later"]
    assert later["available"] is False and "models/later.pt" in later["reason"] and str(tmp_path) not in later["reason"]
    assert status["pf-willow"]["models"]["ncnet"]["available"]
    assert status["caltech-101"]["models"]["ncnet"] == {"available": False, "reason": commands.NCNET_DENSE_REASON}
    assert commands._metrics(args) == 0
    m = json.loads((tmp_path / "reports" / "metrics" / "pck.json").read_text())
    pck = m["pf-willow"]["models"]["ncnet"]["ncnet"]["default"]["0.1"]
    assert 0.0 <= pck <= 1.0
    assert m["pf-willow"]["predict_seconds"]["ncnet"] > 0
    assert m["caltech-101"]["models"]["ncnet"]["available"] is False
    # methods table: NCNet's PCK and evaluation time from the files; no training record -> empty, not guessed
    df = methods_frame(tmp_path / "reports" / "metrics").set_index("model")
    assert df.loc["ncnet", "PCK@0.1"] == pck and df.loc["ncnet", "evaluate (s)"] == m["pf-willow"]["predict_seconds"]["ncnet"]
    assert df.loc["ncnet", "train, all stages (min)"] is None or np.isnan(df.loc["ncnet", "train, all stages (min)"])
    (tmp_path / "reports" / "metrics" / "train_ncnet.json").write_text(json.dumps({"seconds": 90.0}))
    assert methods_frame(tmp_path / "reports" / "metrics").set_index("model").loc["ncnet", "train, all stages (min)"] == 1.5
