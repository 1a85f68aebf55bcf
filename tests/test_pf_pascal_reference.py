"""Parity with the original PF-PASCAL evaluation on the fixture of ``test_pf_pascal_protocol.py``.

Marked ``reference``: skipped unless a checkout of the original code is given,
``WEAKALIGN_REFERENCE_DIR`` = ignacio-rocco/weakalign and/or ``WEAKALIGN_REFERENCE_NCNET_DIR`` =
ignacio-rocco/ncnet. Nothing of that code is copied here: the parity driver
(:mod:`weakalign.parity.driver`) imports it from the checkout in a subprocess, patched at run
time, reads the fixture CSV and images with the original's own
``PFPascalDataset(pck_procedure='scnet')`` and scores it with the original's ``pck_metric``;
its per-pair values must equal this suite's. (The 299-pair version is in ``test_parity.py`` and
``reports/parity/``.)
"""

from __future__ import annotations

import os

import pytest
import torch
from test_pf_pascal_protocol import AFFINE, ALPHAS, PROTOCOL, FixedAffine, IdentityNCNet, write_fixture

from weakalign.evaluation.metrics import pck_table
from weakalign.evaluation.pck import normalized_errors, valid_keypoints
from weakalign.evaluation.predict import predict_pairs

pytestmark = pytest.mark.reference


def _checkout(var: str, kind: str):
    from weakalign.parity.checkout import ReferenceCheckoutError, open_checkout

    d = os.environ.get(var)
    if not d:
        pytest.skip(f"{var} is not set: point it at a checkout of the original code to compare with it")
    pytest.importorskip("pandas")
    pytest.importorskip("skimage")
    try:
        return open_checkout(d, kind)
    except ReferenceCheckoutError as exc:
        pytest.skip(f"{var}: {exc}")


def _ours(pred, kind):
    r = pck_table(pred, PROTOCOL, kind)["result"]
    src = pred["source_points"]
    err = normalized_errors(src, pred["transferred"][kind], valid_keypoints(src, pred["target_points"]), PROTOCOL, source_size=pred["source_size"])
    return {a: r.per_pair[a] for a in ALPHAS}, err.nanmean(1).tolist()


def test_weakalign_pf_pascal_per_pair_pck_equals_the_original(tmp_path):
    from weakalign.parity.harness import run_driver

    ref = _checkout("WEAKALIGN_REFERENCE_DIR", "weakalign")
    ds = write_fixture(tmp_path)
    for name, theta in (("identity", torch.tensor([1.0, 0, 0, 0, 1, 0])), ("affine", AFFINE)):
        theirs = run_driver(ref, "pf_pascal", {"csv": str(ds.csv_path), "dataset_path": f"{ds.image_root}/",
                                               "theta_aff": theta.expand(len(ds), 6).clone(), "alphas": list(ALPHAS)}, tmp_path / name)
        pck_ours, dist_ours = _ours(predict_pairs(FixedAffine(theta), ds, progress=False, optimize=False), "affine")
        for a in ALPHAS:
            assert pck_ours[a] == pytest.approx(theirs["pck"][a].tolist()), f"{name}, alpha {a}"
        assert dist_ours == pytest.approx(theirs["dist"].tolist(), abs=1e-6), name  # mean error / 224 per pair


def test_ncnet_pf_pascal_per_pair_pck_equals_the_original(tmp_path):
    from weakalign.ncnet import predict_pairs_ncnet
    from weakalign.parity.harness import run_driver

    ref = _checkout("WEAKALIGN_REFERENCE_NCNET_DIR", "ncnet")
    ds = write_fixture(tmp_path)
    model = IdentityNCNet()
    corr = model.forward_features(torch.zeros(len(ds), 1), None)
    theirs = run_driver(ref, "ncnet", {"csv": str(ds.csv_path), "dataset_path": f"{ds.image_root}/", "pascal_corr": corr}, tmp_path / "ncnet")
    pred = predict_pairs_ncnet(model, ds, batch_size=2, progress=False, optimize=False, reuse_memory=False)
    ours = pck_table(pred, PROTOCOL, "ncnet")["result"].per_pair[0.1]
    assert ours == pytest.approx(theirs["pascal_pck"].tolist())
