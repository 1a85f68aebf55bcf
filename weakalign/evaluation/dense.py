"""Dense evaluation metrics: Caltech-101 label transfer (LT-ACC, IoU, LOC-ERR) and TSS flow PCK.

Both benchmarks are scored from an estimated transform θ (``kind`` = ``affine`` / ``tps`` /
``affine_tps``, or ``identity``), which maps **target** normalised coordinates to **source**
normalised coordinates (``align_corners=True``; ``docs/conventions.md``). Every target pixel is
therefore sent to a position in the source image: masks are warped source -> target by
*sampling the source mask at those positions*, and the dense flow of a target pixel is
``source position - target position`` in pixels.

The protocols follow the reference code (ignacio-rocco/weakalign, ``util/eval_util.py``:
``area_metrics``, ``poly_str_to_mask``/``poly_to_mask``, ``intersection_over_union``,
``label_transfer_accuracy``, ``localization_error``, ``obj_ptr``, ``flow_metrics``; the flow
conversion ``th_sampling_grid_to_np_flow`` of ``geotnf/flow.py``) and, for TSS, the official
MATLAB kit the reference writes ``.flo`` files for (``compute_scores.m``, ``RunEvaluation.m``).
The exact definitions are in :data:`CALTECH_PROTOCOL`, :data:`TSS_PROTOCOL` and the docstrings
below; evaluation reports quote them.

Computations run in float64 on the CPU (the reference used float32; the differences are
round-off at exact pixel/border ties, documented where they matter).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..geometry import (
    affine_identity,
    grid_to_points,
    normalized_to_pixel,
    sampling_grid,
    warp_image,
)

__all__ = [
    "CALTECH_POLYGON_ORIGIN", "CALTECH_PROTOCOL", "LOC_ERR_SNAP", "SCORERS", "TSS_ALPHA", "TSS_PROTOCOL",
    "TSS_SUBSETS", "UNKNOWN_FLOW", "UNKNOWN_FLOW_THRESHOLD", "caltech_metrics",
    "caltech_pair_metrics", "dense_flow", "flow_pck", "localization_error", "polygon_mask",
    "tss_metrics", "tss_pair_pck", "tss_subset", "write_flo",
]

#: Value written for "no flow" (Middlebury ``UNKNOWN_FLOW``; the reference's out-of-image marker).
UNKNOWN_FLOW = 1e10
#: A ground-truth flow component ``>=`` this is unknown (Middlebury ``UNKNOWN_FLOW_THRESH``; the
#: TSS kit tests ``flowGT(:,:,1) < 1e9``).
UNKNOWN_FLOW_THRESHOLD = 1e9
#: The CSV polygon values are used as **0-based** pixel indices by the reference (see
#: :func:`polygon_mask`), unlike the library's 1-based keypoint convention.
CALTECH_POLYGON_ORIGIN = 0.0
#: LOC-ERR truncates source pixel coordinates; positions within this many pixels *below* an
#: integer are snapped up to it (see :func:`localization_error`). Of the order of the
#: reference's own float32 round-off at a few hundred pixels (6e-8 * 300 px ~ 2e-5 px), and
#: enough for exact transforms stored as float32 θ.
LOC_ERR_SNAP = 1e-4
#: TSS PCK alpha (the kit's threshold index T = 5 of 1..50, i.e. 5 % of the image size).
TSS_ALPHA = 0.05
#: TSS subsets, in the paper's column order.
TSS_SUBSETS = ("FG3D", "JODS", "PASC")

CALTECH_PROTOCOL = (
    "Caltech-101 (1,515 pairs; reference util/eval_util.py area_metrics). Object masks are "
    "rasterised from the CSV polygons at the ORIGINAL image sizes with the reference's rule "
    "(skimage.draw.polygon < 0.18 on the raw values: pixel (row r, col c), 0-based, is "
    "foreground iff its centre (c, r) is inside the polygon by the crossing-number test, "
    "half-open on edges). "
    "The source mask is warped into the target frame by bilinear sampling (zeros outside, "
    "align_corners=True) at the target grid's positions mapped by theta (target -> source), "
    "then thresholded > 0.5. LT-ACC = fraction of ALL target pixels whose warped label "
    "(fg/bg) equals the target label. IoU = |warped AND target| / |warped OR target|. "
    "LOC-ERR = mean, over target pixels whose source position lies strictly inside the source "
    "image (normalised |u|, |v| < 1; background pixels included), of |x_t' - x_s'| + "
    "|y_t' - y_s'|, where a pixel's relative position in its image is "
    "x' = (x - left) / (right - left + 1), y' = (y - top) / (bottom - top + 1), with x, y the "
    "1-based pixel coordinates, left/right/top/bottom the 0-based extreme indices of the mask's "
    "foreground (the reference's obj_ptr, mixed bases kept), and the source pixel taken as "
    "floor of the 1-based source position (the reference's truncation; positions less than "
    "1e-4 px below an integer are snapped up to it, a round-off tie the reference decided in "
    "float32). Per-pair values that are NaN (empty union, empty "
    "mask, no in-image pixel) are excluded from the means, as the reference's compute_metric "
    "does; means are over pairs (paper) and over the pairs of each category."
)

TSS_PROTOCOL = (
    "TSS (Taniai et al. CVPR 2016; pairs and flow direction/flip flags of the reference's "
    "test_pairs_tss.csv; scored as the official TSS kit compute_scores.m / RunEvaluation.m "
    "scores the .flo files the reference writes). Estimated flow at every target pixel (the "
    "ground-truth flow file's grid, the target's original size): source position - target "
    "position in pixels (1-based both), with the reference's UNKNOWN (1e10) where the source "
    "position is not strictly inside the source image (normalised |u|, |v| < 1). The source "
    "image is the one fed to the network (flipped horizontally when the CSV says so); the flow "
    "is compared as is, as the reference does. PCK(alpha=0.05) of a pair = fraction of the "
    "evaluated pixels with endpoint error ||flow - flow_gt|| <= alpha * max(h_src, w_src) "
    "(kit: T/100 * max(size(other image's flow)), T = 5; the other image is the source). "
    "Evaluated pixels = pixels with a known ground-truth flow (kit: flowGT(:,:,1) < 1e9; here "
    "also finite and v < 1e9), i.e. the ground-truth foreground; pixels whose estimated flow "
    "is unknown (source position outside the image) are counted as errors, never excluded. A "
    "pair with no evaluated pixel gets NaN and is excluded from the means. Per subset (FG3D, "
    "JODS, PASC): mean over its pairs; 'average' = mean of the three subset means (the "
    "paper's Avg.)."
)


# ------------------------------------------------------------------------------------------
# helpers


def _f64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _as_theta(theta, n: int, name: str) -> torch.Tensor:
    if theta is None:
        raise ValueError(f"{name} is required for this transform kind")
    t = _f64(theta).reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name} must hold {n} numbers for one pair, got shape {tuple(_f64(theta).shape)}")
    return t.reshape(1, n)


def _resolve_transform(kind: str, theta_aff, theta_tps):
    """(geometry kind, 1 x 6 affine or None, 1 x 18 TPS or None), float64."""
    if kind == "identity":
        return "affine", affine_identity(1, dtype=torch.float64), None
    if kind == "affine":
        return "affine", _as_theta(theta_aff, 6, "theta_aff"), None
    if kind == "tps":
        return "tps", None, _as_theta(theta_tps, 18, "theta_tps")
    if kind == "affine_tps":
        return "affine_tps", _as_theta(theta_aff, 6, "theta_aff"), _as_theta(theta_tps, 18, "theta_tps")
    raise ValueError(f"unknown transform kind {kind!r}; expected identity, affine, tps or affine_tps")


def _grid(kind, theta_aff, theta_tps, h: int, w: int, tps_reg_factor: float) -> torch.Tensor:
    """1 x h x w x 2 source normalised positions of the h x w target pixels (float64)."""
    k, ta, tt = _resolve_transform(kind, theta_aff, theta_tps)
    return sampling_grid(k, int(h), int(w), ta, tt, tps_reg_factor=tps_reg_factor)


def _flow_from_grid(grid: torch.Tensor, source_size) -> np.ndarray:
    """The reference's ``th_sampling_grid_to_np_flow``: H x W x 2 (u, v) float64 pixels."""
    _, h, w, _ = grid.shape
    hs, ws = (int(s) for s in source_size)
    g = grid[0]
    inside = (g[..., 0] > -1) & (g[..., 0] < 1) & (g[..., 1] > -1) & (g[..., 1] < 1)
    src_px = normalized_to_pixel(grid_to_points(grid), (hs, ws), origin=1.0)  # 1 x 2 x (h*w)
    src_px = src_px[0].reshape(2, h, w).permute(1, 2, 0)
    ys, xs = torch.meshgrid(torch.arange(1, h + 1, dtype=torch.float64),
                            torch.arange(1, w + 1, dtype=torch.float64), indexing="ij")
    flow = src_px - torch.stack((xs, ys), dim=-1)
    flow[~inside] = UNKNOWN_FLOW
    return flow.numpy()


