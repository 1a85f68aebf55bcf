"""Metrics computed from cached predictions only (never by re-running a model).

PCK tables (:func:`pck_table`), PCK-vs-alpha curves (:func:`pck_curve`) and, for every number,
its bootstrap confidence interval and the paired differences between models
(:func:`keypoint_uncertainty`, statistics in :mod:`weakalign.evaluation.stats`)."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from .pck import PCKProtocol, normalized_errors, pck_from_errors, valid_keypoints


def pairs_label(bench_metrics: dict) -> str:
    """How many pairs a benchmark's numbers come from, saying so when they are a subset:
    ``"299 pairs"``, or ``"3 of 299 pairs"`` when ``evaluate.max_pairs`` kept 3 evenly spaced
    pairs of the 299 (``pairs_total`` recorded by ``evaluate predict``). Every table and report
    heading uses it, so a subset is never shown as if it were the whole benchmark."""
    n, total = int(bench_metrics["pairs"]), bench_metrics.get("pairs_total")
    if total is not None and int(total) != n:
        return f"{n:,} of {int(total):,} pairs"
    return f"{n:,} pairs"


def errors_of(predictions: dict, protocol: PCKProtocol, kind: str) -> torch.Tensor:
    """``B x N`` normalised keypoint errors of one transform ``kind`` of a prediction cache
    (NaN: keypoint not annotated, excluded; see :func:`weakalign.evaluation.pck.normalized_errors`).
    The one place where errors are computed: PCK tables and bootstrap intervals both use it."""
    if kind not in predictions["transferred"]:
        raise KeyError(f"predictions hold kinds {sorted(predictions['transferred'])}, not {kind!r}")
    src = predictions["source_points"]
    valid = valid_keypoints(src, predictions["target_points"])
    return normalized_errors(src, predictions["transferred"][kind], valid, protocol, source_size=predictions["source_size"])


def pck_table(predictions: dict, protocol: PCKProtocol, kind: str) -> dict:
    """PCK of one transform ``kind`` of a prediction cache: overall and per category."""
    errors = errors_of(predictions, protocol, kind)
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


def per_pair_values(predictions: dict, protocol: PCKProtocol, kind: str, alphas=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair fractions of correct keypoints ``x`` (``pairs x len(alphas)``) and weights ``w``
    (``pairs``) with ``PCK = sum(w x) / sum(w)`` exactly as :func:`pck_from_errors` averages:
    ``w`` = 1 per pair with keypoints for ``per_pair``, its number of keypoints for
    ``per_keypoint``, 0 for a pair without keypoints (its ``x`` is 0 and never counts)."""
    errors = errors_of(predictions, protocol, kind)
    alphas = tuple(protocol.alphas if alphas is None else alphas)
    valid = ~torch.isnan(errors)
    n_valid = valid.sum(1).double()
    x = torch.stack([((errors <= a) & valid).sum(1).double() / n_valid.clamp(min=1) for a in alphas], 1)
    w = (n_valid > 0).double() if protocol.averaging == "per_pair" else n_valid
    return x.numpy(), w.numpy()


def _ci_dict(low, high) -> dict:
    return {"low": finite_or_none(float(low)), "high": finite_or_none(float(high))}


