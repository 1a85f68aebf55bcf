"""Pictures: aligned pairs, keypoint transfer and the matches the inlier mask keeps.

Used by ``notebooks/03_qualitative.ipynb`` and by ``weakalign align``.

Layout of :func:`figure`: a top row of four panels (source, target, aligned source, keypoint
transfer) and, below it across the full width, the match panel: source and target side by
side at the same height, the :data:`MATCHES_DRAWN` strongest stage-1 matches drawn as thick
lines, green when the inlier mask of the estimated transformation keeps them and red when it
discards them, with a legend giving both counts.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .data.images import to_tensor  # noqa: E402
from .geometry import sampling_grid, warp_image  # noqa: E402
from .losses.inlier import SoftInlierCount  # noqa: E402


MATCHES_DRAWN = 30
INLIER_COLOUR, OUTLIER_COLOUR = "#00c000", "#e00000"


class NonFiniteTransformError(ValueError):
    """The model's transformation (or the sampling grid it gives) holds NaN or infinity."""


@torch.inference_mode()
def align(model, source: np.ndarray, target: np.ndarray) -> dict:
    """Run a two-stage (or one-stage) model on uint8 RGB arrays of any size.

    Returns the parameters, the source warped into the target frame at the target's full
    resolution, and the stage-1 correlation. Raises :class:`NonFiniteTransformError` if a
    parameter or a sampling grid is not finite (huge but finite weights can overflow there),
    instead of returning a silently black image."""
    size = tuple(model.config.image_size)
    s240, t240 = to_tensor(source, size)[None], to_tensor(target, size)[None]
    kind = model.geometric_model
    if kind == "affine_tps":
        out = model(s240, t240)
        ta, tt, corr = out.theta_aff, out.theta_aff_tps, out.corr_aff
    else:
        theta, corr = model(s240, t240, return_correlation=True)
        ta, tt = (theta, None) if kind == "affine" else (None, theta)
    for name, t in (("affine parameters", ta), ("TPS parameters", tt)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise NonFiniteTransformError(f"the model produced non-finite {name}")
    h, w = target.shape[:2]
    full = to_tensor(source)[None]
    aligned = {}
    for k in (("affine", "affine_tps") if kind == "affine_tps" else (kind,)):
        grid = sampling_grid(k, h, w, ta, tt)
        if not bool(torch.isfinite(grid).all()):
            raise NonFiniteTransformError(f"the model's {k.replace('_', '+')} transformation "
                                          "overflows (non-finite sampling grid)")
        aligned[k] = (warp_image(full, grid)[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    return {"theta_aff": ta, "theta_tps": tt, "corr": corr, "aligned": aligned, "kind": kind}


def match_inliers(result: dict, tolerance: int = 1) -> dict:
    """Best source cell for every target cell (stage-1 correlation) and whether the warped inlier
    mask of the estimated transformation keeps it. Cell centres in normalised image coordinates."""
    corr = result["corr"]
    _, n, h, w = corr.shape
    count = SoftInlierCount(h, w, tolerance=tolerance, normalize=False)
    kind = "affine_tps" if result["kind"] == "affine_tps" else result["kind"]
    mask = count.warped_mask(kind, result["theta_aff"], result["theta_tps"])[0]
    best = corr[0].argmax(0)  # h x w: source channel k = x*h + y
    keep = mask.gather(0, best[None])[0] > 0.5
    o = count.offset_factor
    axis_x = torch.linspace(-1, 1, w) / o
    axis_y = torch.linspace(-1, 1, h) / o
    ty, tx = torch.meshgrid(axis_y, axis_x, indexing="ij")
    sx, sy = axis_x[best // h], axis_y[best % h]
    return {"target": torch.stack((tx, ty), -1).reshape(-1, 2), "source": torch.stack((sx, sy), -1).reshape(-1, 2),
            "keep": keep.reshape(-1), "score": corr[0].amax(0).reshape(-1)}


def _to_px(p: torch.Tensor, shape) -> np.ndarray:
    h, w = shape[:2]
    return np.stack(((p[:, 0].numpy() + 1) * (w - 1) / 2, (p[:, 1].numpy() + 1) * (h - 1) / 2), 1)


def _same_height(img: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    if h == height:
        return img
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * height / h)), height), Image.BILINEAR))