def _as_bool_mask(mask, name: str) -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be an H x W mask, got shape {m.shape}")
    if m.shape[0] < 2 or m.shape[1] < 2:
        raise ValueError(f"{name}: every image side must be at least 2 pixels, got {m.shape}")
    return m > 0.5 if m.dtype != bool else m


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _nanmean(values) -> tuple[float, int]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    return (float(v.mean()) if v.size else float("nan")), int(v.size)


def _sizes(predictions: dict, key: str, i: int):
    s = predictions.get(key)
    if s is None:
        return None
    return tuple(int(round(float(v))) for v in s[i])


def _check_pairing(predictions: dict, records) -> None:
    n = len(records)
    for key in ("theta_aff", "theta_tps"):
        t = predictions.get(key)
        if t is not None and len(t) != n:
            raise ValueError(f"predictions[{key!r}] has {len(t)} rows, the dataset {n} pairs")
    for key, attr in (("source_path", "source"), ("target_path", "target")):
        paths = predictions.get(key)
        if paths is None:
            continue
        if len(paths) != n:
            raise ValueError(f"predictions[{key!r}] has {len(paths)} entries, the dataset {n} pairs")
        for i, (p, r) in enumerate(zip(paths, records)):
            want = str(getattr(r, attr)).replace("\\", "/")
            got = str(p).replace("\\", "/")
            if got != want and not got.endswith("/" + want.lstrip("/")):
                raise ValueError(f"pair {i}: predictions {key} {got!r} does not match the dataset's {want!r} "
                                 "(predictions must be in the dataset's pair order)")


