"""Leakage audit: training images against evaluation images, by perceptual hash.

What is compared
    *Training pool*: every Caltech-101 image of the categories used for training (all of them
    but ``data.exclude_categories``) -- a superset of every image the splits can draw -- and,
    when present (paper-scale profile), every image of the PF-PASCAL weak-training pair list and
    every Pascal VOC 2011 JPEG.
    The audit runs BEFORE the splits are drawn; ``weakalign data splits`` then leaves out every
    image listed in ``excluded`` (and every unreadable one), so the split lists used for
    training are clean by construction.

    *Evaluation images*: PF-WILLOW (the 100 images), and when present PF-PASCAL (test and val
    pair lists), the Caltech-101 evaluation pairs and TSS.

How
    ``imagehash.phash`` (DCT hash, 64 bits) of every image, computed once (images are decoded
    with :func:`weakalign.data.images.load_image`, EXIF orientation applied). Each evaluation
    image is also hashed mirrored (left-right), because the training pipeline flips images. A
    (training, evaluation) pair is a near-duplicate when the Hamming distance is
    ``<= data.audit.threshold`` (6 of 64 bits by default). Brute force with numpy bit
    operations (``bitwise_count`` of XORs): tens of millions of comparisons per second.

    Training images that are themselves evaluation images by path (Caltech-101 evaluation
    pairs) are excluded too, with distance 0.

PF-PASCAL pair overlap
    The published PF-PASCAL lists share pairs: the audit compares the weak-training list with the
    test and validation lists as ordered and unordered image pairs, and counts shared images.
    This needs only the CSVs, which are in the offline mirror.

Outputs (written atomically)
    ``data/audit/leakage.json`` -- see :func:`run_audit` for the keys.
    ``data/audit/phash.csv`` -- ``path,role,set,phash,phash_flipped`` for every hashed image
    (paths relative to ``data/``); the splits reuse it (near-duplicate groups inside the pool).
"""

from __future__ import annotations

import csv
import os
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..atomic import write_csv, write_json
from .images import CorruptImageError, load_image
from ..config import as_block
from .params import Audit

PHASH_FILE = "phash.csv"
LEAKAGE_FILE = "leakage.json"
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}


# ---------------------------------------------------------------------------------------------
# hashing


def _bits_to_int(bits: np.ndarray) -> int:
    v = 0
    for b in bits.flatten():
        v = (v << 1) | int(bool(b))
    return v


def phash_array(arr: np.ndarray, hash_size: int = Audit.hash_size) -> int:
    import imagehash
    from PIL import Image

    return _bits_to_int(imagehash.phash(Image.fromarray(arr), hash_size=hash_size).hash)


def _hash_job(args):
    path, hash_size, with_flip = args
    try:
        arr = load_image(path)
    except CorruptImageError as exc:  # the reason alone: the path is the key (written relative to the data root)
        return path, None, None, f"corrupt or truncated image: {exc.reason}"
    except OSError as exc:
        return path, None, None, f"unreadable: {exc.strerror or type(exc).__name__}"
    h = phash_array(arr, hash_size)
    hf = phash_array(np.ascontiguousarray(arr[:, ::-1]), hash_size) if with_flip else None
    return path, h, hf, None


