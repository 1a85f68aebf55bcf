"""Every notebook executes under papermill on a tiny fixture; dvc.yaml passes only parameters
the notebooks declare."""

import re
import shlex
from pathlib import Path

import papermill as pm
import pytest
import torch
import yaml

from weakalign.evaluation.commands import compute_metrics, write_metrics
from weakalign.evaluation.predict import predict_pairs
from weakalign.models import ModelConfig, TwoStageCNNGeometric, save_checkpoint
from weakalign.notebooks import execute

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_stored_without_outputs():
    import json

    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), nb.name


def test_dvc_yaml_passes_only_declared_parameters():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    seen = set()
    for name, st in stages.items():
        st = st.get("do", st)  # foreach stages keep their definition under `do`
        cmd = st["cmd"] if isinstance(st["cmd"], str) else " ".join(st["cmd"])
        if "weakalign notebook" not in cmd:
            continue
        argv = shlex.split(cmd)
        nb = argv[argv.index("notebook") + 1]
        passed = {argv[i + 1] for i, a in enumerate(argv) if a in ("-p", "--param")}
        declared = set(pm.inspect_notebook(str(ROOT / nb)))
        assert passed <= declared, f"{name}: passes {passed - declared} not declared in {nb}"
        assert nb in st.get("deps", []), f"{name}: {nb} must be a dependency"
        seen.add(Path(nb).name)
    assert seen == {p.name for p in NOTEBOOKS}, "every notebook has a dvc stage"


@pytest.mark.slow
def test_every_notebook_executes_on_a_tiny_fixture(tiny_willow, tiny_backbone, tmp_path):
    torch.manual_seed(0)
    model = TwoStageCNNGeometric(ModelConfig(backbone="efficientnet_lite0"), backbone_weights="random").eval()
    preds = {"identity": predict_pairs(None, tiny_willow, progress=False),
             "weak_affine_tps": predict_pairs(model, tiny_willow, progress=False, optimize=False)}
    for name, p in preds.items():
        torch.save(p, tmp_path / f"{name}.pt")
    status = {"pf-willow": {"available": True, "pairs": len(tiny_willow), "models": {n: {"available": True, "predictions": f"{n}.pt"} for n in preds}},
              "pf-pascal": {"available": False, "reason": "fixture"}}
    metrics, tables, curves = compute_metrics(status, lambda rel: torch.load(tmp_path / rel, weights_only=True), [0.05, 0.1])
    write_metrics(metrics, tables, curves, tmp_path / "pck.json", tmp_path / "plots", tmp_path / "tables")
    ckpt = tmp_path / "weak.pt"
    save_checkpoint(ckpt, model)
    # training curves as train-strong / train-weak write them (notebook 05)
    import json

    mdir = tmp_path / "metrics"
    (mdir / "ablations").mkdir(parents=True)
    (tmp_path / "plots" / "baseline").mkdir(parents=True, exist_ok=True)
    (tmp_path / "plots" / "ablations").mkdir(parents=True, exist_ok=True)
    head = "epoch,step,lr,train_loss,val_loss,heldout_grid_loss,minutes\n"
    for kind in ("affine", "tps"):
        (tmp_path / "plots" / f"train_strong_{kind}.csv").write_text(head + "1,10,0.001,0.2,0.1,0.11,1.5\n2,20,0.0002,0.1,0.05,0.06,2.0\n")
        (tmp_path / "plots" / "baseline" / f"train_strong_{kind}.csv").write_text(head + "1,5,0.001,0.2,0.2,0.2,0.5\n")
        (mdir / f"train_strong_{kind}.json").write_text(json.dumps({"heldout_identity_grid_loss": 0.3}))
    weak_head = "epoch,step,lr,train_loss,val_score,heldout_score,minutes\n"
    (tmp_path / "plots" / "train_weak.csv").write_text(weak_head + "1,4,5e-05,-0.1,0.2,0.19,1.0\n")
    (tmp_path / "plots" / "ablations" / "train_weak_no_mask.csv").write_text(weak_head + "1,4,5e-05,-0.1,0.2,0.18,1.0\n")
    (mdir / "train_weak.json").write_text(json.dumps({"heldout_score_before": 0.18}))
    (mdir / "ablations" / "train_weak_no_mask.json").write_text(json.dumps({"heldout_score_before": 0.18}))
    common = {"metrics_path": str(tmp_path / "pck.json"), "out_dir": str(tmp_path / "out"), "plots_dir": str(tmp_path / "plots"),
              "figures_dir": str(tmp_path / "out"), "metrics_dir": str(mdir),
              "checkpoint": str(ckpt), "data_root": str(tiny_willow.root), "pairs_csv": str(tiny_willow.csv_path), "pairs": [0, 5]}
    for nb in NOTEBOOKS:
        declared = pm.inspect_notebook(str(nb))
        # every path parameter is redirected here: a notebook test never writes into the repository
        assert not [k for k in declared if k.endswith(("_dir", "_path")) and k not in common], (nb.name, list(declared))
        params = {k: v for k, v in common.items() if k in declared}
        out = execute(nb, tmp_path / "reports", params, cwd=ROOT)
        assert out.is_file() and (tmp_path / "reports" / f"{nb.stem}.html").is_file()
        # executed notebooks are committed as reports: no warning (with the clone's paths in it) in them
        stderr = "".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"]
                         for o in c.get("outputs", []) if o.get("name") == "stderr")
        assert "Warning" not in stderr, (nb.name, stderr[:500])
    figs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert "qualitative_pf-willow_0.png" in figs and "pck_curve_pf-willow.png" in figs, figs
    assert "methods_pf-willow.png" in figs and (tmp_path / "out" / "methods_pf-willow.md").is_file(), figs
    assert "strong_heldout_grid_loss_vs_minutes.png" in figs and "weak_heldout_score.png" in figs, figs
