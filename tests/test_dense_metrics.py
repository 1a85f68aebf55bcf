"""Dense metrics (weakalign.evaluation.dense): Caltech-101 LT-ACC / IoU / LOC-ERR and TSS flow
PCK, against hand-computed oracles on tiny synthetic masks and flows (no real dataset)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from weakalign.data.csvio import read_flo
from weakalign.evaluation.dense import (
    UNKNOWN_FLOW,
    caltech_metrics,
    caltech_pair_metrics,
    dense_flow,
    flow_pck,
    localization_error,
    polygon_mask,
    tss_metrics,
    tss_pair_pck,
    write_flo,
)
from weakalign.geometry import tps_identity

IDENTITY_AFF = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def rect_mask(h, w, rows, cols):
    """Bool mask with rows[0]..rows[1] x cols[0]..cols[1] (0-based, inclusive) set."""
    m = torch.zeros(h, w, dtype=torch.bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def shift_x(d, w):
    """Affine theta (target -> source) moving x by d pixels in an image of width w."""
    return [1.0, 0.0, 2.0 * d / (w - 1), 0.0, 1.0, 0.0]


# ------------------------------------------------------------------------------ polygons


def test_polygon_mask_half_open_rule_and_origin():
    # vertex-aligned rectangle x in [2, 6], y in [1, 4]: centres 2 <= x < 6, 1 <= y < 4
    m = polygon_mask([2, 6, 6, 2], [1, 1, 4, 4], 6, 8)
    assert torch.equal(m, rect_mask(6, 8, (1, 3), (2, 5)))
    # 1-based values: the centre of pixel (r, c) is at (c + 1, r + 1)
    m1 = polygon_mask([2, 6, 6, 2], [1, 1, 4, 4], 6, 8, origin=1)
    assert torch.equal(m1, rect_mask(6, 8, (0, 2), (1, 4)))
    # clipped at the image border; winding order does not matter
    m2 = polygon_mask(np.array([-3.0, -3.0, 2.5, 2.5]), np.array([-2.0, 9.0, 9.0, -2.0]), 5, 6)
    assert torch.equal(m2, rect_mask(5, 6, (0, 4), (0, 2)))
    with pytest.raises(ValueError):
        polygon_mask([1, 2, 3], [1, 2], 4, 4)


def test_polygon_mask_matches_skimage_without_boundary_ties():
    draw = pytest.importorskip("skimage.draw")
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(5, 30, 2))
        n = int(rng.integers(3, 10))
        xs, ys = rng.uniform(-4, w + 4, n), rng.uniform(-4, h + 4, n)  # no centre on an edge
        ref = np.zeros((h, w), dtype=bool)
        rr, cc = draw.polygon(ys, xs, (h, w))
        ref[rr, cc] = True
        assert np.array_equal(polygon_mask(xs, ys, h, w).numpy(), ref)


# ------------------------------------------------------------------------------ Caltech


def test_identity_on_identical_masks_is_perfect():
    h, w = 30, 40
    mask = polygon_mask([8.3, 30.2, 33.7, 20.1, 6.4], [4.2, 5.1, 20.6, 26.3, 18.8], h, w)
    assert 100 < int(mask.sum()) < h * w
    cases = [
        ("identity", None, None),
        ("affine", IDENTITY_AFF, None),
        ("tps", None, tps_identity(1)[0]),
        ("affine_tps", torch.tensor([IDENTITY_AFF]), tps_identity(1)),
    ]
    for kind, ta, tt in cases:
        r = caltech_pair_metrics(mask, mask.clone(), kind, ta, tt)
        assert r["LT-ACC"] == 1.0 and r["IoU"] == 1.0, kind
        assert r["LOC-ERR"] == 0.0, kind
        if kind in ("identity", "affine"):
            # LOC-ERR counts the pixels mapped strictly inside the source (|u|, |v| < 1): an exact
            # identity sends the border rows/columns to +-1, so only the interior counts (with a
            # TPS, round-off decides for the border pixels)
            assert r["loc_pixels"] == (h - 2) * (w - 2), kind


@pytest.mark.parametrize("kind, w, dtype", [("affine", 40, torch.float64), ("affine_tps", 40, torch.float64),
                                             ("affine", 38, torch.float32)])
def test_integer_translation_of_a_rectangle(kind, w, dtype):
    h = 30
    mask = rect_mask(h, w, (5, 14), (10, 19))  # 10 x 10
    # x_src = x_tgt + 3 px: the warped mask is the rectangle moved 3 px left. (In float32 with
    # w = 38 the stored shift is 2.99999987 px: LOC-ERR's truncation needs the snap.)
    ta = torch.tensor(shift_x(3, w), dtype=dtype)
    tt = tps_identity(1)[0] if kind == "affine_tps" else None
    r = caltech_pair_metrics(mask, mask, kind, ta, tt)
    # warped cols 7..16 vs 10..19: intersection 7 x 10 = 70, union 200 - 70 = 130
    assert r["IoU"] == pytest.approx(70 / 130, abs=1e-12)
    # label differs on 2 columns x 30 rows
    assert r["LT-ACC"] == pytest.approx(1 - 60 / (h * w), abs=1e-12)
    # every counted pixel lands 3 columns right in a box of the same width 10: 3/10
    assert r["LOC-ERR"] == pytest.approx(0.3, abs=1e-12)


def test_subpixel_translation_iou_within_one_pixel_column():
    h, w = 30, 40
    mask = rect_mask(h, w, (5, 14), (10, 19))
    r = caltech_pair_metrics(mask, mask, "affine", shift_x(2.5, w))
    # continuous overlap of a 10-wide box shifted by 2.5: 7.5 / 12.5 = 0.6. Bilinear sampling of
    # the binary mask + "> 0.5" puts each warped edge within half a pixel of the true edge (the
    # two edge columns sample exactly 0.5, decided by round-off), so each edge can add or drop
    # one column of 10 pixels: the candidates are 70/120, 70/130, 80/120, 80/130; all lie within
    # one column (10 px) over the smallest union (120) of 0.6.
    assert any(r["IoU"] == pytest.approx(c, abs=1e-12) for c in (70 / 120, 70 / 130, 80 / 120, 80 / 130))
    assert abs(r["IoU"] - 0.6) <= 10 / 120


def test_loc_err_uses_the_reference_relative_coordinates():
    # source box cols 10..19 (0-based; width 10), target box cols 5..24 (width 20), same rows.
    h, w = 12, 30
    src = rect_mask(h, w, (2, 9), (10, 19))
    tgt = rect_mask(h, w, (2, 9), (5, 24))
    r = caltech_pair_metrics(src, tgt, "identity")
    # identity: counted pixels are the interior, 1-based x in 2..29 (every row alike); the
    # reference's obj_ptr gives x' = (x_1based - left_0based) / width
    errs = [abs((x - 5) / 20 - (x - 10) / 10) for x in range(2, w)]
    assert r["LOC-ERR"] == pytest.approx(sum(errs) / len(errs), abs=1e-12)
    # and the flow-level function agrees; an empty mask gives NaN, not a crash
    flow = dense_flow("identity", (h, w), (h, w))
    assert localization_error(src, tgt, flow) == pytest.approx(r["LOC-ERR"], abs=1e-15)
    assert math.isnan(localization_error(torch.zeros(h, w, dtype=torch.bool), tgt, flow))


def test_caltech_metrics_means_and_categories():
    h, w = 30, 40
    square = [[10, 20, 20, 10], [5, 5, 15, 15]]  # half-open: cols 10..19, rows 5..14
    recs = [
        SimpleNamespace(source="cat_a/1.jpg", target="cat_a/2.jpg", category="1", extra={"class_index": 1},
                        source_points=np.array(square, float), target_points=np.array(square, float)),
        SimpleNamespace(source="cat_a/3.jpg", target="cat_a/4.jpg", category="1", extra={"class_index": 1},
                        source_points=np.array(square, float), target_points=np.array(square, float)),
        SimpleNamespace(source="cat_b/1.jpg", target="cat_b/2.jpg", category="2", extra={"class_index": 2},
                        source_points=np.array(square, float), target_points=np.array(square, float)),
    ]
    ds = SimpleNamespace(name="caltech-101", records=recs, categories=["alpha", "beta"])
    theta = torch.tensor([IDENTITY_AFF, shift_x(3, w), IDENTITY_AFF], dtype=torch.float32)
    pred = {"kinds": ["affine"], "theta_aff": theta, "theta_tps": None,
            "source_path": [r.source for r in recs], "target_path": [r.target for r in recs],
            "source_size": torch.tensor([[h, w]] * 3, dtype=torch.float32),
            "target_size": torch.tensor([[h, w]] * 3, dtype=torch.float32)}
    out = caltech_metrics(pred, ds)
    k = out["kinds"]["affine"]
    assert out["pairs"] == 3 and "LT-ACC" in out["protocol"]
    assert k["IoU"] == pytest.approx((1 + 7 / 13 + 1) / 3, abs=1e-6)
    assert k["LT-ACC"] == pytest.approx((1 + 0.95 + 1) / 3, abs=1e-6)
    assert k["LOC-ERR"] == pytest.approx(0.1, abs=1e-6)
    assert k["per_category"]["alpha"]["pairs"] == 2
    assert k["per_category"]["alpha"]["IoU"] == pytest.approx((1 + 7 / 13) / 2, abs=1e-6)
    assert k["per_category"]["beta"]["LOC-ERR"] == 0.0
    assert k["valid_pairs"] == {"LT-ACC": 3, "IoU": 3, "LOC-ERR": 3}
    # predictions in another order are refused
    bad = dict(pred, source_path=list(reversed(pred["source_path"])))
    with pytest.raises(ValueError, match="pair order"):
        caltech_metrics(bad, ds)


# ------------------------------------------------------------------------------ TSS flow PCK

HT, WT = 21, 21  # target (the ground-truth flow's grid)
HS, WS = 31, 41  # source: L = max(31, 41) = 41, threshold 0.05 * 41 = 2.05 px
THETA_TRUE = [0.5, 0.1, 0.05, -0.05, 0.6, -0.1]


def affine_flow_oracle(theta, ht, wt, hs, ws):
    """Ground-truth flow of an affine, written out independently of the library's geometry."""
    a11, a12, tx, a21, a22, ty = theta
    y, x = np.meshgrid(np.arange(1, ht + 1, dtype=float), np.arange(1, wt + 1, dtype=float), indexing="ij")
    ut = (x - 1 - (wt - 1) / 2) * 2 / (wt - 1)
    vt = (y - 1 - (ht - 1) / 2) * 2 / (ht - 1)
    us, vs = a11 * ut + a12 * vt + tx, a21 * ut + a22 * vt + ty
    xs = us * (ws - 1) / 2 + 1 + (ws - 1) / 2
    ys = vs * (hs - 1) / 2 + 1 + (hs - 1) / 2
    return np.stack((xs - x, ys - y), axis=-1)


