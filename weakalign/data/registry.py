"""Datasets registered by name.

>>> from weakalign.data.registry import get_dataset, list_datasets
>>> list_datasets()
['pf-willow', 'pf-pascal', 'caltech-101', 'tss', 'synthetic', 'weak-pairs']
>>> ds = get_dataset("pf-willow", root="data")           # DatasetNotAvailable if missing
>>> ds.pck_protocol
{'reference': 'bbox', 'alpha': 0.1, 'averaging': 'per_pair'}
>>> benchmark_spec("pf-willow").kind, list(benchmark_spec("pf-willow").protocols)
('keypoints', ['default', 'per_keypoint', 'image'])

Evaluation benchmarks are declared once, in :data:`BENCHMARKS` (a :class:`BenchmarkSpec` each):
their kind (``keypoints`` or ``dense``), their PCK protocols (keypoints; ``"default"`` is the
headline number, the others are reported beside it) or their dense measures and scorer (a key
of :data:`weakalign.evaluation.dense.SCORERS`), and their audit role (the sets of
``data/audit/leakage.json`` whose images must never be used for training). Evaluation, metrics,
the leakage audit and the reports read them from here; a benchmark without a declared protocol
is an error (:class:`UndeclaredBenchmark`), never a fallback to another benchmark's protocol.

``synthetic`` takes ``split="strong_train" | "strong_val"`` (Caltech-101 image lists in
``data/splits``) or ``"voc2011"`` (paper-scale, when Pascal VOC 2011 was fetched); ``weak-pairs`` takes ``split="train" | "val" | "pf-pascal" |
"pf-pascal-paper"`` (pair lists in ``data/splits``). Both accept ``size=(h, w)``.

:func:`benchmark_status` tells, without raising, whether each evaluation benchmark can run;
the pipeline reports a missing one as "not available" instead of failing or inventing numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

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


class UndeclaredBenchmark(KeyError):
    """A benchmark (or a protocol of one) that :data:`BENCHMARKS` does not declare."""

    def __str__(self):  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class BenchmarkSpec:
    """How one evaluation benchmark is scored (the one place that says it).

    ``kind``: ``"keypoints"`` (PCK of transferred keypoints) or ``"dense"`` (masks / flow).
    ``protocols``: keypoints only, name -> :class:`weakalign.evaluation.pck.PCKProtocol`;
    ``"default"`` is the headline protocol (its ``headline_alpha`` is the number quoted).
    ``measures`` / ``scorer``: dense only, the table columns and the key of
    :data:`weakalign.evaluation.dense.SCORERS` that computes them. ``summary``: the short
    protocol description shown by ``weakalign data status`` and stored as the dataset classes'
    ``pck_protocol``. ``audit_sets``: names of the leakage-audit sets built from this
    benchmark's images (never used for training; :mod:`weakalign.data.audit`).
    """

    name: str
    kind: str
    protocols: Mapping = field(default_factory=dict)
    headline_alpha: float | None = None
    measures: tuple = ()
    scorer: str = ""
    summary: Mapping = field(default_factory=dict)
    audit_sets: tuple = ()

    def __post_init__(self):
        if self.kind not in ("keypoints", "dense"):
            raise ValueError(f"benchmark {self.name}: kind must be keypoints or dense, got {self.kind!r}")
        if self.kind == "keypoints" and "default" not in self.protocols:
            raise ValueError(f"benchmark {self.name}: a keypoint benchmark declares a 'default' PCK protocol")
        if self.kind == "dense" and not (self.measures and self.scorer):
            raise ValueError(f"benchmark {self.name}: a dense benchmark declares its measures and scorer")
        object.__setattr__(self, "protocols", MappingProxyType(dict(self.protocols)))
        summary = dict(self.summary)
        if self.kind == "keypoints" and not summary:
            d = self.protocols["default"]
            summary = {"reference": d.reference, "alpha": self.headline_alpha, "averaging": d.averaging}
        object.__setattr__(self, "summary", MappingProxyType(summary))

    def pck_protocols(self, selected=None) -> dict:
        """The declared PCK protocols, ``"default"`` first; ``selected`` (names, e.g. from
        ``evaluate.protocols.<benchmark>``) keeps only those (``"default"`` always stays)."""
        if self.kind != "keypoints":
            raise UndeclaredBenchmark(f"benchmark {self.name!r} is scored densely ({', '.join(self.measures)}); it has no PCK protocol")
        if selected is None:  # not configured: every declared protocol
            return dict(self.protocols)
        unknown = [n for n in selected if n not in self.protocols]
        if unknown:
            raise UndeclaredBenchmark(f"benchmark {self.name!r}: unknown PCK protocol(s) {', '.join(map(repr, unknown))} "
                                      f"(declared: {', '.join(self.protocols)})")
        return {n: p for n, p in self.protocols.items() if n == "default" or n in selected}


def _declared_benchmarks() -> dict:
    from ..evaluation.pck import PCKProtocol

    curve = (0.05, 0.1, 0.15)
    specs = (
        # PF-WILLOW: L = bounding box of the source keypoints (the reference code's protocol)
        BenchmarkSpec("pf-willow", "keypoints", {
            "default": PCKProtocol("bbox", curve, "per_pair"),
            "per_keypoint": PCKProtocol("bbox", (0.1,), "per_keypoint"),
            "image": PCKProtocol("image", (0.1,), "per_pair")}, headline_alpha=0.1,
            audit_sets=("pf-willow",)),
        # PF-PASCAL: the original's 224 x 224 procedure (weakalign.evaluation.pck, "image_224")
        BenchmarkSpec("pf-pascal", "keypoints", {
            "default": PCKProtocol("image_224", curve, "per_pair"),
            "bbox": PCKProtocol("bbox", (0.1,), "per_pair"),
            "per_keypoint": PCKProtocol("image_224", (0.1,), "per_keypoint")}, headline_alpha=0.1,
            audit_sets=("pf-pascal-test", "pf-pascal-val")),
        BenchmarkSpec("caltech-101", "dense", measures=("LT-ACC", "IoU", "LOC-ERR"), scorer="caltech",
                      summary={"metric": "label_transfer", "measures": ["LT-ACC", "IoU", "LOC-ERR"],
                               "averaging": "per_pair"},
                      audit_sets=("caltech-101-eval",)),
        BenchmarkSpec("tss", "dense", measures=("FG3D", "JODS", "PASC", "average"), scorer="tss",
                      summary={"reference": "image", "alpha": 0.05, "averaging": "per_pair",
                               "ground_truth": "dense_flow"},
                      audit_sets=("tss",)),
    )
    return {s.name: s for s in specs}


BENCHMARKS: Mapping = MappingProxyType(_declared_benchmarks())


def benchmarks() -> dict:
    """``{name: BenchmarkSpec}`` of every evaluation benchmark, in table order."""
    return dict(BENCHMARKS)


def benchmark_spec(name: str) -> BenchmarkSpec:
    """The declared :class:`BenchmarkSpec`; :class:`UndeclaredBenchmark` (one line: which names
    exist, where to declare one) for anything else."""
    try:
        return benchmarks()[name]
    except KeyError:
        raise UndeclaredBenchmark(f"unknown benchmark {name!r}: no declared protocol (declared: {', '.join(benchmarks())}); "
                                  "declare it in weakalign/data/registry.py (BenchmarkSpec)") from None


EVALUATION_BENCHMARKS = tuple(BENCHMARKS)


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
    summary = dict(benchmark_spec(name).summary)
    try:
        cls(root=root, **kw)
        return BenchmarkStatus(name, True, "", summary)
    except DatasetNotAvailable as exc:
        return BenchmarkStatus(name, False, str(exc), summary,
                               list(exc.missing), exc.how)
