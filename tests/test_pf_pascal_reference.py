"""Parity with the original PF-PASCAL evaluation on the fixture of ``test_pf_pascal_protocol.py``.

Marked ``reference``: skipped unless a checkout of the original code is given,
``WEAKALIGN_REFERENCE_DIR`` = ignacio-rocco/weakalign (``data/pf_dataset.py``,
``util/eval_util.py``) and/or ``WEAKALIGN_REFERENCE_NCNET_DIR`` = ignacio-rocco/ncnet
(``lib/pf_dataset.py``, ``lib/eval_util.py``, ``lib/point_tnf.py``). Nothing of that code is copied
here: a subprocess imports it from the checkout, patches what modern libraries removed at run
time (``pandas.Series.as_matrix``), reads the fixture CSV and images with the original's own
``PFPascalDataset(pck_procedure='scnet')`` and scores it with the original's ``pck_metric``;
its per-pair values must equal this suite's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_pf_pascal_protocol import AFFINE, ALPHAS, PROTOCOL, FixedAffine, IdentityNCNet, write_fixture

from weakalign.evaluation.metrics import pck_table
from weakalign.evaluation.pck import normalized_errors, valid_keypoints
from weakalign.evaluation.predict import predict_pairs

pytestmark = pytest.mark.reference

# Runs in a subprocess with the original checkout first on sys.path; prints JSON.
WEAKALIGN_DRIVER = r"""
import argparse, json, sys, warnings
warnings.filterwarnings("ignore")
ref, csv, images, thetas = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, ref)
import numpy as np, pandas as pd, torch
if not hasattr(pd.Series, "as_matrix"):
    pd.Series.as_matrix = lambda self: self.to_numpy()  # removed in pandas 1.0
from torch.utils.data.dataloader import default_collate
from data.pf_dataset import PFPascalDataset
from util.eval_util import pck_metric, point_dist_metric
ds = PFPascalDataset(csv_file=csv, dataset_path=images, output_size=(240, 240), pck_procedure="scnet")
out = {}
for name, theta in thetas.items():
    theta = torch.tensor([theta], dtype=torch.float32)
    res = {}
    for alpha in (0.05, 0.1, 0.15):
        stats = {"aff": {"pck": np.zeros((len(ds), 1))}}
        for i in range(len(ds)):
            pck_metric(default_collate([ds[i]]), i, theta, None, None, stats, argparse.Namespace(pck_alpha=alpha, tps_reg_factor=0.0), use_cuda=False)
        res[str(alpha)] = stats["aff"]["pck"].ravel().tolist()
    stats = {"aff": {"dist": np.zeros((len(ds), 1))}}
    for i in range(len(ds)):
        point_dist_metric(default_collate([ds[i]]), i, theta, None, None, stats, argparse.Namespace(tps_reg_factor=0.0), use_cuda=False)
    res["dist"] = stats["aff"]["dist"].ravel().tolist()
    out[name] = res
print(json.dumps(out))
"""

NCNET_DRIVER = r"""
import argparse, json, sys, warnings
warnings.filterwarnings("ignore")
ref, csv, images, corr_path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
sys.path.insert(0, ref)
import numpy as np, torch
from torch.utils.data.dataloader import default_collate
from lib.pf_dataset import PFPascalDataset
from lib.eval_util import pck_metric
from lib.point_tnf import corr_to_matches
ds = PFPascalDataset(csv_file=csv, dataset_path=images, output_size=(400, 400), pck_procedure="scnet")
corr = torch.load(corr_path)
stats = {"point_tnf": {"pck": np.zeros((len(ds), 1))}}
for i in range(len(ds)):
    xA, yA, xB, yB, _ = corr_to_matches(corr[i:i + 1], do_softmax=True)
    pck_metric(default_collate([ds[i]]), i, (xA, yA, xB, yB), stats, argparse.Namespace(), use_cuda=False)
print(json.dumps({"0.1": stats["point_tnf"]["pck"].ravel().tolist()}))
"""


def _checkout(var: str, probe: str) -> Path:
    d = os.environ.get(var)
    if not d:
        pytest.skip(f"{var} is not set: point it at a checkout of the original code to compare with it")
    path = Path(d)
    if not (path / probe).is_file():
        pytest.skip(f"{var}={d} has no {probe}: not a checkout of the original code")
    return path


def _run(driver: str, *args) -> dict:
    pytest.importorskip("pandas")
    pytest.importorskip("skimage")
    proc = subprocess.run([sys.executable, "-c", driver, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ours(pred, kind):
    r = pck_table(pred, PROTOCOL, kind)["result"]
    src = pred["source_points"]
    err = normalized_errors(src, pred["transferred"][kind], valid_keypoints(src, pred["target_points"]), PROTOCOL, source_size=pred["source_size"])
    return {f"{a:g}": r.per_pair[a] for a in ALPHAS}, err.nanmean(1).tolist()


def test_weakalign_pf_pascal_per_pair_pck_equals_the_original(tmp_path):
    ref = _checkout("WEAKALIGN_REFERENCE_DIR", "data/pf_dataset.py")
    ds = write_fixture(tmp_path)
    theirs = _run(WEAKALIGN_DRIVER, ref, ds.csv_path, f"{ds.image_root}/",
                  json.dumps({"identity": [1, 0, 0, 0, 1, 0], "affine": AFFINE.tolist()}))
    for name, model in (("identity", FixedAffine(torch.tensor([1.0, 0, 0, 0, 1, 0]))), ("affine", FixedAffine(AFFINE))):
        pck_ours, dist_ours = _ours(predict_pairs(model, ds, progress=False, optimize=False), "affine")
        for a in pck_ours:
            assert pck_ours[a] == pytest.approx(theirs[name][a]), f"{name}, alpha {a}"
        assert dist_ours == pytest.approx(theirs[name]["dist"], abs=1e-6), name  # mean error / 224 per pair


def test_ncnet_pf_pascal_per_pair_pck_equals_the_original(tmp_path):
    from weakalign.ncnet import predict_pairs_ncnet

    ref = _checkout("WEAKALIGN_REFERENCE_NCNET_DIR", "lib/pf_dataset.py")
    ds = write_fixture(tmp_path)
    model = IdentityNCNet()
    corr_path = tmp_path / "corr.pt"
    torch.save(model.forward_features(torch.zeros(len(ds), 1), None), corr_path)
    theirs = _run(NCNET_DRIVER, ref, ds.csv_path, f"{ds.image_root}/", corr_path)
    pred = predict_pairs_ncnet(model, ds, batch_size=2, progress=False, optimize=False, reuse_memory=False)
    ours = pck_table(pred, PROTOCOL, "ncnet")["result"].per_pair[0.1]
    assert ours == pytest.approx(theirs["0.1"])
