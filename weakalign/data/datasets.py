"""Datasets as plain Python objects (``torch.utils.data.Dataset``).

Keypoint benchmarks (:class:`PFWillowDataset`, :class:`PFPascalDataset`) return dicts::

    source_image, target_image   float32 3 x H x W in [0, 1], RGB; ORIGINAL resolution unless
                                 ``resize=(h, w)`` is given (bilinear, align_corners=True)
    source_points, target_points float32 2 x N_max; row 0 = x, row 1 = y; PIXEL coordinates of
                                 the ORIGINAL image exactly as in the official CSV, which are
                                 1-based (MATLAB annotation tools): the centre of the top-left
                                 pixel is (1, 1). Columns past ``num_points`` are -1 (padding).
                                 Points are NOT rescaled when ``resize`` is given: use
                                 ``source_size`` / ``target_size`` to normalise them.
    num_points                   int, number of valid keypoints
    source_size, target_size     int64 tensor (h, w) of the original image
    category                     str
    source_path, target_path     str, full path of the image file
    pair_index                   int, row index in the pair list (0-based)

Images are loaded with :func:`weakalign.data.images.load_image` with ``exif_transpose=False``:
the annotations refer to the stored pixel grid.

Each benchmark class has a ``pck_protocol`` dict (the summary of the benchmark's default
protocol, read from its :class:`weakalign.data.registry.BenchmarkSpec`, the one place that
declares it) and ``missing_files()`` / ``available()`` which work on the class
(``PFWillowDataset.available(root="data")``) and on an instance. Constructing a dataset whose
files are missing raises :class:`DatasetNotAvailable` (a ``FileNotFoundError``) that lists up
to 10 missing paths and says how to get them.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import csvio
from .images import image_size, load_image, to_tensor
from .paths import data_root
from .sources import SOURCES

MAX_LISTED = 10


class DatasetNotAvailable(FileNotFoundError):
    """Files of a dataset are missing; the message says which and how to get them."""

    def __init__(self, name: str, missing, how: str):
        self.name = name
        self.missing = [str(m) for m in missing]
        self.how = how
        listed = self.missing[:MAX_LISTED]
        more = len(self.missing) - len(listed)
        msg = (f"dataset {name!r} is not available: {len(self.missing)} file(s) missing: "
               + ", ".join(listed) + (f" (and {more} more)" if more > 0 else "")
               + f". To get it: {how}")
        super().__init__(msg)


def _how(*keys: str, command: str, in_pipeline: bool = False) -> str:
    parts = [f"run `{command}`" + (" (or `dvc repro`)" if in_pipeline else "")]
    for k in keys:
        s = SOURCES[k]
        mirror = " or ".join(s.mirror_names) if s.mirror_names else s.filename
        parts.append(f"{s.filename} from {s.url} (or file {mirror} in the offline mirror "
                     f"folder, $WEAKALIGN_DATA_MIRROR)")
    return "; ".join(parts)


class _hybrid:
    """Method usable on the class (with constructor keyword arguments) and on an instance."""

    def __init__(self, func):
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj, cls):
        if obj is None:
            return lambda *a, **kw: self.func(cls(*a, _check=False, **kw))
        return lambda: self.func(obj)


def _pad_points(pts: np.ndarray, n_max: int, where: str) -> torch.Tensor:
    n = pts.shape[1]
    if n > n_max:
        raise ValueError(f"{where}: {n} keypoints, more than max_points={n_max}")
    out = torch.full((2, n_max), -1.0, dtype=torch.float32)
    out[:, :n] = torch.from_numpy(pts.astype(np.float32))
    return out


class _declared_protocol:
    """``pck_protocol`` of a benchmark class: its registry spec's summary (a fresh dict)."""

    def __get__(self, obj, cls):
        from .registry import benchmark_spec

        return dict(benchmark_spec(cls.name).summary)


class _Base(Dataset):
    name = "base"
    pck_protocol: dict = {}

    def __init__(self, root="data", _check=True):
        self.root = data_root(root)
        if _check:
            missing = self._missing()
            if missing:
                raise DatasetNotAvailable(self.name, missing, self._how())

    # overridden
    def _missing(self) -> list[Path]:
        raise NotImplementedError

    def _how(self) -> str:
        raise NotImplementedError

    @_hybrid
    def missing_files(self) -> list[Path]:
        return self._missing()

    @_hybrid
    def available(self) -> bool:
        return not self._missing()


