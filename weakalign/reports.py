"""Tables and figures for the notebooks in ``notebooks/`` (the notebooks stay thin).

Everything reads files the pipeline wrote (``reports/metrics/*.json``, ``reports/plots/*.csv``,
``weakalign/evaluation/paper_results.yaml``); nothing here runs a model except
:func:`qualitative_figure`, which re-aligns a handful of pairs for pictures.

Uncertainty: a frame column ``X`` may come with ``X low`` / ``X high`` (the bootstrap interval
from ``pck.json``, :mod:`weakalign.evaluation.stats`); :func:`to_markdown` prints them as
``0.496 [0.478, 0.514]`` and the figures draw them as error bars / bands.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd

from .evaluation.metrics import pairs_label

KIND_LABEL = {"identity": "identity", "affine": "affine", "tps": "TPS", "affine_tps": "affine+TPS", "ncnet": "NCNet matches"}

def __getattr__(name: str):
    """``METHODS``: the rows of the methods table, (label, model name in pck.json, transform,
    training records whose ``seconds`` add up to the method's training time from ImageNet
    features), as the registered methods declare them (:func:`weakalign.methods.table_rows`)."""
    if name == "METHODS":
        from .methods import table_rows

        return tuple((r.label, r.model, r.kind, r.training_records) for r in table_rows())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def paper_results() -> list[dict]:
    import yaml

    return yaml.safe_load(resources.files("weakalign.evaluation").joinpath("paper_results.yaml").read_text())


def _ci(res: dict, protocol: str, alpha: str) -> tuple:
    c = (res.get("ci") or {}).get(protocol, {}).get(alpha) or {}
    return c.get("low"), c.get("high")


def this_repo_source(bench_metrics: dict) -> str:
    """``source`` cell of this repository's rows: ``this repo``, or ``this repo (3 of 299
    pairs)`` when the numbers come from a subset (``evaluate.max_pairs``), so a subset is never
    read beside the paper's full-benchmark numbers as if it were comparable."""
    label = pairs_label(bench_metrics) if "pairs" in bench_metrics else ""
    return f"this repo ({label})" if " of " in label else "this repo"


def pck_frame(metrics_path: str | Path, benchmark: str, protocol: str = "default", alpha: str = "0.1") -> pd.DataFrame:
    """One row per (model, transform) from ``pck.json``: this repository's numbers, with the
    bootstrap interval in ``PCK low`` / ``PCK high`` (empty when ``pck.json`` has none)."""
    m = json.loads(Path(metrics_path).read_text())
    b = m.get(benchmark, {})
    if not b.get("available"):
        return pd.DataFrame([{"source": "this repo", "model": "—", "transform": "—", "PCK": None, "PCK low": None, "PCK high": None,
                              "note": f"not available: {b.get('reason', 'not evaluated')[:200]}"}])
    desc = b["protocols"][protocol]["description"]
    source = this_repo_source(b)
    rows = []
    for model, kinds in b["models"].items():
        if kinds.get("available") is False:
            rows.append({"source": source, "model": model, "transform": "—", "PCK": None, "PCK low": None, "PCK high": None,
                         "note": "not available"})
            continue
        for kind, res in kinds.items():
            lo, hi = _ci(res, protocol, alpha)
            rows.append({"source": source, "model": model, "transform": KIND_LABEL.get(kind, kind),
                         "PCK": res.get(protocol, {}).get(alpha), "PCK low": lo, "PCK high": hi, "note": desc})
    return pd.DataFrame(rows)


def dense_frame(bench_metrics: dict) -> pd.DataFrame:
    """Caltech-101 / TSS rows (one per model and transform) of a dense benchmark's metrics."""
    rows = []
    for model, kinds in bench_metrics.get("models", {}).items():
        if kinds.get("available") is False:
            continue
        for kind, res in kinds.items():
            rows.append({"source": this_repo_source(bench_metrics), "model": model, "transform": KIND_LABEL.get(kind, kind),
                         **{m: res.get(m) for m in bench_metrics["measures"]}})
    return pd.DataFrame(rows)


def paper_frame(benchmark: str) -> pd.DataFrame:
    rows = []
    for r in paper_results():
        if r["benchmark"] != benchmark or "pck" not in r:
            continue
        rows.append({"source": "paper", "model": r["method"], "transform": KIND_LABEL.get(r["kind"], r["kind"]),
                     "PCK": r["pck"], "note": r["source"]})
    return pd.DataFrame(rows)


