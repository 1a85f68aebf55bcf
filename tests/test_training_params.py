"""params.yaml blocks of the trainings: defaults, profiles, variants, --set, the CLI parser."""

import argparse

import pytest

from weakalign.cli import UserError
from weakalign.training import commands
from weakalign.training.params import STRONG_DEFAULTS, Phase, fingerprint, parse_set, resolve, weak_label


def test_defaults_are_the_reference_synthetic_ranges():
    d = STRONG_DEFAULTS["data"]
    assert (d["padding_factor"], d["crop_factor"]) == (0.5, 9 / 16)
    assert (d["random_t"], d["random_s"], d["random_alpha"], d["random_t_tps"]) == (0.5, 0.5, 1 / 6, 0.4)
    assert d["load_size"] == [480, 640]


def test_profile_overrides_the_block_and_is_recorded():
    doc = {
        "profile": "smoke",
        "train_strong": {"batch_size": 8, "data": {"max_train_images": 100}},
        "profiles": {"smoke": {"train_strong": {"data": {"max_train_images": 4}}}, "paper": {}},
    }
    cfg = resolve("train_strong", doc)
    assert cfg.profile == "smoke"
    assert cfg.batch_size == 8 and cfg.data.max_train_images == 4
    assert cfg.data.max_val_images == 0  # untouched default
    assert resolve("train_strong", doc, profile="default").data.max_train_images == 100
    assert resolve("train_strong", doc, profile="paper").profile == "paper"
    assert "profile" not in cfg.to_dict()  # a fact of the resolution, not a parameter


def test_unknown_keys_and_profiles_are_errors():
    with pytest.raises(UserError, match="unknown key 'optim'"):
        resolve("train_strong", {"train_strong": {"optim": {"lr": 1}}})
    with pytest.raises(UserError, match="unknown key 'data.max_images'"):
        resolve("train_strong", {"train_strong": {"data": {"max_images": 1}}})
    with pytest.raises(UserError, match="unknown profile 'fast'"):
        resolve("train_strong", {}, profile="fast")
    with pytest.raises(UserError, match="schedule"):
        resolve("train_strong", {"train_strong": {"schedule": [{"epochs": 0, "lr": 1e-3}]}})


def test_image_lists_may_be_split_names_or_explicit_csv():
    cfg = resolve("train_strong", {"train_strong": {"data": {"train": {"csv": "x.csv", "image_root": "imgs"}}}})
    assert cfg.data.train == {"csv": "x.csv", "image_root": "imgs"}


def test_variants_and_labels():
    cfg = resolve("train_weak", {}, variant="no_mask")
    assert cfg.variant == "no_mask" and cfg.loss.mask == "none"
    assert weak_label(cfg) == "no inlier mask"
    assert weak_label(resolve("train_weak", {})) == "inlier mask, tolerance 0"
    t2 = resolve("train_weak", {}, variant="tolerance_2")
    assert t2.loss.tolerance == 2 and weak_label(t2) == "inlier mask, tolerance 2"
    doc = {"train_weak": {"variants": {"cross1": {"loss": {"tolerance": 1, "shape": "cross"}}}}}
    assert weak_label(resolve("train_weak", doc, variant="cross1")) == "inlier mask, tolerance 1 (cross)"
    with pytest.raises(UserError, match="unknown train_weak variant"):
        resolve("train_weak", {}, variant="nope")


def test_set_overrides_and_fingerprint():
    over = parse_set(["schedule=[{epochs: 1, lr: 0.1}]", "data.max_train_images=3", "pairs=random"])
    cfg = resolve("train_strong", {}, overrides=over)
    assert cfg.schedule == (Phase(epochs=1, lr=0.1),) and cfg.data.max_train_images == 3 and cfg.pairs == "random"
    assert cfg.to_dict()["schedule"] == [{"epochs": 1, "lr": 0.1}]
    base = resolve("train_strong", {})
    # fingerprints ignore what does not change the weights, and see what does
    assert fingerprint(base) == fingerprint(resolve("train_strong", {}, overrides={"num_workers": 3, "checkpoint_every": 7}))
    assert fingerprint(base) != fingerprint(cfg)
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_set(["lr"])


def test_cli_parser():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    commands.register(sub)
    a = parser.parse_args(["train-strong", "--model", "tps", "--resume", "--set", "batch_size=4"])
    assert (a.model, a.resume, a.set_) == ("tps", "must", ["batch_size=4"])
    a = parser.parse_args(["train-weak", "--variant", "no_mask", "--resume=auto", "--max-steps", "5"])
    assert (a.variant, a.resume, a.max_steps) == ("no_mask", "auto", 5)
    assert parser.parse_args(["train-weak"]).resume == "never"
