"""The ``data:`` block of ``params.yaml`` (defaults below; unknown keys are an error)."""

from __future__ import annotations

import copy
from pathlib import Path

from .paths import project_root

DEFAULTS: dict = {
    "seed": 0,
    # Caltech-101 folders never used for training: BACKGROUND_Google has no object category
    # (useless for same-category pairs); Faces_easy holds tighter crops of the same photos as
    # Faces (near-duplicates across categories).
    "exclude_categories": ["BACKGROUND_Google", "Faces_easy"],
    # Fraction of each category's images held out (validation side); all validation images
    # are disjoint from all training images.
    "heldout_fraction": 0.15,
    "strong_train_images": 0,  # 0 = every training-side image
    "strong_val_images": 400,
    "weak_train_pairs": 2000,
    "weak_val_pairs": 200,
    "weak_train_flip_prob": 0.5,
    # Near-duplicate groups INSIDE the training pool (kept on one side of the train/held-out
    # split, never paired with each other): phash distance <= this. Stricter than the audit
    # threshold: at 6 bits, different motorbikes / airplanes photographed in the same pose on a
    # white background already match (one Motorbikes component of 116 images); at <= 2 the
    # matches are mostly true duplicates (same photo, other background or crop).
    "pool_duplicate_threshold": 2,
    "audit": {
        "hash_size": 8,  # imagehash.phash -> hash_size**2 = 64 bits
        "threshold": 6,  # near-duplicate if Hamming distance <= threshold
        "check_flips": True,  # also compare against horizontally flipped evaluation images
        "jobs": 2,  # worker processes for hashing
    },
}


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in base:
            from weakalign.cli import UserError

            raise UserError(f"{where}: unknown key {k!r} (known: {sorted(base)})")
        out[k] = _merge(base[k], v, f"{where}.{k}") if isinstance(base[k], dict) else v
    return out


def load_params(path: str | Path | None = None) -> dict:
    """The merged ``data`` parameters. ``path`` defaults to ``<project root>/params.yaml``;
    a missing file means "all defaults"."""
    from weakalign.training.params import check_values, read_params_file

    p = Path(path) if path else project_root() / "params.yaml"
    block = {}
    if p.is_file():
        doc, _ = read_params_file(p)  # malformed / empty / unknown top-level keys: errors
        block = doc.get("data") or {}
        if not isinstance(block, dict):
            from weakalign.cli import UserError

            raise UserError(f"{p}: data must be a mapping, got {block!r}")
    merged = _merge(DEFAULTS, block, f"{p}: data")
    check_values("data", merged, DEFAULTS)  # non-negative counts, finite numbers, types
    return merged
