"""PF-WILLOW pair list: fetch the official ``test_pairs_pf.csv`` or rebuild it.

The official list is the 900 ordered pairs of distinct images within each of the 10
sub-classes of ``PF-dataset.zip`` (10 images each: 10 x 10 x 9 = 900), with the 10 keypoints of
each image taken from the ``pts_coord`` array (2 x 10, row 0 = x, row 1 = y, pixels) of the
``.mat`` file beside it. The rebuilt file has the official column layout (42 columns:
``imageA, imageB, XA1..XA10, YA1..YA10, XB1..XB10, YB1..YB10``), image paths relative to
``data/pf-willow`` (``PF-dataset/car(G)/Cars_006a.png``) and the coordinates copied unchanged
(full float precision): pixels, **1-based**, as produced by the MATLAB annotation tool (the
reference code, too, feeds them to ``PointsToUnitCoords`` as 1-based).

Row order of the rebuilt file: sub-classes sorted by name, then source image sorted by file
name, then target image sorted by file name. The official file's row order is not known here;
PCK averaged over pairs does not depend on it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..atomic import write_csv
from .csvio import PF_WILLOW_HEADER

NUM_CLASSES = 10
IMAGES_PER_CLASS = 10
NUM_KEYPOINTS = 10
NUM_PAIRS = NUM_CLASSES * IMAGES_PER_CLASS * (IMAGES_PER_CLASS - 1)  # 900


class AnnotationError(ValueError):
    pass


def load_keypoints(mat_path) -> np.ndarray:
    """``pts_coord`` of a PF-WILLOW ``.mat`` file as a 2 x 10 float64 array (x row, y row)."""
    from scipy.io import loadmat

    try:
        d = loadmat(str(mat_path))
    except Exception as exc:  # scipy raises several types for damaged files
        raise AnnotationError(f"{mat_path}: cannot read .mat file ({exc})") from exc
    if "pts_coord" not in d:
        raise AnnotationError(f"{mat_path}: no 'pts_coord' variable (has {sorted(d)})")
    pts = np.asarray(d["pts_coord"], dtype=np.float64)
    if pts.shape != (2, NUM_KEYPOINTS):
        raise AnnotationError(f"{mat_path}: pts_coord has shape {pts.shape}, expected (2, 10)")
    if not np.all(np.isfinite(pts)):
        raise AnnotationError(f"{mat_path}: pts_coord holds NaN/inf")
    return pts


def build_pairs(dataset_dir, prefix: str = "PF-dataset", strict: bool = True) -> list[list]:
    """Rows (without header) of the PF-WILLOW pair list built from the ``.mat`` annotations.

    ``dataset_dir`` is the folder that holds ``prefix`` (``data/pf-willow``).
    """
    base = Path(dataset_dir) / prefix
    if not base.is_dir():
        raise FileNotFoundError(f"PF-WILLOW images not found: {base}")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if strict and len(classes) != NUM_CLASSES:
        raise AnnotationError(f"{base}: {len(classes)} sub-class folders, expected {NUM_CLASSES}")
    rows = []
    for cls in classes:
        images = sorted(p.name for p in (base / cls).iterdir() if p.suffix.lower() == ".png")
        if strict and len(images) != IMAGES_PER_CLASS:
            raise AnnotationError(f"{base / cls}: {len(images)} images, expected {IMAGES_PER_CLASS}")
        kps = {}
        for name in images:
            mat = (base / cls / name).with_suffix(".mat")
            if not mat.is_file():
                raise AnnotationError(f"annotation missing for {base / cls / name}: {mat}")
            kps[name] = load_keypoints(mat)
        for a, b in itertools.permutations(images, 2):
            pa, pb = kps[a], kps[b]
            rows.append(
                [f"{prefix}/{cls}/{a}", f"{prefix}/{cls}/{b}"]
                + [repr(float(v)) for v in pa[0]] + [repr(float(v)) for v in pa[1]]
                + [repr(float(v)) for v in pb[0]] + [repr(float(v)) for v in pb[1]]
            )
    if strict and len(rows) != NUM_PAIRS:
        raise AnnotationError(f"built {len(rows)} pairs, expected {NUM_PAIRS}")
    return rows


def write_pairs(dataset_dir, out_csv, prefix: str = "PF-dataset") -> int:
    rows = build_pairs(dataset_dir, prefix)
    return write_csv(out_csv, PF_WILLOW_HEADER, rows)


def compare_with_annotations(records, dataset_dir) -> float:
    """Max |difference| between a pair list's keypoints and the ``.mat`` annotations."""
    cache: dict[str, np.ndarray] = {}
    worst = 0.0
    for r in records:
        for name, pts in ((r.source, r.source_points), (r.target, r.target_points)):
            if name not in cache:
                cache[name] = load_keypoints((Path(dataset_dir) / name).with_suffix(".mat"))
            worst = max(worst, float(np.max(np.abs(cache[name] - pts))))
    return worst
