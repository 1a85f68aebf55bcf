"""The parity items: the same inputs through the original code (in a subprocess, see
:mod:`weakalign.parity.driver`) and through this project; one :class:`Item` per comparison.

Tolerances (issue 13): 1e-5 for grids, point transforms, losses, soft-inlier counts and NCNet's
correlation; 1e-4 for theta and for NCNet's transferred keypoints (normalised coordinates);
per-pair PCK must be identical (tolerance 0: the number of pairs whose PCK differs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkout import Checkout

DRIVER = Path(__file__).with_name("driver.py")
#: every alpha of the committed reports: the PCK-vs-alpha curves plus the tables' 0.05/0.1/0.15
REPORT_ALPHAS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12, 0.14, 0.15, 0.16, 0.18, 0.2)
TOL_GRID, TOL_THETA = 1e-5, 1e-4


class DriverError(RuntimeError):
    """The original code failed in the subprocess (its stderr tail is in the message)."""


@dataclass
class Item:
    group: str
    name: str
    max_diff: float
    tolerance: float
    detail: str = ""
    gate: bool = True  # False: shown for information, does not decide the exit status
    passed: bool = field(init=False)

    def __post_init__(self):
        self.max_diff = float(self.max_diff)
        self.passed = bool(self.max_diff <= self.tolerance)  # NaN fails

    def to_dict(self) -> dict:
        return asdict(self)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a - b).abs().max()) if a.numel() else 0.0


def pck_item(group: str, name: str, ours, theirs, detail: str = "") -> Item:
    """Per-pair PCK: max_diff = number of pairs whose value differs (tolerance 0)."""
    ours, theirs = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
    # PCK values are k/n (n <= 20 keypoints): equal means within float32 round-off
    n_diff = int(((ours - theirs).abs() > 1e-6).sum())
    mean = f"mean {float(ours.mean()):.4f} (ours) vs {float(theirs.mean()):.4f} (original), {len(ours)} pairs"
    return Item(group, name, n_diff, 0, f"{mean}; {detail}".strip("; "))


def run_driver(checkout: Checkout, task: str, inputs: dict, workdir: Path, threads: int = 2, timeout: float = 3600) -> dict:
    """Run ``task`` of the driver against ``checkout`` in a fresh interpreter; returns its outputs."""
    workdir.mkdir(parents=True, exist_ok=True)
    inp, out = workdir / f"{task}.in.pt", workdir / f"{task}.out.pt"
    torch.save({**inputs, "threads": threads}, inp)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, str(DRIVER), str(checkout.path), task, str(inp), str(out)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
        raise DriverError(f"the original code ({checkout.path}) failed in task {task!r}: {tail}")
    return torch.load(out, weights_only=False)


# -- geometry, losses, soft-inlier counts -------------------------------------------------------

def _thetas(batch: int, seed: int, scale: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    from ..geometry import affine_identity, tps_identity

    g = torch.Generator().manual_seed(seed)
    ta = affine_identity(batch) + scale * torch.randn(batch, 6, generator=g)
    tt = tps_identity(batch) + scale * torch.randn(batch, 18, generator=g)
    return ta, tt


def geometry_items(ref: Checkout, workdir: Path, seed: int = 0) -> list[Item]:
    from ..geometry import affine_grid, tps_grid, transform_points
    from ..losses import TransformedGridLoss

    ta, tt = _thetas(4, seed)
    ta_gt, tt_gt = _thetas(4, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    pts = 2.4 * torch.rand(4, 2, 50, generator=g) - 1.2
    h, w = 240, 200
    theirs = run_driver(ref, "geometry", {"theta_aff": ta, "theta_tps": tt, "theta_aff_gt": ta_gt, "theta_tps_gt": tt_gt,
                                          "points": pts, "out_size": (h, w)}, workdir)
    ours = {
        "affine_grid": affine_grid(ta, h, w), "tps_grid": tps_grid(tt, h, w),
        "affine_points": transform_points("affine", pts, ta), "tps_points": transform_points("tps", pts, theta_tps=tt),
        "affine_tps_points": transform_points("affine_tps", pts, ta, tt),
        "grid_loss_affine": TransformedGridLoss("affine")(ta, ta_gt), "grid_loss_tps": TransformedGridLoss("tps")(tt, tt_gt),
    }
    detail = {"affine_grid": f"4 x {h} x {w}", "tps_grid": f"4 x {h} x {w}"}
    return [Item("geometry", k, max_abs_diff(v, theirs[k]), TOL_GRID, detail.get(k, "4 x 50 points" if "points" in k else "20 x 20 grid"))
            for k, v in ours.items()]


def inlier_items(ref: Checkout, workdir: Path, seed: int = 0) -> list[Item]:
    from ..losses import SoftInlierCount

    ta, tt = _thetas(6, seed + 3, scale=0.15)
    g = torch.Generator().manual_seed(seed + 4)
    corr = torch.relu(torch.randn(6, 225, 15, 15, generator=g))
    corr = corr / corr.norm(dim=1, keepdim=True).clamp_min(1e-6)  # like FeatureCorrelation's ReLU + L2 norm
    theirs = run_driver(ref, "inlier", {"corr": corr, "theta_aff": ta, "theta_tps": tt, "tps_reg_factor": 0.2}, workdir)
    items = []
    for d, (tol, shape) in {0: (0, "square"), 1: (1, "cross"), 2: (1, "square")}.items():
        count = SoftInlierCount(tolerance=tol, shape=shape, tps_reg_factor=0.2, composition="reference")
        items.append(Item("soft-inlier", f"affine, dilation filter {d}", max_abs_diff(count(corr, "affine", ta), theirs[f"affine_{d}"]), TOL_GRID,
                          f"6 random correlations; tolerance={tol} {shape}"))
        items.append(Item("soft-inlier", f"two-stage (affine+TPS), dilation filter {d}",
                          max_abs_diff(count(corr, "affine_tps", ta, tt), theirs[f"two_stage_{d}"]), TOL_GRID,
                          f"vs TwoStageWeakInlierCount; composition='reference'; tps_reg_factor 0.2; tolerance={tol} {shape}"))
        analytic = SoftInlierCount(tolerance=tol, shape=shape, tps_reg_factor=0.2, composition="analytic")
        scale = float(theirs[f"two_stage_{d}"].abs().max())
        items.append(Item("soft-inlier", f"two-stage, dilation filter {d}, composition='analytic' (the optional closed form)",
                          max_abs_diff(analytic(corr, "affine_tps", ta, tt), theirs[f"two_stage_{d}"]), TOL_GRID,
                          f"INFORMATION: differs at the border (see weakalign/losses/inlier.py); max |score| {scale:.3g}", gate=False))
    return items


# -- models on PF-WILLOW: theta, per-pair PCK, speed -------------------------------------------

def _ours_on_pairs(ckpt: Path, root: Path, csv: Path, threads: int) -> dict:
    from ..data.datasets import PFWillowDataset
    from ..evaluation.predict import predict_pairs
    from ..models.checkpoints import load_checkpoint

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(ckpt)
    ds = PFWillowDataset(root=root, csv=csv)
    return predict_pairs(model, ds, progress=False)


def _pck_per_pair(pred: dict, kind: str, alpha: float = 0.1) -> list[float]:
    from ..evaluation.metrics import pck_table
    from ..evaluation.pck import PCKProtocol

    return pck_table(pred, PCKProtocol("bbox", (alpha,), "per_pair"), kind)["result"].per_pair[alpha]


def model_items(ref: Checkout, workdir: Path, pf_root: Path, pf_csv: Path, backbone: str, seed: int, threads: int,
                speed_repeats: int = 0) -> tuple[list[Item], dict]:
    """theta of both stages and per-pair PCK@0.1 (original ``eval.py`` vs this project's fast
    path) for a random two-stage model; with ``speed_repeats`` > 0 the two are timed that many
    more times, alternately."""
    from .weights import write_cnngeometric_checkpoint

    ckpt = write_cnngeometric_checkpoint(workdir / f"random_{backbone}_seed{seed}.pth.tar", backbone, seed)
    cnn = {"resnet101": "resnet101", "vgg16": "vgg"}[backbone]
    spec = {"checkpoint": str(ckpt), "cnn": cnn, "dataset_path": str(pf_csv.parent) + "/"}
    theirs = run_driver(ref, "eval_pf", spec, workdir / backbone, threads)
    ours = _ours_on_pairs(ckpt, pf_root, pf_csv, threads)
    n = len(ours["source_path"])
    spread = float((theirs["theta_aff"] - theirs["theta_aff"].mean(0)).abs().max())
    items = [
        Item(f"{backbone} two-stage", "theta stage 1 (affine)", max_abs_diff(ours["theta_aff"], theirs["theta_aff"]), TOL_THETA,
             f"{n} PF-WILLOW pairs; spread of theta over the pairs {spread:.2g}"),
        Item(f"{backbone} two-stage", "theta stage 2 (TPS)", max_abs_diff(ours["theta_tps"], theirs["theta_aff_tps"]), TOL_THETA, f"{n} PF-WILLOW pairs"),
        pck_item(f"{backbone} two-stage", "per-pair PCK@0.1 affine (eval.py)", _pck_per_pair(ours, "affine"), theirs["pck_aff"]),
        pck_item(f"{backbone} two-stage", "per-pair PCK@0.1 affine+TPS (eval.py)", _pck_per_pair(ours, "affine_tps"), theirs["pck_aff_tps"]),
    ]
    timing = {"original": [theirs["seconds"]], "ours": [ours["seconds"]], "pairs": n}
    for _ in range(speed_repeats):
        timing["original"].append(run_driver(ref, "eval_pf", {**spec, "record_theta": False}, workdir / backbone, threads)["seconds"])
        timing["ours"].append(_ours_on_pairs(ckpt, pf_root, pf_csv, threads)["seconds"])
    return items, timing


# -- PF-PASCAL-format fixture ---------------------------------------------------------------------

def _pascal_predictions(csv: Path, root: Path) -> tuple[object, dict]:
    from ..data.datasets import PFPascalDataset
    from ..evaluation.predict import predict_pairs

    ds = PFPascalDataset(root=root, csv=csv)
    return ds, predict_pairs(None, ds, progress=False)  # sizes, points, transfer frame


def pf_pascal_items(ref: Checkout, workdir: Path, csv: Path, seed: int = 0) -> list[Item]:
    """Per-pair PCK at every report alpha of seeded per-pair affine thetas, through the
    original's ``PFPascalDataset(pck_procedure='scnet')`` + ``pck_metric``."""
    from ..evaluation.metrics import pck_table
    from ..evaluation.pck import PCKProtocol, normalized_errors, valid_keypoints
    from ..evaluation.transfer import transfer_keypoints

    ds, pred = _pascal_predictions(csv, csv.parent.parent)
    n = len(ds)
    ta, _ = _thetas(n, seed + 5, scale=0.03)
    theirs = run_driver(ref, "pf_pascal", {"csv": str(csv), "dataset_path": str(csv.parent) + "/", "theta_aff": ta,
                                           "alphas": list(REPORT_ALPHAS)}, workdir / "pf-pascal")
    pred["theta_aff"] = ta
    pred["transferred"]["affine"] = transfer_keypoints("affine", pred["target_points"], pred["target_size"], pred["source_size"],
                                                       ta, None, frame=tuple(pred["transfer_frame"]))
    res = pck_table(pred, PCKProtocol("image_224", REPORT_ALPHAS, "per_pair"), "affine")["result"]
    items = [pck_item("PF-PASCAL format (299 pairs)", f"per-pair PCK@{a:g}, affine", res.per_pair[a], theirs["pck"][a],
                      "image_224 protocol vs PFPascalDataset(pck_procedure='scnet') + pck_metric") for a in REPORT_ALPHAS]
    src = pred["source_points"]
    err = normalized_errors(src, pred["transferred"]["affine"], valid_keypoints(src, pred["target_points"]),
                            PCKProtocol("image_224", (0.1,), "per_pair"), source_size=pred["source_size"])
    items.append(Item("PF-PASCAL format (299 pairs)", "per-pair mean keypoint error / 224", max_abs_diff(err.nanmean(1), theirs["dist"]),
                      TOL_GRID, "vs point_dist_metric (errors measured in the 224 x 224 frame)"))
    return items


