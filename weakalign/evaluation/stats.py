"""Uncertainty of PCK: bootstrap confidence intervals and paired differences, from the cache.

Everything here works on **per-pair values** computed from cached predictions
(:func:`weakalign.evaluation.metrics.per_pair_values`); no model is ever loaded.

Resampling unit: the image pair. The keypoints of one pair share the pair's images and
transformation, so they are not independent; the pairs are (the benchmark's sampling unit).

One resampling per benchmark. ``resamples`` vectors of pair indices are drawn once, from
``seed``, and stored as a ``resamples x pairs`` multiplicity matrix ``M`` (how often each pair
appears in each resample). Every statistic of the benchmark -- every (model, transform,
protocol, alpha) PCK, every point of the PCK-vs-alpha curves and every paired difference -- is
evaluated on the *same* resamples, so

* differences are paired by construction (both models see the same resampled pairs), and
* a statistic is a weighted mean ``sum_i w_i x_i / sum_i w_i`` (``x_i``: the pair's fraction of
  correct keypoints; ``w_i = 1`` for PCK averaged per pair, ``w_i`` = the pair's number of
  keypoints for PCK pooled over keypoints; ``w_i = 0`` for pairs without keypoints), so its
  bootstrap replicates are one matrix product, ``(M @ (w x)) / (M @ w)``.

Interval: BCa (bias-corrected and accelerated, Efron 1987) by default, ``percentile`` on
request. Why BCa: PCK is a proportion bounded in [0, 1]; for weak models at small alpha
(PCK@0.05 around 0.08) and for differences between nearly identical models the bootstrap
distribution is skewed and its median is off the estimate, which BCa corrects (second-order
accurate) and the percentile interval does not. Its acceleration comes from the jackknife, which
for a weighted mean has a closed form (leave pair ``i`` out: ``(S - w_i x_i) / (W - w_i)``), so
BCa costs nothing extra here. This is the algorithm of ``scipy.stats.bootstrap(method="BCa")``
(checked against it in ``tests/test_stats.py``); it is written out because SciPy draws its own
resamples per call and therefore cannot share one resampling between all statistics and the
paired differences, and would recompute every statistic ``resamples`` times instead of once as a
matrix product. Ties with the estimate count half in the bias correction (PCK takes few distinct
values on small benchmarks). A statistic whose bootstrap replicates are all equal (e.g. the
difference of identical predictions) gets the zero-width interval ``[estimate, estimate]``; when
the estimate lies outside all replicates (BCa undefined) the percentile interval is used and the
entry says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..config import Block, defaults_of

METHODS = ("bca", "percentile")


@dataclass(frozen=True)
class BootstrapConfig(Block):
    """The ``evaluate.bootstrap`` block of ``params.yaml`` (its defaults are these fields)."""

    resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95
    method: str = "bca"  # bca | percentile

    def __post_init__(self):
        if int(self.resamples) < 100:
            raise ValueError(f"bootstrap.resamples must be >= 100, got {self.resamples}")
        if not 0 < float(self.confidence) < 1:
            raise ValueError(f"bootstrap.confidence must be in (0, 1), got {self.confidence}")
        if str(self.method).lower() not in METHODS:
            raise ValueError(f"bootstrap.method must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "resamples", int(self.resamples))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "confidence", float(self.confidence))
        object.__setattr__(self, "method", str(self.method).lower())

    @classmethod
    def from_dict(cls, d: dict | None) -> "BootstrapConfig":
        d = {**DEFAULT_BOOTSTRAP, **(d or {})}
        unknown = set(d) - set(DEFAULT_BOOTSTRAP)
        if unknown:
            raise ValueError(f"evaluate.bootstrap: unknown keys {sorted(unknown)} (known: {sorted(DEFAULT_BOOTSTRAP)})")
        return cls(**d)

    def describe(self) -> str:
        name = {"bca": "BCa", "percentile": "percentile"}[self.method]
        return (f"{self.confidence:.0%} {name} bootstrap confidence interval, image pairs resampled with replacement, "
                f"{self.resamples} resamples, seed {self.seed}; paired differences use the same resamples for both models")

    def to_dict(self) -> dict:
        """What ``pck.json`` records: the parameters, the resampling unit and a description (the
        plain parameters: :func:`weakalign.config.as_dict`)."""
        return {**asdict(self), "unit": "image pair", "description": self.describe()}


DEFAULT_BOOTSTRAP: dict = defaults_of(BootstrapConfig)


def multiplicities(n: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples x n`` matrix: how often pair ``i`` is drawn in resample ``b`` (rows sum to n).

    Drawn as ``numpy.random.default_rng(seed).integers(0, n, (resamples, n))``: a fixed seed gives
    the same resampled pair indices for every model of a benchmark with ``n`` pairs."""
    if n < 1:
        raise ValueError("need at least one pair")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    flat = (idx + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _as_2d(x) -> tuple[np.ndarray, bool]:
    x = np.asarray(x, dtype=np.float64)
    return (x[:, None], True) if x.ndim == 1 else (x, False)


def weighted_mean_ci(values, weights, counts: np.ndarray, confidence: float = BootstrapConfig.confidence,
                     method: str = BootstrapConfig.method) -> dict:
    """Estimate and bootstrap interval of ``sum w x / sum w`` for each column of ``values``.

    ``values``: ``n`` or ``n x K`` per-pair values (NaN allowed where the weight is 0);
    ``weights``: ``n`` non-negative weights; ``counts``: the multiplicity matrix of
    :func:`multiplicities`. Returns arrays ``estimate``, ``low``, ``high`` (length K, or scalars
    for 1-d input) and ``method`` (per column: "bca", "percentile" or "degenerate")."""
    x, squeeze = _as_2d(values)
    w = np.asarray(weights, dtype=np.float64)
    if x.shape[0] != w.shape[0] or counts.shape[1] != w.shape[0]:
        raise ValueError(f"shapes differ: values {x.shape}, weights {w.shape}, counts {counts.shape}")
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    x = np.where(w[:, None] > 0, x, 0.0)
    if not np.isfinite(x).all():
        raise ValueError("values must be finite where the weight is positive")
    wx = w[:, None] * x
    s, tot = wx.sum(0), w.sum()
    if tot <= 0:
        nan = np.full(x.shape[1], np.nan)
        out = {"estimate": nan, "low": nan.copy(), "high": nan.copy(), "method": ["undefined"] * x.shape[1]}
        return _squeeze(out, squeeze)
    est = s / tot
    bw = counts @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ wx) / bw[:, None]
    boot = boot[bw > 0]  # a resample without any weighted pair has no value (never with real data)
    tail = (1.0 - confidence) / 2.0
    low, high, used = np.empty_like(est), np.empty_like(est), []
    for k in range(x.shape[1]):
        b = boot[:, k]
        if b.max() - b.min() <= 1e-12 * max(1.0, abs(est[k])):
            low[k] = high[k] = est[k]
            used.append("degenerate")
            continue
        q = (tail, 1.0 - tail)
        m = "percentile"
        if method == "bca":
            bq = _bca_levels(b, est[k], x[:, k], w, s[k], tot, tail)
            if bq is not None:
                q, m = bq, "bca"
        low[k], high[k] = np.quantile(b, q)
        used.append(m)
    return _squeeze({"estimate": est, "low": low, "high": high, "method": used}, squeeze)


