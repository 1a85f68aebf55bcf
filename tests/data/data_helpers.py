"""Helpers shared by the data-layer tests (imported as a plain module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(seed: int, h: int = 180, w: int = 240) -> np.ndarray:
    """A natural-looking random image (low-frequency colour field + mild noise), uint8 RGB."""
    rng = np.random.default_rng(seed)
    small = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(arr: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def make_pf_willow(root: Path, n_classes: int = 10, n_images: int = 10, seed: int = 0) -> dict:
    """A fake PF-WILLOW tree: root/pf-willow/PF-dataset/<cls>/<img>.png + .mat (pts_coord)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    base = root / "pf-willow" / "PF-dataset"
    kps = {}
    for c in range(n_classes):
        cls = f"class{c}(S)"
        for i in range(n_images):
            name = f"img_{i:03d}"
            h, w = 60 + i, 80 + c
            save(smooth_image(1000 * c + i, h, w), base / cls / f"{name}.png")
            pts = np.stack([rng.uniform(1, w, 10), rng.uniform(1, h, 10)])
            savemat(base / cls / f"{name}.mat", {"pts_coord": pts})
            kps[f"PF-dataset/{cls}/{name}.png"] = pts
    return kps