class _KeypointPairs(_Base):
    max_points = 20

    def _records(self):
        raise NotImplementedError

    @property
    def image_root(self) -> Path:
        raise NotImplementedError

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        r = self.records[idx]
        sp = self.image_root / r.source
        tp = self.image_root / r.target
        src = load_image(sp, exif_transpose=False)
        tgt = load_image(tp, exif_transpose=False)
        where = f"{self.csv_path}, line {r.line}"
        return {
            "source_image": to_tensor(src, self.resize),
            "target_image": to_tensor(tgt, self.resize),
            "source_points": _pad_points(r.source_points, self.max_points, where),
            "target_points": _pad_points(r.target_points, self.max_points, where),
            "num_points": int(r.source_points.shape[1]),
            "source_size": torch.tensor(src.shape[:2], dtype=torch.int64),
            "target_size": torch.tensor(tgt.shape[:2], dtype=torch.int64),
            "category": r.category,
            "source_path": str(sp),
            "target_path": str(tp),
            "pair_index": int(idx),
        }

    def image_paths(self) -> list[Path]:
        """Every distinct image named by the pair list (for audits)."""
        seen = dict.fromkeys(p for r in self.records for p in (r.source, r.target))
        return [self.image_root / p for p in seen]


class PFWillowDataset(_KeypointPairs):
    """PF-WILLOW (Ham et al., Proposal Flow): 900 pairs, 10 keypoints each.

    Files: ``<root>/pf-willow/test_pairs_pf.csv`` and ``<root>/pf-willow/PF-dataset/...``.
    ``category`` is the sub-class folder name (``car(G)``, ``duck(S)``, ...; 10 sub-classes).
    Default PCK: alpha = 0.1 of the longer side of the bounding box of the keypoints
    (``reference: bbox``; the reference code takes the source image's keypoints), averaged per
    pair.
    """

    name = "pf-willow"
    max_points = 10
    pck_protocol = _declared_protocol()

    def __init__(self, root="data", resize=None, csv=None, max_points=10, _check=True):
        self.resize = resize
        self.max_points = max_points
        self._root_arg = root
        self.csv_path = Path(csv) if csv else data_root(root) / "pf-willow" / "test_pairs_pf.csv"
        super().__init__(root, _check=False)
        self.records = []
        if self.csv_path.is_file():
            self.records = csvio.read_pf_willow_pairs(self.csv_path, expected_rows=None if csv else 900)
        if _check:
            missing = self._missing()
            if missing:
                raise DatasetNotAvailable(self.name, missing, self._how())

    @property
    def image_root(self) -> Path:
        return self.root / "pf-willow"

    def _missing(self):
        if not self.csv_path.is_file():
            missing = [self.csv_path]
            if not (self.image_root / "PF-dataset").is_dir():
                missing.append(self.image_root / "PF-dataset")
            return missing
        return [p for p in self.image_paths() if not p.is_file()]

    def _how(self):
        return _how("PF-dataset.zip", "test_pairs_pf.csv",
                    command="weakalign data fetch pf-willow && weakalign data prepare-pf-willow",
                    in_pipeline=True)


class PFPascalDataset(_KeypointPairs):
    """PF-PASCAL (Ham et al.): ``split`` = ``test`` (299 pairs) or ``val`` (308 pairs);
    a varying number of keypoints per pair (``;``-separated lists in the CSV), padded to
    ``max_points`` = 20.

    Files: ``<root>/pf-pascal/{split}_pairs_pf_pascal.csv`` and
    ``<root>/pf-pascal/PF-dataset-PASCAL/JPEGImages/*.jpg`` (images are NOT in the offline
    mirror: this dataset reports itself not available there).
    Default PCK (the weakalign/SCNet protocol): both images and keypoints rescaled to
    224 x 224, L = 224, alpha = 0.1, averaged per pair.
    """

    name = "pf-pascal"
    pck_protocol = _declared_protocol()
    _rows = {"test": 299, "val": 308}

    def __init__(self, root="data", split="test", resize=None, csv=None, max_points=20,
                 _check=True):
        if split not in self._rows:
            raise ValueError(f"PF-PASCAL split must be one of {list(self._rows)}, got {split!r}")
        self.split, self.resize, self.max_points = split, resize, max_points
        self.csv_path = (Path(csv) if csv else
                         data_root(root) / "pf-pascal" / f"{split}_pairs_pf_pascal.csv")
        super().__init__(root, _check=False)
        self.records = []
        if self.csv_path.is_file():
            self.records = csvio.read_pf_pascal_pairs(
                self.csv_path, expected_rows=None if csv else self._rows[split])
        if _check:
            missing = self._missing()
            if missing:
                raise DatasetNotAvailable(self.name, missing, self._how())

    @property
    def image_root(self) -> Path:
        return self.root / "pf-pascal"

    def _missing(self):
        if not self.csv_path.is_file():
            return [self.csv_path]
        return [p for p in self.image_paths() if not p.is_file()]

    def _how(self):
        return _how("PF-dataset-PASCAL.zip", f"{self.split}_pairs_pf_pascal.csv",
                    command="weakalign data fetch pf-pascal pf-pascal-images")


