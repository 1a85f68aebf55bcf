"""dvc.yaml tracks exactly the parameters each stage reads: a stage that reads block ``B`` of
params.yaml also depends on ``profile`` and on ``profiles.<name>.B`` of every profile that
overrides it (and on nothing else under ``profiles``, so editing the smoke profile's evaluation
does not retrain the default models)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _stages():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, st in doc["stages"].items():
        yield name, st.get("do", st)


def test_each_stage_tracks_its_own_profile_blocks():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    profiles = params["profiles"]
    checked = 0
    for name, st in _stages():
        tracked = [p for p in st.get("params", []) if isinstance(p, str)]
        assert "profiles" not in tracked, f"{name}: depends on every profile; list profiles.<name>.<block> instead"
        blocks = [p for p in tracked if p in profiles.get("smoke", {}) or p in profiles.get("paper", {}) or p == "evaluate"]
        for block in blocks:
            assert "profile" in tracked, name
            for prof, over in profiles.items():
                if block in (over or {}):
                    assert f"profiles.{prof}.{block}" in tracked, f"{name}: profiles.{prof}.{block} missing from its params"
                    checked += 1
        for p in tracked:
            if p.startswith("profiles."):
                _, prof, block = p.split(".", 2)
                assert block in (profiles.get(prof) or {}), f"{name}: {p} is not in params.yaml"
                assert block in tracked, f"{name}: tracks {p} but not {block}"
    assert checked >= 8
