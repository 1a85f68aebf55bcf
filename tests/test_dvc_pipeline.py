"""dvc.yaml tracks exactly the parameters each stage reads: a stage that reads block ``B`` of
params.yaml depends on ``B``, on ``profile`` and on ``profiles.${profile}.B`` -- the selected
profile's overrides only, so editing the smoke profile does not invalidate the default run."""

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ("train_strong", "train_weak", "train_ncnet", "evaluate")


def _stages():
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, st in doc["stages"].items():
        yield name, st.get("do", st)


def test_each_stage_tracks_the_selected_profile_of_its_block():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    checked = 0
    for name, st in _stages():
        tracked = [p for p in st.get("params", []) if isinstance(p, str)]
        assert "profiles" not in tracked, f"{name}: depends on every profile"
        for block in (b for b in BLOCKS if b in tracked):
            assert "profile" in tracked and f"profiles.${{profile}}.{block}" in tracked, (name, tracked)
            checked += 1
        assert all(p in ("profile", *BLOCKS) or p.startswith(("data.", "profiles.${profile}.")) for p in tracked), (name, tracked)
    assert checked >= 6
    # ${profile} must resolve for every profile: each one has every block (empty = no override)
    for prof, over in params["profiles"].items():
        missing = [b for b in BLOCKS if b not in (over or {})]
        assert not missing, f"profiles.{prof} lacks {missing} (add them as {{}})"
    assert params["profile"] in params["profiles"]


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_dvc_resolves_the_pipeline_for_every_profile(tmp_path, profile):
    dvc = Path(ROOT / ".venv" / "bin" / "dvc")
    if not dvc.is_file():
        pytest.skip("dvc not installed in .venv")
    for f in ("dvc.yaml", "params.yaml"):
        (tmp_path / f).write_text((ROOT / f).read_text().replace("profile: default\n", f"profile: {profile}\n", 1) if f == "params.yaml"
                                  else (ROOT / f).read_text())
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(dvc), "init", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run([str(dvc), "stage", "list"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "train_ncnet" in out.stdout and "evaluate_predict" in out.stdout