class CaltechDataset(_Base):
    """Caltech-101 label-transfer pairs (weakalign's ``test_pairs_caltech_with_category.csv``,
    1,515 pairs), best effort: the pair list and the annotations are not in the offline mirror,
    so this is written from the reference format and not tested on the real files.

    Files: ``<root>/caltech-101/test_pairs_caltech_with_category.csv``; image paths in it are
    resolved relative to ``<root>/caltech-101`` (then ``.../101_ObjectCategories``).
    Items: images (as for the keypoint datasets), ``source_polygon`` / ``target_polygon``
    (float32 2 x K object outlines in pixels, from the CSV; K varies, so batch size 1 or a
    custom collate), sizes, ``category`` (folder name), paths, ``pair_index``.
    """

    name = "caltech-101"
    pck_protocol = _declared_protocol()

    def __init__(self, root="data", resize=None, csv=None, _check=True):
        self.resize = resize
        self.csv_path = (Path(csv) if csv else
                         data_root(root) / "caltech-101" / "test_pairs_caltech_with_category.csv")
        super().__init__(root, _check=False)
        self.records = []
        if self.csv_path.is_file():
            self.records = csvio.read_caltech_pairs(self.csv_path,
                                                    expected_rows=None if csv else 1515)
        if _check:
            missing = self._missing()
            if missing:
                raise DatasetNotAvailable(self.name, missing, self._how())

    @property
    def categories(self) -> list[str]:
        """Category names by 1-based index: the sorted folder names without BACKGROUND_Google
        (the order of the reference code's list)."""
        base = self.root / "caltech-101" / "101_ObjectCategories"
        names = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        return [n for n in names if n != "BACKGROUND_Google"]

    def _resolve(self, rel: str) -> Path:
        base = self.root / "caltech-101"
        p = base / rel
        if not p.exists() and (base / "101_ObjectCategories" / rel).exists():
            return base / "101_ObjectCategories" / rel
        return p

    def _missing(self):
        if not self.csv_path.is_file():
            return [self.csv_path]
        seen = dict.fromkeys(p for r in self.records for p in (r.source, r.target))
        return [self._resolve(p) for p in seen if not self._resolve(p).is_file()]

    def _how(self):
        return _how("101_ObjectCategories.tar.gz", "test_pairs_caltech_with_category.csv",
                    command="weakalign data fetch caltech-101 caltech-101-annotations")

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        r = self.records[idx]
        sp, tp = self._resolve(r.source), self._resolve(r.target)
        src, tgt = load_image(sp, exif_transpose=False), load_image(tp, exif_transpose=False)
        cats = self.categories
        ci = r.extra["class_index"]
        return {
            "source_image": to_tensor(src, self.resize),
            "target_image": to_tensor(tgt, self.resize),
            "source_polygon": torch.from_numpy(r.source_points.astype(np.float32)),
            "target_polygon": torch.from_numpy(r.target_points.astype(np.float32)),
            "source_size": torch.tensor(src.shape[:2], dtype=torch.int64),
            "target_size": torch.tensor(tgt.shape[:2], dtype=torch.int64),
            "category": cats[ci - 1] if 1 <= ci <= len(cats) else str(ci),
            "source_path": str(sp),
            "target_path": str(tp),
            "pair_index": int(idx),
        }


class TSSDataset(_Base):
    """TSS (Taniai et al., CVPR 2016) with CNNGeometric's ``test_pairs_tss.csv``, best effort:
    not in the offline mirror, written from the reference format, not tested on the real files.

    Files: ``<root>/tss/test_pairs_tss.csv``; image paths resolved relative to ``<root>/tss``
    (then ``<root>/tss/TSS_CVPR2016``). Ground truth is the dense flow
    ``<source folder>/flow{1,2}.flo`` (Middlebury format; :func:`csvio.read_flo`); the source
    image is flipped horizontally when the CSV says so (as in the reference code).
    Items: images, ``flow_path`` (str) and, with ``load_flow=True``, ``flow`` (float32
    H x W x 2), sizes, ``category`` (index as str), paths, ``flip``, ``pair_index``.
    """

    name = "tss"
    pck_protocol = _declared_protocol()

    def __init__(self, root="data", resize=None, csv=None, load_flow=False, _check=True):
        self.resize, self.load_flow = resize, load_flow
        self.csv_path = Path(csv) if csv else data_root(root) / "tss" / "test_pairs_tss.csv"
        super().__init__(root, _check=False)
        self.records = csvio.read_tss_pairs(self.csv_path) if self.csv_path.is_file() else []
        if _check:
            missing = self._missing()
            if missing:
                raise DatasetNotAvailable(self.name, missing, self._how())

    def _resolve(self, rel: str) -> Path:
        base = self.root / "tss"
        p = base / rel
        if not p.exists() and (base / "TSS_CVPR2016" / rel).exists():
            return base / "TSS_CVPR2016" / rel
        return p

    def _missing(self):
        if not self.csv_path.is_file():
            return [self.csv_path]
        need = dict.fromkeys(p for r in self.records
                             for p in (r.source, r.target, r.extra["flow_path"]))
        return [self._resolve(p) for p in need if not self._resolve(p).is_file()]

    def _how(self):
        return _how("TSS_CVPR2016.zip", "test_pairs_tss.csv", command="weakalign data fetch tss")

    def __len__(self):
        return len(self.records)

    def __getitem__(self, idx):
        r = self.records[idx]
        sp, tp = self._resolve(r.source), self._resolve(r.target)
        src, tgt = load_image(sp, exif_transpose=False), load_image(tp, exif_transpose=False)
        if r.flip:
            src = np.ascontiguousarray(src[:, ::-1])
        item = {
            "source_image": to_tensor(src, self.resize),
            "target_image": to_tensor(tgt, self.resize),
            "source_size": torch.tensor(src.shape[:2], dtype=torch.int64),
            "target_size": torch.tensor(tgt.shape[:2], dtype=torch.int64),
            "flow_path": str(self._resolve(r.extra["flow_path"])),
            "category": r.category,
            "source_path": str(sp),
            "target_path": str(tp),
            "flip": int(r.flip),
            "pair_index": int(idx),
        }
        if self.load_flow:
            item["flow"] = torch.from_numpy(csvio.read_flo(item["flow_path"]))
        return item


