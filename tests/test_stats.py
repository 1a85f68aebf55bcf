"""Bootstrap intervals and paired differences (weakalign.evaluation.stats), from caches only."""

import json

import numpy as np
import pytest
import torch
import yaml

from weakalign.evaluation import stats
from weakalign.evaluation.metrics import keypoint_uncertainty, pck_table, per_pair_values
from weakalign.evaluation.pck import PCKProtocol
from weakalign.evaluation.stats import COMPARISONS, BootstrapConfig, multiplicities, weighted_mean_ci


def fake_cache(n=60, kp=10, noise=8.0, seed=0, kinds=("affine", "affine_tps"), pad=True):
    """A prediction cache as `evaluate predict` writes it, without any model: source keypoints in
    a 200 x 300 image, transferred = source + Gaussian noise; some keypoints padded (-1)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(n, 2, kp, generator=g) * torch.tensor([300.0, 200.0]).view(1, 2, 1) + 1
    tgt = src.clone()
    if pad:
        for i in range(0, n, 7):
            src[i, :, kp - 1 - i % 3:] = -1
            tgt[i, :, kp - 1 - i % 3:] = -1
    transferred = {k: src + noise * (j + 1) * torch.randn(n, 2, kp, generator=g) for j, k in enumerate(kinds)}
    return {"dataset": "pf-willow", "kinds": list(kinds), "source_path": [f"s{i}.jpg" for i in range(n)],
            "target_path": [f"t{i}.jpg" for i in range(n)], "category": [f"c{i % 3}" for i in range(n)],
            "flip": [0] * n, "transfer_frame": None, "source_points": src, "target_points": tgt,
            "source_size": torch.tensor([[200.0, 300.0]] * n), "target_size": torch.tensor([[200.0, 300.0]] * n),
            "theta_aff": None, "theta_tps": None, "transferred": transferred}


PROTOS = {"default": PCKProtocol("bbox", (0.05, 0.1, 0.15), "per_pair"),
          "per_keypoint": PCKProtocol("bbox", (0.1,), "per_keypoint"),
          "image": PCKProtocol("image", (0.1,), "per_pair")}


def test_ci_of_a_known_proportion_covers_it():
    rng = np.random.default_rng(0)
    p = 0.4
    x = rng.binomial(10, p, 900) / 10  # per-pair PCK of 900 pairs with 10 keypoints, true PCK 0.4
    r = weighted_mean_ci(x, np.ones(900), multiplicities(900, 2000, 0))
    assert r["low"] < p < r["high"] and r["method"] == "bca"
    assert 0.01 < r["high"] - r["low"] < 0.05  # ~ 2 * 1.96 * sqrt(0.24 / 9000)


def test_interval_coverage_is_close_to_nominal():
    """Across 200 independent samples the 95% interval covers the true proportion ~95% of the time."""
    rng = np.random.default_rng(1)
    counts = multiplicities(150, 500, 0)
    p, hits = 0.3, 0
    for _ in range(200):
        x = rng.binomial(10, p, 150) / 10
        r = weighted_mean_ci(x, np.ones(150), counts)
        hits += r["low"] <= p <= r["high"]
    assert 0.88 <= hits / 200 <= 0.99


def test_bca_agrees_with_scipy():
    from scipy.stats import bootstrap

    x = np.random.default_rng(2).binomial(10, 0.15, 400) / 10
    ours = weighted_mean_ci(x, np.ones(400), multiplicities(400, 4000, 0))
    ref = bootstrap((x,), np.mean, n_resamples=4000, method="BCa", random_state=0).confidence_interval
    assert abs(ours["low"] - ref.low) < 0.004 and abs(ours["high"] - ref.high) < 0.004
    pct = weighted_mean_ci(x, np.ones(400), multiplicities(400, 4000, 0), method="percentile")
    assert pct["method"] == "percentile" and pct["low"] < pct["estimate"] < pct["high"]


def test_multiplicities_are_seeded_resamples():
    m = multiplicities(30, 200, 7)
    assert m.shape == (200, 30) and (m.sum(1) == 30).all()
    assert np.array_equal(m, multiplicities(30, 200, 7)) and not np.array_equal(m, multiplicities(30, 200, 8))


def test_weighted_mean_equals_the_reported_pck_for_every_protocol():
    pred = fake_cache()
    for proto in PROTOS.values():
        for kind in pred["kinds"]:
            x, w = per_pair_values(pred, proto, kind)
            pck = pck_table(pred, proto, kind)["result"].pck
            for j, a in enumerate(proto.alphas):
                assert (w * x[:, j]).sum() / w.sum() == pytest.approx(pck[a], abs=1e-12)
    # per keypoint: pairs weigh their number of annotated keypoints
    _, w = per_pair_values(pred, PROTOS["per_keypoint"], "affine")
    assert w[0] < w[1] == 10


def test_paired_difference_of_identical_predictions_is_exactly_zero():
    pred = fake_cache()
    comps = (stats.Comparison("same", "a - b", "a", "b"), stats.Comparison("diff", "a - c", "a", "c"))
    other = fake_cache(noise=30.0, seed=1)
    other["source_points"], other["target_points"] = pred["source_points"], pred["target_points"]
    out = keypoint_uncertainty({"a": pred, "b": dict(pred), "c": other}, PROTOS, [0.05, 0.1], {"resamples": 500}, comps)
    for kind in ("affine", "affine_tps"):
        for a in ("0.05", "0.1", "0.15"):
            r = out["differences"]["same"]["kinds"][kind][a]
            assert r["difference"] == 0.0 and r["low"] == 0.0 and r["high"] == 0.0 and r["excludes_zero"] is False
    # a much worse model: a clear, flagged difference whose interval contains its estimate
    r = out["differences"]["diff"]["kinds"]["affine"]["0.1"]
    assert r["low"] <= r["difference"] <= r["high"] and r["excludes_zero"] and r["difference"] > 0


def test_differences_skip_absent_models_and_cross_kinds():
    pred = fake_cache()
    nc = fake_cache(kinds=("ncnet",), seed=3)
    nc["source_points"], nc["target_points"] = pred["source_points"], pred["target_points"]
    out = keypoint_uncertainty({"weak_affine_tps": pred, "ncnet": nc}, PROTOS, [0.1], {"resamples": 200})
    d = out["differences"]
    assert d["ncnet-weakalign"]["available"] and list(d["ncnet-weakalign"]["kinds"]) == ["ncnet vs affine_tps"]
    assert d["weak-strong"]["available"] is False and "strong_affine_tps" in d["weak-strong"]["reason"]
    assert set(d) == {c.key for c in COMPARISONS}


def test_comparisons_name_models_of_params_yaml():
    from weakalign.data.paths import project_root

    models = yaml.safe_load((project_root() / "params.yaml").read_text())["evaluate"]["models"]
    for c in COMPARISONS:
        assert c.a in models and c.b in models, c


def test_bootstrap_config_validates():
    assert BootstrapConfig.from_dict(None).resamples == 2000
    with pytest.raises(ValueError, match="unknown"):
        BootstrapConfig.from_dict({"n": 3})
    with pytest.raises(ValueError):
        BootstrapConfig.from_dict({"method": "bc"})


def test_cis_come_from_the_cache_without_loading_a_model(tmp_path, monkeypatch):
    """`evaluate metrics` on caches only: any attempt to load a model fails the test."""
    import weakalign.models as models
    from weakalign.evaluation import commands

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(commands, "load_model", refuse)
    monkeypatch.setattr(models, "load_checkpoint", refuse)
    monkeypatch.setattr("weakalign.data.paths.project_root", lambda: tmp_path)
    pdir = tmp_path / "data" / "predictions" / "pf-willow"
    pdir.mkdir(parents=True)
    base = fake_cache(n=40)
    names = ["strong_affine_tps", "weak_affine_tps", "weak, no inlier mask"]
    status = {"pf-willow": {"available": True, "pairs": 40, "models": {}}}
    for i, name in enumerate(names):
        c = fake_cache(n=40, seed=10 + i, noise=6.0 + 4 * i)
        c["source_points"], c["target_points"] = base["source_points"], base["target_points"]
        torch.save(c, pdir / f"{i}.pt")
        status["pf-willow"]["models"][name] = {"available": True, "predictions": f"data/predictions/pf-willow/{i}.pt", "seconds": 1.0}
    (pdir.parent / "status.json").write_text(json.dumps(status))
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  benchmarks: [pf-willow]\n  bootstrap: {resamples: 300, seed: 0}\n  alphas_curve: [0.05, 0.1]\n")
    args = type("A", (), {"params": str(params), "quiet": True})()
    assert commands._metrics(args) == 0
    m = json.loads((tmp_path / "reports" / "metrics" / "pck.json").read_text())["pf-willow"]
    assert m["bootstrap"]["resamples"] == 300 and m["bootstrap"]["seed"] == 0 and m["bootstrap"]["confidence"] == 0.95
    n_ci = 0
    for name in names:
        for kind, res in m["models"][name].items():
            for proto, vals in m["protocols"].items():
                for a in vals["alphas"]:
                    key = f"{a:g}"
                    ci = res["ci"][proto][key]
                    assert ci["low"] <= res[proto][key] <= ci["high"], (name, kind, proto, key)
                    n_ci += 1
    assert n_ci == 3 * 2 * 5
    assert m["differences"]["weak-strong"]["available"] and m["differences"]["mask-no_mask"]["available"]
    assert m["differences"]["tolerance_0-1"]["available"] is False
    md = (tmp_path / "reports" / "tables" / "pck.md").read_text()
    assert "paired differences" in md and "weak - strong" in md and " [" in md
    curve = (tmp_path / "reports" / "plots" / "pck_curve_pf-willow.csv").read_text().splitlines()
    assert curve[0] == "model,alpha,pck,low,high" and len(curve) == 1 + 3 * 2 * 2


def test_formatting():
    assert stats.fmt_ci(0.4964, 0.478, 0.5141) == "0.496 [0.478, 0.514]"
    assert stats.fmt_ci(None) == "n/a" and stats.fmt_ci(0.5) == "0.500"
    assert stats.fmt_signed_ci(0.0123, -0.002, 0.0266) == "+0.012 [-0.002, +0.027]"