def test_flow_pck_true_theta_is_one():
    gt = affine_flow_oracle(THETA_TRUE, HT, WT, HS, WS)
    r = tss_pair_pck(gt, "affine", THETA_TRUE, source_size=(HS, WS), target_size=(HT, WT))
    assert r["pck"] == 1.0 and r["n_valid"] == HT * WT
    assert r["threshold"] == pytest.approx(0.05 * 41)
    assert np.abs(dense_flow("affine", (HT, WT), (HS, WS), THETA_TRUE) - gt).max() < 1e-9


def test_flow_pck_scaled_theta_hand_computed_fraction():
    gt = affine_flow_oracle(THETA_TRUE, HT, WT, HS, WS)
    est = list(THETA_TRUE)
    est[0] += 0.2  # x error = 0.2 * u_t * (WS-1)/2 = 0.4 * |x - 11| px (x = 1-based column)
    r = tss_pair_pck(gt, "affine", est, source_size=(HS, WS))
    # correct iff 0.4 |x - 11| <= 2.05 <=> |x - 11| <= 5: 11 of the 21 columns, every row
    assert r["n_valid"] == 441 and r["n_correct"] == 11 * 21
    assert r["pck"] == pytest.approx(11 / 21)
    # threshold relative to the SOURCE size: with L = max(21, 21) it would be 1.05 -> 5 columns
    assert flow_pck(dense_flow("affine", (HT, WT), (HS, WS), est), gt, 21)["n_correct"] == 5 * 21


