"""Datasets registered by name.

>>> from weakalign.data.registry import get_dataset, list_datasets
>>> list_datasets()
['pf-willow', 'pf-pascal', 'caltech-101', 'tss', 'synthetic', 'weak-pairs']
>>> ds = get_dataset("pf-willow", root="data")           # DatasetNotAvailable if missing
>>> ds.pck_protocol
{'reference': 'bbox', 'alpha': 0.1, 'averaging': 'per_pair'}

``synthetic`` takes ``split="strong_train" | "strong_val"`` (Caltech-101 image lists in
``data/splits``) or ``"voc2011"`` (paper-scale, when Pascal VOC 2011 was fetched); ``weak-pairs`` takes ``split="train" | "val" | "pf-pascal" |
"pf-pascal-paper"`` (pair lists in ``data/splits``). Both accept ``size=(h, w)``.

:func:`benchmark_status` tells, without raising, whether each evaluation benchmark can run;
the pipeline reports a missing one as "not available" instead of failing or inventing numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .datasets import (
    CaltechDataset,
    DatasetNotAvailable,
    ImageListDataset,
    PairListDataset,
    PFPascalDataset,
    PFWillowDataset,
    TSSDataset,
)
from .paths import data_root

SPLIT_FILES = {
    "strong_train": "strong_train_images.csv",
    "strong_val": "strong_val_images.csv",
    "train": "weak_train_pairs.csv",
    "val": "weak_val_pairs.csv",
    "pf-pascal": "pf_pascal_weak_train_pairs_clean.csv",
    "pf-pascal-paper": "pf_pascal_weak_train_pairs_paper.csv",
    "voc2011": "pascal_voc_2011_images_clean.csv",
}
CALTECH_IMAGE_ROOT = "caltech-101"
PF_PASCAL_IMAGE_ROOT = "pf-pascal"


def _split_file(root, split) -> Path:
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLIT_FILES)}")
    path = data_root(root) / "splits" / SPLIT_FILES[split]
    if not path.is_file():
        raise DatasetNotAvailable(f"split {split}", [path],
                                  "run `weakalign data audit && weakalign data splits` "
                                  "(or `dvc repro`)")
    return path


def _synthetic(root="data", split="strong_train", size=(240, 240), paths=None):
    if paths is not None:
        return ImageListDataset(paths, size=size)
    image_root = data_root(root) / ("pascal-voc-2011" if split == "voc2011" else CALTECH_IMAGE_ROOT)
    return ImageListDataset(_split_file(root, split), size=size, image_root=image_root)


def _weak_pairs(root="data", split="train", size=(240, 240), use_flip=True):
    csv = _split_file(root, split)
    image_root = data_root(root) / (PF_PASCAL_IMAGE_ROOT if split.startswith("pf-pascal")
                                    else CALTECH_IMAGE_ROOT)
    ds = PairListDataset(csv, image_root, size=size, use_flip=use_flip)
    if split.startswith("pf-pascal"):
        missing = [p for p in dict.fromkeys(image_root / x for r in ds.records
                                            for x in (r.source, r.target)) if not p.is_file()]
        if missing:
            raise DatasetNotAvailable("weak-pairs/" + split, missing,
                                      "run `weakalign data fetch pf-pascal-images` (needs "
                                      "PF-dataset-PASCAL.zip: network or offline mirror)")
    return ds


_REGISTRY = {
    "pf-willow": PFWillowDataset,
    "pf-pascal": PFPascalDataset,
    "caltech-101": CaltechDataset,
    "tss": TSSDataset,
    "synthetic": _synthetic,
    "weak-pairs": _weak_pairs,
}
EVALUATION_BENCHMARKS = ("pf-willow", "pf-pascal", "caltech-101", "tss")


def list_datasets() -> list[str]:
    return list(_REGISTRY)


def get_dataset(name: str, root="data", **kw):
    """Build the dataset registered as ``name``; raises DatasetNotAvailable when files are
    missing (message says which and how to get them), KeyError for an unknown name."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; registered: {list_datasets()}") from None
    return factory(root=root, **kw)


def dataset_class(name: str):
    f = _REGISTRY[name]
    return f if isinstance(f, type) else None


@dataclass
class BenchmarkStatus:
    name: str
    available: bool
    reason: str  # "" when available; else the full DatasetNotAvailable message
    pck_protocol: dict
    missing: list = field(default_factory=list)  # missing paths (str)
    how: str = ""  # how to get them

    @property
    def summary(self) -> str:
        """One short line: "available" or "not available: N file(s) missing (e.g. X)"."""
        if self.available:
            return "available"
        first = f" (e.g. {self.missing[0]})" if self.missing else ""
        return f"not available: {len(self.missing)} file(s) missing{first}"


def benchmark_status(name: str, root="data", **kw) -> BenchmarkStatus:
    """Availability of an evaluation benchmark, never raising for missing files."""
    cls = _REGISTRY[name]
    try:
        cls(root=root, **kw)
        return BenchmarkStatus(name, True, "", dict(cls.pck_protocol))
    except DatasetNotAvailable as exc:
        return BenchmarkStatus(name, False, str(exc), dict(cls.pck_protocol),
                               list(exc.missing), exc.how)