def _match_panel(ax, source: np.ndarray, target: np.ndarray, result: dict) -> None:
    m = match_inliers(result)
    hs, ws = source.shape[:2]
    tgt = _same_height(target, hs)
    gap = max(4, ws // 50)
    canvas = np.concatenate((source, np.full((hs, gap, 3), 255, np.uint8), tgt), 1)
    ax.imshow(canvas)
    sp = _to_px(m["source"], source.shape)
    tp = _to_px(m["target"], tgt.shape)
    tp[:, 0] += ws + gap
    order = torch.argsort(m["score"], descending=True)[:MATCHES_DRAWN].numpy()
    keep = m["keep"].numpy()[order]
    # outliers first, so the inliers are drawn on top
    for kept, colour in ((False, OUTLIER_COLOUR), (True, INLIER_COLOUR)):
        for i in order[keep == kept]:
            ax.plot([sp[i, 0], tp[i, 0]], [sp[i, 1], tp[i, 1]], "-", color=colour, lw=2.2, alpha=0.9)
            ax.plot([sp[i, 0], tp[i, 0]], [sp[i, 1], tp[i, 1]], "o", color=colour, ms=5, mec="white", mew=0.8)
    from matplotlib.lines import Line2D

    n_in = int(keep.sum())
    handles = [Line2D([], [], color=INLIER_COLOUR, lw=3, label=f"inlier: kept by the mask ({n_in})"),
               Line2D([], [], color=OUTLIER_COLOUR, lw=3, label=f"outlier: discarded ({len(order) - n_in})")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, fontsize=12, frameon=False)
    ax.set_title(f"{len(order)} strongest matches (source | target)", fontsize=13)


def figure(source: np.ndarray, target: np.ndarray, result: dict, source_points=None, transferred=None, title: str = "") -> plt.Figure:
    """Source | target | aligned source | keypoint transfer on top; below, across the full width,
    the strongest matches: green = kept by the inlier mask, red = discarded (legend)."""
    kind = "affine_tps" if "affine_tps" in result["aligned"] else next(iter(result["aligned"]))
    # row heights from the pictures' aspect ratios, so neither row is letter-boxed: the top
    # panels are a quarter of the width each, the match panel (two images side by side) all of it
    top = max(img.shape[0] / img.shape[1] for img in (source, target)) / 4
    bottom = source.shape[0] / (source.shape[1] + target.shape[1] * source.shape[0] / target.shape[0])
    width = 18.0
    fig = plt.figure(figsize=(width, width * (top + bottom) + 1.6), layout="constrained")
    grid = fig.add_gridspec(2, 4, height_ratios=(top, bottom))
    axes = [fig.add_subplot(grid[0, i]) for i in range(4)]
    for ax, img, t in zip(axes[:3], (source, target, result["aligned"][kind]), ("source", "target", f"aligned source ({kind.replace('_', '+')})")):
        ax.imshow(img)
        ax.set_title(t, fontsize=12)
    ax = axes[3]
    ax.imshow(source)
    ax.set_title("keypoint transfer (o: annotation, x: transferred)", fontsize=12)
    if source_points is not None and transferred is not None:
        sp, tp = np.asarray(source_points) - 1, np.asarray(transferred) - 1  # 1-based -> 0-based for plotting
        for i in range(sp.shape[1]):
            if sp[0, i] < 0:
                continue
            c = plt.cm.tab10(i % 10)
            ax.plot(sp[0, i], sp[1, i], "o", mfc="none", mec=c, ms=9, mew=2)
            ax.plot(tp[0, i], tp[1, i], "x", color=c, ms=9, mew=2)
            ax.plot([sp[0, i], tp[0, i]], [sp[1, i], tp[1, i]], "-", color=c, lw=1)
    match_ax = fig.add_subplot(grid[1, :])
    _match_panel(match_ax, source, target, result)
    for a in (*axes, match_ax):
        a.axis("off")
    if title:
        fig.suptitle(title, fontsize=14)
    return fig


def pair_figure(checkpoint: str, benchmark: str, index: int, root: str = "data", csv: str | None = None) -> plt.Figure:
    from .data.images import load_image
    from .data.registry import get_dataset
    from .evaluation.transfer import transfer_keypoints
    from .models import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    ds = get_dataset(benchmark, root=root, **({"csv": csv} if csv else {}))
    r = ds.records[index]
    src = load_image(ds.image_root / r.source, exif_transpose=False)
    tgt = load_image(ds.image_root / r.target, exif_transpose=False)
    res = align(model, src, tgt)
    tpts = torch.as_tensor(r.target_points, dtype=torch.float32)[None]
    kind = res["kind"]
    tr = transfer_keypoints(kind, tpts, tgt.shape[:2], src.shape[:2], res["theta_aff"], res["theta_tps"])[0].numpy()
    return figure(src, tgt, res, r.source_points, tr, title=f"{benchmark} pair {index}: {r.source} -> {r.target}")


def save(fig: plt.Figure, path: str | Path) -> Path:
    from .reports import save_figure

    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
