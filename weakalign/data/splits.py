"""Seeded training / validation splits, written to ``data/splits/`` (default CPU profile).

Inputs: the Caltech-101 training pool hashed by the audit (``data/audit/phash.csv``) minus
every image the audit excluded (near-duplicates of evaluation images) or could not read
(``data/audit/leakage.json``). So the audit must run first (``weakalign data audit``).

Procedure (``numpy.random.default_rng(data.seed)``; everything sorted before sampling, so the
result depends only on the inputs and the parameters):

1. Near-duplicate groups inside the pool (phash distance <= ``data.pool_duplicate_threshold``,
   connected components) are kept together, so a training image and a validation image are
   never near-copies of each other, and no pair is made of two copies of one photo.
2. Per category, whole groups are moved to the *held-out side* until it holds
   ``max(2, round(heldout_fraction * n))`` images; the rest is the *training side*.
3. ``strong_train_images.csv``: ``data.strong_train_images`` images drawn from the training
   side (0: every training-side image); ``strong_val_images.csv``: ``data.strong_val_images`` from the held-out side. These
   are the offline stand-in for Pascal VOC 2011 (synthetic strong pairs are generated from
   them by the training code).
4. ``weak_train_pairs.csv``: ``data.weak_train_pairs`` distinct unordered same-category pairs
   from the training side (category drawn uniformly, then two distinct images not from the
   same near-duplicate group), each with ``flip`` = 1 with probability
   ``data.weak_train_flip_prob``; ``weak_val_pairs.csv``: ``data.weak_val_pairs`` pairs from
   the held-out side, ``flip`` = 0. These stand in for the PF-PASCAL weak-training pairs.
5. PF-PASCAL (paper-scale profile), when its pair lists are present:
   ``pf_pascal_weak_train_pairs_paper.csv`` is the published list unchanged (2,940 rows, with
   its train/test overlap); ``pf_pascal_weak_train_pairs_clean.csv`` drops every row whose
   unordered image pair is also a test or validation pair, or which uses an image of the test
   list, or an image the audit excluded.

6. ``pascal_voc_2011_images_clean.csv`` (paper-scale, only when VOC 2011 was fetched): every
   VOC 2011 JPEG the audit did not exclude.

Image paths in the Caltech split files are relative to ``data/caltech-101``; in the PF-PASCAL
files relative to ``data/pf-pascal`` (as in the official lists); in the VOC list relative to
``data/pascal-voc-2011``.
``manifest.json`` records the parameters, the counts and the sha256 of every file written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..atomic import sha256_file, write_csv, write_json
from .audit import LEAKAGE_FILE, PHASH_FILE, near_pairs, read_phash_csv
from ..config import as_block

CALTECH_PREFIX = "caltech-101/"
FILES = {
    "strong_train": "strong_train_images.csv",
    "strong_val": "strong_val_images.csv",
    "weak_train": "weak_train_pairs.csv",
    "weak_val": "weak_val_pairs.csv",
    "pf_pascal_paper": "pf_pascal_weak_train_pairs_paper.csv",
    "pf_pascal_clean": "pf_pascal_weak_train_pairs_clean.csv",
    "voc2011": "pascal_voc_2011_images_clean.csv",
}


class SplitError(RuntimeError):
    pass


def _groups(paths: list[str], hashes: np.ndarray, threshold: int) -> dict[str, int]:
    """Union-find over near-duplicate pairs inside the pool -> {path: group id}."""
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in near_pairs(hashes, hashes, threshold):
        if i < j:
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    return {p: find(i) for i, p in enumerate(paths)}


def _sample_pairs(by_cat: dict[str, list[str]], group: dict[str, int], n: int, rng,
                  what: str) -> list[tuple[str, str, str]]:
    cats = sorted(c for c, v in by_cat.items()
                  if len({group[x] for x in v}) >= 2)
    if not cats and n:
        raise SplitError(f"{what}: no category with two distinct images")
    capacity = sum(len(by_cat[c]) * (len(by_cat[c]) - 1) // 2 for c in cats)
    if n > capacity:
        raise SplitError(f"{what}: {n} pairs requested, at most {capacity} exist")
    seen, out = set(), []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise SplitError(f"{what}: could not draw {n} distinct pairs")
        c = cats[int(rng.integers(len(cats)))]
        imgs = by_cat[c]
        i, j = rng.choice(len(imgs), size=2, replace=False)
        a, b = imgs[int(i)], imgs[int(j)]
        if group[a] == group[b]:
            continue
        key = frozenset((a, b))
        if key in seen:
            continue
        seen.add(key)
        out.append((a, b, c))
    return out


def _strip(p: str) -> str:
    return p[len(CALTECH_PREFIX):] if p.startswith(CALTECH_PREFIX) else p


def make_splits(root: Path, params, log=print) -> dict:
    params = as_block("data", params, complete=True)  # DataParams (a partial dict is completed)
    root = Path(root)
    audit_dir = root / "audit"
    if not (audit_dir / LEAKAGE_FILE).is_file() or not (audit_dir / PHASH_FILE).is_file():
        from weakalign.cli import UserError

        raise UserError(f"{audit_dir / LEAKAGE_FILE} missing: run `weakalign data audit` first")
    report = json.loads((audit_dir / LEAKAGE_FILE).read_text())
    excluded = set(report["excluded"]) | set(report["skipped_images"]["paths"])
    rows = [r for r in read_phash_csv(audit_dir / PHASH_FILE)
            if r["role"] == "train" and r["set"] == "caltech-101"]
    if not rows:
        from weakalign.cli import UserError

        raise UserError("no Caltech-101 training images in the audit: run "
                        "`weakalign data fetch caltech-101` then `weakalign data audit`")
    exclude_cats = set(params.exclude_categories)
    pool = sorted((r["path"], int(r["phash"], 16)) for r in rows
                  if r["path"] not in excluded and Path(r["path"]).parent.name not in exclude_cats)
    paths = [p for p, _ in pool]
    hashes = np.array([h for _, h in pool], dtype=np.uint64)
    group = _groups(paths, hashes, int(params.pool_duplicate_threshold))
    n_groups = len(set(group.values()))

    rng = np.random.default_rng(int(params.seed))
    by_cat: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        by_cat[Path(p).parent.name].append(p)
    train_side: dict[str, list[str]] = {}
    held_side: dict[str, list[str]] = {}
    frac = float(params.heldout_fraction)
    for c in sorted(by_cat):
        members = by_cat[c]
        gids = sorted({group[p] for p in members})
        rng.shuffle(gids)
        want = max(2, int(round(frac * len(members)))) if frac > 0 else 0
        held_g, count = set(), 0
        for g in gids:
            if count >= want:
                break
            held_g.add(g)
            count += sum(1 for p in members if group[p] == g)
        held_side[c] = [p for p in members if group[p] in held_g]
        train_side[c] = [p for p in members if group[p] not in held_g]

    def draw_images(side, n, what):
        allp = sorted(p for v in side.values() for p in v)
        if n == 0:  # 0 = every image of that side
            return allp
        if n > len(allp):
            raise SplitError(f"{what}: {n} images requested, only {len(allp)} available")
        idx = rng.choice(len(allp), size=n, replace=False)
        return sorted(allp[int(i)] for i in idx)

    strong_train = draw_images(train_side, int(params.strong_train_images), "strong_train")
    strong_val = draw_images(held_side, int(params.strong_val_images), "strong_val")
    weak_train = _sample_pairs(train_side, group, int(params.weak_train_pairs), rng, "weak_train")
    flips = rng.random(len(weak_train)) < float(params.weak_train_flip_prob)
    weak_val = _sample_pairs(held_side, group, int(params.weak_val_pairs), rng, "weak_val")

    out_dir = root / "splits"
    written = {}
    cat = lambda p: Path(p).parent.name  # noqa: E731
    written["strong_train"] = write_csv(out_dir / FILES["strong_train"], ["image", "category"],
                                        ([_strip(p), cat(p)] for p in strong_train))
    written["strong_val"] = write_csv(out_dir / FILES["strong_val"], ["image", "category"],
                                      ([_strip(p), cat(p)] for p in strong_val))
    header = ["source_image", "target_image", "class", "flip"]
    written["weak_train"] = write_csv(
        out_dir / FILES["weak_train"], header,
        ([_strip(a), _strip(b), c, int(f)] for (a, b, c), f in zip(weak_train, flips)))
    written["weak_val"] = write_csv(out_dir / FILES["weak_val"], header,
                                    ([_strip(a), _strip(b), c, 0] for a, b, c in weak_val))

    pf = _pf_pascal_lists(root, out_dir, report, excluded)
    written.update(pf.pop("written", {}))
    # paper-scale strong training images (only when VOC 2011 was fetched and audited)
    voc_rows = sorted(r["path"] for r in read_phash_csv(audit_dir / PHASH_FILE)
                      if r["role"] == "train" and r["set"] == "pascal-voc-2011"
                      and r["path"] not in excluded)
    (out_dir / FILES["voc2011"]).unlink(missing_ok=True)
    if voc_rows:
        written["voc2011"] = write_csv(out_dir / FILES["voc2011"], ["image"],
                                       ([p[len("pascal-voc-2011/"):]] for p in voc_rows))

    held_imgs = {p for v in held_side.values() for p in v}
    train_imgs = {p for v in train_side.values() for p in v}
    assert not held_imgs & train_imgs
    manifest = {
        "version": 1,
        "params": params.to_dict(),
        "pool": {
            "caltech_images_hashed": len(rows),
            "excluded_by_audit": len(set(report["excluded"]) & {r["path"] for r in rows}),
            "skipped_unreadable": sum(p.startswith(CALTECH_PREFIX)
                                      for p in report["skipped_images"]["paths"]),
            "images_used": len(paths),
            "categories": len(by_cat),
            "near_duplicate_groups_merged": len(paths) - n_groups,
            "training_side_images": len(train_imgs),
            "heldout_side_images": len(held_imgs),
        },
        "rows": written,
        "image_root": {"caltech": "data/caltech-101", "pf_pascal": "data/pf-pascal",
                       "voc2011": "data/pascal-voc-2011"},
        "pf_pascal": pf,
        "sha256": {k: sha256_file(out_dir / FILES[k]) for k in written},
    }
    write_json(out_dir / "manifest.json", manifest)
    log("splits: " + ", ".join(f"{FILES[k]} {n}" for k, n in written.items())
        + f" ({len(paths)} pool images, {len(held_imgs)} held out)")
    return manifest


def _pf_pascal_lists(root: Path, out_dir: Path, report: dict, excluded: set[str]) -> dict:
    from .csvio import read_pair_list, read_pf_pascal_pairs

    d = root / "pf-pascal"
    train_csv = d / "train_pairs_pf_pascal.csv"
    for k in ("pf_pascal_paper", "pf_pascal_clean"):
        (out_dir / FILES[k]).unlink(missing_ok=True)
    if not train_csv.is_file():
        return {"available": False, "reason": f"{train_csv} missing"}
    train = read_pair_list(train_csv, require_flip=True)
    with open(train_csv, newline="", encoding="utf-8") as fh:
        import csv

        raw = list(csv.reader(fh))
    header, body = raw[0], [r for r in raw[1:] if r]
    written = {"pf_pascal_paper": write_csv(out_dir / FILES["pf_pascal_paper"], header, body)}
    bad_pairs, test_images = set(), set()
    for name in ("test", "val"):
        f = d / f"{name}_pairs_pf_pascal.csv"
        if f.is_file():
            for r in read_pf_pascal_pairs(f):
                bad_pairs.add(frozenset((r.source, r.target)))
                if name == "test":
                    test_images.update((r.source, r.target))
    excl = {p[len("pf-pascal/"):] for p in excluded if p.startswith("pf-pascal/")}
    keep, dropped = [], {"pair_in_test_or_val": 0, "image_in_test": 0, "audit_excluded": 0}
    for r, row in zip(train, body):
        if frozenset((r.source, r.target)) in bad_pairs:
            dropped["pair_in_test_or_val"] += 1
        elif r.source in test_images or r.target in test_images:
            dropped["image_in_test"] += 1
        elif r.source in excl or r.target in excl:
            dropped["audit_excluded"] += 1
        else:
            keep.append(row)
    written["pf_pascal_clean"] = write_csv(out_dir / FILES["pf_pascal_clean"], header, keep)
    return {"available": True, "rows_paper": len(body), "rows_clean": len(keep),
            "dropped_rows": dropped,
            "image_check": ("paths and perceptual hash"
                            if isinstance(report["training_images"]["sets"].get("pf-pascal-train"), int)
                            else "paths only (PF-PASCAL images not available)"),
            "written": written}
