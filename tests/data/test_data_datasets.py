"""Datasets, registry, PF-WILLOW rebuild (synthetic tree) and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from weakalign.data.datasets import (
    DatasetNotAvailable,
    ImageListDataset,
    PairListDataset,
    PFPascalDataset,
    PFWillowDataset,
)
from weakalign.data.pfwillow import build_pairs, write_pairs
from weakalign.data.registry import benchmark_status, get_dataset, list_datasets

from data_helpers import make_pf_willow, save, smooth_image


def test_pf_willow_rebuild_synthetic(tmp_path):
    kps = make_pf_willow(tmp_path)
    out = tmp_path / "pf-willow" / "test_pairs_pf.csv"
    assert write_pairs(tmp_path / "pf-willow", out) == 900
    ds = PFWillowDataset(root=tmp_path)
    assert len(ds) == 900
    first = ds.records[0]
    np.testing.assert_allclose(first.source_points, kps[first.source])
    np.testing.assert_allclose(first.target_points, kps[first.target])
    assert first.source != first.target
    assert len({(r.source, r.target) for r in ds.records}) == 900
    assert all(r.source.split("/")[1] == r.target.split("/")[1] for r in ds.records)
    item = ds[5]
    assert item["source_image"].shape == (3, *item["source_size"].tolist())
    assert item["source_points"].shape == (2, 10) and item["num_points"] == 10
    np.testing.assert_allclose(item["target_points"].numpy(), kps[ds.records[5].target], rtol=1e-6)
    assert item["category"] == ds.records[5].category and item["pair_index"] == 5
    r = PFWillowDataset(root=tmp_path, resize=(24, 32))[5]
    assert r["source_image"].shape == (3, 24, 32)
    assert torch.equal(r["source_points"], item["source_points"])  # points stay in original pixels
    batch = next(iter(DataLoader(PFWillowDataset(root=tmp_path, resize=(24, 32)), batch_size=4)))
    assert batch["source_points"].shape == (4, 2, 10) and batch["source_size"].shape == (4, 2)
    assert PFWillowDataset.pck_protocol == {"reference": "bbox", "alpha": 0.1, "averaging": "per_pair"}


def test_pf_willow_rebuild_rejects_incomplete_tree(tmp_path):
    make_pf_willow(tmp_path, n_classes=10, n_images=10)
    next((tmp_path / "pf-willow" / "PF-dataset" / "class3(S)").glob("*.mat")).unlink()
    with pytest.raises(ValueError, match="annotation missing"):
        build_pairs(tmp_path / "pf-willow")


def test_missing_images_reported_with_how_to(tmp_path):
    make_pf_willow(tmp_path, n_classes=10, n_images=10)
    write_pairs(tmp_path / "pf-willow", tmp_path / "pf-willow" / "test_pairs_pf.csv")
    for p in list((tmp_path / "pf-willow" / "PF-dataset" / "class0(S)").glob("*.png"))[:3]:
        p.unlink()
    assert not PFWillowDataset.available(root=tmp_path)
    assert len(PFWillowDataset.missing_files(root=tmp_path)) == 3
    with pytest.raises(DatasetNotAvailable) as ei:
        PFWillowDataset(root=tmp_path)
    msg = str(ei.value)
    assert "3 file(s) missing" in msg and "class0(S)" in msg
    assert "weakalign data fetch pf-willow" in msg and "PF-dataset.zip" in msg
    assert isinstance(ei.value, FileNotFoundError)


def _pascal_root(tmp_path, n_pairs=4, with_images=True):
    d = tmp_path / "pf-pascal"
    rows = ["source_image,target_image,class,XA,YA,XB,YB"]
    for i in range(n_pairs):
        n = 3 + i * 5  # varying keypoint counts, up to 18
        xs = ";".join(str(1 + j) for j in range(n))
        rows.append(f"PF-dataset-PASCAL/JPEGImages/{i}a.jpg,PF-dataset-PASCAL/JPEGImages/{i}b.jpg,"
                    f"{i + 1},{xs},{xs},{xs},{xs}")
        if with_images:
            for s in "ab":
                save(smooth_image(i, 40 + i, 50), d / "PF-dataset-PASCAL" / "JPEGImages" / f"{i}{s}.jpg")
    d.mkdir(parents=True, exist_ok=True)
    (d / "test_pairs_pf_pascal.csv").write_text("\n".join(rows) + "\n")
    return d / "test_pairs_pf_pascal.csv"


def test_pf_pascal_padding_and_availability(tmp_path):
    csv = _pascal_root(tmp_path)
    ds = PFPascalDataset(root=tmp_path, csv=csv)
    it = ds[1]
    assert it["num_points"] == 8 and it["source_points"].shape == (2, 20)
    assert (it["source_points"][:, 8:] == -1).all() and it["source_points"][0, 7] == 8
    assert it["category"] == "bicycle"
    b = next(iter(DataLoader(PFPascalDataset(root=tmp_path, csv=csv, resize=(32, 32)), batch_size=4)))
    assert b["num_points"].tolist() == [3, 8, 13, 18]
    assert PFPascalDataset.pck_protocol["reference"] == "image_224"
    # the real file name expects 299 rows: a short list is an error, not a silent subset
    with pytest.raises(ValueError, match="expected 299"):
        PFPascalDataset(root=tmp_path)


def test_pf_pascal_without_images_not_available(tmp_path):
    csv = _pascal_root(tmp_path, with_images=False)
    st = benchmark_status("pf-pascal", tmp_path, csv=csv)
    assert not st.available and "8 file(s) missing" in st.reason and "PF-dataset-PASCAL.zip" in st.reason
    assert st.pck_protocol["alpha"] == 0.1
    with pytest.raises(DatasetNotAvailable, match="weakalign data fetch pf-pascal pf-pascal-images"):
        get_dataset("pf-pascal", root=tmp_path, csv=csv)


def test_registry_names_and_unknown():
    assert list_datasets() == ["pf-willow", "pf-pascal", "caltech-101", "tss", "synthetic", "weak-pairs"]
    with pytest.raises(KeyError, match="registered"):
        get_dataset("nope")
    for name in ("caltech-101", "tss"):
        st = benchmark_status(name, "/nonexistent-root")
        assert not st.available and "not available" in st.reason


def test_image_list_and_pair_list(tmp_path):
    a = save(smooth_image(1, 30, 40), tmp_path / "img" / "a.jpg")
    b = save(smooth_image(2, 30, 40), tmp_path / "img" / "b.png")
    ds = ImageListDataset([a, b], size=(24, 24))
    assert ds[0]["image"].shape == (3, 24, 24) and ds[1]["path"] == str(b)
    (tmp_path / "list.csv").write_text("image,category\nimg/a.jpg,x\nimg/b.png,y\n")
    ds = ImageListDataset(tmp_path / "list.csv", size=(20, 20), image_root=tmp_path)
    assert len(ds) == 2 and ds[1]["path"] == str(b)
    (tmp_path / "pairs.csv").write_text("source_image,target_image,class,flip\n"
                                        "img/a.jpg,img/b.png,x,1\nimg/b.png,img/a.jpg,x,0\n")
    pl = PairListDataset(tmp_path / "pairs.csv", tmp_path, size=(30, 40))
    f, nf = pl[0], PairListDataset(tmp_path / "pairs.csv", tmp_path, size=(30, 40), use_flip=False)[0]
    assert torch.allclose(f["source_image"], nf["source_image"].flip(-1))
    assert torch.allclose(f["target_image"], nf["target_image"].flip(-1))
    assert set(f) == {"source_image", "target_image", "category", "source_path", "target_path"}


def test_cli_status_and_errors(tmp_path, capsys):
    from weakalign.cli import main

    assert main(["data", "status", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "status: 0 of 4 benchmark(s) available" in out
    assert main(["data", "status", "--root", str(tmp_path), "--json"]) == 0
    js = capsys.readouterr().out
    assert json.loads(js[: js.rindex("}") + 1])["benchmarks"]["pf-willow"].startswith("dataset 'pf-willow'")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rc = main(["data", "fetch", "pf-willow", "--root", str(tmp_path / "d"), "--mirror", str(mirror)])
    err = capsys.readouterr().err
    assert rc == 1 and "not available" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "fetch", "no-such-dataset", "--root", str(tmp_path)]) == 1
    assert "unknown data source" in capsys.readouterr().err
    assert main(["data", "splits", "--root", str(tmp_path / "empty")]) == 1
    assert "weakalign data audit" in capsys.readouterr().err
