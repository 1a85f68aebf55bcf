"""``weakalign data ...`` sub-commands.

====================================  ==========================================================
``weakalign data fetch NAME...``      fetch, verify and extract (groups: pf-willow, pf-pascal,
                                      pf-pascal-images, caltech-101, caltech-101-annotations,
                                      tss, pascal-voc-2011, pf-willow-pairs; or file names)
``weakalign data prepare-pf-willow``  official ``test_pairs_pf.csv`` or rebuild from ``.mat``
``weakalign data audit``              leakage audit -> ``data/audit/leakage.json``
``weakalign data splits``             seeded split lists -> ``data/splits/``
``weakalign data status``             what is present / available, which mirror is used
====================================  ==========================================================

Common options: ``--root`` (default ``data`` under the project root), ``--mirror`` (overrides
``WEAKALIGN_DATA_MIRROR``; ``none`` = network). Each command ends with a one-line summary.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _root(args) -> Path:
    from .paths import data_root

    return data_root(args.root)


def _mirror(args):
    from .paths import MIRROR_ENV, mirror_dir

    if getattr(args, "mirror", None) is not None:
        os.environ[MIRROR_ENV] = args.mirror
    m = mirror_dir()
    if m is not None and not m.is_dir():
        from weakalign.cli import UserError

        raise UserError(f"offline mirror folder {m} does not exist (${MIRROR_ENV}); "
                        f"set {MIRROR_ENV}=none to download from the official URLs")
    return m


def _fetch(args) -> int:
    from .paths import describe_mirror
    from .prepare import fetch_sources
    from .sources import resolve

    from ..atomic import ensure_dir

    t0 = time.time()
    root, mirror = _root(args), _mirror(args)
    sources = resolve(args.names)
    ensure_dir(root, "choose another data folder (--root) or fix its permissions")
    print(f"fetch: {', '.join(args.names)} into {root}; {describe_mirror()}")
    try:
        status = fetch_sources(sources, root, mirror, timeout=args.timeout,
                               extract=not args.no_extract)
    except ValueError as exc:  # VerificationError, UnsafeArchiveError, ArchiveContentError
        from weakalign.cli import UserError

        raise UserError(str(exc)) from exc
    bad = [k for k, v in status.items() if not v.startswith("ok")]
    print(f"fetch: {len(status) - len(bad)} of {len(status)} file(s) ready"
          + (f"; not available: {', '.join(bad)}" if bad else "") + f" ({time.time() - t0:.1f} s)")
    if bad and not args.allow_missing:
        from weakalign.cli import UserError

        reasons = "; ".join(f"{k}: {status[k].removeprefix('not available: ')}" for k in bad)
        raise UserError(f"not available: {reasons} (--allow-missing to continue without them)")
    return 0


def _prepare_pf_willow(args) -> int:
    from .prepare import prepare_pf_willow

    t0 = time.time()
    try:
        prov = prepare_pf_willow(_root(args), _mirror(args), force_rebuild=args.rebuild)
    except ValueError as exc:  # CsvFormatError, AnnotationError, VerificationError
        from weakalign.cli import UserError

        raise UserError(str(exc)) from exc
    print(f"prepare-pf-willow: {prov['rows']} pairs, source: {prov['source']} "
          f"({time.time() - t0:.1f} s)")
    return 0


def _params(args):
    """The ``data`` block (:class:`weakalign.data.params.DataParams`) with the command's
    ``--threshold`` / ``--jobs`` options applied."""
    import dataclasses

    from .params import load_params

    p = load_params(args.params)
    changes = {k: getattr(args, k) for k in ("threshold", "jobs") if getattr(args, k, None) is not None}
    return dataclasses.replace(p, audit=dataclasses.replace(p.audit, **changes)) if changes else p


def _audit(args) -> int:
    from .audit import run_audit

    t0 = time.time()
    rep = run_audit(_root(args), _params(args))
    ov = rep["pf_pascal_pair_overlap"]
    print(f"audit: {rep['count']} near-duplicate pair(s), {rep['excluded_count']} training image(s) "
          f"excluded, {rep['skipped_images']['count']} skipped, PF-PASCAL train/test shared pairs: "
          f"{ov['count']} ({time.time() - t0:.1f} s)")
    return 0


def _splits(args) -> int:
    from .splits import make_splits

    t0 = time.time()
    m = make_splits(_root(args), _params(args))
    print(f"splits: written {sum(m['rows'].values())} rows in {len(m['rows'])} file(s) "
          f"({time.time() - t0:.1f} s)")
    return 0


def _status(args) -> int:
    from .download import find_in_mirror
    from .paths import describe_mirror, project_root
    from .registry import EVALUATION_BENCHMARKS, benchmark_status
    from .sources import SOURCES

    root = _root(args)
    mirror = _mirror(args)
    out = {"project_root": str(project_root()), "data_root": str(root),
           "mirror": describe_mirror(), "files": {}, "benchmarks": {}}
    for key, s in SOURCES.items():
        local = root / s.download_subdir / s.filename
        out["files"][key] = {
            "dataset": s.dataset, "present": local.is_file(),
            "in_mirror": bool(mirror and find_in_mirror(s, mirror)), "url": s.url,
        }
    statuses = {name: benchmark_status(name, root) for name in EVALUATION_BENCHMARKS}
    for name, st in statuses.items():
        out["benchmarks"][name] = "available" if st.available else st.reason
    splits = root / "splits" / "manifest.json"
    out["splits"] = json.loads(splits.read_text())["rows"] if splits.is_file() else "not written"
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"project root: {out['project_root']}\ndata root:    {root}\n{out['mirror']}")
        print("files:")
        for k, v in out["files"].items():
            flags = ("present" if v["present"] else "-------") + (
                "  in mirror" if v["in_mirror"] else "")
            print(f"  {k:40s} {flags}")
        print("benchmarks:")
        for k, st in statuses.items():
            line = st.summary
            if not st.available:
                line += "; to get it: " + st.how.split(";")[0]
            print(f"  {k:12s} {line}")
        print(f"splits: {out['splits']}")
    n_ok = sum(v == "available" for v in out["benchmarks"].values())
    print(f"status: {n_ok} of {len(out['benchmarks'])} benchmark(s) available")
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="fetch, verify and prepare datasets",
                       description=__doc__.split("\n\n")[0])
    dsub = p.add_subparsers(dest="data_command", metavar="STEP")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    def common(q, mirror=True):
        q.add_argument("--root", default="data", help="data folder (default: data/)")
        if mirror:
            q.add_argument("--mirror", default=None,
                           help="offline mirror folder (overrides $WEAKALIGN_DATA_MIRROR; "
                                "'none' = download from the official URLs)")

    q = dsub.add_parser("fetch", help="fetch, verify and extract datasets")
    q.add_argument("names", nargs="+", metavar="NAME",
                   help="pf-willow, pf-pascal, pf-pascal-images, caltech-101, "
                        "caltech-101-annotations, tss, pascal-voc-2011, or a file name")
    q.add_argument("--timeout", type=float, default=60.0, help="network timeout, seconds")
    q.add_argument("--no-extract", action="store_true", help="do not extract archives")
    q.add_argument("--allow-missing", action="store_true",
                   help="exit 0 even if some files are not available")
    common(q)
    q.set_defaults(func=_fetch)

    q = dsub.add_parser("prepare-pf-willow",
                        help="official PF-WILLOW pair list, or rebuild it from the .mat files")
    q.add_argument("--rebuild", action="store_true", help="rebuild even if the official file "
                   "can be fetched")
    common(q)
    q.set_defaults(func=_prepare_pf_willow)

    for name, fn, hlp in (("audit", _audit, "leakage audit (perceptual hashes)"),
                          ("splits", _splits, "write the seeded training/validation splits")):
        q = dsub.add_parser(name, help=hlp)
        q.add_argument("--params", default=None, help="params.yaml (default: project root)")
        if name == "audit":
            q.add_argument("--threshold", type=int, default=None,
                           help="Hamming distance threshold (overrides params)")
            q.add_argument("--jobs", type=int, default=None, help="hashing processes")
        common(q, mirror=False)
        q.set_defaults(func=fn)

    q = dsub.add_parser("status", help="what is present and which benchmarks are available")
    q.add_argument("--json", action="store_true")
    common(q)
    q.set_defaults(func=_status)
