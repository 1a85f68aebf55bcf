"""Confidence intervals and paired differences in the markdown tables, README block and figures."""

import json

import matplotlib
import pandas as pd

matplotlib.use("Agg")

from weakalign import reports  # noqa: E402


def _metrics():
    proto = {"description": "PCK@0.05,0.1,0.15; L = max side of source keypoint bbox; averaged per pair", "alphas": [0.05, 0.1, 0.15]}
    ci = {"default": {"0.1": {"low": 0.25, "high": 0.29}}}
    return {"pf-willow": {
        "available": True, "pairs": 900, "protocols": {"default": proto},
        "bootstrap": {"resamples": 2000, "seed": 0, "confidence": 0.95, "method": "bca", "description": "95% BCa bootstrap, 2000 resamples, seed 0"},
        "models": {"identity": {"identity": {"default": {"0.1": 0.27}, "ci": ci}},
                   "weak_affine_tps": {"affine_tps": {"default": {"0.1": 0.496}, "ci": {"default": {"0.1": {"low": 0.478, "high": 0.514}}}}}},
        "differences": {
            "weak-strong": {"label": "weak - strong", "a": "weak_affine_tps", "b": "strong_affine_tps", "available": False, "reason": "not evaluated: strong_affine_tps"},
            "mask-no_mask": {"label": "mask - no mask", "a": "weak_affine_tps", "b": "weak, no inlier mask", "available": True,
                             "kinds": {"affine_tps": {"a_kind": "affine_tps", "b_kind": "affine_tps",
                                                      "0.1": {"difference": 0.144, "low": 0.12, "high": 0.17, "excludes_zero": True}}}}}}}


def test_tables_and_readme_show_intervals_and_differences(tmp_path):
    (tmp_path / "reports" / "metrics").mkdir(parents=True)
    path = tmp_path / "reports" / "metrics" / "pck.json"
    path.write_text(json.dumps(_metrics()))
    text = reports.readme_results(tmp_path)
    assert "| this repo | identity | identity | 0.270 [0.250, 0.290] |" in text
    assert "| paper | WeakAlign (ResNet-101) | affine+TPS | 0.712 |" in text  # published: no interval
    assert "PCK [95% CI]" in text and "Brackets: 95% BCa bootstrap" in text
    assert "**Paired differences on pf-willow**" in text
    assert "| mask - no mask | weak_affine_tps | weak, no inlier mask | affine_tps | **+0.144 [+0.120, +0.170]** * |" in text
    assert "weak - strong (not evaluated: strong_affine_tps)" in text
    # the same table in notebook 02
    assert reports.differences_markdown(path, "pf-willow") in text
    meth = reports.methods_frame(tmp_path / "reports" / "metrics").set_index("model")
    assert meth.loc["weak_affine_tps", "PCK@0.1 low"] == 0.478
    assert "0.496 [0.478, 0.514]" in reports.to_markdown(meth.reset_index(), floatfmt=".3g")


def test_figures_draw_intervals(tmp_path):
    df = pd.DataFrame({"model": ["a", "b"], "transform": ["affine+TPS", "affine+TPS"], "PCK": [0.5, None],
                       "PCK low": [0.45, None], "PCK high": [0.55, None]})
    fig = reports.ablation_figure(df)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert " 0.500 [0.450, 0.550]" in texts and " n/a" in texts
    curve = pd.DataFrame({"model": ["m"] * 3, "alpha": [0.05, 0.1, 0.15], "pck": [0.2, 0.5, 0.7], "low": [0.18, 0.47, 0.68], "high": [0.22, 0.53, 0.72]})
    fig = reports.curve_figure(curve)
    assert fig.axes[0].collections  # the band
    reports.save_figure(fig, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
