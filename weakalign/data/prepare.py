"""High-level data steps used by ``weakalign data ...`` and the DVC stages.

Layout under ``data/`` (all produced here, never committed):

``downloads/``          verified archives (``PF-dataset.zip``, ``101_ObjectCategories.tar.gz``,
                        ...), each with a ``<name>.sha256`` note (observed checksum, origin)
``pf-willow/``          ``PF-dataset/<sub-class>/*.png|*.mat`` and ``test_pairs_pf.csv``
                        (official, or rebuilt from the ``.mat`` files) + ``pairs_provenance.json``
``pf-pascal/``          ``{test,val,train}_pairs_pf_pascal.csv``; ``PF-dataset-PASCAL/`` when the
                        images were fetched (not offline)
``caltech-101/``        ``101_ObjectCategories/<category>/*.jpg``; ``Annotations/`` and
                        ``test_pairs_caltech_with_category.csv`` when fetched (not offline)
``tss/``                ``TSS_CVPR2016/`` and ``test_pairs_tss.csv`` when fetched (not offline)
``pascal-voc-2011/``    ``TrainVal/VOCdevkit/VOC2011`` when fetched (paper-scale, not offline)
``audit/``              ``leakage.json``, ``phash.csv``
``splits/``             seeded split lists + ``manifest.json``
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .archives import check_counts, count_tree, safe_extract
from ..atomic import ensure_dir, write_json
from .download import FetchResult, SourceUnavailable, fetch
from .sources import SOURCES, SourceFile


def extract_archive(archive: Path, src: SourceFile, root: Path, log=print) -> str:
    """Extract ``archive`` into ``root/src.dataset`` atomically; 'present' or 'extracted'.

    The archive is unpacked into a hidden staging folder beside the target, its content counted
    against the manifest, and only then are the top-level folders moved into place.
    """
    parent = ensure_dir(root / src.dataset,
                        "choose another data folder (--root) or fix its permissions")
    finals = [parent / d for d in src.extract_dirs]
    if finals and all(f.is_dir() for f in finals):
        if not check_counts(count_tree(parent, src.extract_dirs), src.expected, parent):
            return "present"
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=parent))
    try:
        safe_extract(archive, staging, src.kind)
        problems = check_counts(count_tree(staging, src.extract_dirs), src.expected, archive)
        missing = [d for d in src.extract_dirs if not (staging / d).is_dir()]
        if missing:
            problems.append(f"{archive}: top-level folder(s) {missing} not in the archive")
        if problems:
            from .archives import ArchiveContentError

            raise ArchiveContentError("; ".join(problems))
        for d in src.extract_dirs:
            final = parent / d
            if final.exists():
                old = parent / f".old-{d}-{int(time.time())}"
                final.rename(old)
                shutil.rmtree(old)
            (staging / d).rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "extracted"


def fetch_sources(sources: list[SourceFile], root: Path, mirror: Path | None, *,
                  timeout: float = 60.0, extract: bool = True, log=print) -> dict[str, str]:
    """Fetch (and extract) each source; return {key: status} where status is 'ok: ...' or
    'not available: ...'. Unavailable files do not stop the others."""
    status = {}
    for src in sources:
        dest_dir = root / src.download_subdir
        try:
            res: FetchResult = fetch(src, dest_dir, mirror=mirror, timeout=timeout)
        except SourceUnavailable as exc:
            status[src.key] = f"not available: {exc}"
            log(f"  {src.filename}: NOT AVAILABLE ({exc})")
            continue
        msg = f"{res.action} ({res.size:,} bytes, sha256 {res.sha256[:12]}..., {res.verified_by})"
        if src.kind in ("zip", "tar") and extract:
            msg += "; " + extract_archive(res.path, src, root, log)
        status[src.key] = "ok: " + msg
        log(f"  {src.filename}: {msg}")
    return status


def portable_origin(origin: str, mirror: Path | None) -> str:
    """``mirror:<path inside the mirror>`` for a file copied from the offline mirror (where the
    mirror lies is the machine's business, and the provenance file is a tracked pipeline output);
    any other origin (a URL, ``present``) as it is."""
    if origin.startswith("mirror:") and mirror is not None:
        p = Path(origin[len("mirror:"):])
        try:
            return f"mirror:{p.relative_to(mirror).as_posix()}"
        except ValueError:
            return f"mirror:{p.name}"
    return origin


def prepare_pf_willow(root: Path, mirror: Path | None, *, force_rebuild: bool = False,
                      timeout: float = 20.0, log=print) -> dict:
    """Make ``pf-willow/test_pairs_pf.csv``: the official file when obtainable, else rebuilt
    from the ``.mat`` annotations (900 pairs). Writes ``pf-willow/pairs_provenance.json``."""
    from . import pfwillow
    from .csvio import read_pf_willow_pairs

    d = root / "pf-willow"
    out = d / "test_pairs_pf.csv"
    if not (d / "PF-dataset").is_dir():
        from weakalign.cli import UserError

        raise UserError(f"{d / 'PF-dataset'} missing: run `weakalign data fetch pf-willow` first")
    prov: dict = {}
    if not force_rebuild:
        src = SOURCES["test_pairs_pf.csv"]
        try:
            res = fetch(src, d, mirror=mirror, timeout=timeout)
            records = read_pf_willow_pairs(out, expected_rows=900)
            diff = pfwillow.compare_with_annotations(records, d)
            prov = {"source": "official", "origin": portable_origin(res.origin, mirror), "sha256": res.sha256,
                    "max_abs_difference_to_mat_annotations": diff}
            log(f"  test_pairs_pf.csv: official file ({res.origin}); max |csv - .mat| = {diff:.3g} px")
        except SourceUnavailable as exc:
            log(f"  test_pairs_pf.csv: official file not obtainable ({exc}); rebuilding")
    if not prov:
        n = pfwillow.write_pairs(d, out)
        records = read_pf_willow_pairs(out, expected_rows=900)
        prov = {"source": "rebuilt from the .mat annotations (weakalign.data.pfwillow)",
                "pairs": n, "keypoints_per_image": 10,
                "order": "sub-class, source image, target image (sorted by name)",
                "coordinates": "pixels, 1-based, copied unchanged from pts_coord"}
        log(f"  test_pairs_pf.csv: rebuilt from .mat annotations: {n} pairs")
    from ..atomic import sha256_file

    prov["sha256"] = sha256_file(out)
    prov["rows"] = len(records)
    write_json(d / "pairs_provenance.json", prov)
    return prov
