"""One resolver for every params block (weakalign.config): defaults defined once (in code; the
top-level blocks of params.yaml restate them and must agree), deep merge of profiles, unknown
keys / wrong types / negative counts / NaN refused with one line naming the file and the key."""

import math

import pytest
import yaml

from weakalign.cli import UserError
from weakalign.config import BLOCK_MODULES, PROFILED_BLOCKS, load_block, resolve_block, schema
from weakalign.data.paths import project_root

PARAMS = project_root() / "params.yaml"


def _leaves(d, path=()):
    for k, v in d.items():
        if isinstance(v, dict) and v and path + (k,) not in (("models",), ("variants",)):
            yield from _leaves(v, path + (k,))
        else:
            yield path + (k,), v


@pytest.mark.parametrize("block", list(BLOCK_MODULES))
def test_every_default_agrees_with_params_yaml(block):
    doc = yaml.safe_load(PARAMS.read_text())
    defaults = schema(block).defaults()
    stated = list(_leaves(doc[block]))
    assert stated, block
    for path, value in stated:
        node = defaults
        for k in path:
            assert k in node, f"params.yaml {block}.{'.'.join(path)} has no default in {BLOCK_MODULES[block]}"
            node = node[k]
        assert node == value, (f"params.yaml {block}.{'.'.join(path)} = {value!r} but the default in "
                               f"{BLOCK_MODULES[block]} is {node!r}: change one place (defaults) and restate it, "
                               "or move the pipeline's choice into profiles.<name>")


def test_a_disagreeing_default_is_caught(monkeypatch):
    import dataclasses

    from weakalign import config

    # the drift of issue 16: the code's default changes, params.yaml still states the old one
    sch = schema("train_ncnet")
    drifted = sch.defaults()
    drifted["data"]["max_train_pairs"] = 600
    monkeypatch.setitem(config._SCHEMAS, "train_ncnet", dataclasses.replace(sch, defaults=lambda: drifted))
    with pytest.raises(AssertionError, match="max_train_pairs"):
        test_every_default_agrees_with_params_yaml("train_ncnet")


def test_every_profile_resolves_every_block():
    doc = yaml.safe_load(PARAMS.read_text())
    for prof in doc["profiles"]:
        for block in BLOCK_MODULES:
            cfg, used = resolve_block(block, doc, str(PARAMS), prof)
            assert used == (prof if block in PROFILED_BLOCKS else "default")