def ncnet_pascal_item(ref: Checkout, workdir: Path, csv: Path, seed: int = 0) -> Item:
    from ..evaluation.metrics import pck_table
    from ..evaluation.pck import PCKProtocol
    from ..ncnet import transfer_keypoints_ncnet

    ds, pred = _pascal_predictions(csv, csv.parent.parent)
    g = torch.Generator().manual_seed(seed + 6)
    corr = torch.rand(len(ds), 1, 8, 8, 8, 8, generator=g)
    theirs = run_driver(ref, "ncnet", {"csv": str(csv), "dataset_path": str(csv.parent) + "/", "pascal_corr": corr}, workdir / "ncnet-pascal")
    pred["kinds"] = ["ncnet"]
    pred["transferred"]["ncnet"] = transfer_keypoints_ncnet(corr, pred["target_points"], pred["target_size"], pred["source_size"],
                                                            frame=tuple(pred["transfer_frame"]))
    ours = pck_table(pred, PCKProtocol("image_224", (0.1,), "per_pair"), "ncnet")["result"].per_pair[0.1]
    return pck_item("NCNet", "PF-PASCAL format: per-pair PCK@0.1 (eval_pf_pascal.py's way)", ours, theirs["pascal_pck"],
                    "random 8^4 correlations per pair")


