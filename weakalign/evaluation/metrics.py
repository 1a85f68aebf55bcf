"""Metrics computed from cached predictions only (never by re-running a model)."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from .pck import PCKProtocol, normalized_errors, pck_from_errors, valid_keypoints


def pck_table(predictions: dict, protocol: PCKProtocol, kind: str) -> dict:
    """PCK of one transform ``kind`` of a prediction cache: overall and per category."""
    if kind not in predictions["transferred"]:
        raise KeyError(f"predictions hold kinds {sorted(predictions['transferred'])}, not {kind!r}")
    src = predictions["source_points"]
    valid = valid_keypoints(src, predictions["target_points"])
    errors = normalized_errors(src, predictions["transferred"][kind], valid, protocol, source_size=predictions["source_size"])
    overall = pck_from_errors(errors, protocol)
    by_cat = defaultdict(list)
    for i, c in enumerate(predictions["category"]):
        by_cat[c].append(i)
    per_category = {c: pck_from_errors(errors[idx], protocol).pck for c, idx in sorted(by_cat.items())}
    return {
        "kind": kind,
        "result": overall,
        "per_category": {c: {f"{a:g}": v for a, v in d.items()} for c, d in per_category.items()},
    }


def pck_curve(predictions: dict, kind: str, reference: str, averaging: str = "per_pair", alphas=None) -> list[tuple[float, float]]:
    """(alpha, PCK) pairs for a PCK-vs-alpha plot."""
    alphas = alphas or [round(0.01 * i, 2) for i in range(1, 21)]
    table = pck_table(predictions, PCKProtocol(reference, tuple(alphas), averaging), kind)
    return [(a, table["result"].pck[a]) for a in table["result"].protocol.alphas]


def finite_or_none(x: float):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