def hash_images(paths, hash_size=Audit.hash_size, with_flip=False, jobs=1, desc="hashing"):
    """{path: (hash, flipped hash or None)} and {path: error} for unreadable files."""
    from tqdm import tqdm
    import sys

    paths = [str(p) for p in paths]
    hashes, errors = {}, {}
    work = [(p, hash_size, with_flip) for p in paths]
    bar = tqdm(total=len(work), desc=desc, unit="img", disable=not sys.stderr.isatty(),
               leave=False)
    if jobs > 1 and len(work) > 200:
        with get_context("spawn" if os.name == "nt" else "fork").Pool(jobs) as pool:
            results = pool.imap(_hash_job, work, chunksize=64)
            for p, h, hf, err in results:
                (errors.__setitem__(p, err) if err else hashes.__setitem__(p, (h, hf)))
                bar.update()
    else:
        for item in work:
            p, h, hf, err = _hash_job(item)
            (errors.__setitem__(p, err) if err else hashes.__setitem__(p, (h, hf)))
            bar.update()
    bar.close()
    return hashes, errors


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between two uint64 hash vectors (len(a) x len(b), uint8)."""
    a = np.asarray(a, dtype=np.uint64)[:, None]
    b = np.asarray(b, dtype=np.uint64)[None, :]
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.uint8)
    # numpy < 2: popcount through bytes
    by = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(by, axis=-1).sum(axis=-1).astype(np.uint8)


def near_pairs(a: np.ndarray, b: np.ndarray, threshold: int, chunk: int = 512):
    """Indices (i, j, d) with d = hamming(a[i], b[j]) <= threshold, chunked for memory."""
    out = []
    for s in range(0, len(a), chunk):
        d = hamming_matrix(a[s:s + chunk], b)
        ii, jj = np.nonzero(d <= threshold)
        out.extend((int(i) + s, int(j), int(d[i, j])) for i, j in zip(ii, jj))
    return out


def nearest_distances(a: np.ndarray, b: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each a[i], the smallest distance to any b[j]."""
    best = np.full(len(a), 255, dtype=np.uint8)
    for s in range(0, len(a), chunk):
        if len(b):
            best[s:s + chunk] = hamming_matrix(a[s:s + chunk], b).min(axis=1)
    return best


# ---------------------------------------------------------------------------------------------
# image sets


def caltech_pool(root: Path, exclude: list[str]) -> list[Path]:
    base = root / "caltech-101" / "101_ObjectCategories"
    if not base.is_dir():
        return []
    out = []
    for cat in sorted(p for p in base.iterdir() if p.is_dir()):
        if cat.name in exclude:
            continue
        out.extend(sorted(p for p in cat.iterdir()
                          if p.is_file() and p.suffix.lower() in IMAGE_EXTS))
    return out