def test_invalid_nan_and_masked_pixels_are_excluded():
    gt = affine_flow_oracle(THETA_TRUE, HT, WT, HS, WS)
    est = list(THETA_TRUE)
    est[0] += 0.2  # correct columns: 0-based 5..15
    gt[:, 0:5] = UNKNOWN_FLOW           # unknown ground truth (1e10) in columns 0..4
    gt[0, 5:8, 0] = np.nan              # NaN u in 3 pixels of correct columns
    gt[1, 10, 1] = np.nan               # NaN v only (the kit tests u only; excluded here)
    gt[2, 12, 1] = UNKNOWN_FLOW         # unknown v only
    mask = np.ones((HT, WT), dtype=bool)
    mask[18:] = False                   # rows 18..20 outside the evaluation mask
    r = tss_pair_pck(gt, "affine", est, source_size=(HS, WS), mask=mask)
    # 18 rows x 16 known columns, minus 5 NaN/unknown pixels; all 5 lie in correct columns
    assert r["n_valid"] == 18 * 16 - 5
    assert r["n_correct"] == 18 * 11 - 5
    assert r["pck"] == pytest.approx((18 * 11 - 5) / (18 * 16 - 5))
    # nothing valid -> NaN (excluded from the means), not 0 or 1
    assert math.isnan(flow_pck(gt, np.full_like(gt, UNKNOWN_FLOW), 41)["pck"])


