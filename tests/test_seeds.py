"""`weakalign seeds`: plumbing with a monkeypatched trainer and predictor (no training runs)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from test_stats import fake_cache
from weakalign import seeds

ROOT = Path(__file__).resolve().parents[1]


def test_training_overrides_are_valid_train_weak_parameters():
    from weakalign.training.params import parse_set, read_params_file, resolve

    doc, _ = read_params_file(ROOT / "params.yaml")
    for variant in ("default", "no_mask"):
        argv = seeds.train_argv(7, variant)
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        cfg = resolve("train_weak", doc, variant=None if variant == "default" else variant, overrides=parse_set(sets))
        assert cfg.seed == 7
        outs = (cfg.outputs if variant == "default" else cfg.variant_outputs).to_dict()
        assert outs == {k: v for k, v in seeds.output_paths(7, variant).items()}
        assert all("seed_7" in v for v in outs.values())
        # never the main run's files
        main = resolve("train_weak", doc, variant=None if variant == "default" else variant)
        main_outs = (main.outputs if variant == "default" else main.variant_outputs).to_dict()
        assert not {v.format(variant=variant) for v in main_outs.values()} & set(outs.values())


def test_model_names_come_from_evaluate_models():
    from weakalign.training.params import read_params_file, resolve

    doc, _ = read_params_file(ROOT / "params.yaml")
    names = seeds.model_names(doc["evaluate"]["models"], resolve("train_weak", doc))
    assert names == {"default": "weak_affine_tps", "no_mask": "weak, no inlier mask",
                     "tolerance_1": "weak, mask tolerance 1", "tolerance_2": "weak, mask tolerance 2"}


def test_model_names_skip_entries_with_evaluation_options():
    """The refinement row runs the main checkpoint with affine_refinements: it is not the main
    run, whatever the order of evaluate.models (yaml.safe_dump sorts it before weak_affine_tps)."""
    from weakalign.training.params import read_params_file, resolve

    doc, _ = read_params_file(ROOT / "params.yaml")
    models = {"weak + refined": {"checkpoint": "models/weak_affine_tps.pt", "affine_refinements": 1},
              **doc["evaluate"]["models"]}
    assert seeds.model_names(models, resolve("train_weak", doc))["default"] == "weak_affine_tps"


def test_not_part_of_dvc_repro():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for st in stages.values():
        cmd = st.get("do", st)["cmd"]
        assert "weakalign seeds" not in (cmd if isinstance(cmd, str) else " ".join(cmd))


def test_seeds_run_with_fake_trainer(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    for f in ("strong_affine.pt", "strong_tps.pt"):
        (tmp_path / "models" / f).write_bytes(b"x")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "README.md").write_text("# t\n")
    monkeypatch.setattr("weakalign.data.paths.project_root", lambda: tmp_path)
    calls = []

    def fake_train(argv):
        calls.append(argv)
        sets = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")
        key = "outputs" if "--variant" not in argv else "variant_outputs"
        for k in ("checkpoint", "metrics"):
            p = tmp_path / sets[f"{key}.{k}"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"seconds": 1.0, "training_seconds": 0.5}))

    base = fake_cache(n=30)

    def fake_predict(root, checkpoint, bench, cfg):
        assert bench == "pf-willow"
        seed = int(checkpoint.split("seed_")[1].split("/")[0])
        noise = {"weak_affine_tps.pt": 5.0, "no_mask.pt": 12.0, "tolerance_1.pt": 6.0, "tolerance_2.pt": 7.0}[Path(checkpoint).name]
        c = fake_cache(n=30, noise=noise, seed=seed)
        c["source_points"], c["target_points"] = base["source_points"], base["target_points"]
        return c

    monkeypatch.setattr(seeds, "run_training", fake_train)
    monkeypatch.setattr(seeds, "predict_checkpoint", fake_predict)
    params = tmp_path / "params.yaml"
    doc = yaml.safe_load(params.read_text())
    doc["evaluate"]["benchmarks"] = ["pf-willow", "tss"]
    doc["evaluate"]["bootstrap"] = {"resamples": 200, "seed": 0}
    params.write_text(yaml.safe_dump(doc))

    res = seeds.run([1, 2, 3], params=str(params))
    assert len(calls) == 12 and sum("--variant" not in c for c in calls) == 3
    b = res["benchmarks"]["pf-willow"]
    r = b["models"]["weak_affine_tps"]["affine_tps"]["0.1"]
    vals = [r["per_seed"][s]["pck"] for s in ("1", "2", "3")]
    m = sum(vals) / 3
    assert r["mean"] == pytest.approx(m) and r["n"] == 3
    assert r["std"] == pytest.approx((sum((v - m) ** 2 for v in vals) / 2) ** 0.5)
    assert all(r["per_seed"][s]["low"] <= r["per_seed"][s]["pck"] <= r["per_seed"][s]["high"] for s in ("1", "2", "3"))
    d = b["differences"]["mask-no_mask"]["kinds"]["affine_tps"]["0.1"]
    assert d["n"] == 3 and 0 <= d["seeds_excluding_zero"] <= 3
    assert b["differences"]["weak-strong"]["available"] is False  # strong models are not retrained per seed
    out = json.loads((tmp_path / "reports" / "metrics" / "seeds.json").read_text())
    assert out["seeds"] == [1, 2, 3] and out["command"].startswith("weakalign seeds --seeds 1 2 3")
    md = (tmp_path / "reports" / "tables" / "seeds_pf-willow.md").read_text()
    assert " ± " in md and "seed 3" in md and "mask - no mask" in md
    assert "Training seeds on pf-willow" in (tmp_path / "README.md").read_text()
    # a second run retrains nothing and reuses the prediction caches
    calls.clear()
    monkeypatch.setattr(seeds, "predict_checkpoint", lambda *a: pytest.fail("caches not reused"))
    seeds.run([1, 2, 3], params=str(params), readme=False)
    assert calls == []


def test_seeds_markdown_skips_benchmarks_without_files():
    """A benchmark whose files are absent here (PF-PASCAL images) has no protocol: the tables skip
    it instead of failing after all trainings ran (happened in the first real run)."""
    from weakalign.seeds import seeds_markdown

    doc = {"seeds": [1, 2], "command": "weakalign seeds", "profile": "default",
           "benchmarks": {"pf-pascal": {"available": False, "reason": "images not here"}}}
    assert "pf-pascal" not in seeds_markdown(doc)


def test_seeds_tables_say_when_the_main_run_changed_since(tmp_path):
    """seeds.json records each run's params fingerprint; when the current main run's differs, the
    tables say the seeds are stale instead of silently mixing two configurations."""
    import json

    from weakalign.seeds import seeds_staleness

    doc = {"main_run_seed": 1, "training": {"1": {"default": {"params_fingerprint": "aaaa"}}}}
    metrics = tmp_path / "reports" / "metrics"
    metrics.mkdir(parents=True)
    assert seeds_staleness(doc, tmp_path) is None  # no main run recorded: nothing to compare
    (metrics / "train_weak.json").write_text(json.dumps({"params_fingerprint": "aaaa"}))
    assert seeds_staleness(doc, tmp_path) is None
    (metrics / "train_weak.json").write_text(json.dumps({"params_fingerprint": "bbbb"}))
    msg = seeds_staleness(doc, tmp_path)
    assert msg.startswith("**Stale:**") and "aaaa vs bbbb" in msg
    assert seeds_staleness({"seeds": [1]}, tmp_path) is None  # old seeds.json without fingerprints


def test_unavailable_benchmark_reason_names_files_relative_to_the_project(tmp_path, monkeypatch):
    """seeds.json and pck.json are committed: a missing dataset's reason must not carry the clone's path."""
    from weakalign.data.datasets import DatasetNotAvailable
    from weakalign.data.paths import ROOT_ENV
    from weakalign.evaluation.commands import unavailable_reason

    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    exc = DatasetNotAvailable("pf-pascal", [tmp_path / "data/pf-pascal/a.jpg", tmp_path / "data/pf-pascal/b.jpg"],
                              "run `weakalign data fetch pf-pascal`; or dvc repro")
    reason = unavailable_reason(exc)
    assert str(tmp_path) not in reason
    assert reason == "2 file(s) missing, e.g. data/pf-pascal/a.jpg. To get it: run `weakalign data fetch pf-pascal`"
    outside = unavailable_reason(DatasetNotAvailable("x", ["/elsewhere/c.jpg"], "fetch it"))
    assert "/elsewhere/c.jpg" in outside
