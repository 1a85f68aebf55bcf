"""A keypoint that is annotated but predicted at a non-finite position counts as wrong, in every
protocol (issue 17, item 2), and the metrics JSON / tables report how many there were."""

from __future__ import annotations

import math

import pytest
import torch

from weakalign.evaluation import PCKProtocol, pck
from weakalign.evaluation.pck import REFERENCES, nonfinite_predictions

NAN, INF = float("nan"), float("inf")


def pts(xy):
    return torch.tensor(xy, dtype=torch.float64).transpose(1, 2)


# the example: one perfect pair plus one pair predicted at NaN
SRC = pts([[(10, 10), (50, 30)], [(20, 20), (60, 40)]])
WRP = pts([[(10, 10), (50, 30)], [(NAN, NAN), (NAN, NAN)]])
KW = {"source_size": torch.tensor([[100, 120]] * 2), "object_bbox": torch.tensor([[0, 0, 100, 100]] * 2)}


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("averaging", ["per_pair", "per_keypoint"])
def test_nan_prediction_counts_wrong_in_every_protocol(reference, averaging):
    r = pck(SRC, WRP, PCKProtocol(reference, (0.1, 0.5), averaging), **KW)
    assert r.pck[0.1] == pytest.approx(0.5) and r.pck[0.5] == pytest.approx(0.5)
    assert r.num_keypoints == 4 and r.pairs_without_keypoints == 0
    assert r.per_pair[0.1] == pytest.approx([1.0, 0.0])


def test_partial_and_infinite_predictions():
    wrp = pts([[(10, 10), (NAN, 30)], [(20, 20), (INF, 40)]])
    r = pck(SRC, wrp, PCKProtocol("bbox", (0.1,)), **KW)
    assert r.per_pair[0.1] == pytest.approx([0.5, 0.5])
    assert nonfinite_predictions(SRC, SRC, wrp).tolist() == [1, 1]


def test_unannotated_keypoints_stay_excluded_even_with_nan_predictions():
    src = pts([[(10, 10), (-1, -1), (NAN, NAN)]])
    tgt = pts([[(1, 1), (2, 2), (3, 3)]])
    wrp = pts([[(10, 10), (NAN, NAN), (NAN, NAN)]])
    r = pck(src, wrp, PCKProtocol("image", (0.1,)), target_points=tgt, source_size=(50, 50))
    assert r.num_keypoints == 1 and r.pck[0.1] == 1.0
    assert nonfinite_predictions(src, tgt, wrp).tolist() == [0]


def _pred(transferred):
    return {
        "dataset": "pf-willow",
        "kinds": ["affine"],
        "category": ["a", "b"],
        "source_path": ["s0.png", "s1.png"],
        "target_path": ["t0.png", "t1.png"],
        "source_points": SRC.float(),
        "target_points": SRC.float(),
        "source_size": torch.tensor([[100.0, 120], [100, 120]]),
        "transferred": {"affine": transferred.float()},
        "transfer_frame": None,
    }


def test_metrics_json_counts_nonfinite_predictions_and_tables_warn():
    from weakalign.evaluation.commands import compute_metrics

    status = {"pf-willow": {"available": True, "pairs": 2, "models": {
        "good": {"available": True, "predictions": "good"}, "broken": {"available": True, "predictions": "broken"}}}}
    preds = {"good": _pred(SRC), "broken": _pred(WRP)}
    metrics, tables, _ = compute_metrics(status, lambda rel: preds[rel], [0.1])
    m = metrics["pf-willow"]
    assert m["models"]["broken"]["affine"]["nonfinite_predictions"] == 2
    assert m["models"]["good"]["affine"]["nonfinite_predictions"] == 0
    assert m["nonfinite_predictions"] == 2
    assert m["models"]["broken"]["affine"]["default"]["0.1"] == pytest.approx(0.5)
    assert "Warning" in tables and "broken (affine) 2" in tables
    metrics, tables, _ = compute_metrics({"pf-willow": dict(status["pf-willow"], models={"good": status["pf-willow"]["models"]["good"]})},
                                         lambda rel: preds[rel], [0.1])
    assert metrics["pf-willow"]["nonfinite_predictions"] == 0 and "Warning" not in tables
    assert not math.isnan(metrics["pf-willow"]["models"]["good"]["affine"]["default"]["0.1"])
