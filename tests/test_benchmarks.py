"""The benchmark harness runs on a tiny setting (speed itself is never asserted)."""

import json
import sys

import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_run_writes_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import run

    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["environment"]["torch"] and res["environment"]["threads"] >= 1
    assert res["inference"][0]["pairs_per_s"] > 0 and res["inference"][0]["peak_rss_mb"] > 0
    assert res["flops"]["efficientnet_lite0"]["two_stage_pair_flops"] > res["flops"]["efficientnet_lite0"]["backbone_pass_flops"] > 0
    assert {r["stage"] for r in res["training"]} == {"strong_affine", "weak"}
    assert all(r["median_s"] > 0 and r["peak_rss_mb"] > 0 for r in res["training"])
    md = (tmp_path / "results.md").read_text()
    assert "GFLOP/s" in md and "efficientnet_lite0" in md and "| weak | 2 |" in md


def test_a_failing_case_is_reported_not_hung(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import run

    with pytest.raises(RuntimeError, match="failed"):
        run.in_subprocess(run._training_step_case, "strong_nonexistent", 1, 64, "random", 0.01)


def test_readme_block_is_replaced_not_duplicated(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import run

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    run.update_readme("first\n")
    run.update_readme("second\n")
    text = readme.read_text()
    assert text.count(run.README_BEGIN) == 1 and "second" in text and "first" not in text and "intro" in text


def test_per_pair_pck_comparison_on_the_naive_subset(tiny_willow, tiny_backbone, monkeypatch):
    """The benchmark's equality check of the fast path against the naive one (first N pairs)."""
    monkeypatch.syspath_prepend(str(ROOT))
    import torch

    from benchmarks import run
    from weakalign.evaluation.predict import predict_pairs, predict_pairs_naive
    from weakalign.models import ModelConfig, TwoStageCNNGeometric

    torch.manual_seed(0)
    model = TwoStageCNNGeometric(ModelConfig(backbone="tiny", image_size=(240, 240)), backbone=tiny_backbone)
    fast = predict_pairs(model, tiny_willow, batch_size=4, progress=False)
    naive = predict_pairs_naive(model, tiny_willow, progress=False, limit=5)
    assert run._same_per_pair_pck(fast, naive, 5)
    fast["transferred"]["affine_tps"] = fast["transferred"]["affine_tps"] + 1e3  # every keypoint now wrong
    assert not run._same_per_pair_pck(fast, naive, 5)


def test_breakdown_times_every_step(tiny_willow, tiny_backbone, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import run
    from weakalign.models import ModelConfig, TwoStageCNNGeometric

    model = TwoStageCNNGeometric(ModelConfig(backbone="tiny", image_size=(240, 240)), backbone=tiny_backbone)
    b = run.breakdown("tiny", batch_size=4, pair_batches=2, model=model, dataset=tiny_willow)
    assert b["pairs_timed"] == 8 and b["pairs_total"] == 12
    assert len(b["one_off_seconds"]) == 3 and all(v > 0 for v in b["one_off_seconds"].values())
    assert "stage-2 backbone pass (warped source)" in b["per_pair_ms"] and all(v > 0 for v in b["per_pair_ms"].values())
    assert "| grid_sample warp |" in run.breakdown_markdown(b)


@pytest.mark.slow
def test_backbone_variants_agree(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import run

    v = run.backbone_variants("efficientnet_lite0", "random", batch=2, rounds=1)
    assert set(v["variants"]) == {"eager_channels_last", "frozen", "frozen_onednn_fusion"}
    for r in v["variants"].values():
        assert r["max_abs_diff_to_eager"] <= 1e-3 * v["eager_max_abs"] and r["median_per_image_s"] > 0
    assert "| frozen_onednn_fusion |" in run.variants_markdown(v)


def test_lever_projection_scales_each_runs_caching_and_training(monkeypatch):
    """prepare x backbone ratio + training x step ratio, per run, summed as added minutes."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import levers

    runs = {"train_strong_affine": {"prepare_seconds": 60.0, "training_seconds": 30.0},
            "train_strong_tps": {"prepare_seconds": 60.0, "training_seconds": 30.0},
            "train_weak": {"prepare_seconds": 6.0, "training_seconds": 60.0},
            "ablations/train_weak_no_mask": {"prepare_seconds": None, "training_seconds": 60.0}}  # skipped: no record
    p = levers.project(runs, {"backbone": 2.0, "strong_affine": 3.0, "strong_tps": 4.0, "weak": 2.5})
    # affine 120+90-90, tps 120+120-90, weak 12+150-66 = 120 + 150 + 96 = 366 s
    assert p["added_minutes"] == pytest.approx(366 / 60)
    assert set(p["runs"]) == {"train_strong_affine", "train_strong_tps", "train_weak"}
    assert levers.project(runs, {"backbone": 1.0, "strong_affine": 1.0, "strong_tps": 1.0, "weak": 1.0})["added_minutes"] == 0


@pytest.mark.slow
def test_quick_lever_benchmark_writes_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import levers

    assert levers.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "levers.json").read_text())
    assert set(res["steps"]) == {"strong_affine", "strong_tps", "weak"} and len(res["levers"]) == 2
    assert all(r["ms_per_image"] > 0 for r in res["backbone"].values())
    assert "minutes added" in (tmp_path / "levers.md").read_text()