def _kinds(predictions: dict, kinds) -> list[str]:
    ks = list(kinds) if kinds is not None else list(predictions.get("kinds") or [])
    if not ks:
        raise ValueError("no transform kind to evaluate (predictions['kinds'] is empty)")
    return ks


def _thetas(predictions: dict, kind: str, i: int):
    if kind == "identity":
        return None, None
    ta, tt = predictions.get("theta_aff"), predictions.get("theta_tps")
    return (ta[i] if ta is not None else None), (tt[i] if tt is not None else None)


def _resolve_path(dataset, rel: str) -> Path:
    resolve = getattr(dataset, "_resolve", None)
    return Path(resolve(rel)) if resolve is not None else Path(dataset.root) / rel


def _image_size(dataset, rel: str):
    from ..data.images import image_size

    return tuple(int(v) for v in image_size(_resolve_path(dataset, rel)))


# ------------------------------------------------------------------------------------------
# masks and flows


def polygon_mask(xs, ys, h: int, w: int, origin: float = CALTECH_POLYGON_ORIGIN) -> torch.Tensor:
    """Rasterise a polygon into an ``h x w`` bool mask, exactly as the reference does.

    ``xs``, ``ys``: vertex coordinates (column, row) as stored in the Caltech CSV. Convention:
    the values are pixel coordinates in which the centre of pixel (row ``r``, column ``c``),
    0-based array indices, is at ``(c + origin, r + origin)``. The default ``origin = 0``
    reproduces the reference (``poly_to_mask`` passes the raw CSV values to
    ``skimage.draw.polygon``, i.e. treats them as 0-based indices) although the annotations come
    from MATLAB; pass ``origin=1`` for 1-based data. The shift affects source and target masks
    alike.

    Rule (``skimage.draw.polygon``, crossing-number test of ``point_in_polygon``): a pixel is
    foreground iff its centre ``(x, y)`` crosses an odd number of edges ``(i, j)`` with
    ``min(y_i, y_j) <= y < max(y_i, y_j)`` and ``x < (x_j - x_i)(y - y_i)/(y_j - y_i) + x_i``
    (half-open: a vertex-aligned rectangle ``[x0, x1] x [y0, y1]`` covers centres
    ``x0 <= x < x1``, ``y0 <= y < y1``). The polygon is closed implicitly; parts outside the
    image are clipped. This is ``skimage.draw.polygon`` as the reference ran it (scikit-image
    < 0.18); since 0.18 (scikit-image PR #5029) it also fills centres lying exactly on an edge
    or vertex, so the two differ only on such boundary pixels. Implemented in NumPy (no
    scikit-image at run time); the tests check it against ``skimage.draw.polygon`` on polygons
    without boundary ties, and the half-open rule by hand.
    """
    x = np.asarray(xs.detach().cpu() if isinstance(xs, torch.Tensor) else xs, dtype=np.float64).reshape(-1)
    y = np.asarray(ys.detach().cpu() if isinstance(ys, torch.Tensor) else ys, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"polygon needs as many x as y values (at least one), got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("polygon coordinates must be finite")
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"mask size must be positive, got {h} x {w}")
    rows = np.arange(h, dtype=np.float64) + origin  # y of the pixel centres
    cols = np.arange(w, dtype=np.float64) + origin
    inside = np.zeros((h, w), dtype=bool)
    xj, yj = np.roll(x, 1), np.roll(y, 1)  # edge (i, j) with j = i - 1 (j = n - 1 for i = 0)
    for xi_, yi_, xj_, yj_ in zip(x, y, xj, yj):
        if yi_ == yj_:
            continue  # horizontal edges never satisfy the half-open row test
        active = ((yi_ <= rows) & (rows < yj_)) | ((yj_ <= rows) & (rows < yi_))
        idx = np.flatnonzero(active)
        if idx.size == 0:
            continue
        # same expression and evaluation order as skimage's point_in_polygon
        x_cross = (xj_ - xi_) * (rows[idx] - yi_) / (yj_ - yi_) + xi_
        inside[idx] ^= cols[None, :] < x_cross[:, None]
    return torch.from_numpy(inside)


