"""Tables and figures for the notebooks in ``notebooks/`` (the notebooks stay thin).

Everything reads files the pipeline wrote (``reports/metrics/*.json``, ``reports/plots/*.csv``,
``weakalign/evaluation/paper_results.yaml``); nothing here runs a model except
:func:`qualitative_figure`, which re-aligns a handful of pairs for pictures.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pandas as pd

KIND_LABEL = {"identity": "identity", "affine": "affine", "tps": "TPS", "affine_tps": "affine+TPS"}


def paper_results() -> list[dict]:
    import yaml

    return yaml.safe_load(resources.files("weakalign.evaluation").joinpath("paper_results.yaml").read_text())


def pck_frame(metrics_path: str | Path, benchmark: str, protocol: str = "default", alpha: str = "0.1") -> pd.DataFrame:
    """One row per (model, transform) from ``pck.json``: this repository's numbers."""
    m = json.loads(Path(metrics_path).read_text())
    b = m.get(benchmark, {})
    if not b.get("available"):
        return pd.DataFrame([{"source": "this repo", "model": "—", "transform": "—", "PCK": None,
                              "note": f"not available: {b.get('reason', 'not evaluated')[:200]}"}])
    desc = b["protocols"][protocol]["description"]
    rows = []
    for model, kinds in b["models"].items():
        if kinds.get("available") is False:
            rows.append({"source": "this repo", "model": model, "transform": "—", "PCK": None, "note": "not available"})
            continue
        for kind, res in kinds.items():
            rows.append({"source": "this repo", "model": model, "transform": KIND_LABEL.get(kind, kind),
                         "PCK": res.get(protocol, {}).get(alpha), "note": desc})
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


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    def fmt(v):
        if isinstance(v, float):
            return "n/a" if pd.isna(v) else format(v, floatfmt)
        return "n/a" if v is None else str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


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


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    tmp.replace(path)
    return path
