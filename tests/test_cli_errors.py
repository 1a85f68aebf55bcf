"""Expected failures of `weakalign align` and the training commands end as one line and a
non-zero exit, never a traceback (unless --debug); checkpoints, images and params files are
validated before anything big is allocated (issues 17 and 20)."""

from __future__ import annotations

import argparse
import math
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakalign.cli import UserError, build_parser, main
from weakalign.data.images import ImageTooLargeError, load_image
from weakalign.models.checkpoints import (
    FORMAT,
    CheckpointFormatError,
    UnsafeCheckpointError,
    load_checkpoint,
    safe_load,
    save_checkpoint,
)
from weakalign.models.cnngeometric import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]


class Evil:  # not on any allow-list: its pickle must be refused
    pass


def _png_declaring(path: Path, w: int, h: int) -> Path:
    """A small, valid-looking PNG whose header declares w x h pixels (never decodable)."""
    Image.new("RGB", (4, 4)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4:ihdr + 12] = struct.pack(">II", w, h)
    raw[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr:ihdr + 17])))
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = ModelConfig(backbone="efficientnet_lite0", image_size=(96, 96), kernel_sizes=(3, 3), channels=(8, 8))
    model = build_model("affine", cfg, backbone_weights="random")
    good = d / "good.pt"
    save_checkpoint(good, model)
    ckpt = torch.load(good, weights_only=True)
    out = {"good": good, "dir": d}

    def variant(name, obj):
        torch.save(obj, d / f"{name}.pt")
        out[name] = d / f"{name}.pt"

    variant("pickle", {"format": FORMAT, "payload": Evil()})
    (d / "empty.pt").write_bytes(b"")
    out["empty"] = d / "empty.pt"
    (d / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = d / "truncated.pt"
    sd = dict(ckpt["state_dict"])
    k = "regression.linear.weight"
    variant("shape", {**ckpt, "state_dict": {**sd, k: torch.zeros(3, 3)}})
    variant("missing_key", {**ckpt, "state_dict": {kk: v for kk, v in sd.items() if kk != k}})
    variant("no_config", {kk: v for kk, v in ckpt.items() if kk != "config"})
    variant("ncnet", {"format": FORMAT, "geometric_model": "ncnet", "config": {}, "state_dict": {}})
    variant("ncnet_ref", {"state_dict": {"NeighConsensus.conv.0.weight": torch.zeros(1)}})
    variant("nan", {**ckpt, "state_dict": {**sd, k: torch.full_like(sd[k], float("nan"))}})
    variant("huge", {**ckpt, "config": {**ckpt["config"], "image_size": [60000, 60000]}})
    variant("list", [1, 2, 3])
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(d / "a.png")
    out["img"] = d / "a.png"
    out["bigimg"] = _png_declaring(d / "big.png", 12000, 12000)
    out["bomb"] = _png_declaring(d / "bomb.png", 20000, 20000)
    return out


def _align(files, capsys, model, *extra, src="img"):
    rc = main(["align", str(files[src]), str(files["img"]), "--model", str(files[model]),
               "--out", str(files["dir"] / "out"), *extra])
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize("model, pattern", [
    ("pickle", "refused to unpickle"),
    ("empty", "empty file"),
    ("truncated", "truncated"),
    ("shape", "do not fit"),
    ("missing_key", "do not fit"),
    ("no_config", "no 'config'"),
    ("ncnet", "NCNet checkpoint"),
    ("ncnet_ref", "NCNet checkpoint"),
    ("nan", "NaN or infinite"),
    ("huge", "image_size"),
    ("list", "expected a dict"),
])
def test_align_bad_checkpoints_one_line(files, capsys, model, pattern):
    t0 = time.time()
    rc, err = _align(files, capsys, model)
    assert rc == 1
    assert "\n" not in err and "Traceback" not in err, err
    assert pattern in err and str(files[model]) in err, err
    assert time.time() - t0 < 20  # image_size [60000, 60000] is refused before any allocation
    assert not (files["dir"] / "out").exists()


def test_align_bad_images_one_line(files, capsys):
    rc, err = _align(files, capsys, "good", src="bigimg")
    assert rc == 1 and "\n" not in err and "12000 x 12000" in err and "big.png" in err
    # raising the cap above Pillow's own limit: its decompression-bomb error, as one line
    rc, err = _align(files, capsys, "good", "--max-image-pixels", str(10**9), src="bomb")
    assert rc == 1 and "\n" not in err and "bomb.png" in err and "too large" in err
    (files["dir"] / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    files["junk"] = files["dir"] / "junk.png"
    rc, err = _align(files, capsys, "good", src="junk")
    assert rc == 1 and "\n" not in err and "junk.png" in err


def test_align_debug_shows_the_exception(files, capsys):
    with pytest.raises(UserError):
        main(["align", str(files["img"]), str(files["img"]), "--model", str(files["nan"]), "--debug"])
    with pytest.raises(UserError):
        main(["--debug", "align", str(files["img"]), str(files["img"]), "--model", str(files["empty"])])


def test_align_good_checkpoint_still_works(files, capsys):
    rc, err = _align(files, capsys, "good")
    assert rc == 0, err
    assert (files["dir"] / "out" / "a_to_a_aligned.png").is_file()


def test_load_checkpoint_errors_are_typed(files):
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(files["pickle"])
    for name in ("empty", "no_config", "ncnet", "nan", "huge"):  # all refused before building
        with pytest.raises(CheckpointFormatError):
            load_checkpoint(files[name])


def test_safe_load_restores_the_allow_list_exactly(files):
    ser = torch.serialization
    before = list(ser.get_safe_globals())
    try:
        ser.add_safe_globals([argparse.Namespace])  # someone else relies on this entry
        safe_load(files["good"])
        assert argparse.Namespace in ser.get_safe_globals()
        with pytest.raises(UnsafeCheckpointError):
            safe_load(files["pickle"])
        assert argparse.Namespace in ser.get_safe_globals()
        ser.clear_safe_globals()
        ser.add_safe_globals(before)
        safe_load(files["good"])
        assert ser.get_safe_globals() == before  # nothing of ours left behind either
    finally:
        ser.clear_safe_globals()
        ser.add_safe_globals(before)


# --- images ------------------------------------------------------------------------------------

def test_pixel_cap_is_checked_before_decoding(files, monkeypatch):
    t0 = time.time()
    with pytest.raises(ImageTooLargeError, match=r"12000 x 12000 pixels"):
        load_image(files["bigimg"])
    assert time.time() - t0 < 2
    monkeypatch.setenv("WEAKALIGN_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match="50 x 40|40 x 50"):
        load_image(files["img"])
    assert load_image(files["img"], max_pixels=2000).shape == (40, 50, 3)
    monkeypatch.delenv("WEAKALIGN_MAX_IMAGE_PIXELS")
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        load_image(files["bomb"], max_pixels=10**9)  # Pillow's DecompressionBombError, converted


# --- params ------------------------------------------------------------------------------------

def _train(tmp_path, capsys, text, *extra):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    rc = main(["train-strong", "--model", "affine", "--params", str(p), "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize("text, extra, pattern", [
    ("train_strong: {batch_size: [1\n", (), "not valid YAML at line"),
    ("", (), "empty"),
    ("# only a comment\n", (), "empty"),
    ("train_strongg: {}\n", (), "unknown top-level key"),
    ("profiles: {smoke: {train_stong: {}}}\n", (), "unknown block"),
    ("train_strong: {schedule: [{epochs: 1, lr: .nan}]}\n", (), "lr must be a finite number"),
    ("train_strong: {schedule: [{epochs: 1, lr: .inf}]}\n", (), "finite"),
    ("train_strong: {weight_decay: .nan}\n", (), "weight_decay must be a finite number"),
    ("train_strong: {}\n", ("--set", "data.max_val_images=-5"), "max_val_images must be a non-negative integer"),
    ("train_strong: {data: {max_train_images: -1}}\n", (), "max_train_images must be a non-negative integer"),
    ("train_strong: {data: {max_train_images: 2.5}}\n", (), "max_train_images"),
    ("train_strong: {batch_size: abc}\n", (), "batch_size must be a non-negative integer"),
    ("train_strong: {model: {image_size: [240]}}\n", (), "image_size"),
    ("train_strong: {}\n", ("--set", "data.random_t=[1"), "not valid YAML"),
])
def test_training_params_errors_one_line(tmp_path, capsys, text, extra, pattern):
    rc, err = _train(tmp_path, capsys, text, *extra)
    assert rc == 1 and "\n" not in err and "Traceback" not in err, err
    assert pattern in err, err


def test_ncnet_and_data_params_validated(tmp_path):
    from weakalign.data.params import load_params
    from weakalign.ncnet.params import config_from_file

    p = tmp_path / "params.yaml"
    p.write_text("train_ncnet: {data: {max_val_pairs: -3}}\n")
    with pytest.raises(UserError, match="max_val_pairs must be a non-negative integer"):
        config_from_file(str(p))
    p.write_text("train_ncnet: {schedule: [{epochs: 1, lr: .nan}]}\n")
    with pytest.raises(UserError, match="finite"):
        config_from_file(str(p))
    p.write_text("data: {strong_val_images: -5}\n")
    with pytest.raises(UserError, match="strong_val_images must be a non-negative integer"):
        load_params(p)
    p.write_text("data: {heldout_fraction: .nan}\n")
    with pytest.raises(UserError, match="finite"):
        load_params(p)
    p.write_text("")
    with pytest.raises(UserError, match="empty"):
        load_params(p)


def test_project_params_file_still_resolves():
    from weakalign.data.params import load_params
    from weakalign.ncnet.params import resolve_ncnet
    from weakalign.training.params import read_params_file, resolve

    doc, _ = read_params_file(ROOT / "params.yaml")
    for prof in ["default", *sorted(doc.get("profiles") or {})]:
        resolve("train_strong", doc, profile=prof)
        resolve("train_weak", doc, profile=prof)
        resolve_ncnet(doc, profile=prof)
    load_params(ROOT / "params.yaml")


# --- the command itself ------------------------------------------------------------------------

def test_trust_unverified_and_debug_before_or_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["data", "fetch", "tss", "--trust-unverified"]).trust_unverified
    assert parser.parse_args(["--trust-unverified", "data", "fetch", "tss"]).trust_unverified
    assert not parser.parse_args(["data", "fetch", "tss"]).trust_unverified
    assert parser.parse_args(["--debug", "align", "a", "b"]).debug
    assert parser.parse_args(["align", "a", "b", "--debug"]).debug


def test_python_m_weakalign():
    r = subprocess.run([sys.executable, "-m", "weakalign", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "usage: weakalign" in r.stdout and "align" in r.stdout
    assert math.isfinite(0.0)