def _squeeze(out: dict, squeeze: bool) -> dict:
    if not squeeze:
        return out
    return {"estimate": float(out["estimate"][0]), "low": float(out["low"][0]), "high": float(out["high"][0]), "method": out["method"][0]}


def _bca_levels(boot, est, x, w, s, tot, tail):
    """BCa quantile levels, or None when undefined (estimate outside every replicate)."""
    from scipy.special import ndtr, ndtri

    p = (np.sum(boot < est) + 0.5 * np.sum(boot == est)) / boot.size
    if p <= 0.0 or p >= 1.0:
        return None
    z0 = ndtri(p)
    keep = tot - w > 0
    jack = np.where(keep, (s - w * x) / np.where(keep, tot - w, 1.0), est)  # leave one pair out
    d = jack.mean() - jack
    den = 6.0 * np.sum(d**2) ** 1.5
    a = np.sum(d**3) / den if den > 0 else 0.0
    levels = []
    for z in (ndtri(tail), ndtri(1.0 - tail)):
        levels.append(float(ndtr(z0 + (z0 + z) / (1.0 - a * (z0 + z)))))
    return tuple(levels)


# --- the comparisons the suite makes -----------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """``a - b``: PCK of model ``a`` minus PCK of model ``b`` on the same pairs.

    ``kinds``: ``((kind of a, kind of b), ...)``; ``None`` = every transform kind both models
    provide (affine, affine+TPS, ...)."""

    key: str
    label: str
    a: str
    b: str
    kinds: tuple[tuple[str, str], ...] | None = None


#: The comparisons of the paper and of this suite, defined once. Model names are keys of
#: ``evaluate.models`` in ``params.yaml`` (``tests/test_stats.py`` checks it); a comparison whose
#: models were not evaluated is reported as skipped.
COMPARISONS = (
    Comparison("weak-strong", "weak - strong", "weak_affine_tps", "strong_affine_tps"),
    Comparison("mask-no_mask", "mask - no mask", "weak_affine_tps", "weak, no inlier mask"),
    Comparison("tolerance_0-1", "tolerance 0 - 1", "weak_affine_tps", "weak, mask tolerance 1"),
    Comparison("tolerance_0-2", "tolerance 0 - 2", "weak_affine_tps", "weak, mask tolerance 2"),
    Comparison("tolerance_1-2", "tolerance 1 - 2", "weak, mask tolerance 1", "weak, mask tolerance 2"),
    Comparison("ncnet-weakalign", "NCNet - WeakAlign", "ncnet", "weak_affine_tps", kinds=(("ncnet", "affine_tps"),)),
    Comparison("refined-weakalign", "test-time affine refinement - WeakAlign", "weak + test-time affine refinement (not in paper)",
               "weak_affine_tps"),
)


def comparison_kinds(comp: Comparison, kinds_a, kinds_b) -> list[tuple[str, str]]:
    if comp.kinds is not None:
        return [(ka, kb) for ka, kb in comp.kinds if ka in kinds_a and kb in kinds_b]
    return [(k, k) for k in kinds_a if k in kinds_b]


def kind_key(ka: str, kb: str) -> str:
    return ka if ka == kb else f"{ka} vs {kb}"


def excludes_zero(low, high) -> bool:
    return bool(low is not None and high is not None and (low > 0 or high < 0))


def paired_differences(values: dict, counts: np.ndarray, alphas: list[str], cfg: BootstrapConfig, available, comparisons=COMPARISONS) -> dict:
    """The ``differences`` section of a benchmark.

    ``values[(model, kind)] = (x, w)``: per-pair values ``n x len(alphas)`` and weights of the
    differences' protocol; ``available``: the models evaluated (others are skipped with a reason)."""
    out = {}
    for comp in comparisons:
        missing = [m for m in (comp.a, comp.b) if m not in available]
        head = {"label": comp.label, "a": comp.a, "b": comp.b}
        if missing:
            out[comp.key] = {**head, "available": False, "reason": f"not evaluated: {', '.join(missing)}"}
            continue
        kinds_a = [k for (m, k) in values if m == comp.a]
        kinds_b = [k for (m, k) in values if m == comp.b]
        pairs = comparison_kinds(comp, kinds_a, kinds_b)
        if not pairs:
            out[comp.key] = {**head, "available": False, "reason": "no transform kind to compare"}
            continue
        entry = {**head, "available": True, "kinds": {}}
        for ka, kb in pairs:
            (xa, wa), (xb, wb) = values[(comp.a, ka)], values[(comp.b, kb)]
            if not np.array_equal(wa, wb):
                raise ValueError(f"{comp.key}: {comp.a} and {comp.b} were scored on different pairs / keypoints")
            r = weighted_mean_ci(np.asarray(xa) - np.asarray(xb), wa, counts, cfg.confidence, cfg.method)
            entry["kinds"][kind_key(ka, kb)] = {"a_kind": ka, "b_kind": kb, **{
                a: {"difference": float(r["estimate"][j]), "low": float(r["low"][j]), "high": float(r["high"][j]),
                    "excludes_zero": excludes_zero(r["low"][j], r["high"][j]), "interval": r["method"][j]}
                for j, a in enumerate(alphas)}}
        out[comp.key] = entry
    return out


