"""The ``data:`` block of ``params.yaml`` (defaults below; unknown keys are an error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weakalign.config import Block, defaults_of


@dataclass(frozen=True)
class Audit(Block):
    """Near-duplicate audit between training photos and evaluation images."""

    hash_size: int = 8  # imagehash.phash -> hash_size**2 = 64 bits
    threshold: int = 6  # near-duplicate if Hamming distance <= threshold
    check_flips: bool = True  # also compare against horizontally flipped evaluation images
    jobs: int = 2  # worker processes for hashing


@dataclass(frozen=True)
class DataParams(Block):
    """The ``data:`` block: its field defaults are the defaults (the one place)."""

    seed: int = 0
    # Caltech-101 folders never used for training: BACKGROUND_Google has no object category
    # (useless for same-category pairs); Faces_easy holds tighter crops of the same photos as
    # Faces (near-duplicates across categories).
    exclude_categories: tuple[str, ...] = ("BACKGROUND_Google", "Faces_easy")
    # Fraction of each category's images held out (validation side); all validation images
    # are disjoint from all training images.
    heldout_fraction: float = 0.15
    strong_train_images: int = 0  # 0 = every training-side image
    strong_val_images: int = 400
    weak_train_pairs: int = 2000
    weak_val_pairs: int = 200
    weak_train_flip_prob: float = 0.5
    # Near-duplicate groups INSIDE the training pool (kept on one side of the train/held-out
    # split, never paired with each other): phash distance <= this. Stricter than the audit
    # threshold: at 6 bits, different motorbikes / airplanes photographed in the same pose on a
    # white background already match (one Motorbikes component of 116 images); at <= 2 the
    # matches are mostly true duplicates (same photo, other background or crop).
    pool_duplicate_threshold: int = 2
    audit: Audit = field(default_factory=Audit)


#: The defaults as a dict (derived from :class:`DataParams`; read-only use).
DEFAULTS: dict = defaults_of(DataParams)


def load_params(path: str | Path | None = None) -> DataParams:
    """The merged ``data`` parameters (:func:`weakalign.config.resolve_block`: unknown keys,
    types and ranges checked), as :class:`DataParams`. ``path`` defaults to ``<project root>/params.yaml``; a missing
    default file means "all defaults"."""
    from weakalign.config import load_block

    return load_block("data", path)


def _validate(block: str, cfg: dict) -> None:
    """Ranges the generic type checks cannot know (one line naming the key)."""
    from weakalign.config import user_error

    def need(ok: bool, key: str, rule: str, value) -> None:
        if not ok:
            raise user_error(f"{block}.{key} must be {rule}, got {value!r}")

    f = cfg["heldout_fraction"]
    need(0.0 < float(f) < 1.0, "heldout_fraction", "a fraction strictly between 0 and 1", f)
    p = cfg["weak_train_flip_prob"]
    need(0.0 <= float(p) <= 1.0, "weak_train_flip_prob", "a probability in [0, 1]", p)
    a = cfg["audit"]
    need(int(a["hash_size"]) >= 2, "audit.hash_size", "an integer >= 2", a["hash_size"])
    need(int(a["jobs"]) >= 1, "audit.jobs", "an integer >= 1", a["jobs"])


def _register() -> None:
    from weakalign.config import BlockSchema, register

    register("data", BlockSchema(lambda: defaults_of(DataParams), profiled=False, validate=_validate, cls=DataParams))


_register()
