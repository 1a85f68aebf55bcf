"""Leakage audit finds planted near-duplicates; the splits leave them out; PF-PASCAL overlap."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
from PIL import Image

from weakalign.data.audit import hamming_matrix, near_pairs, phash_array, run_audit
from weakalign.data.params import DEFAULTS
from weakalign.data.pfwillow import write_pairs
from weakalign.data.splits import make_splits

from data_helpers import make_pf_willow, save, smooth_image

CATS = ["ant", "bee", "cow", "dog", "eel"]


def _params(**kw):
    p = copy.deepcopy(DEFAULTS)
    p.update(strong_train_images=40, strong_val_images=8, weak_train_pairs=30,
             weak_val_pairs=6, heldout_fraction=0.2)
    p["audit"]["jobs"] = 1
    p.update(kw)
    return p


def _recompress(arr, scale=0.6, quality=60):
    h, w = arr.shape[:2]
    small = Image.fromarray(arr).resize((int(w * scale), int(h * scale)), Image.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture
def fake_root(tmp_path):
    root = tmp_path / "data"
    make_pf_willow(root, n_classes=10, n_images=10)
    write_pairs(root / "pf-willow", root / "pf-willow" / "test_pairs_pf.csv")
    base = root / "caltech-101" / "101_ObjectCategories"
    for c, cat in enumerate(CATS):
        for i in range(14):
            save(smooth_image(50_000 + 100 * c + i), base / cat / f"image_{i:04d}.jpg", quality=90)
    save(smooth_image(99), base / "BACKGROUND_Google" / "image_0001.jpg")
    # planted: a resized, recompressed copy of a PF-WILLOW image, and a mirrored copy
    ev = np.asarray(Image.open(root / "pf-willow" / "PF-dataset" / "class2(S)" / "img_004.png").convert("RGB"))
    save(_recompress(ev), base / "cow" / "image_0100.jpg")
    ev2 = np.asarray(Image.open(root / "pf-willow" / "PF-dataset" / "class7(S)" / "img_001.png").convert("RGB"))
    save(np.ascontiguousarray(_recompress(ev2, 0.8, 75)[:, ::-1]), base / "dog" / "image_0100.jpg")
    # an unreadable training image
    (base / "eel" / "image_0099.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    return root


def test_hamming_helpers():
    a = np.array([0, 0xFF, 2**64 - 1], dtype=np.uint64)
    d = hamming_matrix(a, a)
    assert d.tolist() == [[0, 8, 64], [8, 0, 56], [64, 56, 0]]
    assert sorted(near_pairs(a, a, 8)) == [(0, 0, 0), (0, 1, 8), (1, 0, 8), (1, 1, 0), (2, 2, 0)]


def test_phash_robust_to_resize_and_recompression():
    img = smooth_image(3, 300, 400)
    h0 = np.array([phash_array(img)], dtype=np.uint64)
    h1 = np.array([phash_array(_recompress(img, 0.5, 50))], dtype=np.uint64)
    other = np.array([phash_array(smooth_image(4, 300, 400))], dtype=np.uint64)
    assert hamming_matrix(h0, h1)[0, 0] <= 4
    assert hamming_matrix(h0, other)[0, 0] > 12


def test_audit_finds_planted_near_duplicates(fake_root):
    rep = run_audit(fake_root, _params(), log=lambda *a: None)
    found = {(p["train"], p["eval"]): p for p in rep["pairs"]}
    key = ("caltech-101/101_ObjectCategories/cow/image_0100.jpg",
           "pf-willow/PF-dataset/class2(S)/img_004.png")
    assert key in found and found[key]["distance"] <= 6 and not found[key]["flipped"]
    key2 = ("caltech-101/101_ObjectCategories/dog/image_0100.jpg",
            "pf-willow/PF-dataset/class7(S)/img_001.png")
    assert key2 in found and found[key2]["flipped"]
    assert rep["count"] == 2 and rep["excluded"] == sorted(k[0] for k in (key, key2))
    assert rep["skipped_images"]["count"] == 1
    assert rep["skipped_images"]["paths"] == ["caltech-101/101_ObjectCategories/eel/image_0099.jpg"]
    assert rep["training_images"]["sets"]["caltech-101"] == 5 * 14 + 3  # BACKGROUND excluded
    assert rep["evaluation_images"]["sets"]["pf-willow"] == 100
    assert rep["evaluation_images"]["sets"]["pf-pascal-test"].startswith("not available")
    assert rep["pf_pascal_pair_overlap"]["count"] == "not available"
    on_disk = json.loads((fake_root / "audit" / "leakage.json").read_text())
    assert on_disk["count"] == 2 and on_disk["threshold"] == 6

    m = make_splits(fake_root, _params(), log=lambda *a: None)
    split_dir = fake_root / "splits"
    text = "".join(p.read_text() for p in split_dir.glob("*.csv"))
    assert "cow/image_0100.jpg" not in text and "dog/image_0100.jpg" not in text
    assert "eel/image_0099.jpg" not in text and "BACKGROUND_Google" not in text
    assert m["pool"]["excluded_by_audit"] == 2 and m["pool"]["skipped_unreadable"] == 1
    strong_t = set(split_dir.joinpath("strong_train_images.csv").read_text().splitlines()[1:])
    strong_v = set(split_dir.joinpath("strong_val_images.csv").read_text().splitlines()[1:])
    assert len(strong_t) == 40 and len(strong_v) == 8 and not strong_t & strong_v
    tr = [l.split(",") for l in split_dir.joinpath("weak_train_pairs.csv").read_text().splitlines()[1:]]
    va = [l.split(",") for l in split_dir.joinpath("weak_val_pairs.csv").read_text().splitlines()[1:]]
    assert len(tr) == 30 and len(va) == 6
    assert all(a.split("/")[1] == b.split("/")[1] == c for a, b, c, _ in tr + va)
    assert not {x for r in tr for x in r[:2]} & {x for r in va for x in r[:2]}
    assert len({frozenset(r[:2]) for r in tr}) == 30
    # deterministic: same seed -> byte-identical files; other seed -> different
    before = {p.name: p.read_bytes() for p in split_dir.glob("*.csv")}
    make_splits(fake_root, _params(), log=lambda *a: None)
    assert before == {p.name: p.read_bytes() for p in split_dir.glob("*.csv")}
    make_splits(fake_root, _params(seed=1), log=lambda *a: None)
    assert before != {p.name: p.read_bytes() for p in split_dir.glob("*.csv")}

    # the registry serves the written splits
    from weakalign.data.datasets import DatasetNotAvailable
    from weakalign.data.registry import get_dataset

    syn = get_dataset("synthetic", root=fake_root, split="strong_train", size=(32, 32))
    assert len(syn) == 40 and syn[0]["image"].shape == (3, 32, 32)
    weak = get_dataset("weak-pairs", root=fake_root, split="val", size=(32, 32))
    assert len(weak) == 6 and weak[0]["target_image"].shape == (3, 32, 32)
    with pytest.raises(DatasetNotAvailable, match="pf_pascal_weak_train_pairs_clean.csv"):
        get_dataset("weak-pairs", root=fake_root, split="pf-pascal")


def test_audit_threshold_zero_misses_recompressed_copy(fake_root):
    rep = run_audit(fake_root, _params(audit={**DEFAULTS["audit"], "threshold": 0, "jobs": 1}),
                    log=lambda *a: None)
    assert rep["count"] <= 2 and rep["threshold"] == 0
    assert rep["nearest_above_threshold"]  # margin is reported


def test_pf_pascal_pair_overlap_from_csvs(tmp_path):
    d = tmp_path / "pf-pascal"
    d.mkdir()
    kp = "1;2,3;4,5;6,7;8"
    (d / "test_pairs_pf_pascal.csv").write_text(
        "source_image,target_image,class,XA,YA,XB,YB\na,b,1," + kp + "\nc,d,1," + kp + "\n")
    (d / "val_pairs_pf_pascal.csv").write_text(
        "source_image,target_image,class,XA,YA,XB,YB\nb,a,1," + kp + "\n")
    (d / "train_pairs_pf_pascal.csv").write_text(
        "source_image,target_image,class,flip\na,b,1,0\na,b,1,1\nd,c,1,0\ne,f,1,0\na,f,1,0\n")
    from weakalign.data.audit import pf_pascal_pair_overlap

    ov = pf_pascal_pair_overlap(tmp_path)
    assert ov["count"] == 2 and ov["train_vs_test"]["ordered_pairs"] == 1
    assert ov["train_rows_in_test_pairs"] == 3 and ov["val_vs_test"]["unordered_pairs"] == 1
    assert ["a", "b"] in ov["pairs"] and ["c", "d"] in ov["pairs"]