def dense_flow(kind: str, target_size, source_size, theta_aff=None, theta_tps=None, *, tps_reg_factor: float = 0.0) -> np.ndarray:
    """Dense target -> source flow of an estimated transform, as the reference writes it.

    Returns float64 ``H_t x W_t x 2`` (u, v): for the target pixel at 1-based ``(x, y)``, its
    source position (θ applied to its normalised coordinates, converted to 1-based source
    pixels) minus ``(x, y)``. Where the source position is not strictly inside the source image
    (normalised ``-1 < u < 1`` and ``-1 < v < 1``, the reference's ``th_sampling_grid_to_np_flow``
    test) both components are :data:`UNKNOWN_FLOW` (1e10). ``target_size``, ``source_size`` =
    (h, w) of the original images. ``kind`` = identity / affine / tps / affine_tps.
    """
    ht, wt = (int(s) for s in target_size)
    return _flow_from_grid(_grid(kind, theta_aff, theta_tps, ht, wt, tps_reg_factor), source_size)


def write_flo(path, flow) -> None:
    """Write an ``H x W x 2`` flow as a Middlebury ``.flo`` file (float32), as the reference
    does for the official TSS MATLAB kit. Read back with :func:`weakalign.data.csvio.read_flo`."""
    f = np.asarray(flow, dtype=np.float32)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ValueError(f"flow must be H x W x 2, got shape {f.shape}")
    from ..atomic import atomic_open

    with atomic_open(Path(path), "wb") as fh:  # never a half-written .flo
        np.array([202021.25], dtype=np.float32).tofile(fh)
        np.array([f.shape[1], f.shape[0]], dtype=np.int32).tofile(fh)
        np.ascontiguousarray(f).tofile(fh)


# ------------------------------------------------------------------------------------------
# Caltech-101