def comparison_table(metrics_path, benchmark: str) -> pd.DataFrame:
    """Published rows and this repository's rows, side by side (PCK@0.1, default protocol)."""
    return pd.concat([paper_frame(benchmark), pck_frame(metrics_path, benchmark)], ignore_index=True)


def ci_columns(df: pd.DataFrame) -> list[str]:
    """Columns ``X`` of ``df`` that come with ``X low`` and ``X high`` (an interval)."""
    return [c for c in df.columns if f"{c} low" in df.columns and f"{c} high" in df.columns]


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f", ci_label: str = "95% CI") -> str:
    """Markdown table. A column ``X`` with ``X low`` / ``X high`` becomes one column
    ``X [95% CI]`` whose cells read ``0.496 [0.478, 0.514]`` (3 decimals; just the value when the
    row has no interval, e.g. published numbers)."""
    from .evaluation.stats import fmt_ci

    def isnull(v):
        return v is None or (isinstance(v, float) and pd.isna(v))

    def fmt(v):
        if isinstance(v, float):
            return "n/a" if pd.isna(v) else format(v, floatfmt)
        return "n/a" if v is None else str(v)

    with_ci = ci_columns(df)
    hidden = {f"{c} {e}" for c in with_ci for e in ("low", "high")}
    cols = [c for c in df.columns if c not in hidden]

    def cell(r, c):
        if c not in with_ci:
            return fmt(r[c])
        v, lo, hi = r[c], r[f"{c} low"], r[f"{c} high"]
        if isnull(v):
            return "n/a"
        return fmt_ci(float(v), None if isnull(lo) else float(lo), None if isnull(hi) else float(hi))

    head = [f"{c} [{ci_label}]" if c in with_ci else c for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(r, c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def differences_markdown(metrics_path: str | Path, benchmark: str, alphas=("0.1",)) -> str:
    """The paired-differences table of a benchmark (weak - strong, mask - no mask, tolerances,
    NCNet - WeakAlign; :data:`weakalign.evaluation.stats.COMPARISONS`), as written into
    ``pck.json`` by ``weakalign evaluate metrics``; the one table shown by notebook 02 and the README."""
    from .evaluation.stats import differences_markdown as table

    b = json.loads(Path(metrics_path).read_text()).get(benchmark, {})
    if not b.get("available"):
        return f"{benchmark}: not available.\n"
    return table(b, alphas) or "No paired differences in pck.json (re-run `weakalign evaluate metrics`).\n"


def bar_figure(df: pd.DataFrame, value: str = "PCK", label: str = "model", xlabel: str = "", title: str = "", ax=None):
    """Horizontal bars of ``df[value]`` with the bootstrap interval (``value low`` / ``value high``)
    as error bars and the number printed at the end of each bar."""
    import matplotlib.pyplot as plt

    df = df.reset_index(drop=True)
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(df) + 1.2))
    else:
        fig = ax.figure
    vals = pd.to_numeric(df[value], errors="coerce")
    has_ci = f"{value} low" in df and f"{value} high" in df
    lo = pd.to_numeric(df[f"{value} low"], errors="coerce") if has_ci else vals
    hi = pd.to_numeric(df[f"{value} high"], errors="coerce") if has_ci else vals
    err = [(vals - lo).fillna(0).clip(lower=0).to_numpy(), (hi - vals).fillna(0).clip(lower=0).to_numpy()]
    y = range(len(df))
    ax.barh(list(y), vals.fillna(0), color="tab:blue", alpha=0.85, xerr=err if has_ci else None,
            error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
    for i, v in enumerate(vals):
        if pd.isna(v):
            ax.text(0, i, " n/a", va="center")
            continue
        text = f" {v:.3f}" + (f" [{lo[i]:.3f}, {hi[i]:.3f}]" if has_ci and not pd.isna(lo[i]) else "")
        ax.text((hi[i] if has_ci and not pd.isna(hi[i]) else v) + 0.005, i, text, va="center", fontsize=8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(df[label].astype(str).tolist())
    ax.invert_yaxis()
    top = float(pd.concat([hi, vals]).max()) if vals.notna().any() else 1.0
    ax.set_xlim(0, min(1.0, top) * 1.45 if top > 0 else 1.0)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def ablation_figure(df: pd.DataFrame, benchmark: str = "pf-willow"):
    """The ablation bars (notebook 02): PCK@0.1 per model, bootstrap interval as error bars."""
    d = df.assign(label=df["model"] + " (" + df["transform"] + ")")
    conf = "95%"
    return bar_figure(d, "PCK", "label", xlabel=f"PCK@0.1 on {benchmark} (default protocol); error bars: {conf} bootstrap CI over pairs")


def curve_figure(df: pd.DataFrame, benchmark: str = "pf-willow"):
    """PCK vs alpha, one line per model and transform, with the bootstrap interval as a band
    (columns ``low`` / ``high`` of ``reports/plots/pck_curve_<benchmark>.csv``; no band without them)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.cm.tab10.colors if df["model"].nunique() <= 10 else plt.cm.tab20.colors
    for i, (name, g) in enumerate(df.groupby("model", sort=False)):
        g = g.sort_values("alpha")
        c = colors[i % len(colors)]
        ax.plot(g["alpha"], g["pck"], marker="o", ms=3, color=c, label=name)
        if "low" in g and "high" in g and g["low"].notna().any():
            ax.fill_between(g["alpha"], g["low"], g["high"], color=c, alpha=0.15, lw=0)
    ax.set_xlabel("alpha"); ax.set_ylabel("PCK"); ax.set_ylim(0, 1); ax.grid(alpha=0.3)
    ax.set_title(f"{benchmark}: PCK vs alpha (bands: 95% bootstrap CI over pairs)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def per_category_frame(metrics_path, benchmark: str, alpha: str = "0.1") -> pd.DataFrame:
    m = json.loads(Path(metrics_path).read_text()).get(benchmark, {})
    rows = []
    for model, kinds in m.get("models", {}).items():
        if kinds.get("available") is False:
            continue
        for kind, res in kinds.items():
            for cat, v in res.get("per_category", {}).items():
                rows.append({"model": f"{model} ({KIND_LABEL.get(kind, kind)})", "category": cat, "PCK": v.get(alpha)})
    return pd.DataFrame(rows)


def methods_frame(metrics_dir: str | Path, benchmark: str = "pf-willow") -> pd.DataFrame:
    """The methods side by side on one benchmark: PCK (default protocol) and what each cost on
    this machine -- training time (sum of its stages' ``seconds`` in ``reports/metrics/train_*.json``;
    WeakAlign includes the strong stages it starts from) and evaluation time (``evaluate predict``,
    every pair of the benchmark). Missing files give empty cells, never a guessed number."""
    mdir = Path(metrics_dir)
    m = json.loads((mdir / "pck.json").read_text()).get(benchmark, {}) if (mdir / "pck.json").is_file() else {}
    from .methods import table_rows

    rows = []
    for label, model, kind, stages in ((r.label, r.model, r.kind, r.training_records) for r in table_rows()):
        res = (m.get("models", {}).get(model) or {}).get(kind, {}) if m.get("available") else {}
        d = res.get("default", {})
        ci = {f"PCK@{a} {e}": _ci(res, "default", a)[j] for a in ("0.05", "0.1", "0.15") for j, e in enumerate(("low", "high"))}
        secs = []
        for st in stages:
            f = mdir / f"{st}.json"
            secs.append(json.loads(f.read_text()).get("seconds") if f.is_file() else None)
        train = sum(secs) / 60 if secs and all(isinstance(x, (int, float)) for x in secs) else None
        own = secs[-1] / 60 if secs and isinstance(secs[-1], (int, float)) else None
        ev = m.get("predict_seconds", {}).get(model)
        rows.append({"method": label, "model": model, "PCK@0.05": d.get("0.05"), "PCK@0.1": d.get("0.1"), "PCK@0.15": d.get("0.15"),
                     "train, all stages (min)": train, "train, last stage (min)": own, "evaluate (s)": ev, **ci})
    return pd.DataFrame(rows)


_PALETTE = ("#4c72b0", "#55a868", "#c44e52", "#8172b3", "#ccb974", "#64b5cd")


def methods_figure(df: pd.DataFrame, benchmark: str = "pf-willow"):
    """Two panels: PCK@0.1 per method, and its training / evaluation time on this machine."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
    labels = df["method"].tolist()
    for ax, col, title in zip(axes, ("PCK@0.1", "train, all stages (min)", "evaluate (s)"),
                              (f"{benchmark} PCK@0.1 (95% bootstrap CI)", "training time, minutes", f"evaluating {benchmark}, seconds")):
        vals = pd.to_numeric(df[col], errors="coerce")
        err, ends = None, vals
        if f"{col} low" in df and f"{col} high" in df:
            lo, hi = pd.to_numeric(df[f"{col} low"], errors="coerce"), pd.to_numeric(df[f"{col} high"], errors="coerce")
            err = [(vals - lo).fillna(0).clip(lower=0).to_numpy(), (hi - vals).fillna(0).clip(lower=0).to_numpy()]
            ends = hi.fillna(vals)
        ax.barh(labels, vals.fillna(0), color=[_PALETTE[i % len(_PALETTE)] for i in range(len(labels))], xerr=err,
                error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
        for y, v in enumerate(vals):
            ax.text(0 if pd.isna(v) else ends[y], y, " n/a" if pd.isna(v) else f" {v:.3g}", va="center")
        ax.set_title(title)
        ax.invert_yaxis() if ax is axes[0] else None
        ax.margins(x=0.25)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# training curves (notebook 05): held-out numbers against wall-clock minutes
# ---------------------------------------------------------------------------------------------

#: Runs of the strong stage shown in the held-out grid loss vs minutes figure: (name, folder
#: relative to ``reports/plots`` and ``reports/metrics``, file stem). ``baseline/`` holds the
#: previous default configuration re-run with the current code (command in docs/training.md).
#: The legend describes each run from its own records (:func:`strong_run_label`), so it cannot
#: go stale when the default profile changes.
STRONG_CURVE_RUNS = (
    ("this pipeline", ".", "train_strong_{kind}"),
    ("previous default", "baseline", "train_strong_{kind}"),
)


def _schedule_text(curve: pd.DataFrame) -> str:
    """``"2 @ 1e-3 + 1 @ 2e-4"`` from the per-epoch ``lr`` column (consecutive epochs at one lr)."""
    if "lr" not in curve.columns:
        return ""
    from itertools import groupby

    runs = [(len(list(g)), lr) for lr, g in groupby(curve.sort_values("epoch")["lr"])]
    return " + ".join(f"{n} @ {lr:.0e}".replace("e-0", "e-") for n, lr in runs)


def strong_run_label(name: str, curve: pd.DataFrame, metrics: dict | None) -> str:
    """Legend text of a strong run: ``name (7,001 photos x 3 warps, epochs: 2 @ 1e-3 + 1 @ 2e-4)`` from
    its metrics JSON (photos, pairs) and its curve (epochs per learning rate); just ``name``
    when neither says anything."""
    bits = []
    if metrics and metrics.get("train_images") and metrics.get("train_pairs"):
        photos, pairs = int(metrics["train_images"]), int(metrics["train_pairs"])
        if metrics.get("pairs") == "random":
            bits.append(f"{photos:,} photos, fresh warps every epoch")
        else:
            warps = pairs // photos
            bits.append(f"{photos:,} photos x {warps} warp{'s' if warps != 1 else ''}")
    sched = _schedule_text(curve)
    if sched:
        bits.append(f"epochs: {sched}")
    return f"{name} ({', '.join(bits)})" if bits else name


def strong_curve_frame(plots_dir: str | Path, metrics_dir: str | Path | None = None) -> pd.DataFrame:
    """Per epoch of every strong run found: ``run, kind, epoch, minutes, heldout_grid_loss,
    val_loss`` (minutes: since the stage started, feature caching included). Runs whose CSV is
    missing or predates the per-epoch held-out column are skipped. ``run`` is the legend label
    (:func:`strong_run_label`), read from ``metrics_dir`` (default: ``reports/metrics`` beside
    ``plots_dir``)."""
    metrics_dir = Path(metrics_dir) if metrics_dir is not None else Path(plots_dir).parent / "metrics"
    rows = []
    for name, folder, stem in STRONG_CURVE_RUNS:
        for kind in ("affine", "tps"):
            f = Path(plots_dir) / folder / f"{stem.format(kind=kind)}.csv"
            if not f.is_file():
                continue
            d = pd.read_csv(f)
            if not {"minutes", "heldout_grid_loss"} <= set(d.columns):
                continue
            m = metrics_dir / folder / f"{stem.format(kind=kind)}.json"
            try:
                metrics = json.loads(m.read_text()) if m.is_file() else None
            except (OSError, ValueError):
                metrics = None
            label = strong_run_label(name, d, metrics)
            rows.append(d.assign(run=label, kind=kind)[["run", "kind", "epoch", "minutes", "heldout_grid_loss", "val_loss"]])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["run", "kind", "epoch", "minutes", "heldout_grid_loss", "val_loss"])


def strong_curve_figure(df: pd.DataFrame, identity: dict | None = None):
    """Held-out synthetic grid loss vs minutes, one panel per transform, one line per run;
    ``identity`` (kind -> the identity transformation's held-out grid loss) as a dashed line."""
    import matplotlib.pyplot as plt

    kinds = [k for k in ("affine", "tps") if k in set(df["kind"])]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(6 * max(1, len(kinds)), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for i, (run, g) in enumerate(df[df["kind"] == kind].groupby("run", sort=False)):
            g = g.sort_values("minutes")
            ax.plot(g["minutes"], g["heldout_grid_loss"], marker="o", ms=3, color=f"C{i}", label=run)
            last = g.iloc[-1]
            ax.annotate(f"{last['heldout_grid_loss']:.4f}", (last["minutes"], last["heldout_grid_loss"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points", color=f"C{i}")
        if identity and kind in identity:
            ax.axhline(identity[kind], color="grey", ls="--", lw=1, label=f"identity ({identity[kind]:.3f})")
        ax.set_yscale("log")
        ax.set_xlabel("minutes since the stage started (feature caching included)")
        ax.set_ylabel("held-out grid loss (synthetic pairs, log scale)")
        ax.set_title(f"strong {KIND_LABEL.get(kind, kind)}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def weak_curve_frame(plots_dir: str | Path) -> pd.DataFrame:
    """Per epoch of the weak run and its ablations: ``run, epoch, minutes, val_score,
    heldout_score`` (soft-inlier score of the run's own loss; held-out = odd rows, never used
    for selection)."""
    rows = []
    files = [("inlier mask, tolerance 0 (WeakAlign)", Path(plots_dir) / "train_weak.csv")]
    files += [(f.stem.replace("train_weak_", ""), f) for f in sorted((Path(plots_dir) / "ablations").glob("train_weak_*.csv"))
              if not f.stem.endswith("_steps")]
    for label, f in files:
        if f.is_file():
            d = pd.read_csv(f)
            if "heldout_score" in d.columns:
                rows.append(d.assign(run=label)[["run", "epoch"] + [c for c in ("minutes", "val_score", "heldout_score") if c in d.columns]])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["run", "epoch", "minutes", "val_score", "heldout_score"])


def weak_curve_figure(df: pd.DataFrame, before: dict | None = None):
    """Held-out soft-inlier score per epoch for each weak run (``before``: run -> the score of
    the strong initialisation, drawn at epoch 0). Each run is scored with its own loss, so
    compare a run's gain, not levels across runs."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (run, g) in enumerate(df.groupby("run", sort=False)):
        g = g.sort_values("epoch")
        x, y = list(g["epoch"]), list(g["heldout_score"])
        if before and run in before:
            x, y = [0] + x, [before[run]] + y
        ax.plot(x, y, marker="o", ms=3, color=f"C{i}", label=run)
    ax.set_xlabel("epoch (0 = strong initialisation)")
    ax.set_ylabel("held-out soft-inlier score (own loss)")
    ax.set_title("weak fine-tuning: held-out score per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    from .atomic import atomic_open

    path = Path(path)
    with atomic_open(path, "wb") as fh:  # one-line error naming the path when it is not writable
        fig.savefig(fh, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


RESULTS_BEGIN = "<!-- BEGIN results (generated by `weakalign readme` from reports/) -->"
RESULTS_END = "<!-- END results -->"


def _seeds_block(root: Path) -> str:
    """Mean ± sd over training seeds (``reports/metrics/seeds.json``, ``weakalign seeds``), if run."""
    seeds = root / "reports" / "metrics" / "seeds.json"
    if not seeds.is_file():
        return ""
    from .seeds import seeds_markdown

    return "\n" + seeds_markdown(json.loads(seeds.read_text()))


def readme_results(root: Path) -> str:
    """The README's results section, built only from files under ``reports/``."""
    metrics = root / "reports" / "metrics" / "pck.json"
    if not metrics.is_file():
        return "No results yet: run `make pipeline` (`dvc repro`).\n" + _seeds_block(root)
    lines = []
    m = json.loads(metrics.read_text())
    from .data.registry import EVALUATION_BENCHMARKS

    for bench in EVALUATION_BENCHMARKS:
        b = m.get(bench)
        if b is None:
            continue
        if not b.get("available"):
            lines += [f"**{bench}**: not available here ({b.get('reason', '')[:160]}).", ""]
            continue
        if b.get("kind") == "dense":
            lines += [f"**{bench}** ({pairs_label(b)}; protocol in `reports/metrics/pck.json`). Reproduce: `dvc repro evaluate_metrics`.", ""]
            lines += [to_markdown(dense_frame(b))]
            continue
        desc = b["protocols"]["default"]["description"]
        rest = "; ".join(desc.split("; ")[1:]) or desc
        boot = b.get("bootstrap")
        brackets = f"Brackets: {boot['description']}. " if boot else ""
        lines += [f"**{bench}** ({pairs_label(b)}). Column PCK = PCK@0.1 with {rest} "
                  f"(paper rows: as published, protocol as stated by their source). {brackets}"
                  "Reproduce: `dvc repro evaluate_metrics`; all protocols in `reports/tables/pck.md`.", ""]
        df = comparison_table(metrics, bench)[["source", "model", "transform", "PCK", "PCK low", "PCK high"]]
        lines += [to_markdown(df)]
        if b.get("differences"):
            from .evaluation.stats import differences_markdown as diff_table

            lines += [f"**Paired differences on {bench}** (same pairs, same bootstrap resamples for both models; "
                      "notebook 02, `reports/metrics/pck.json` `differences`).", "", diff_table(b)]
    if m.get("pf-willow", {}).get("available"):
        desc = m["pf-willow"]["protocols"]["default"]["description"]
        from .info import describe

        lines += ["**Methods side by side on pf-willow** (PCK with " + "; ".join(desc.split("; ")[1:]) + "; times measured by the "
                  f"pipeline on the machine that ran it ({describe(m['pf-willow'].get('environment'))}, as recorded by "
                  "`evaluate predict` in `reports/metrics/pck.json`): training from `reports/metrics/train_*.json`, evaluation of all pairs "
                  "from `evaluate predict`). Reproduce: `dvc repro`.", ""]
        lines += [to_markdown(methods_frame(root / "reports" / "metrics", "pf-willow"), floatfmt=".3g")]
    lines += [_seeds_block(root)]
    for name in sorted((root / "reports" / "metrics").glob("train_*.json")):
        d = json.loads(name.read_text())
        keys = [k for k in ("heldout_grid_loss", "heldout_identity_grid_loss", "heldout_score_before", "heldout_score_after", "heldout_loss_before", "heldout_loss_after", "label", "selection_criterion") if k in d]
        if keys:
            lines.append(f"- `{name.name}`: " + ", ".join(f"{k} = {d[k]:.4g}" if isinstance(d[k], float) else f"{k} = {d[k]}" for k in keys))
    return "\n".join(lines).rstrip() + "\n"


def update_readme(root: Path) -> None:
    readme = root / "README.md"
    text = readme.read_text()
    block = f"{RESULTS_BEGIN}\n{readme_results(root)}{RESULTS_END}"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        pre, rest = text.split(RESULTS_BEGIN, 1)
        text = pre + block + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    tmp = readme.with_name(".README.md.tmp")
    tmp.write_text(text)
    tmp.replace(readme)


def _readme_cmd(args) -> int:
    from .data.paths import project_root

    update_readme(project_root())
    print("readme: results section regenerated from reports/")
    return 0


def register(sub) -> None:
    p = sub.add_parser("readme", help="regenerate the README's results section from reports/")
    p.set_defaults(func=_readme_cmd)
    # `weakalign seeds` (multi-seed training, not part of dvc repro) reports into the same tables
    from .seeds import register as register_seeds

    register_seeds(sub)