# --- formatting (markdown tables, README) ------------------------------------------------------


def fmt_ci(value, low=None, high=None, digits: int = 3) -> str:
    """``0.496 [0.478, 0.514]``; ``n/a`` for a missing value; no brackets without an interval."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    s = f"{value:.{digits}f}"
    if low is None or high is None or (isinstance(low, float) and np.isnan(low)):
        return s
    return f"{s} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_signed_ci(value, low, high, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


DIFFERENCES_NOTE = ("a - b: mean over pairs of (PCK of a - PCK of b) on the same pairs, default protocol; "
                    "**bold** and * = the 95% paired-bootstrap interval excludes 0. "
                    "No correction for multiple comparisons.")


def differences_markdown(bench_metrics: dict, alphas=("0.1",)) -> str:
    """One markdown table of a benchmark's ``differences`` (empty string when there are none)."""
    diffs = bench_metrics.get("differences") or {}
    if not diffs:
        return ""
    boot = bench_metrics.get("bootstrap", {})
    conf = boot.get("confidence", 0.95)
    lines = ["| comparison | a | b | transform | " + " | ".join(f"PCK@{a} difference [{conf:.0%} CI]" for a in alphas) + " |",
             "|---|---|---|---|" + "---|" * len(alphas)]
    for d in diffs.values():
        if not d.get("available"):
            lines.append(f"| {d['label']} | {d['a']} | {d['b']} | — | " + " | ".join("n/a" for _ in alphas) + f" |")
            continue
        for kk, e in d["kinds"].items():
            cells = []
            for a in alphas:
                r = e.get(a)
                if r is None:
                    cells.append("n/a")
                    continue
                c = fmt_signed_ci(r["difference"], r["low"], r["high"])
                cells.append(f"**{c}** *" if r["excludes_zero"] else c)
            tr = e["a_kind"] if e["a_kind"] == e["b_kind"] else f"{e['a_kind']} vs {e['b_kind']}"
            lines.append(f"| {d['label']} | {d['a']} | {d['b']} | {tr} | " + " | ".join(cells) + " |")
    skipped = [f"{d['label']} ({d['reason']})" for d in diffs.values() if not d.get("available")]
    note = DIFFERENCES_NOTE.replace("95%", f"{conf:.0%}")
    if boot.get("description"):
        note += f" Interval: {boot['description']}."
    if skipped:
        note += " Not computed: " + "; ".join(skipped) + "."
    return "\n".join(lines) + "\n\n" + note + "\n"