def test_profile_override_of_one_nested_evaluate_key_keeps_the_others(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("profile: small\nevaluate:\n  bootstrap: {resamples: 500, seed: 3}\n"
                 "profiles:\n  small:\n    evaluate: {bootstrap: {resamples: 100}}\n")
    cfg = load_block("evaluate", p)
    assert cfg.profile == "small"
    assert cfg.to_dict()["bootstrap"] == {"resamples": 100, "seed": 3, "confidence": 0.95, "method": "bca"}
    # the old shallow merge replaced the whole bootstrap mapping (seed back to 0, keys lost)


def test_default_profile_overrides_apply_and_smoke_keeps_its_values():
    doc = yaml.safe_load(PARAMS.read_text())
    assert resolve_block("train_weak", doc, profile="default")[0]["stage2_backbone_grad"] is False
    assert resolve_block("train_weak", doc, profile="smoke")[0]["stage2_backbone_grad"] is False
    assert resolve_block("train_weak", doc, profile="paper")[0]["stage2_backbone_grad"] is True


@pytest.mark.parametrize("text, match", [
    ("evaluate: {max_pairs: -3}\n", r"evaluate.max_pairs must be a non-negative integer, got -3"),
    ("evaluate: {max_pairs: 2.5}\n", r"evaluate.max_pairs must be a non-negative integer"),
    ("evaluate: {batch_size: 0}\n", r"evaluate.batch_size must be >= 1"),
    ("evaluate: {bootstrap: {confidence: .nan}}\n", r"evaluate.bootstrap.confidence must be a finite number"),
    ("evaluate: {bootstrap: {confidence: 95}}\n", r"between 0 and 1"),
    ("evaluate: {bootstrap: {resamples: '2000'}}\n", r"resamples must be a non-negative integer"),
    ("evaluate: {bootstrap: {method: bootstrap}}\n", r"bca or percentile"),
    ("evaluate: {bootstrap: {sample: 3}}\n", r"unknown key 'bootstrap.sample'"),
    ("evaluate: {alphas_curve: [0.1, -0.1]}\n", r"alphas_curve must be a list of numbers > 0"),
    ("evaluate: {max_pair: 3}\n", r"unknown key 'max_pair'"),
    ("data: {strong_val_images: -5}\n", r"data.strong_val_images must be a non-negative integer"),
    ("data: {audit: {threshold: six}}\n", r"data.audit.threshold must be a non-negative integer"),
    ("train_strong: {batch_size: 0}\n", r"batch_size must be >= 1"),
    ("train_strong: {schedule: [{epochs: 1, lr: .nan}]}\n", r"finite"),
    ("train_ncnet: {data: {max_val_pairs: -1}}\n", r"train_ncnet.data.max_val_pairs must be a non-negative integer"),
    ("profile: fast\n", r"unknown profile 'fast' \(defined: default\);"),
    ("profile: fast\nprofiles: {smoke: {}}\n", r"unknown profile 'fast' \(defined: default, smoke\);"),
    ("profile: 3\n", r"profile must be a profile name"),
    ("profiles: [smoke]\n", r"profiles must be a mapping"),
    ("data: {heldout_fraction: 2.0}\n", r"data.heldout_fraction must be"),
    ("data: {weak_train_flip_prob: 5}\n", r"data.weak_train_flip_prob must be"),
    ("data: {audit: {jobs: 0}}\n", r"data.audit.jobs must be"),
])
def test_bad_values_are_one_line_errors_naming_file_and_key(tmp_path, text, match):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    block = next(iter(yaml.safe_load(text)))
    block = "train_strong" if block in ("profile", "profiles") else block
    with pytest.raises(UserError, match=match) as err:
        load_block(block, p)
    msg = str(err.value)
    assert "\n" not in msg and (str(p) in msg or block in msg)


def test_unknown_block_in_a_profile_and_data_has_no_profiles(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("profiles:\n  smoke:\n    data: {seed: 3}\n")
    with pytest.raises(UserError, match=r"profiles.smoke: unknown block\(s\) 'data'"):
        load_block("data", p)
    assert "data" not in PROFILED_BLOCKS and not math.isnan(load_block("data", None).heldout_fraction)


def test_resolve_block_refuses_non_mapping_profiles_from_the_api():
    """seeds / parity call the resolver directly (no params file reader in front)."""
    from weakalign.config import resolve_block

    with pytest.raises(UserError, match="profiles must map profile names"):
        resolve_block("train_strong", {"profiles": ["smoke"]}, "params.yaml", "smoke")


# ------------------------------------------------------------------------------------------
# Typed blocks (weakalign.config, 6.): one dataclass per block, defaults defined once


@pytest.mark.parametrize("block", list(BLOCK_MODULES))
@pytest.mark.parametrize("profile", ["default", "smoke", "paper"])
def test_every_block_of_every_profile_round_trips_through_its_dataclass(block, profile):
    """The dataclass holds exactly the merged dict: same keys, order and values (so fingerprints
    and the parameters written into metrics do not depend on the form)."""
    import json

    from weakalign.config import as_dict, typed_block

    doc = yaml.safe_load(PARAMS.read_text())
    cfg, used = resolve_block(block, doc, str(PARAMS), profile)
    t = typed_block(block, cfg, profile=used)
    assert type(t) is schema(block).cls
    assert json.dumps(as_dict(t)) == json.dumps(cfg)  # order included
    if block in PROFILED_BLOCKS:
        assert t.profile == profile


def test_typed_blocks_are_frozen_and_nested_sections_are_typed():
    import dataclasses

    from weakalign.training.params import Phase, RegressorModel, TrainStrong

    t = load_block("train_strong", PARAMS)
    assert isinstance(t, TrainStrong) and isinstance(t.model, RegressorModel)
    assert isinstance(t.model.image_size, tuple) and all(isinstance(p, Phase) for p in t.schedule)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.batch_size = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.model.backbone = "resnet101"


def test_defaults_are_the_dataclass_fields_and_nowhere_else():
    """The DEFAULTS dicts are derived from the dataclasses (not a second definition)."""
    from weakalign.config import defaults_of
    from weakalign.data.params import DEFAULTS as DATA_DEFAULTS, DataParams
    from weakalign.evaluation.commands import DEFAULTS as EVAL_DEFAULTS, EvaluateParams
    from weakalign.evaluation.stats import DEFAULT_BOOTSTRAP, BootstrapConfig
    from weakalign.ncnet.params import NCNET_DEFAULTS, TrainNCNet
    from weakalign.training.params import STRONG_DEFAULTS, WEAK_DEFAULTS, TrainStrong, TrainWeak

    for d, cls in ((DATA_DEFAULTS, DataParams), (EVAL_DEFAULTS, EvaluateParams), (NCNET_DEFAULTS, TrainNCNet),
                   (STRONG_DEFAULTS, TrainStrong), (WEAK_DEFAULTS, TrainWeak), (DEFAULT_BOOTSTRAP, BootstrapConfig)):
        assert d == defaults_of(cls)
    assert EVAL_DEFAULTS["bootstrap"] == DEFAULT_BOOTSTRAP  # one definition: the evaluate block's field is BootstrapConfig
    for block in BLOCK_MODULES:
        assert schema(block).defaults() == defaults_of(schema(block).cls)


def test_a_schedule_phase_keeps_restart_from_best_out_of_the_dict_unless_set():
    from weakalign.config import as_dict, typed
    from weakalign.training.params import Phase, TrainStrong

    d = TrainStrong().to_dict()
    assert d["schedule"] == [{"epochs": 2, "lr": 1.0e-3}, {"epochs": 1, "lr": 2.0e-4, "restart_from_best": True}]
    t = typed(TrainStrong, d)
    assert t.schedule[0] == Phase(epochs=2, lr=1.0e-3) and t.schedule[1].restart_from_best is True
    assert as_dict(t) == d


def test_dicts_given_to_the_python_entry_points_are_checked_once_and_converted():
    from weakalign.config import as_block
    from weakalign.data.params import DataParams
    from weakalign.training.params import STRONG_DEFAULTS, TrainStrong

    t = as_block("train_strong", {**STRONG_DEFAULTS, "_profile": "smoke"})
    assert isinstance(t, TrainStrong) and t.profile == "smoke"
    assert as_block("train_strong", t) is t
    with pytest.raises(UserError, match="train_strong.batch_size must be a non-negative integer"):
        as_block("train_strong", {**STRONG_DEFAULTS, "batch_size": -1})
    with pytest.raises(TypeError, match="expected TrainStrong or a dict"):
        as_block("train_strong", ["not", "a", "block"])
    # a partial dict is completed with the defaults on request
    d = as_block("data", {"seed": 5, "audit": {"threshold": 3}}, complete=True)
    assert isinstance(d, DataParams) and (d.seed, d.audit.threshold) == (5, 3)
    assert d.audit.hash_size == DataParams().audit.hash_size and d.heldout_fraction == DataParams().heldout_fraction
    with pytest.raises(UserError, match="heldout_fraction"):
        as_block("data", {"heldout_fraction": 1.5}, complete=True)
    # ... and refused with a one-line error naming what is missing otherwise
    with pytest.raises(UserError, match="data: missing key.*heldout_fraction.*complete=True"):
        as_block("data", {"seed": 5})
