"""Bad inputs end as ONE clear line (what, which file, what to do) and exit status 1, or as a
documented warning; never a bare traceback (issue 15).

Cases also covered elsewhere: decompression bombs and images over the pixel cap, NaN weights
and out-of-bounds checkpoint metadata (``tests/test_cli_errors.py``); archives
(``tests/test_security_archives.py``); downloads (``tests/test_security_downloads.py``); CSV
parsing details (``tests/data/test_data_csv.py``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakalign.cli import main
from weakalign.atomic import OutputNotWritableError, atomic_open, write_json
from weakalign.data.csvio import (
    PF_PASCAL_COLUMNS,
    PF_WILLOW_HEADER,
    CsvFormatError,
    read_pf_pascal_pairs,
    read_pf_willow_pairs,
)
from weakalign.data.images import ImageShapeError, check_alignable
from weakalign.models.checkpoints import save_checkpoint
from weakalign.models.cnngeometric import ModelConfig, build_model

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _img(path: Path, h: int, w: int) -> Path:
    rng = np.random.default_rng(h * 1000 + w)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    cfg = ModelConfig(backbone="efficientnet_lite0", image_size=(96, 96), kernel_sizes=(3, 3), channels=(8, 8))
    torch.manual_seed(0)
    model = build_model("affine", cfg, backbone_weights="random")
    good = d / "good.pt"
    save_checkpoint(good, model)
    ckpt = torch.load(good, weights_only=True)
    sd = dict(ckpt["state_dict"])
    k = "regression.linear.weight"
    # finite weights (accepted by the checkpoint checks) whose output overflows to inf / NaN
    torch.save({**ckpt, "state_dict": {**sd, k: torch.full_like(sd[k], 3e38)}}, d / "overflow.pt")
    return {"dir": d, "good": good, "overflow": d / "overflow.pt", "img": _img(d / "a.png", 40, 50)}


def _align(files, capsys, src, tgt=None, model="good", out=None):
    out = out or files["dir"] / "out"
    rc = main(["align", str(src), str(tgt or files["img"]), "--model", str(files[model]), "--out", str(out)])
    return rc, capsys.readouterr().err.strip()


def _one_line(err: str) -> None:
    assert err and "\n" not in err and "Traceback" not in err, err


# --- image shape -------------------------------------------------------------------------------

def test_check_alignable_thresholds():
    assert check_alignable("x", (16, 16)) is None
    assert check_alignable("x", (16, 160)) is None  # exactly 10:1
    assert "aspect ratio 10.1:1" in check_alignable("x", (16, 161))
    for shape in ((15, 100), (100, 15), (1, 1)):
        with pytest.raises(ImageShapeError, match="too small"):
            check_alignable("x", shape)


@pytest.mark.parametrize("h, w", [(1, 1), (8, 300)])
def test_tiny_image_refused(files, capsys, tmp_path, h, w):
    tiny = _img(tmp_path / "tiny.png", h, w)
    out = tmp_path / "out"
    rc, err = _align(files, capsys, tiny, out=out)
    assert rc == 1
    _one_line(err)
    assert "tiny.png" in err and f"{w} x {h} pixels" in err and "at least 16" in err, err
    assert not out.exists()


def test_extreme_aspect_ratio_is_a_warning(files, capsys, tmp_path):
    strip = _img(tmp_path / "strip.png", 20, 400)
    out = tmp_path / "out"
    rc, err = _align(files, capsys, strip, out=out)
    assert rc == 0, err
    _one_line(err)
    assert err.startswith("weakalign align: warning: image") and "strip.png" in err and "20.0:1" in err
    assert (out / "strip_to_a_aligned.png").is_file() and (out / "strip_to_a_matches.png").is_file()


# --- non-finite transformation ---------------------------------------------------------------

def test_non_finite_transformation_refused(files, capsys, tmp_path):
    out = tmp_path / "out"
    rc, err = _align(files, capsys, files["img"], model="overflow", out=out)
    assert rc == 1
    _one_line(err)
    assert "overflow.pt" in err and "non-finite" in err and "no image written" in err, err
    assert not out.exists()


# --- unwritable outputs ----------------------------------------------------------------------

def test_align_out_is_a_file(files, capsys, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    for out in (blocker, blocker / "sub"):
        rc, err = _align(files, capsys, files["img"], out=out)
        assert rc == 1
        _one_line(err)
        assert f"cannot write {out}" in err and "is a file" in err and "--out" in err, err
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(IS_ROOT, reason="root may write into read-only folders")
def test_align_out_in_read_only_folder(files, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rc, err = _align(files, capsys, files["img"], out=ro / "out")
    finally:
        ro.chmod(stat.S_IRWXU)
    assert rc == 1
    _one_line(err)
    assert "permission denied" in err and "--out" in err, err


def test_atomic_writes_name_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputNotWritableError, match=r"cannot write .*/file/sub: a file is in the way"):
        write_json(tmp_path / "file" / "sub" / "m.json", {})
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OutputNotWritableError, match=r"cannot write .*dir\.json: "):
        write_json(tmp_path / "dir.json", {})
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*.tmp"))
    # an error inside the with-block is the caller's, unchanged
    with pytest.raises(KeyError):
        with atomic_open(tmp_path / "ok.txt") as fh:
            fh.write("half")
            raise KeyError("boom")
    assert not (tmp_path / "ok.txt").exists()


def test_data_fetch_root_unwritable(capsys, tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("x")
    rc = main(["data", "fetch", "pf-willow", "--root", str(blocker), "--mirror", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    _one_line(err)
    assert f"cannot write {blocker}" in err and "--root" in err, err


# --- data fetch: an archive that cannot be read ----------------------------------------------

def test_data_fetch_encrypted_archive_one_line(capsys, tmp_path, monkeypatch):
    from weakalign.data import sources
    from weakalign.data.sources import SourceFile

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    arc = mirror / "enc.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("top/a.png", b"png")
    raw = bytearray(arc.read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # "encrypted" flag bit
        raw[raw.index(sig) + off] |= 0x1
    arc.write_bytes(bytes(raw))
    src = SourceFile(key="enc", dataset="ds", filename="enc.zip", url="https://x.invalid/enc.zip",
                     kind="zip", mirror_names=("enc.zip",), extract_dirs=("top",),
                     expected={"ext:png": 1}, mirror_sha256=hashlib.sha256(bytes(raw)).hexdigest())
    monkeypatch.setattr(sources, "resolve", lambda names: [src])
    root = tmp_path / "data"
    rc = main(["data", "fetch", "enc", "--root", str(root), "--mirror", str(mirror)])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    _one_line(err)
    assert "enc.zip" in err and "'top/a.png' is encrypted" in err, err
    assert not (root / "downloads" / "enc.zip").exists() and not (root / "ds").exists()


# --- pair lists (CSV) --------------------------------------------------------------------------

def _pascal(tmp_path, body: str, header=",".join(PF_PASCAL_COLUMNS)) -> Path:
    p = tmp_path / "pairs.csv"
    p.write_text(header + "\n" + body if header is not None else body)
    return p


@pytest.mark.parametrize("header, body, pattern", [
    ("source_image,target_image,class,XA,YA,XB", "a.jpg,b.jpg,1,1;2,1;2,1;2\n",
     r"line 1: missing column\(s\) \['YB'\]"),
    (None, "a.jpg,b.jpg,1,1;x,1;2,1;2,1;2\n", r"line 2: column 'XA': 'x' is not a number"),
    (None, "a.jpg,b.jpg,1,1;2;3,1;2,1;2,1;2\n", r"line 2: keypoint count mismatch"),
    (None, "a.jpg,b.jpg,1,1;2,1;2,1;2\n", r"line 2: 6 fields, the header has 7"),
    (None, ",b.jpg,1,1;2,1;2,1;2,1;2\n", r"line 2: column 'source_image' is empty"),
    (None, "", r"no data rows"),
    ("", "", r"line 1: empty file"),
])
def test_malformed_pf_pascal_csv(tmp_path, header, body, pattern):
    p = _pascal(tmp_path, body, ",".join(PF_PASCAL_COLUMNS) if header is None else header)
    if header == "":
        p.write_bytes(b"")
    with pytest.raises(CsvFormatError, match=pattern) as ei:
        read_pf_pascal_pairs(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("data, pattern", [
    (b"\xff\xfe\x00s\x00o\x00u\x00r\x00c\x00e", "not UTF-8 text"),
    (b"source_image,target_image,class\n" + b"x" * 200_000 + b"\n",  # e.g. a binary file
     "not a readable CSV .field larger than field limit"),
])
def test_csv_that_is_not_text(tmp_path, data, pattern):
    p = tmp_path / "pairs.csv"
    p.write_bytes(data)
    with pytest.raises(CsvFormatError, match=pattern):
        read_pf_pascal_pairs(p)


def _willow_project(tmp_path, monkeypatch, rows: list[list], predictions_dir="preds"):
    """A project folder with data/pf-willow (default CSV, images) and an evaluate block that runs
    the identity model on 2 pairs."""
    root = tmp_path / "proj"
    d = root / "data" / "pf-willow"
    (d / "PF-dataset" / "car(G)").mkdir(parents=True)
    for name in ("a", "b"):
        _img(d / "PF-dataset" / "car(G)" / f"{name}.png", 40, 50)
    with open(d / "test_pairs_pf.csv", "w") as fh:
        fh.write(",".join(PF_WILLOW_HEADER) + "\n")
        for r in rows:
            fh.write(",".join(str(v) for v in r) + "\n")
    (root / "dvc.yaml").write_text("stages: {}\n")
    params = root / "params.yaml"
    params.write_text("evaluate:\n  benchmarks: [pf-willow]\n  models: {identity: {type: identity}}\n"
                      f"  predictions_dir: {predictions_dir}\n  max_pairs: 2\n  batch_size: 2\n")
    monkeypatch.setenv("WEAKALIGN_PROJECT_ROOT", str(root))
    return root, params


def _willow_rows(n=900, src="PF-dataset/car(G)/a.png"):
    pts = [float(v) for v in range(1, 21)]
    return [[src, "PF-dataset/car(G)/b.png", *pts, *pts] for _ in range(n)]


def test_evaluate_with_malformed_csv_one_line(tmp_path, monkeypatch, capsys):
    rows = _willow_rows()
    rows[6][5] = "abc"  # one keypoint coordinate: CSV line 8, column XA4
    root, params = _willow_project(tmp_path, monkeypatch, rows)
    rc = main(["evaluate", "predict", "--params", str(params), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    _one_line(err)
    assert "test_pairs_pf.csv, line 8: column 'XA4': 'abc' is not a number" in err, err
    rows = _willow_rows()
    rows[3] = rows[3][:-1]  # a row with 39 keypoint coordinates instead of 40
    _willow_project(tmp_path / "b", monkeypatch, rows)
    rc = main(["evaluate", "predict", "--params", str(tmp_path / "b" / "proj" / "params.yaml"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "line 5: 41 fields, the header has 42" in err, err


def test_evaluate_with_missing_image_names_it(tmp_path, monkeypatch, capsys):
    # documented: a benchmark whose files are missing is "not available" (with the reason) and
    # gets no number; the run goes on
    root, params = _willow_project(tmp_path, monkeypatch, _willow_rows(src="PF-dataset/car(G)/nope.png"))
    rc = main(["evaluate", "predict", "--params", str(params), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "pf-willow: not available" in out and "nope.png" in out, out


def test_evaluate_predictions_dir_unwritable(tmp_path, monkeypatch, capsys):
    root, params = _willow_project(tmp_path, monkeypatch, _willow_rows(), predictions_dir="blocked/preds")
    (root / "blocked").write_text("a file in the way")
    rc = main(["evaluate", "predict", "--params", str(params), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    _one_line(err)
    # checked before any prediction is computed (evaluation/commands.py: check_dir_writable)
    assert "cannot write" in err and "blocked is a file, not a folder" in err, err


def test_pf_willow_reader_wrong_coordinate_count(tmp_path):
    p = tmp_path / "w.csv"
    p.write_text(",".join(PF_WILLOW_HEADER[:-1]) + "\n")  # 41 columns: one coordinate short
    with pytest.raises(CsvFormatError, match="41 columns in the header, expected 42"):
        read_pf_willow_pairs(p, expected_rows=None)


def test_unknown_backbone_is_a_one_line_cli_error():
    """model.backbone: nope used to pass the resolver and end in a bare ValueError traceback when
    the model was built."""
    from weakalign.cli import expected_errors
    from weakalign.models.backbones import UnknownBackbone, build_backbone

    with pytest.raises(UnknownBackbone, match="unknown backbone 'nope'.*efficientnet_lite0.*params.yaml") as err:
        build_backbone("nope", weights="random")
    assert isinstance(err.value, expected_errors())
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working


def test_bootstrap_resamples_below_100_refused_when_params_are_read(tmp_path):
    """The interval needs >= 100 resamples; refused as one line when the evaluate block is read
    (before `evaluate predict` runs), not as a traceback in `evaluate metrics`."""
    import pytest as _pytest

    from weakalign.evaluation.commands import load_block

    p = tmp_path / "params.yaml"
    p.write_text("evaluate:\n  bootstrap: {resamples: 50}\n")
    with _pytest.raises(Exception, match=r"bootstrap\.resamples must be >= 100, got 50") as exc:
        load_block(p)
    assert "\n" not in str(exc.value)


def test_audit_reason_for_an_unreadable_image_does_not_carry_its_path(tmp_path):
    """leakage.json is a tracked pipeline output: its reasons must not depend on where the clone is."""
    from weakalign.data.audit import _hash_job

    bad = tmp_path / "deep" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    path, h, hf, err = _hash_job((bad, 8, False))
    assert h is None and err.startswith("corrupt or truncated image") and str(tmp_path) not in err
    gone = tmp_path / "missing.jpg"
    assert str(tmp_path) not in _hash_job((gone, 8, False))[3]


def test_mirror_origin_is_recorded_relative_to_the_mirror(tmp_path):
    from weakalign.data.prepare import portable_origin

    assert portable_origin(f"mirror:{tmp_path}/pf-willow/test_pairs_pf.csv", tmp_path) == "mirror:pf-willow/test_pairs_pf.csv"
    assert portable_origin("mirror:/elsewhere/x.csv", tmp_path) == "mirror:x.csv"
    assert portable_origin("https://example.org/x.csv", tmp_path) == "https://example.org/x.csv"
