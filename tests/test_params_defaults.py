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
    import weakalign.ncnet.params as ncp

    monkeypatch.setitem(ncp.NCNET_DEFAULTS["data"], "max_train_pairs", 600)  # the drift of issue 16
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
    assert cfg["bootstrap"] == {"resamples": 100, "seed": 3, "confidence": 0.95, "method": "bca"}
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
    assert "data" not in PROFILED_BLOCKS and not math.isnan(load_block("data", None)["heldout_fraction"])


def test_resolve_block_refuses_non_mapping_profiles_from_the_api():
    """seeds / parity call the resolver directly (no params file reader in front)."""
    from weakalign.config import resolve_block

    with pytest.raises(UserError, match="profiles must map profile names"):
        resolve_block("train_strong", {"profiles": ["smoke"]}, "params.yaml", "smoke")