def voc_images(root: Path) -> list[Path]:
    """Pascal VOC 2011 JPEGs when fetched (``data/pascal-voc-2011/**/VOC2011/JPEGImages``)."""
    base = root / "pascal-voc-2011"
    if not base.is_dir():
        return []
    for jpeg_dir in sorted(base.glob("**/VOC2011/JPEGImages")):
        return sorted(p for p in jpeg_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    return []


def _pf_willow_sets(root: Path, present: dict, absent: dict) -> None:
    from .datasets import PFWillowDataset

    ds = PFWillowDataset(root=root, _check=False)
    if ds.records and not ds.missing_files():
        present["pf-willow"] = ds.image_paths()
    elif (root / "pf-willow" / "PF-dataset").is_dir():  # pair list not built yet: all images
        present["pf-willow"] = sorted((root / "pf-willow" / "PF-dataset").glob("*/*.png"))
    else:
        absent["pf-willow"] = "not available: images missing (weakalign data fetch pf-willow)"


def _pf_pascal_sets(root: Path, present: dict, absent: dict) -> None:
    from .datasets import PFPascalDataset

    for split in ("test", "val"):
        name = f"pf-pascal-{split}"
        ds = PFPascalDataset(root=root, split=split, _check=False)
        miss = ds.missing_files()
        if not miss:
            present[name] = ds.image_paths()
        else:
            first = Path(miss[0])
            first = first.relative_to(root) if first.is_relative_to(root) else first
            absent[name] = f"not available: {len(miss)} file(s) missing, e.g. {first}"


def _caltech_sets(root: Path, present: dict, absent: dict) -> None:
    from .datasets import CaltechDataset

    ds = CaltechDataset(root=root, _check=False)
    if ds.records:
        present["caltech-101-eval"] = [ds._resolve(p) for p in dict.fromkeys(
            x for r in ds.records for x in (r.source, r.target))]
        present["caltech-101-eval"] = [p for p in present["caltech-101-eval"] if p.is_file()]
    else:
        absent["caltech-101-eval"] = "not available: pair list missing"


def _tss_sets(root: Path, present: dict, absent: dict) -> None:
    from .datasets import TSSDataset

    ds = TSSDataset(root=root, _check=False)
    if ds.records and not ds.missing_files():
        present["tss"] = [ds._resolve(p) for p in dict.fromkeys(
            x for r in ds.records for x in (r.source, r.target))]
    else:
        absent["tss"] = "not available"


#: How each benchmark's evaluation images are collected; the set names each one produces are
#: declared by its :class:`weakalign.data.registry.BenchmarkSpec` (``audit_sets``).
EVAL_SET_COLLECTORS = {"pf-willow": _pf_willow_sets, "pf-pascal": _pf_pascal_sets,
                       "caltech-101": _caltech_sets, "tss": _tss_sets}


def _eval_sets(root: Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """{set name: image paths} of the evaluation sets present, and {name: reason} of absent:
    every benchmark of the registry with an audit role (``audit_sets``). A declared benchmark
    without a collector here is an error (its images would silently escape the audit)."""
    from .registry import BENCHMARKS

    present, absent = {}, {}
    for name, spec in BENCHMARKS.items():
        if not spec.audit_sets:
            continue
        if name not in EVAL_SET_COLLECTORS:
            raise NotImplementedError(f"benchmark {name!r} declares audit sets {spec.audit_sets} but "
                                      "weakalign/data/audit.py has no collector for its images (EVAL_SET_COLLECTORS)")
        EVAL_SET_COLLECTORS[name](root, present, absent)
        got = {k for k in (*present, *absent) if k in spec.audit_sets}
        if got != set(spec.audit_sets):
            raise RuntimeError(f"audit collector of {name!r} produced {sorted(got)}, its BenchmarkSpec declares {list(spec.audit_sets)}")
    return present, absent


# ---------------------------------------------------------------------------------------------
# PF-PASCAL pair overlap (CSV only)


def pf_pascal_pair_overlap(root: Path) -> dict:
    from .csvio import read_pair_list, read_pf_pascal_pairs

    d = root / "pf-pascal"
    files = {"train": d / "train_pairs_pf_pascal.csv", "test": d / "test_pairs_pf_pascal.csv",
             "val": d / "val_pairs_pf_pascal.csv"}
    missing = [p.relative_to(root).as_posix() for p in files.values() if not p.is_file()]  # relative: committed in leakage.json
    if missing:
        return {"available": False, "count": "not available",
                "pairs": "not available", "reason": f"missing {missing}"}
    lists = {
        "train": read_pair_list(files["train"], require_flip=True),
        "test": read_pf_pascal_pairs(files["test"]),
        "val": read_pf_pascal_pairs(files["val"]),
    }
    ordered = {k: {(r.source, r.target) for r in v} for k, v in lists.items()}
    unordered = {k: {frozenset((r.source, r.target)) for r in v} for k, v in lists.items()}
    images = {k: {x for r in v for x in (r.source, r.target)} for k, v in lists.items()}

    def cmp(a, b):
        shared = sorted(tuple(sorted(p)) for p in unordered[a] & unordered[b])
        return {
            "ordered_pairs": len(ordered[a] & ordered[b]),
            "unordered_pairs": len(shared),
            "shared_images": len(images[a] & images[b]),
            "pairs": [list(p) for p in shared],
        }

    train_rows_leaking = sum(1 for r in lists["train"]
                             if frozenset((r.source, r.target)) in unordered["test"])
    out = {
        "available": True,
        # headline: distinct training image pairs (unordered) that are also test pairs
        "count": len(unordered["train"] & unordered["test"]),
        "definition": "distinct unordered (source, target) image pairs of the weak-training "
                      "list that are also pairs of the test list",
        "train_rows": len(lists["train"]),
        "train_distinct_ordered_pairs": len(ordered["train"]),
        "train_rows_in_test_pairs": train_rows_leaking,
        "train_vs_test": cmp("train", "test"),
        "train_vs_val": cmp("train", "val"),
        "val_vs_test": cmp("val", "test"),
        "images": {k: len(v) for k, v in images.items()},
    }
    out["pairs"] = out["train_vs_test"]["pairs"]
    return out


# ---------------------------------------------------------------------------------------------


def run_audit(root: Path, params, log=print) -> dict:
    """Hash, compare, write ``audit/leakage.json`` and ``audit/phash.csv``; return the report.

    Report keys: ``count`` (near-duplicate (train, eval) pairs), ``threshold``, ``pairs``
    ([{train, eval, eval_set, distance, flipped}], sorted by distance), ``excluded`` (training
    images left out of the splits), ``pf_pascal_pair_overlap``, ``skipped_images`` ({count,
    paths, reasons}: unreadable images, left out of the splits), ``training_images`` /
    ``evaluation_images`` (what was hashed, what was not available), ``nearest_above_threshold``
    (the closest non-matching pairs, to show the margin), ``method``.
    """
    t0 = time.time()
    root = Path(root)
    params = as_block("data", params, complete=True)
    a = params.audit
    thr, hs, jobs = int(a.threshold), int(a.hash_size), int(a.jobs)
    if hs != 8:
        raise ValueError("only hash_size 8 (64-bit hashes) is supported by the numpy comparison")

    def rel(p) -> str:
        try:
            return Path(p).relative_to(root).as_posix()
        except ValueError:
            return str(p)

    # training pool
    train_sets: dict[str, list[Path]] = {}
    train_absent: dict[str, str] = {}
    pool = caltech_pool(root, params.exclude_categories)
    if pool:
        train_sets["caltech-101"] = pool
    else:
        train_absent["caltech-101"] = "not available: images missing (weakalign data fetch caltech-101)"
    pp_train = root / "pf-pascal" / "train_pairs_pf_pascal.csv"
    if pp_train.is_file():
        from .csvio import read_pair_list

        names = dict.fromkeys(x for r in read_pair_list(pp_train) for x in (r.source, r.target))
        imgs = [root / "pf-pascal" / n for n in names]
        if all(p.is_file() for p in imgs):
            train_sets["pf-pascal-train"] = imgs
        else:
            train_absent["pf-pascal-train"] = (
                f"not available: {sum(not p.is_file() for p in imgs)} of {len(imgs)} images "
                "missing (PF-dataset-PASCAL.zip not fetched)")
    else:
        train_absent["pf-pascal-train"] = "not available: pair list missing"

    voc = voc_images(root)
    if voc:
        train_sets["pascal-voc-2011"] = voc
    else:
        train_absent["pascal-voc-2011"] = ("not available (paper-scale profile only: "
                                           "weakalign data fetch pascal-voc-2011)")

    eval_sets, eval_absent = _eval_sets(root)

    train_paths = list(dict.fromkeys(p for v in train_sets.values() for p in v))
    eval_paths = list(dict.fromkeys(p for v in eval_sets.values() for p in v))
    log(f"audit: hashing {len(train_paths)} training-pool and {len(eval_paths)} evaluation images")
    th, terr = hash_images(train_paths, hs, False, jobs, "hash train")
    eh, eerr = hash_images(eval_paths, hs, bool(a.check_flips), jobs, "hash eval")

    t_keys = [p for p in map(str, train_paths) if p in th]
    e_keys = [p for p in map(str, eval_paths) if p in eh]
    tv = np.array([th[p][0] for p in t_keys], dtype=np.uint64)
    ev = np.array([eh[p][0] for p in e_keys], dtype=np.uint64)
    eset = {}
    for name, ps in eval_sets.items():
        for p in ps:
            eset.setdefault(str(p), name)

    found: dict[tuple[str, str], dict] = {}

    def add(i, j, d, flipped):
        key = (t_keys[i], e_keys[j])
        if key not in found or d < found[key]["distance"]:
            found[key] = {"train": rel(t_keys[i]), "eval": rel(e_keys[j]),
                          "eval_set": eset[e_keys[j]], "distance": int(d), "flipped": flipped}

    for i, j, d in near_pairs(tv, ev, thr):
        add(i, j, d, False)
    if a.check_flips and len(e_keys):
        evf = np.array([eh[p][1] for p in e_keys], dtype=np.uint64)
        for i, j, d in near_pairs(tv, evf, thr):
            add(i, j, d, True)
    # identical paths (an evaluation image inside the training pool)
    e_index = {p: j for j, p in enumerate(e_keys)}
    for i, p in enumerate(t_keys):
        if p in e_index:
            add(i, e_index[p], 0, False)

    pairs = sorted(found.values(), key=lambda x: (x["distance"], x["train"], x["eval"]))
    excluded = sorted({x["train"] for x in pairs})

    # margin: nearest non-matching pairs
    nearest = []
    if len(tv) and len(ev):
        best = nearest_distances(tv, ev)
        order = np.argsort(best, kind="stable")
        for i in order:
            if best[i] > thr:
                d = hamming_matrix(tv[i:i + 1], ev)[0]
                j = int(np.argmin(d))
                nearest.append({"train": rel(t_keys[i]), "eval": rel(e_keys[j]),
                                "distance": int(d[j])})
            if len(nearest) >= 10:
                break

    skipped = {rel(p): e for p, e in sorted({**terr, **eerr}.items())}
    report = {
        "version": 1,
        "method": {
            "hash": "imagehash.phash", "hash_bits": hs * hs, "threshold": thr,
            "near_duplicate": "Hamming distance <= threshold",
            "flipped_eval_images": bool(a.check_flips),
            "image_decoding": "weakalign.data.images.load_image (EXIF orientation applied)",
        },
        "count": len(pairs),
        "threshold": thr,
        "pairs": pairs,
        "excluded": excluded,
        "excluded_count": len(excluded),
        "excluded_by_eval_set": {
            name: len({x["train"] for x in pairs if x["eval_set"] == name}) for name in eval_sets
        },
        "training_images": {
            "count": len(t_keys),
            "sets": {**{k: len(v) for k, v in train_sets.items()}, **train_absent},
            "exclude_categories": list(params.exclude_categories),
        },
        "evaluation_images": {
            "count": len(e_keys),
            "sets": {**{k: len(v) for k, v in eval_sets.items()}, **eval_absent},
        },
        "nearest_above_threshold": nearest,
        "pf_pascal_pair_overlap": pf_pascal_pair_overlap(root),
        "skipped_images": {"count": len(skipped), "paths": list(skipped),
                           "reasons": skipped},
    }
    out_dir = root / "audit"
    rows = []
    for name, ps in train_sets.items():
        for p in ps:
            if str(p) in th:
                rows.append([rel(p), "train", name, f"{th[str(p)][0]:016x}", ""])
    for name, ps in eval_sets.items():
        for p in ps:
            if str(p) in eh:
                h, hf = eh[str(p)]
                rows.append([rel(p), "eval", name, f"{h:016x}", "" if hf is None else f"{hf:016x}"])
    write_csv(out_dir / PHASH_FILE, ["path", "role", "set", "phash", "phash_flipped"], rows)
    write_json(out_dir / LEAKAGE_FILE, report)
    log(f"audit: {len(pairs)} near-duplicate pair(s) (threshold {thr}/64 bits), "
        f"{len(excluded)} training image(s) excluded, {len(skipped)} unreadable image(s) "
        f"skipped; PF-PASCAL train/test pair overlap: "
        f"{report['pf_pascal_pair_overlap']['count']}; {time.time() - t0:.1f} s")
    return report


def read_phash_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
