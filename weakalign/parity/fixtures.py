"""Inputs shared by both implementations: a PF-WILLOW subset folder and a PF-PASCAL-format
fixture (the real CSV's 299 pairs, synthetic images at the paths it names).

Layouts are those both sides read: ``<dir>/pf-willow/test_pairs_pf.csv`` + ``PF-dataset/``
(the original's ``eval.py --eval-dataset pf --eval-dataset-path <dir>/pf-willow/``; this
project's ``PFWillowDataset(root=<dir>, csv=...)``), and ``<dir>/pf-pascal/<csv>`` +
``PF-dataset-PASCAL/JPEGImages/*.jpg`` (the original's ``PFPascalDataset(csv, <dir>/pf-pascal/)``;
this project's ``PFPascalDataset(root=<dir>, csv=...)``).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from ..atomic import write_text


def subset_rows(n_rows: int, n: int) -> list[int]:
    """``n`` row indices spread evenly over ``n_rows`` (PF-WILLOW: every sub-class is hit)."""
    if n <= 0 or n_rows <= 0:
        raise ValueError("need at least one pair")
    n = min(n, n_rows)
    return sorted({int(i * n_rows / n) for i in range(n)})


def write_pf_willow_subset(pf_willow_dir: str | os.PathLike, out_dir: str | os.PathLike, n_pairs: int) -> tuple[Path, list[int]]:
    """``out_dir/pf-willow/{test_pairs_pf.csv, PF-dataset -> the real images}`` holding
    ``n_pairs`` pairs spread over the 900; returns (csv path, rows used)."""
    src = Path(pf_willow_dir)
    lines = (src / "test_pairs_pf.csv").read_text().splitlines()
    rows = subset_rows(len(lines) - 1, n_pairs)
    dst = Path(out_dir) / "pf-willow"
    dst.mkdir(parents=True, exist_ok=True)
    link = dst / "PF-dataset"
    if not link.exists():
        link.symlink_to((src / "PF-dataset").resolve(), target_is_directory=True)
    csv_path = dst / "test_pairs_pf.csv"
    write_text(csv_path, "\n".join([lines[0]] + [lines[1 + r] for r in rows]) + "\n")
    return csv_path, rows


def write_pf_pascal_fixture(real_csv: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Copy the real PF-PASCAL CSV to ``out_dir/pf-pascal/`` and write a synthetic JPEG at every
    image path it names: random sizes that contain the image's keypoints (plus a random margin,
    so sizes differ per image and aspect ratios vary), smooth random content. Returns the CSV."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    real_csv = Path(real_csv)
    root = Path(out_dir) / "pf-pascal"
    extent: dict[str, list[float]] = {}
    with real_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    for r in rows[1:]:
        for name, xs, ys in ((r[0], r[3], r[4]), (r[1], r[5], r[6])):
            x = max(float(v) for v in xs.split(";"))
            y = max(float(v) for v in ys.split(";"))
            e = extent.setdefault(name, [1.0, 1.0])
            e[0], e[1] = max(e[0], x), max(e[1], y)
    for name in sorted(extent):
        x, y = extent[name]
        w = int(math.ceil(x)) + int(rng.integers(1, 120))
        h = int(math.ceil(y)) + int(rng.integers(1, 120))
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path, quality=90)
    out = root / real_csv.name
    write_text(out, real_csv.read_text())
    return out
