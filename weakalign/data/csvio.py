"""Reading and validating the benchmark pair lists (CSV).

Every reader raises :class:`CsvFormatError` (a ``ValueError``) naming the file, the line (1 is
the header) and the column for: a missing file header column, a row with the wrong number of
fields, an empty / NaN / infinite / non-numeric value, keypoint lists of different lengths
(``XA`` vs ``YA`` vs ``XB`` vs ``YB``), a row count different from the expected one, a file
with no data rows, and a file that is not UTF-8 text or not parseable as CSV. Image paths are
checked for being non-empty here; whether the files exist is checked by the datasets
(:class:`weakalign.data.datasets.DatasetNotAvailable`).

Formats (the official ones, as used by the reference code):

``pf-willow`` -- ``test_pairs_pf.csv``
    42 positional columns: ``imageA, imageB, XA1..XA10, YA1..YA10, XB1..XB10, YB1..YB10``
    (header names are not relied on; the file rebuilt by :mod:`.pfwillow` uses exactly these).
    Keypoints in pixels, 1-based (MATLAB annotation tools), exactly 10 per image.

``pf-pascal`` -- ``test_pairs_pf_pascal.csv``, ``val_pairs_pf_pascal.csv``
    ``source_image,target_image,class,XA,YA,XB,YB``; ``class`` is 1..20; ``XA`` etc. are
    ``;``-separated lists of varying length (same length within a row). Pixels, 1-based.

``pairs`` -- weak-training pair lists (``train_pairs_pf_pascal.csv`` and ``data/splits``)
    ``source_image,target_image,class[,flip]``; ``flip`` is 0/1 (flip both images).

``caltech`` -- ``test_pairs_caltech_with_category.csv``
    7 positional columns: source, target, category (1-based index), then the source polygon
    ``X;..`` and ``Y;..`` and the target polygon ``X;..`` and ``Y;..`` (lengths may differ
    between source and target, not between X and Y).

``tss`` -- ``test_pairs_tss.csv``
    5 positional columns: source, target, flow direction (1/2: ``flow1.flo`` / ``flow2.flo``
    in the source image's folder), flip source image (0/1), category (1-based).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PF_WILLOW_HEADER = (
    ["imageA", "imageB"]
    + [f"XA{i}" for i in range(1, 11)]
    + [f"YA{i}" for i in range(1, 11)]
    + [f"XB{i}" for i in range(1, 11)]
    + [f"YB{i}" for i in range(1, 11)]
)
PF_PASCAL_COLUMNS = ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"]
PAIR_COLUMNS = ["source_image", "target_image", "class"]
PF_PASCAL_CATEGORIES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]


class CsvFormatError(ValueError):
    def __init__(self, path, line: int | None, msg: str):
        self.path, self.line = str(path), line
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {msg}")


@dataclass
class PairRecord:
    source: str
    target: str
    category: str
    line: int
    source_points: np.ndarray | None = None  # 2 x N float64 (x row, y row), pixels
    target_points: np.ndarray | None = None
    flip: int = 0
    extra: dict = field(default_factory=dict)


def _read(path, *, required: list[str] | None = None, num_columns: int | None = None):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair list not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise CsvFormatError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start}); "
                             "is this really the pair list?") from None
    except csv.Error as exc:  # e.g. a NUL byte, an unterminated quote at the end
        raise CsvFormatError(path, None, f"not a readable CSV ({exc})") from None
    if not rows or not any(c.strip() for c in rows[0]):
        raise CsvFormatError(path, 1, "empty file or empty header line")
    header = [h.strip() for h in rows[0]]
    if required:
        missing = [c for c in required if c not in header]
        if missing:
            raise CsvFormatError(path, 1, f"missing column(s) {missing}; header is {header}")
    if num_columns is not None and len(header) != num_columns:
        raise CsvFormatError(path, 1, f"{len(header)} columns in the header, expected {num_columns}")
    body = []
    for i, r in enumerate(rows[1:], start=2):
        if not r or all(not c.strip() for c in r):
            continue  # blank line
        if len(r) != len(header):
            raise CsvFormatError(path, i, f"{len(r)} fields, the header has {len(header)}")
        body.append((i, [c.strip() for c in r]))
    return path, header, body


def _check_rows(path, body, expected_rows):
    if not body:
        raise CsvFormatError(path, None, "no data rows (only a header)")
    if expected_rows is not None and len(body) != expected_rows:
        raise CsvFormatError(path, None, f"{len(body)} data rows, expected {expected_rows}")


def _text(path, line, col, value) -> str:
    if value == "" or value.lower() in ("nan", "none", "null"):
        raise CsvFormatError(path, line, f"column {col!r} is empty/NaN")
    return value


def _num(path, line, col, value) -> float:
    try:
        v = float(value)
    except ValueError:
        raise CsvFormatError(path, line, f"column {col!r}: {value!r} is not a number") from None
    if not math.isfinite(v):
        raise CsvFormatError(path, line, f"column {col!r} is NaN or infinite ({value!r})")
    return v


def _int(path, line, col, value, allowed=None) -> int:
    v = _num(path, line, col, _text(path, line, col, value))
    if v != int(v) or (allowed is not None and int(v) not in allowed):
        raise CsvFormatError(path, line, f"column {col!r}: {value!r} is not an allowed integer")
    return int(v)


def _num_list(path, line, col, value, sep: str = ";") -> np.ndarray:
    _text(path, line, col, value)
    parts = [p for p in value.split(sep)]
    if parts and parts[-1].strip() == "":
        parts = parts[:-1]  # tolerate a trailing ';'
    if not parts:
        raise CsvFormatError(path, line, f"column {col!r} holds no values")
    return np.array([_num(path, line, col, p.strip()) for p in parts], dtype=np.float64)


def read_pf_willow_pairs(path, expected_rows: int | None = 900) -> list[PairRecord]:
    path, header, body = _read(path, num_columns=42)
    _check_rows(path, body, expected_rows)
    out = []
    for line, r in body:
        vals = [_num(path, line, header[j], r[j]) for j in range(2, 42)]
        a = np.array(vals[:20]).reshape(2, 10)
        b = np.array(vals[20:]).reshape(2, 10)
        src = _text(path, line, header[0], r[0])
        tgt = _text(path, line, header[1], r[1])
        parts = src.replace("\\", "/").split("/")
        category = parts[-2] if len(parts) >= 2 else ""
        out.append(PairRecord(src, tgt, category, line, a, b))
    return out


def read_pf_pascal_pairs(path, expected_rows: int | None = None) -> list[PairRecord]:
    path, header, body = _read(path, required=PF_PASCAL_COLUMNS)
    _check_rows(path, body, expected_rows)
    idx = {c: header.index(c) for c in PF_PASCAL_COLUMNS}
    out = []
    for line, r in body:
        cls = _int(path, line, "class", r[idx["class"]], range(1, 21))
        lists = {c: _num_list(path, line, c, r[idx[c]]) for c in ("XA", "YA", "XB", "YB")}
        lens = {c: len(v) for c, v in lists.items()}
        if len(set(lens.values())) != 1:
            raise CsvFormatError(path, line, f"keypoint count mismatch between columns {lens}")
        a = np.stack([lists["XA"], lists["YA"]])
        b = np.stack([lists["XB"], lists["YB"]])
        out.append(PairRecord(_text(path, line, "source_image", r[idx["source_image"]]),
                              _text(path, line, "target_image", r[idx["target_image"]]),
                              PF_PASCAL_CATEGORIES[cls - 1], line, a, b,
                              extra={"class_index": cls}))
    return out


def read_pair_list(path, expected_rows: int | None = None, *, require_flip: bool = False
                   ) -> list[PairRecord]:
    """Weak-training pair list: ``source_image,target_image,class[,flip]``. A numeric class
    1..20 is mapped to the PF-PASCAL category name; other values are kept as text."""
    req = PAIR_COLUMNS + (["flip"] if require_flip else [])
    path, header, body = _read(path, required=req)
    _check_rows(path, body, expected_rows)
    idx = {c: header.index(c) for c in header}
    out = []
    for line, r in body:
        cls = _text(path, line, "class", r[idx["class"]])
        try:
            ci = int(float(cls))
            category = PF_PASCAL_CATEGORIES[ci - 1] if 1 <= ci <= 20 and float(cls) == ci else cls
        except ValueError:
            category = cls
        flip = _int(path, line, "flip", r[idx["flip"]], (0, 1)) if "flip" in idx else 0
        out.append(PairRecord(_text(path, line, "source_image", r[idx["source_image"]]),
                              _text(path, line, "target_image", r[idx["target_image"]]),
                              category, line, flip=flip))
    return out


def read_caltech_pairs(path, expected_rows: int | None = 1515) -> list[PairRecord]:
    path, header, body = _read(path, num_columns=7)
    _check_rows(path, body, expected_rows)
    out = []
    for line, r in body:
        cls = _int(path, line, header[2], r[2])
        # the reference parses these cells with np.fromstring(sep=','); accept ';' as well
        xa, ya, xb, yb = (_num_list(path, line, header[j], r[j], "," if "," in r[j] else ";") for j in (3, 4, 5, 6))
        if len(xa) != len(ya) or len(xb) != len(yb):
            raise CsvFormatError(
                path, line, f"polygon X/Y length mismatch (source {len(xa)}/{len(ya)}, "
                f"target {len(xb)}/{len(yb)})")
        out.append(PairRecord(_text(path, line, header[0], r[0]), _text(path, line, header[1], r[1]),
                              str(cls), line, np.stack([xa, ya]), np.stack([xb, yb]),
                              extra={"class_index": cls}))
    return out


def read_tss_pairs(path, expected_rows: int | None = None) -> list[PairRecord]:
    path, header, body = _read(path, num_columns=5)
    _check_rows(path, body, expected_rows)
    out = []
    for line, r in body:
        src = _text(path, line, header[0], r[0])
        direction = _int(path, line, header[2], r[2], (1, 2))
        flip = _int(path, line, header[3], r[3], (0, 1))
        cat = _int(path, line, header[4], r[4])
        folder = src.replace("\\", "/").rsplit("/", 1)[0] if "/" in src else ""
        flow = f"{folder}/flow{direction}.flo" if folder else f"flow{direction}.flo"
        out.append(PairRecord(src, _text(path, line, header[1], r[1]), str(cat), line, flip=flip,
                              extra={"flow_direction": direction, "flow_path": flow,
                                     "class_index": cat}))
    return out


def read_flo(path) -> np.ndarray:
    """Middlebury ``.flo`` optical flow -> float32 ``H x W x 2`` (u, v). Raises ValueError."""
    with open(path, "rb") as fh:
        magic = np.fromfile(fh, np.float32, 1)
        if magic.size != 1 or abs(float(magic[0]) - 202021.25) > 1e-3:
            raise ValueError(f"{path}: not a .flo file (bad magic number)")
        wh = np.fromfile(fh, np.int32, 2)
        if wh.size != 2 or wh.min() <= 0:
            raise ValueError(f"{path}: bad .flo header")
        w, h = int(wh[0]), int(wh[1])
        data = np.fromfile(fh, np.float32, 2 * w * h)
    if data.size != 2 * w * h:
        raise ValueError(f"{path}: truncated .flo file ({data.size} of {2 * w * h} values)")
    return data.reshape(h, w, 2)