def test_estimates_outside_the_source_count_as_errors():
    # source = target = 21 x 21, x_src = x_tgt + 1.05 (normalised) = + 10.5 px
    theta = [1.0, 0.0, 1.05, 0.0, 1.0, 0.0]
    gt = np.zeros((21, 21, 2))
    gt[..., 0] = 10.5
    flow = dense_flow("affine", (21, 21), (21, 21), theta)
    # known only strictly inside the source: u_src = u_tgt + 1.05 < 1 for u_tgt < -0.05 (the
    # first 10 columns), and v_src = v_tgt in (-1, 1) for rows 1..19 (the reference's strict
    # test sends the first and last rows, v = -1 / +1, to UNKNOWN)
    known = flow[..., 0] < 1e9
    assert known[1:20, :10].all() and known.sum() == 19 * 10
    assert (flow[~known] == UNKNOWN_FLOW).all()
    r = tss_pair_pck(gt, "affine", theta, source_size=(21, 21))
    # every ground-truth pixel is known: the 441 - 190 unknown estimates are errors, not excluded
    assert r["n_valid"] == 441 and r["n_correct"] == 190 and r["pck"] == pytest.approx(190 / 441)
    with pytest.raises(ValueError, match="target's grid"):
        tss_pair_pck(gt, "affine", theta, source_size=(21, 21), target_size=(20, 21))


def test_tss_metrics_subsets_and_flo_round_trip(tmp_path):
    gt = affine_flow_oracle(THETA_TRUE, HT, WT, HS, WS).astype(np.float32)
    folders = ["FG3DCar/s1", "JODS/s2", "PASCAL/s3", "PASCAL/s4"]
    recs = []
    for i, f in enumerate(folders):
        write_flo(tmp_path / f / "flow1.flo", gt)
        recs.append(SimpleNamespace(source=f"{f}/image2.png", target=f"{f}/image1.png", category=str(i % 3 + 1),
                                    flip=int(i == 3), extra={"flow_direction": 1, "flow_path": f"{f}/flow1.flo",
                                                             "class_index": i % 3 + 1}))
    assert np.array_equal(read_flo(tmp_path / folders[0] / "flow1.flo"), gt)
    ds = SimpleNamespace(name="tss", records=recs, root=tmp_path, _resolve=lambda rel: tmp_path / rel)
    est = list(THETA_TRUE)
    est[0] += 0.2
    theta = torch.tensor([THETA_TRUE, THETA_TRUE, THETA_TRUE, est])
    pred = {"kinds": ["affine"], "theta_aff": theta, "theta_tps": None,
            "source_size": torch.tensor([[HS, WS]] * 4, dtype=torch.float32),
            "target_size": torch.tensor([[HT, WT]] * 4, dtype=torch.float32)}
    k = tss_metrics(pred, ds)["kinds"]["affine"]
    assert list(k["per_subset"]) == ["FG3D", "JODS", "PASC"]
    assert k["per_subset"]["FG3D"]["pck"] == pytest.approx(1.0)
    assert k["per_subset"]["PASC"]["pck"] == pytest.approx((1 + 11 / 21) / 2, abs=1e-6)
    assert k["average"] == pytest.approx((1 + 1 + (1 + 11 / 21) / 2) / 3, abs=1e-6)
    assert k["mean_over_pairs"] == pytest.approx((3 + 11 / 21) / 4, abs=1e-6)
    assert k["mean_without_flip"] == pytest.approx(1.0)
    assert k["valid_pairs"] == 4 and len(k["per_pair"]) == 4
