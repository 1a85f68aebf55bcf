"""``parity.json`` + ``parity.md``: one row per item (max difference, tolerance, pass/fail),
the speed comparison, versions and the commits of the original checkouts. Written atomically."""

from __future__ import annotations

import platform
from pathlib import Path

from ..atomic import ensure_dir, write_json, write_text


def versions() -> dict:
    import numpy
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for name in ("pandas", "scipy", "skimage", "torchvision"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def _fmt(x: float) -> str:
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.3g}"


def _result(it: dict) -> str:
    if not it.get("gate", True):
        return "equal (info)" if it["passed"] else "differs (info)"
    return "pass" if it["passed"] else "**FAIL**"


def markdown(doc: dict) -> str:
    items = doc["items"]
    n_fail = sum(not it["passed"] for it in items if it.get("gate", True))
    n_gate = sum(it.get("gate", True) for it in items)
    lines = ["# Parity with the original code", "",
             f"Command: `{doc['command']}`", "",
             f"**{n_gate - n_fail} of {n_gate} parity items pass**" + (f", {n_fail} FAIL." if n_fail else "."), "",
             "Original code: " + "; ".join(f"{c['repository']} at `{c['commit'] or 'unknown commit'}`" for c in doc["checkouts"]), "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v), "",
             f"Inputs: {doc['inputs']}", "",
             "Per-pair PCK rows: *max difference* = number of pairs whose PCK differs (tolerance 0).", "",
             "| group | item | max difference | tolerance | result | detail |", "|---|---|---|---|---|---|"]
    for it in items:
        lines.append(f"| {it['group']} | {it['name']} | {_fmt(it['max_diff'])} | {_fmt(it['tolerance'])} | "
                     f"{_result(it)} | {it['detail']} |")
    for sp in doc.get("speed", []):
        lines += ["", f"## Speed: original `eval.py` vs this project's fast path ({sp['backbone']})", "",
                  f"Same random-weight two-stage checkpoint, same {sp['pairs']} PF-WILLOW pairs, {sp['threads']} threads, "
                  f"{sp['runs']} runs each, alternated (original, ours, original, ...); medians. {sp['conditions']}", "",
                  "| implementation | seconds (median) | pairs/s | all runs (s) |", "|---|---|---|---|",
                  f"| original eval.py (pair at a time, its PFDataset + DataLoader as shipped) | {sp['original_median_s']:.2f} | "
                  f"{sp['original_pairs_per_s']:.2f} | {', '.join(f'{s:.2f}' for s in sp['original_seconds'])} |",
                  f"| weakalign.evaluation.predict.predict_pairs (fast path) | {sp['ours_median_s']:.2f} | "
                  f"{sp['ours_pairs_per_s']:.2f} | {', '.join(f'{s:.2f}' for s in sp['ours_seconds'])} |", "",
                  f"**Ratio: {sp['ratio']:.2f}x** (original seconds / ours)."]
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, doc: dict) -> tuple[Path, Path]:
    out_dir = ensure_dir(out_dir, "choose another folder with --out")
    j, m = out_dir / "parity.json", out_dir / "parity.md"
    write_json(j, doc)
    write_text(m, markdown(doc))
    return j, m