def _bbox(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    left, right, top, bottom = xs.min(), xs.max(), ys.min(), ys.max()
    return float(left), float(top), float(right - left + 1), float(bottom - top + 1)


def localization_error(source_mask, target_mask, flow) -> float:
    """LOC-ERR of one pair (reference ``localization_error`` + ``obj_ptr``).

    ``flow``: ``H_t x W_t x 2`` target -> source flow in pixels (:func:`dense_flow`, unknown =
    1e10). For every target pixel at 1-based ``(x1, y1)``: ``x2 = x1 + u``, ``y2 = y1 + v``; the
    pixel counts iff ``1 <= x2 <= W_s`` and ``1 <= y2 <= H_s`` (unknown flow never does). Its
    source pixel is ``(floor(x2), floor(y2))`` (1-based; the reference's ``astype(int)``, i.e.
    truncation, on positive values). Relative coordinates in each image (``obj_ptr``)::

        x' = (x - left) / (right - left + 1),  y' = (y - top) / (bottom - top + 1)

    with ``x, y`` 1-based pixel coordinates and ``left, right, top, bottom`` the 0-based
    column/row indices of the mask's extreme foreground pixels (the reference mixes the two
    bases; kept, as it changes the value by ``|1/w_t - 1/w_s|``-size terms). LOC-ERR = mean over
    the counted pixels (foreground AND background) of ``|x1' - x2'| + |y1' - y2'|``.

    Returns NaN when a mask is empty (the reference would crash) or no pixel counts (the
    reference's ``np.mean([])``). Ambiguity: truncation of a position that should be an exact
    integer depends on round-off (float32 in the reference); here a position within
    :data:`LOC_ERR_SNAP` (1e-4 px) below an integer is snapped up to it, so an exact transform
    (even stored as float32) gives an exact answer.
    """
    src = _as_bool_mask(source_mask, "source_mask")
    tgt = _as_bool_mask(target_mask, "target_mask")
    f = np.asarray(flow, dtype=np.float64)
    ht, wt = tgt.shape
    hs, ws = src.shape
    if f.shape != (ht, wt, 2):
        raise ValueError(f"flow must be {ht} x {wt} x 2 (the target grid), got {f.shape}")
    if not src.any() or not tgt.any():
        return float("nan")
    y1, x1 = np.meshgrid(np.arange(1, ht + 1, dtype=np.float64), np.arange(1, wt + 1, dtype=np.float64), indexing="ij")
    x2 = x1 + f[..., 0]
    y2 = y1 + f[..., 1]
    with np.errstate(invalid="ignore"):
        ok = (x2 >= 1) & (x2 <= ws) & (y2 >= 1) & (y2 <= hs)
    if not ok.any():
        return float("nan")
    c2 = np.minimum(np.floor(x2[ok] + LOC_ERR_SNAP), ws)  # 1-based source column
    r2 = np.minimum(np.floor(y2[ok] + LOC_ERR_SNAP), hs)
    c1, r1 = x1[ok], y1[ok]
    lt, tt, wt_fg, ht_fg = _bbox(tgt)
    ls, ts, ws_fg, hs_fg = _bbox(src)
    err = np.abs((c1 - lt) / wt_fg - (c2 - ls) / ws_fg) + np.abs((r1 - tt) / ht_fg - (r2 - ts) / hs_fg)
    return float(err.mean())


def caltech_pair_metrics(source_mask, target_mask, kind: str, theta_aff=None, theta_tps=None, *, tps_reg_factor: float = 0.0) -> dict:
    """LT-ACC, IoU and LOC-ERR of one Caltech-101 pair (reference ``area_metrics``).

    ``source_mask`` (``H_s x W_s``) and ``target_mask`` (``H_t x W_t``): bool (or 0/1) masks at
    the ORIGINAL image sizes (:func:`polygon_mask`). ``kind``: identity / affine / tps /
    affine_tps with ``theta_aff`` (6 numbers) / ``theta_tps`` (18; for affine_tps the stage-2
    TPS), θ mapping target -> source.

    * The source mask (as float) is sampled bilinearly, zeros outside, ``align_corners=True``,
      at the source positions of the ``H_t x W_t`` target pixels; ``warped = value > 0.5``.
    * ``LT-ACC`` = mean over ALL target pixels of ``warped == target`` (reference
      ``label_transfer_accuracy``).
    * ``IoU`` = ``|warped & target| / |warped | target|`` (reference ``intersection_over_union``
      with a single part: weight 1). NaN if both are empty.
    * ``LOC-ERR``: :func:`localization_error` on the flow of :func:`dense_flow`.

    Returns ``{"LT-ACC", "IoU", "LOC-ERR"}`` as floats plus ``"loc_pixels"`` (pixels in LOC-ERR).
    """
    src = _as_bool_mask(source_mask, "source_mask")
    tgt = _as_bool_mask(target_mask, "target_mask")
    ht, wt = tgt.shape
    grid = _grid(kind, theta_aff, theta_tps, ht, wt, tps_reg_factor)
    src_t = torch.from_numpy(src.astype(np.float64))[None, None]
    warped = (warp_image(src_t, grid, mode="bilinear", padding_mode="zeros")[0, 0] > 0.5).numpy()
    union = int((warped | tgt).sum())
    inter = int((warped & tgt).sum())
    flow = _flow_from_grid(grid, src.shape)
    inside = (flow[..., 0] < UNKNOWN_FLOW_THRESHOLD)
    return {
        "LT-ACC": float((warped == tgt).mean()),
        "IoU": inter / union if union else float("nan"),
        "LOC-ERR": localization_error(src, tgt, flow),
        "loc_pixels": int(inside.sum()) if src.any() and tgt.any() else 0,
    }


CALTECH_MEASURES = ("LT-ACC", "IoU", "LOC-ERR")


def _caltech_category(dataset, record) -> str:
    ci = (record.extra or {}).get("class_index")
    try:
        names = dataset.categories
    except Exception:  # noqa: BLE001 - categories need the image folder; fall back to the index
        names = []
    if ci is not None and 1 <= int(ci) <= len(names):
        return names[int(ci) - 1]
    return str(record.category)


def caltech_metrics(predictions: dict, dataset, kinds=None, *, tps_reg_factor: float = 0.0, progress: bool = False) -> dict:
    """Caltech-101 LT-ACC / IoU / LOC-ERR of a prediction cache, overall and per category.

    ``predictions``: a cache from :func:`weakalign.evaluation.predict.predict_pairs` on
    ``dataset`` (same pair order; checked through ``source_path`` / ``target_path`` when
    present), providing ``theta_aff`` (B x 6), ``theta_tps`` (B x 18), ``kinds`` and the original
    image sizes ``source_size`` / ``target_size`` (B x 2, (h, w); read from the image files when
    absent). ``dataset``: a :class:`weakalign.data.datasets.CaltechDataset` (its ``records`` hold
    the CSV polygons: ``source_points`` / ``target_points``, 2 x K, x row then y row).
    ``kinds``: transform kinds to score (default: ``predictions["kinds"]``).

    Per pair: :func:`caltech_pair_metrics` on masks from :func:`polygon_mask` (reference
    rasterisation, CSV values as 0-based pixel indices). Aggregation: mean over pairs, NaN pairs
    excluded (the reference's ``compute_metric`` filter), and the same per category (category
    names from ``dataset.categories`` when the image folder is there, else the CSV index).
    Protocol text: :data:`CALTECH_PROTOCOL`.

    Returns ``{"benchmark", "protocol", "pairs", "kinds": {kind: {"LT-ACC", "IoU", "LOC-ERR",
    "valid_pairs": {measure: n}, "per_category": {name: {"pairs", measures...}},
    "per_pair": {measure: [value or None]}}}}`` (NaN reported as None).
    """
    from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

    records = list(dataset.records)
    _check_pairing(predictions, records)
    ks = _kinds(predictions, kinds)
    per_pair = {k: {m: [] for m in CALTECH_MEASURES} for k in ks}
    cats = []
    for i, r in enumerate(tqdm(records, desc="caltech-101 masks", disable=not progress, leave=False)):
        s_size = _sizes(predictions, "source_size", i) or _image_size(dataset, r.source)
        t_size = _sizes(predictions, "target_size", i) or _image_size(dataset, r.target)
        src = polygon_mask(r.source_points[0], r.source_points[1], *s_size)
        tgt = polygon_mask(r.target_points[0], r.target_points[1], *t_size)
        cats.append(_caltech_category(dataset, r))
        for k in ks:
            ta, tt = _thetas(predictions, k, i)
            res = caltech_pair_metrics(src, tgt, k, ta, tt, tps_reg_factor=tps_reg_factor)
            for m in CALTECH_MEASURES:
                per_pair[k][m].append(res[m])
    by_cat = defaultdict(list)
    for i, c in enumerate(cats):
        by_cat[c].append(i)
    out = {"benchmark": getattr(dataset, "name", "caltech-101"), "protocol": CALTECH_PROTOCOL,
           "pairs": len(records), "kinds": {}}
    for k in ks:
        entry, valid = {}, {}
        for m in CALTECH_MEASURES:
            entry[m], valid[m] = _nanmean(per_pair[k][m])
        per_category = {}
        for c, idx in sorted(by_cat.items()):
            per_category[c] = {"pairs": len(idx)}
            for m in CALTECH_MEASURES:
                per_category[c][m] = _nan_to_none(_nanmean([per_pair[k][m][j] for j in idx])[0])
        out["kinds"][k] = {
            **{m: _nan_to_none(entry[m]) for m in CALTECH_MEASURES},
            "valid_pairs": valid,
            "per_category": per_category,
            "per_pair": {m: [_nan_to_none(v) for v in per_pair[k][m]] for m in CALTECH_MEASURES},
        }
    return out


# ------------------------------------------------------------------------------------------
# TSS


def flow_pck(flow, gt_flow, reference_size: float, alpha: float = TSS_ALPHA, mask=None) -> dict:
    """Flow PCK of one pair as the TSS kit's ``compute_scores.m`` computes it.

    ``flow``, ``gt_flow``: ``H x W x 2`` (u, v) on the same (target) grid. ``reference_size``:
    ``L`` in pixels; threshold ``alpha * L`` (TSS: ``max(h, w)`` of the image the flow points
    into, i.e. the source; :func:`tss_pair_pck`).

    * Evaluated pixels: ground truth known, ``u_gt < 1e9`` (the kit's ``fvalidGT``) and, beyond
      the kit, ``v_gt < 1e9`` and both finite (NaN/inf never counted); optionally also inside
      ``mask`` (H x W bool; the kit uses no mask beyond the known ground truth, which in TSS is
      the object's foreground).
    * Correct: ``||flow - flow_gt||_2 <= alpha * L`` (kit: ``1 - #(error > thr) / #valid``). An
      unknown (1e10) or non-finite estimated flow is an error, never excluded (the kit would
      count a NaN estimate as correct; this never arises from a finite θ).

    Returns ``{"pck", "n_valid", "n_correct", "threshold"}``; ``pck`` is NaN if nothing is valid.
    """
    f = np.asarray(flow, dtype=np.float64)
    g = np.asarray(gt_flow, dtype=np.float64)
    if f.ndim != 3 or f.shape[2] != 2 or f.shape != g.shape:
        raise ValueError(f"flow and gt_flow must both be H x W x 2 of the same size, got {f.shape} and {g.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(g).all(axis=2) & (g[..., 0] < UNKNOWN_FLOW_THRESHOLD) & (g[..., 1] < UNKNOWN_FLOW_THRESHOLD)
    if mask is not None:
        m = _as_bool_mask(mask, "mask")
        if m.shape != f.shape[:2]:
            raise ValueError(f"mask must be {f.shape[:2]}, got {m.shape}")
        valid &= m
    thr = float(alpha) * float(reference_size)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.sqrt(((f - g) ** 2).sum(axis=2))
        correct = valid & np.isfinite(err) & (err <= thr)
    n_valid, n_correct = int(valid.sum()), int(correct.sum())
    return {"pck": n_correct / n_valid if n_valid else float("nan"), "n_valid": n_valid,
            "n_correct": n_correct, "threshold": thr}


def tss_pair_pck(gt_flow, kind: str, theta_aff=None, theta_tps=None, *, source_size, target_size=None,
                 alpha: float = TSS_ALPHA, mask=None, tps_reg_factor: float = 0.0) -> dict:
    """TSS flow PCK of one pair from an estimated transform.

    ``gt_flow``: the ground-truth ``.flo`` (``H_t x W_t x 2``, target -> source, on the target's
    grid at its original size; ``weakalign.data.csvio.read_flo``). ``source_size``: (h, w) of the
    source image (as fed to the network; flipping keeps the size). ``target_size``: optional
    check that the ground truth is on the target's grid (the reference computes its flow at the
    target's size; a mismatch means a direction mix-up, so it raises).

    The estimated flow is :func:`dense_flow` on the ground truth's grid; the score is
    :func:`flow_pck` with ``L = max(h_src, w_src)`` (the kit: ``T/100 * max(size(flow of the
    other image))`` with T = 5 for alpha = 0.05). Returns :func:`flow_pck`'s dict.
    """
    g = np.asarray(gt_flow, dtype=np.float64)
    if g.ndim != 3 or g.shape[2] != 2:
        raise ValueError(f"gt_flow must be H x W x 2, got shape {g.shape}")
    if target_size is not None and tuple(int(s) for s in target_size) != g.shape[:2]:
        raise ValueError(f"ground-truth flow is {g.shape[0]} x {g.shape[1]}, the target image "
                         f"{int(target_size[0])} x {int(target_size[1])}: the flow file must be on the target's grid")
    flow = dense_flow(kind, g.shape[:2], source_size, theta_aff, theta_tps, tps_reg_factor=tps_reg_factor)
    return flow_pck(flow, g, max(int(source_size[0]), int(source_size[1])), alpha, mask)


_SUBSET_NAMES = {"fg3dcar": "FG3D", "fg3d": "FG3D", "jods": "JODS", "pascal": "PASC", "pasc": "PASC"}


def tss_subset(record) -> str:
    """FG3D / JODS / PASC of a TSS pair: from the image path's folder names (``FG3DCar``,
    ``JODS``, ``PASCAL``), else from the CSV category index 1 / 2 / 3 (assumed to be in that
    order, the paper's column order; not verified on the real file)."""
    for part in str(record.source).replace("\\", "/").split("/"):
        name = _SUBSET_NAMES.get(part.lower())
        if name:
            return name
    ci = (record.extra or {}).get("class_index")
    if ci in (1, 2, 3):
        return TSS_SUBSETS[ci - 1]
    return str(record.category)


def _read_mask_png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0


def tss_metrics(predictions: dict, dataset, kinds=None, *, alpha: float = TSS_ALPHA, use_mask_png: bool = False,
                tps_reg_factor: float = 0.0, progress: bool = False) -> dict:
    """TSS flow PCK of a prediction cache, per subset (FG3D, JODS, PASC) and averaged.

    ``predictions``: a cache from ``predict_pairs`` on ``dataset`` (same pair order, checked
    through ``source_path`` / ``target_path`` when present) with ``theta_aff`` / ``theta_tps`` /
    ``kinds`` and the original ``source_size`` / ``target_size`` (read from the files when
    absent). ``dataset``: a :class:`weakalign.data.datasets.TSSDataset`; the ground truth of a
    pair is ``flow{direction}.flo`` in the source image's folder (``record.extra["flow_path"]``),
    read with ``csvio.read_flo``. The CSV flip flag only flips the source image fed to the
    network (dataset side); the flow is scored as is, as the reference writes it for the kit
    (this presumes the ground truth of a flipped pair refers to the flipped source, which is
    not verified here: if it referred to the unflipped one, x_src would need ``W + 1 - x``).

    Per pair: :func:`tss_pair_pck` (threshold ``alpha * max(h_src, w_src)``, pixels with known
    ground truth). ``use_mask_png=True`` additionally restricts to the kit's ``mask{direction}.png``
    next to the flow (not part of the kit's flow score; off by default). Aggregation: per subset
    the mean over its pairs (NaN pairs excluded and counted); ``average`` = mean of the subset
    means (the paper's Avg.); ``mean_over_pairs`` and ``mean_without_flip`` (the kit's
    "w/o flip" row) over all pairs. Protocol text: :data:`TSS_PROTOCOL`.

    Returns ``{"benchmark", "protocol", "alpha", "pairs", "kinds": {kind: {"per_subset":
    {name: {"pairs", "valid_pairs", "pck"}}, "average", "mean_over_pairs", "mean_without_flip",
    "valid_pairs", "per_pair": [pck or None]}}}`` (NaN reported as None).
    """
    from tqdm import tqdm  # plain text bars: tqdm.auto warns in notebooks without ipywidgets

    from ..data.csvio import read_flo

    records = list(dataset.records)
    _check_pairing(predictions, records)
    ks = _kinds(predictions, kinds)
    per_pair = {k: [] for k in ks}
    subsets, flips = [], []
    for i, r in enumerate(tqdm(records, desc="tss flows", disable=not progress, leave=False)):
        flow_path = _resolve_path(dataset, r.extra["flow_path"])
        gt = read_flo(flow_path)
        s_size = _sizes(predictions, "source_size", i) or _image_size(dataset, r.source)
        t_size = _sizes(predictions, "target_size", i) or _image_size(dataset, r.target)
        mask = None
        if use_mask_png:
            mask = _read_mask_png(flow_path.parent / f"mask{r.extra['flow_direction']}.png")
        subsets.append(tss_subset(r))
        flips.append(int(r.flip))
        for k in ks:
            ta, tt = _thetas(predictions, k, i)
            res = tss_pair_pck(gt, k, ta, tt, source_size=s_size, target_size=t_size, alpha=alpha,
                               mask=mask, tps_reg_factor=tps_reg_factor)
            per_pair[k].append(res["pck"])
    out = {"benchmark": getattr(dataset, "name", "tss"), "protocol": TSS_PROTOCOL, "alpha": alpha,
           "pairs": len(records), "kinds": {}}
    names = [s for s in TSS_SUBSETS if s in subsets] + sorted(set(subsets) - set(TSS_SUBSETS))
    for k in ks:
        vals = per_pair[k]
        per_subset = {}
        for s in names:
            idx = [i for i, x in enumerate(subsets) if x == s]
            m, n = _nanmean([vals[i] for i in idx])
            per_subset[s] = {"pairs": len(idx), "valid_pairs": n, "pck": _nan_to_none(m)}
        subset_means = [per_subset[s]["pck"] for s in names if per_subset[s]["pck"] is not None]
        overall, n_valid = _nanmean(vals)
        no_flip = _nanmean([v for v, f in zip(vals, flips) if not f])[0]
        out["kinds"][k] = {
            "per_subset": per_subset,
            "average": _nan_to_none(float(np.mean(subset_means))) if subset_means else None,
            "mean_over_pairs": _nan_to_none(overall),
            "mean_without_flip": _nan_to_none(no_flip),
            "valid_pairs": n_valid,
            "per_pair": [_nan_to_none(v) for v in vals],
        }
    return out


def _caltech_row(result: dict, measures) -> tuple[dict, dict]:
    vals = {m: result[m] for m in measures}
    return vals, {**vals, "valid_pairs": result["valid_pairs"], "per_category": result["per_category"]}


def _tss_row(result: dict, measures) -> tuple[dict, dict]:
    vals = {s_: result["per_subset"].get(s_, {}).get("pck") for s_ in measures if s_ != "average"}
    vals["average"] = result["average"]
    return vals, {**vals, "mean_over_pairs": result["mean_over_pairs"], "mean_without_flip": result["mean_without_flip"],
                  "valid_pairs": result["valid_pairs"]}


#: Dense scorers named by :class:`weakalign.data.registry.BenchmarkSpec` ``scorer``:
#: ``(metrics function, protocol text, row(result of one kind, measures) -> (table values, stored entry))``.
SCORERS = {
    "caltech": (caltech_metrics, CALTECH_PROTOCOL, _caltech_row),
    "tss": (tss_metrics, TSS_PROTOCOL, _tss_row),
}
