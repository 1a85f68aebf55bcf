"""Integration tests on the real offline mirror (../shared/datasets); skipped when absent.

They copy and extract into tmp_path only (never into the project's data/ folder).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from weakalign.data.audit import pf_pascal_pair_overlap
from weakalign.data.csvio import read_pair_list, read_pf_pascal_pairs
from weakalign.data.datasets import DatasetNotAvailable, PFPascalDataset, PFWillowDataset
from weakalign.data.download import content_problems, verify_file
from weakalign.data.pfwillow import compare_with_annotations
from weakalign.data.sources import SOURCES

pytestmark = pytest.mark.mirror


def _cli(*argv):
    from weakalign.cli import main

    return main(list(argv))


def test_pf_willow_rebuild_on_real_mirror(mirror_dir, tmp_path, capsys):
    root = tmp_path / "data"
    assert _cli("data", "fetch", "pf-willow", "pf-pascal", "--root", str(root),
                "--mirror", str(mirror_dir)) == 0
    assert _cli("data", "prepare-pf-willow", "--root", str(root), "--mirror", str(mirror_dir)) == 0
    out = capsys.readouterr().out
    assert "900 pairs" in out

    prov = json.loads((root / "pf-willow" / "pairs_provenance.json").read_text())
    ds = PFWillowDataset(root=root)
    assert len(ds) == 900 == prov["rows"]
    assert all(r.source_points.shape == (2, 10) == r.target_points.shape for r in ds.records)
    per_class = Counter(r.category for r in ds.records)
    assert len(per_class) == 10 and set(per_class.values()) == {90}
    assert len({(r.source, r.target) for r in ds.records}) == 900
    assert all(r.source != r.target for r in ds.records)
    assert compare_with_annotations(ds.records, root / "pf-willow") == 0.0
    if prov["source"] == "official":  # only if the mirror holds test_pairs_pf.csv
        assert prov["max_abs_difference_to_mat_annotations"] < 1e-3

    it = ds[123]
    with Image.open(it["source_path"]) as im:
        assert tuple(it["source_size"].tolist()) == (im.height, im.width)
    h, w = it["source_size"].tolist()
    pts = it["source_points"].numpy()
    assert it["num_points"] == 10 and pts.shape == (2, 10)
    assert (pts[0] >= 1).all() and (pts[0] <= w).all() and (pts[1] >= 1).all() and (pts[1] <= h).all()

    # PF-PASCAL: pair lists present, images not -> clear "not available"
    recs = {s: read_pf_pascal_pairs(root / "pf-pascal" / f"{s}_pairs_pf_pascal.csv", n)
            for s, n in (("test", 299), ("val", 308))}
    assert max(r.source_points.shape[1] for r in recs["test"]) <= 20
    train = read_pair_list(root / "pf-pascal" / "train_pairs_pf_pascal.csv", 2940, require_flip=True)
    assert Counter(r.flip for r in train) == {0: 1470, 1: 1470}
    ov = pf_pascal_pair_overlap(root)
    assert ov["count"] == 95 and ov["train_vs_val"]["unordered_pairs"] == 99
    assert ov["val_vs_test"]["unordered_pairs"] == 35 and ov["train_vs_test"]["shared_images"] == 302
    if not (root / "pf-pascal" / "PF-dataset-PASCAL").exists():
        with pytest.raises(DatasetNotAvailable, match="PF-dataset-PASCAL.zip"):
            PFPascalDataset(root=root)


def test_caltech_archive_in_mirror_matches_manifest(mirror_dir):
    src = SOURCES["101_ObjectCategories.tar.gz"]
    path = mirror_dir / src.filename
    if not path.is_file():
        pytest.skip(f"{path} not in the mirror")
    assert content_problems(path, src) == []  # 9,144 jpg in 102 folders
    digest, how = verify_file(path, src)
    assert digest == src.mirror_sha256 and "mirror" in how