def keypoint_uncertainty(predictions: dict, protocols: dict, alphas_curve, bootstrap=None, comparisons=None) -> dict:
    """Bootstrap intervals for every (model, kind, protocol, alpha) and every curve point, and the
    paired differences, of one keypoint benchmark, from its prediction caches
    (``predictions[model name] = cache``; all caches of the benchmark hold the same pairs).

    Returns ``{"bootstrap": settings, "ci": {model: {kind: {protocol: {alpha: {low, high}}}}},
    "curves": {model: {kind: [(alpha, pck, low, high), ...]}}, "differences": {...}}``. The
    differences use the ``default`` protocol (per-pair PCK) at its alphas."""
    from .stats import COMPARISONS, BootstrapConfig, multiplicities, paired_differences, weighted_mean_ci

    cfg = bootstrap if isinstance(bootstrap, BootstrapConfig) else BootstrapConfig.from_dict(bootstrap)
    comparisons = COMPARISONS if comparisons is None else comparisons
    out = {"bootstrap": cfg.to_dict(), "ci": {}, "curves": {}, "differences": {}}
    if not predictions:
        return out
    first = next(iter(predictions.values()))
    n = len(first["source_path"])
    for name, pred in predictions.items():
        if list(pred["source_path"]) != list(first["source_path"]) or list(pred["target_path"]) != list(first["target_path"]):
            raise ValueError(f"predictions of {name!r} hold other pairs than those of the first model: cannot pair them")
    counts = multiplicities(n, cfg.resamples, cfg.seed)
    default = protocols["default"]
    diff_alphas = [f"{a:g}" for a in default.alphas]
    curve_proto = PCKProtocol(default.reference, tuple(alphas_curve), default.averaging)
    values = {}
    for name, pred in predictions.items():
        for kind in pred["kinds"]:
            ci = {}
            for pname, proto in protocols.items():
                x, w = per_pair_values(pred, proto, kind)
                r = weighted_mean_ci(x, w, counts, cfg.confidence, cfg.method)
                ci[pname] = {f"{a:g}": _ci_dict(r["low"][j], r["high"][j]) for j, a in enumerate(proto.alphas)}
                if pname == "default":
                    values[(name, kind)] = (x, w)
            out["ci"].setdefault(name, {})[kind] = ci
            x, w = per_pair_values(pred, curve_proto, kind)
            r = weighted_mean_ci(x, w, counts, cfg.confidence, cfg.method)
            out["curves"].setdefault(name, {})[kind] = [(a, finite_or_none(float(r["estimate"][j])), finite_or_none(float(r["low"][j])),
                                                         finite_or_none(float(r["high"][j]))) for j, a in enumerate(curve_proto.alphas)]
    out["differences"] = paired_differences(values, counts, diff_alphas, cfg, set(predictions), comparisons)
    return out


def pck_markdown(bench: str, bench_metrics: dict, protocols: dict) -> str:
    """The benchmark's section of ``reports/tables/pck.md``: every model and transform with its
    PCK and bootstrap interval for each protocol, then the paired differences."""
    from .stats import differences_markdown, fmt_ci

    alt = "image" if "image" in protocols else "bbox"
    cols = [("default", a) for a in ("0.05", "0.1", "0.15")] + [("per_keypoint", "0.1"), (alt, "0.1")]
    st = bench_metrics
    of = ", evenly spaced: evaluate.max_pairs" if "pairs_total" in st else ""
    boot = st.get("bootstrap", {})
    conf = f" [{boot['confidence']:.0%} CI]" if boot else ""
    lines = [f"### {bench} ({pairs_label(st)}{of})", "", f"Default protocol: {protocols['default'].describe()}.", ""]
    if boot:
        lines += [f"Brackets: {boot['description']}.", ""]
    lines += [f"| model | transform | PCK@0.05{conf} | PCK@0.1{conf} | PCK@0.15{conf} | PCK@0.1 per keypoint{conf} | "
              f"PCK@0.1 ({protocols[alt].describe().split('; ')[1]}){conf} |", "|---|---|---|---|---|---|---|"]
    for name, kinds in st["models"].items():
        if kinds.get("available") is False:
            continue
        for kind, res in kinds.items():
            cells = []
            for pname, a in cols:
                v = res.get(pname, {}).get(a)
                c = res.get("ci", {}).get(pname, {}).get(a) or {}
                cells.append(fmt_ci(v, c.get("low"), c.get("high")))
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    diff = differences_markdown(st, alphas=tuple(f"{a:g}" for a in protocols["default"].alphas))
    if diff:
        lines += ["", f"#### {bench}: paired differences", "", diff.rstrip("\n")]
    return "\n".join(lines) + "\n"
