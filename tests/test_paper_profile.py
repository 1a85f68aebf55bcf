"""The paper profile, executed in miniature: every stage of ``dvc.yaml`` run once, with the
``paper`` profile, on stand-ins in the official layouts (``tests/paper_standins.py``).

What runs: the command of every ``dvc.yaml`` stage, exactly as listed there (``foreach`` items
expanded, in the file's order, which is a topological order), through ``weakalign.cli.main`` in
this process, in a temporary project folder whose ``params.yaml`` is the repository's with
``profile: paper`` and tiny overrides (what ``dvc exp run -S ...`` would set):

* ``data``: 2 + 2 Caltech-101 weak pairs, 4 strong validation photos (the splits stage needs
  its Caltech lists in every profile);
* ``profiles.paper``: 2 photos per batch and one epoch per schedule phase (strong: 1 + 1, so
  ``restart_from_best`` runs), 2 weak / NCNet training pairs, 2 (weak) / 4 (NCNet) validation pairs, evaluation on
  2 evenly spaced pairs per benchmark, 100 bootstrap resamples (the least allowed).

Image sizes are the paper's (240 x 240 for CNNGeometric / WeakAlign, 400 x 400 for NCNet) and
the backbone is ResNet-101 with the NCNet PF-PASCAL model's consensus sizes; only counts shrink.

Stand-ins: Pascal VOC 2011 JPEGs and the original code's ``pascal-random`` image lists,
PF-PASCAL images at every path of the real pair lists (the lists come from the offline mirror,
like PF-WILLOW), Caltech-101 photos + annotations + the 1,515-row pair list, TSS folders + pair
list, and a random ResNet-101 state dict at the documented torch hub path. Not run: the
``data_caltech_101`` stage (it would extract the 9,144 real photos from the mirror and hash
them in the audit, minutes; the stand-in folder is in its place) and the report notebooks
other than the PCK tables (papermill kernels, ~15 s each; they are covered by
``tests/test_notebooks.py``).

One check is switched off: the stand-in weights are random, so their SHA-256 cannot start with
the ``63fe2227`` of the official file name; ``_check_torchvision_hash`` is replaced for this
test only (finding the file at the documented path, ``torch.load`` and the exact key match
still run).
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import time
from pathlib import Path

import pytest
import yaml

import paper_standins as standins

REPO = Path(__file__).resolve().parents[1]
MIRROR = (REPO / ".." / "shared" / "datasets").resolve()
SKIPPED_STAGES = {"data_caltech_101"}
#: report notebooks run by this test (the others: tests/test_notebooks.py)
REPORT_STAGES = {"report_pck_tables"}

TINY = {
    "train_strong": {
        "data": {"max_train_images": 0, "max_val_images": 0},
        "batch_size": 2,
        "schedule": [{"epochs": 1, "lr": 1.0e-3}, {"epochs": 1, "lr": 2.0e-4, "restart_from_best": True}],
        "num_workers": 0,
    },
    "train_weak": {
        "data": {"max_train_pairs": 2, "max_val_pairs": 2},
        "batch_size": 2,
        "schedule": [{"epochs": 1, "lr": 5.0e-8}],
        "num_workers": 0,
    },
    "train_ncnet": {
        "data": {"max_train_pairs": 2, "max_val_pairs": 4},  # NCNet needs >= 4 held-out pairs
        "batch_size": 2,  # the least NCNet's negatives allow
        "schedule": [{"epochs": 1, "lr": 5.0e-4}],
    },
    "evaluate": {"max_pairs": 2, "batch_size": 2, "bootstrap": {"resamples": 100}},
}
TINY_DATA = {"strong_val_images": 4, "weak_train_pairs": 2, "weak_val_pairs": 2}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dvc_commands(dvc_yaml: Path) -> list[tuple[str, list[str]]]:
    """``(stage name, argv after 'weakalign')`` of every stage, foreach expanded, file order."""
    doc = yaml.safe_load(dvc_yaml.read_text())
    out = []
    for name, st in doc["stages"].items():
        if "foreach" in st:
            for item in st["foreach"]:
                cmd = st["do"]["cmd"].replace("${item}", str(item))
                out.append((f"{name}@{item}", cmd))
        else:
            out.append((name, st["cmd"]))
    result = []
    for name, cmd in out:
        argv = shlex.split(cmd)
        assert argv[0] == "weakalign", f"{name}: {cmd}"
        result.append((name, argv[1:]))
    return result


def _finite_row(row) -> bool:
    nums = [v for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return bool(nums) and all(math.isfinite(v) for v in nums)


@pytest.mark.slow
@pytest.mark.mirror
def test_paper_profile_miniature(tmp_path, monkeypatch, capsys):
    if not (MIRROR / "PF-dataset.zip").is_file() or not (MIRROR / "pf-pascal").is_dir():
        pytest.skip(f"offline mirror not found at {MIRROR}")
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(REPO / "dvc.yaml", proj / "dvc.yaml")
    shutil.copytree(REPO / "notebooks", proj / "notebooks")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "paper"
    params["data"] = _merge(params["data"], TINY_DATA)
    params["profiles"]["paper"] = _merge(params["profiles"]["paper"], TINY)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    data = proj / "data"
    voc = standins.make_voc(data)
    standins.make_caltech(data)
    standins.make_tss(data)
    standins.make_resnet101_weights(tmp_path / "torch" / "hub")

    monkeypatch.setenv("WEAKALIGN_PROJECT_ROOT", str(proj))
    monkeypatch.setenv("WEAKALIGN_DATA_MIRROR", str(MIRROR))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("WEAKALIGN_WEIGHTS_DIR", raising=False)
    monkeypatch.chdir(proj)
    from weakalign.models import backbones

    monkeypatch.setattr(backbones, "_check_torchvision_hash", lambda path, url=None: None)

    from weakalign.cli import main

    times = {}
    for stage, argv in dvc_commands(proj / "dvc.yaml"):
        if stage in SKIPPED_STAGES or (stage.startswith("report_") and stage not in REPORT_STAGES):
            continue
        t = time.perf_counter()
        rc = main(argv)
        times[stage] = round(time.perf_counter() - t, 1)
        out = capsys.readouterr()
        with capsys.disabled():
            print(f"  {stage}: {times[stage]} s", flush=True)
        assert rc == 0, f"stage {stage} (weakalign {' '.join(argv)}) exited {rc}:\n{out.out[-3000:]}\n{out.err[-3000:]}"
        if stage == "data_pf_pascal":
            assert standins.make_pf_pascal_images(data) > 1000
        _drop_resume_states(proj)
    print("stage seconds:", times)

    # strong models: trained on the original's VOC list, selected on its synthetic test split
    for kind in ("affine", "tps"):
        m = json.loads((proj / "reports" / "metrics" / f"train_strong_{kind}.json").read_text())
        assert m["profile"] == "paper" and m["backbone"] == "resnet101"
        assert m["train_images"] == len(voc["train"])  # the list's rows, not every audited JPEG
        assert m["selection"]["criterion"].startswith("reference")
        assert m["selection"]["val_pairs"] == len(voc["test"])
        assert m["epochs"] == 2 and math.isfinite(m["heldout_grid_loss"])
    # weak models: selected on PF-PASCAL validation PCK
    for path in [proj / "reports/metrics/train_weak.json",
                 *sorted((proj / "reports/metrics/ablations").glob("train_weak_*.json"))]:
        m = json.loads(path.read_text())
        assert m["selection"]["criterion"] == "reference" and m["selection"]["uses_keypoints"], path
        assert math.isfinite(m["selection"]["best_value"]), path
    assert len(list((proj / "reports/metrics/ablations").glob("train_weak_*.json"))) == 3
    assert (proj / "models" / "ncnet.pt").is_file()

    # evaluation: rows with finite numbers for PF-PASCAL, Caltech-101 and TSS
    pck = json.loads((proj / "reports" / "metrics" / "pck.json").read_text())
    text = json.dumps(pck)
    for bench in ("pf-willow", "pf-pascal", "caltech-101", "tss"):
        assert bench in text
    table = (proj / "reports" / "tables" / "pck.md").read_text()
    for needle in ("2 of 900 pairs", "2 of 299 pairs", "2 of 1,515 pairs", "2 of 12 pairs"):
        assert needle in table, (needle, table[:3000])
    _check_benchmark_rows(pck)


def _drop_resume_states(proj: Path) -> None:
    """Delete finished stages' resume states (``models/state``: ResNet-101 weights + Adam moments,
    up to 370 MB a run, ~2.5 GB in all), which no later stage reads and this test does not check:
    CI's disk is shared, and the suite once failed with "No space left on device"."""
    for p in (proj / "models" / "state").rglob("*.pt"):
        p.unlink()


def _check_benchmark_rows(pck: dict) -> None:
    """Every benchmark has at least the identity and the weak model with finite numbers."""
    benches = pck.get("benchmarks", pck)
    for bench in ("pf-pascal", "caltech-101", "tss"):
        b = benches[bench]
        assert b.get("available", True), (bench, b)
        models = b["models"]
        for name in ("identity", "weak_affine_tps", "strong_affine_tps"):
            assert name in models, (bench, sorted(models))
            assert _finite_row(_flatten(models[name])), (bench, name, models[name])


def _flatten(d, prefix="") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix] = d
    return out
