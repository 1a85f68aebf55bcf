"""The README results block is generated from reports/ only, for keypoint and dense benchmarks."""

import json

from weakalign.reports import RESULTS_BEGIN, RESULTS_END, readme_results, update_readme


def _metrics():
    proto = {"description": "PCK@0.05,0.1,0.15; L = max side of source keypoint bbox; averaged per pair"}
    return {
        "pf-willow": {"available": True, "pairs": 900, "protocols": {"default": proto},
                      "models": {"identity": {"identity": {"default": {"0.1": 0.27}}},
                                 "missing": {"available": False, "reason": "no file"}}},
        "pf-pascal": {"available": False, "reason": "506 file(s) missing"},
        "caltech-101": {"available": True, "pairs": 3, "kind": "dense", "measures": ["LT-ACC", "IoU", "LOC-ERR"],
                        "models": {"identity": {"identity": {"LT-ACC": 0.5, "IoU": 0.25, "LOC-ERR": 0.125}}}},
    }


def test_readme_results_rows_and_protocols(tmp_path):
    (tmp_path / "reports" / "metrics").mkdir(parents=True)
    (tmp_path / "reports" / "metrics" / "pck.json").write_text(json.dumps(_metrics()))
    text = readme_results(tmp_path)
    assert "Column PCK = PCK@0.1 with L = max side of source keypoint bbox; averaged per pair" in text
    assert "| this repo | identity | identity | 0.270 |" in text
    assert "| paper | WeakAlign (ResNet-101) | affine+TPS | 0.712 |" in text  # from paper_results.yaml
    assert "**pf-pascal**: not available here (506 file(s) missing)" in text
    assert "| this repo | identity | identity | 0.500 | 0.250 | 0.125 |" in text
    # methods side by side: PCK and times only from files; absent models/trainings are n/a, not numbers
    assert "**Methods side by side on pf-willow**" in text
    assert "| NCNet (weak supervision) | ncnet | n/a | n/a | n/a | n/a | n/a | n/a |" in text


def test_update_readme_replaces_only_the_block(tmp_path):
    (tmp_path / "README.md").write_text(f"# t\n\nbefore\n\n{RESULTS_BEGIN}\nold numbers\n{RESULTS_END}\n\nafter\n")
    update_readme(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "old numbers" not in text and "before" in text and "after" in text
    assert "No results yet" in text and text.count(RESULTS_BEGIN) == 1


def test_machine_facts_come_from_the_recorded_environment(tmp_path):
    (tmp_path / "reports" / "metrics").mkdir(parents=True)
    m = _metrics()
    (tmp_path / "reports" / "metrics" / "pck.json").write_text(json.dumps(m))
    text = readme_results(tmp_path)
    assert "2 CPU cores" not in text and "machine not recorded" in text  # nothing assumed
    m["pf-willow"]["environment"] = {"cpu_cores": 64, "device": "cuda:0 (A100)", "torch": "9.9.9", "torch_threads": 64}
    (tmp_path / "reports" / "metrics" / "pck.json").write_text(json.dumps(m))
    text = readme_results(tmp_path)
    assert "64 CPU cores, device cuda:0 (A100), torch 9.9.9" in text


def test_evaluate_records_the_environment_into_the_metrics():
    from weakalign.evaluation.commands import compute_metrics
    from weakalign.info import environment

    env = environment("cpu")
    import os

    import torch

    assert env["cpu_cores"] == os.cpu_count() and env["torch"] == torch.__version__ and env["device"] == "cpu"
    from test_pck_nonfinite import SRC, _pred

    status = {"pf-willow": {"available": True, "pairs": 2, "models": {"m": {"available": True, "predictions": "m"}}, "environment": env}}
    metrics, _, _ = compute_metrics(status, lambda rel: _pred(SRC), [0.1])
    assert metrics["pf-willow"]["environment"] == env


def test_strong_curve_legend_is_read_from_each_runs_records(tmp_path):
    """The legend of the grid-loss-vs-minutes figure describes what each run did (photos x
    warps from its metrics, epochs per learning rate from its curve), not a fixed string."""
    from weakalign.reports import strong_curve_frame

    head = "epoch,step,lr,train_loss,val_loss,heldout_grid_loss,minutes\n"
    plots, metrics = tmp_path / "plots", tmp_path / "metrics"
    (plots / "baseline").mkdir(parents=True)
    (metrics / "baseline").mkdir(parents=True)
    (plots / "train_strong_affine.csv").write_text(head + "1,10,0.001,.2,.1,.1,1\n2,20,0.001,.2,.1,.1,2\n3,30,0.0002,.2,.1,.1,3\n")
    (metrics / "train_strong_affine.json").write_text(json.dumps({"train_images": 7001, "train_pairs": 21003, "pairs": "fixed"}))
    (plots / "baseline" / "train_strong_affine.csv").write_text(head + "1,10,0.001,.2,.1,.1,1\n")
    (metrics / "baseline" / "train_strong_affine.json").write_text("{not json")  # unreadable: name and schedule only
    runs = list(dict.fromkeys(strong_curve_frame(plots, metrics)["run"]))
    assert runs == ["this pipeline (7,001 photos x 3 warps, epochs: 2 @ 1e-3 + 1 @ 2e-4)",
                    "previous default (epochs: 1 @ 1e-3)"]
    # metrics_dir defaults to reports/metrics beside reports/plots
    assert list(dict.fromkeys(strong_curve_frame(plots)["run"]))[0].startswith("this pipeline (7,001 photos x 3 warps")