def evenly_spaced(dataset, max_pairs: int):
    """``max_pairs`` evenly spaced pairs of a pair dataset (one with ``records``; all when 0 or
    more than it has), as a shallow copy whose ``pairs_total`` is the full count: used
    identically at predict and at metrics time (``evaluate.max_pairs``) and by PCK model
    selection, so predictions and ground truth stay in the same order."""
    import copy

    n = len(dataset.records)
    if not max_pairs or max_pairs >= n:
        return dataset
    keep = [round(i * (n - 1) / (max_pairs - 1)) for i in range(max_pairs)] if max_pairs > 1 else [0]
    out = copy.copy(dataset)
    out.records = [dataset.records[i] for i in keep]
    out.pairs_total = n
    return out


class ImageListDataset(Dataset):
    """Single images resized to ``size`` (h, w), for synthetic strong-pair generation.

    ``paths``: a list of image paths, or a CSV file with an ``image`` column (as written to
    ``data/splits``), whose entries are relative to ``image_root``.
    Items: ``{"image": float32 3 x h x w in [0, 1], "path": str}``.
    """

    name = "synthetic"

    def __init__(self, paths, size=(240, 240), image_root=None):
        if isinstance(paths, (str, Path)) and str(paths).endswith(".csv"):
            paths = read_image_list(paths)
        root = Path(image_root) if image_root is not None else None
        self.paths = [str(root / p) if root is not None else str(p) for p in paths]
        self.size = size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, idx):
        p = self.paths[idx]
        return {"image": to_tensor(load_image(p), self.size), "path": p}


class PairListDataset(Dataset):
    """Weakly-supervised training pairs: ``source_image,target_image,class[,flip]`` CSV.

    Images are resized to ``size`` (h, w); with ``use_flip`` and a ``flip`` value of 1 BOTH
    images are flipped horizontally (the reference ``pf-pascal-flip`` convention).
    Items: ``source_image``, ``target_image``, ``category``, ``source_path``, ``target_path``.
    """

    name = "weak-pairs"

    def __init__(self, csv, image_root, size=(240, 240), use_flip=True, expected_rows=None):
        self.csv_path = Path(csv)
        self.records = csvio.read_pair_list(self.csv_path, expected_rows)
        self.image_root = Path(image_root)
        self.size = size
        self.use_flip = use_flip

    def __len__(self):
        return len(self.records)

    def _img(self, rel, flip):
        a = load_image(self.image_root / rel)
        if flip:
            a = np.ascontiguousarray(a[:, ::-1])
        return to_tensor(a, self.size)

    def __getitem__(self, idx):
        r = self.records[idx]
        flip = bool(r.flip) and self.use_flip
        return {
            "source_image": self._img(r.source, flip),
            "target_image": self._img(r.target, flip),
            "category": r.category,
            "source_path": str(self.image_root / r.source),
            "target_path": str(self.image_root / r.target),
        }


def read_image_list(csv_path) -> list[str]:
    """The ``image`` column of a split CSV (validated: header, no empty entries)."""
    path, header, body = csvio._read(csv_path, required=["image"])
    j = header.index("image")
    return [csvio._text(path, line, "image", r[j]) for line, r in body]


def original_size(path) -> tuple[int, int]:
    """(h, w) of an image file without decoding it."""
    return image_size(path)
