"""``weakalign parity --reference-dir PATH [--ncnet-reference-dir PATH] [--out reports/parity]``.

Runs the original code (a checkout of ignacio-rocco/weakalign, optionally ignacio-rocco/ncnet)
and this project on the same seeded random weights and inputs, and writes
``parity.json`` + ``parity.md``. Exit status 1 if any item fails. See ``docs/parity.md``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def _pf_willow_dir(data_dir: str | None) -> Path:
    from ..cli import UserError
    from ..data.paths import data_root

    d = data_root(data_dir) / "pf-willow"
    if not (d / "test_pairs_pf.csv").is_file() or not (d / "PF-dataset").is_dir():
        raise UserError(f"PF-WILLOW is not prepared under {d} (test_pairs_pf.csv + PF-dataset/); run "
                        "`weakalign data fetch pf-willow && weakalign data prepare-pf-willow` or pass --data-dir")
    return d


def _pf_pascal_csv(data_dir: str | None) -> Path | None:
    from ..data.paths import data_root, mirror_dir

    candidates = [data_root(data_dir) / "pf-pascal" / "test_pairs_pf_pascal.csv"]
    if mirror_dir() is not None:
        candidates.append(mirror_dir() / "pf-pascal" / "test_pairs_pf_pascal.csv")
    return next((c for c in candidates if c.is_file()), None)


def _conditions(threads: int) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return (f"Machine: {os.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in load) if load else 'n/a'} "
            f"(1/5/15 min, at the end of the timings); torch threads {threads} in both processes.")


def run_parity(reference_dir, ncnet_reference_dir=None, out="reports/parity", data_dir=None, pairs=20, seed=0,
               threads=2, speed=True, speed_repeats=2, vgg=True, keep_workdir=False, command=None, log=print) -> dict:
    import torch

    from ..cli import UserError
    from . import harness
    from .checkout import ReferenceCheckoutError, open_checkout
    from .fixtures import write_pf_pascal_fixture, write_pf_willow_subset
    from .report import versions, write_report

    try:
        ref = open_checkout(reference_dir, "weakalign")
        ncnet = open_checkout(ncnet_reference_dir, "ncnet", "--ncnet-reference-dir") if ncnet_reference_dir else None
    except ReferenceCheckoutError as exc:
        raise UserError(str(exc)) from exc
    from ..atomic import check_dir_writable

    check_dir_writable(out, "choose another folder with --out")  # before minutes of work
    pf_dir = _pf_willow_dir(data_dir)
    pascal_csv = _pf_pascal_csv(data_dir)
    torch.set_num_threads(threads)
    work = harness.new_workdir()
    notes, items, speeds = [], [], []
    try:
        pf_csv, rows = write_pf_willow_subset(pf_dir, work / "data", pairs)
        pf_root = pf_csv.parent.parent
        log(f"parity: geometry and losses against {ref.path}")
        items += harness.geometry_items(ref, work / "geometry", seed)
        items += harness.inlier_items(ref, work / "inlier", seed)
        for backbone in ("resnet101", "vgg16") if vgg else ("resnet101",):
            log(f"parity: {backbone} two-stage model on {len(rows)} PF-WILLOW pairs (original eval.py vs fast path)")
            got, timing = harness.model_items(ref, work / "models", pf_root, pf_csv, backbone, seed, threads,
                                              speed_repeats if (speed and backbone == "resnet101") else 0)
            items += got
            if speed and backbone == "resnet101":
                speeds.append({"backbone": "ResNet-101", "threads": threads, "conditions": _conditions(threads),
                               **harness.speed_summary(timing)})
        if pascal_csv is not None:
            log("parity: PF-PASCAL-format fixture (299 pairs, synthetic images)")
            fixture = write_pf_pascal_fixture(pascal_csv, work / "data", seed)
            items += harness.pf_pascal_items(ref, work, fixture, seed)
            if ncnet is not None:
                items.append(harness.ncnet_pascal_item(ncnet, work, fixture, seed))
        else:
            notes.append("PF-PASCAL items skipped: no test_pairs_pf_pascal.csv in the data folder or the mirror.")
        if ncnet is not None:
            log("parity: NCNet")
            items += harness.ncnet_items(ncnet, work / "ncnet", pf_root, pf_csv, seed)
        else:
            notes.append("NCNet items skipped: no --ncnet-reference-dir.")
    except harness.DriverError as exc:
        raise UserError(str(exc)) from exc
    finally:
        if keep_workdir:
            log(f"parity: inputs and the original's outputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    notes.append("Random weights make theta nearly the same for every pair (the random backbone barely tells images "
                 "apart); the comparison is still of the full computation on real images, and PCK differs per pair "
                 "because the keypoints do.")
    doc = {
        "command": command or "weakalign parity",
        "checkouts": [c.to_dict() for c in (ref, ncnet) if c is not None],
        "versions": versions(),
        "inputs": (f"seed {seed}; PF-WILLOW rows {rows[0]}..{rows[-1]} ({len(rows)} pairs spread over the 900, "
                   f"every {900 // max(len(rows), 1)}th); PF-PASCAL: the real test CSV (299 pairs) with synthetic images; "
                   f"report alphas {', '.join(f'{a:g}' for a in harness.REPORT_ALPHAS)}"),
        "pf_willow_rows": rows,
        "items": [it.to_dict() for it in items],
        "speed": speeds,
        "passed": all(it.passed for it in items if it.gate),
        "notes": notes,
    }
    write_report(out, doc)
    return doc


def _parity(args) -> int:
    command = "weakalign " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "weakalign parity"
    doc = run_parity(args.reference_dir, args.ncnet_reference_dir, args.out, args.data_dir, args.pairs, args.seed,
                     args.threads, not args.no_speed, args.speed_repeats, not args.no_vgg, args.keep_workdir, command)
    failed = [f"{it['group']}: {it['name']} ({it['max_diff']:.3g} > {it['tolerance']:g})" for it in doc["items"] if it["gate"] and not it["passed"]]
    for sp in doc["speed"]:
        print(f"speed ({sp['backbone']}, {sp['pairs']} pairs): original {sp['original_median_s']:.1f} s, ours "
              f"{sp['ours_median_s']:.1f} s, ratio {sp['ratio']:.2f}x")
    n_gate = sum(it["gate"] for it in doc["items"])
    print(f"parity: {n_gate - len(failed)}/{n_gate} items pass; report in {Path(args.out) / 'parity.md'}")
    for f in failed:
        print(f"  FAIL {f}", file=sys.stderr)
    return 1 if failed else 0


def register(sub) -> None:
    p = sub.add_parser("parity", help="compare with the original code (a checkout) on the same weights and inputs",
                       description="Runs the original weakalign (and ncnet) code from a checkout, patched at run time to "
                                   "run on PyTorch 2 / CPU, and this project on the same seeded random weights and inputs; "
                                   "writes parity.json and parity.md. See docs/parity.md.")
    p.add_argument("--reference-dir", required=True, help="checkout of ignacio-rocco/weakalign")
    p.add_argument("--ncnet-reference-dir", default=None, help="checkout of ignacio-rocco/ncnet (NCNet items)")
    p.add_argument("--out", default="reports/parity", help="output folder (default reports/parity)")
    p.add_argument("--data-dir", default=None, help="data folder with pf-willow/ prepared (default: data)")
    p.add_argument("--pairs", type=int, default=20, help="PF-WILLOW pairs for theta / PCK / speed (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads in both implementations (default 2)")
    p.add_argument("--no-speed", action="store_true", help="skip the repeated speed timings")
    p.add_argument("--speed-repeats", type=int, default=2, help="extra timed runs of each, alternated (default 2)")
    p.add_argument("--no-vgg", action="store_true", help="skip the VGG-16 model items")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary inputs and the original's outputs")
    p.set_defaults(func=_parity)