def ncnet_items(ref: Checkout, workdir: Path, pf_root: Path, pf_csv: Path, seed: int, n_pairs: int = 4) -> list[Item]:
    """NCNet's filtered correlation and transferred keypoints on PF-WILLOW pairs (240 x 240)."""
    from ..data.datasets import PFWillowDataset
    from ..data.images import load_image, to_tensor
    from ..geometry import pixel_to_normalized
    from ..ncnet import load_ncnet_checkpoint, transfer_points
    from .weights import write_ncnet_checkpoint

    ckpt = write_ncnet_checkpoint(workdir / f"random_ncnet_seed{seed}.pth.tar", seed)
    model, _ = load_ncnet_checkpoint(ckpt)
    ds = PFWillowDataset(root=pf_root, csv=pf_csv)
    recs = ds.records[:n_pairs]
    src, tgt, pts = [], [], []
    for r in recs:
        a, b = load_image(ds.image_root / r.source), load_image(ds.image_root / r.target)
        src.append(to_tensor(a, (240, 240)))
        tgt.append(to_tensor(b, (240, 240)))
        pts.append(pixel_to_normalized(torch.as_tensor(r.target_points, dtype=torch.float32)[None], b.shape[:2])[0])
    src, tgt, pts = torch.stack(src), torch.stack(tgt), torch.stack(pts)
    theirs = run_driver(ref, "ncnet", {"checkpoint": str(ckpt), "source": src * 255, "target": tgt * 255, "points": pts}, workdir / "ncnet")
    with torch.no_grad():
        corr = model(src, tgt)
        warped = transfer_points(corr, pts)
    scale = float(theirs["corr"].abs().max())
    return [Item("NCNet", "consensus output (filtered 4D correlation)", max_abs_diff(corr, theirs["corr"]), TOL_GRID,
                 f"{len(recs)} PF-WILLOW pairs at 240x240, 15^4 cells; max |corr| {scale:.3g}"),
            Item("NCNet", "transferred keypoints (normalised)", max_abs_diff(warped, theirs["warped_points"]), TOL_THETA,
                 "corr_to_matches(do_softmax=True) + bilinearInterpPointTnf")]


def speed_summary(timing: dict) -> dict:
    orig, ours = sorted(timing["original"]), sorted(timing["ours"])
    med = lambda xs: xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])  # noqa: E731
    n = timing["pairs"]
    return {"pairs": n, "runs": len(orig), "original_seconds": timing["original"], "ours_seconds": timing["ours"],
            "original_median_s": med(orig), "ours_median_s": med(ours),
            "original_pairs_per_s": n / med(orig), "ours_pairs_per_s": n / med(ours), "ratio": med(orig) / med(ours)}


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="weakalign-parity-"))


def now() -> float:
    return time.perf_counter()
