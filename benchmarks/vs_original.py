"""Speed against the ORIGINAL code: ``python -m benchmarks.vs_original --reference-dir PATH``.

The original ``eval.py`` as it ships (pair at a time, its ``PFDataset`` and resizing, its
``DataLoader``; run by :mod:`weakalign.parity.driver`, patched only so that it runs on PyTorch 2
/ CPU) against this project's fast path (``weakalign.evaluation.predict.predict_pairs``), with
the same seeded random-weight ResNet-101 two-stage checkpoint in the original format, the same
PF-WILLOW pairs and the same number of torch threads. The two are run alternately
(original, ours, original, ...) so that a change in machine load hits both; medians are
compared. ``weakalign parity`` makes the same measurement (``reports/parity/parity.md``); this
entry point runs only it and writes ``reports/parity/vs_original.json`` + ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference-dir", required=True, help="checkout of ignacio-rocco/weakalign")
    p.add_argument("--pairs", type=int, default=20, help="PF-WILLOW pairs (spread over the 900; default 20)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each implementation (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backbone", default="resnet101", choices=("resnet101", "vgg16"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="reports/parity")
    args = p.parse_args(argv)

    import torch

    from weakalign.atomic import write_json, write_text
    from weakalign.parity import harness
    from weakalign.parity.checkout import open_checkout
    from weakalign.parity.commands import _conditions, _pf_willow_dir
    from weakalign.parity.fixtures import write_pf_willow_subset
    from weakalign.parity.report import versions

    torch.set_num_threads(args.threads)
    ref = open_checkout(args.reference_dir, "weakalign")
    work = harness.new_workdir()
    try:
        csv, rows = write_pf_willow_subset(_pf_willow_dir(args.data_dir), work / "data", args.pairs)
        items, timing = harness.model_items(ref, work, csv.parent.parent, csv, args.backbone, 0, args.threads, max(args.repeats - 1, 0))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sp = {"backbone": args.backbone, "threads": args.threads, "conditions": _conditions(args.threads), **harness.speed_summary(timing)}
    doc = {"command": "python -m benchmarks.vs_original " + " ".join(sys.argv[1:] if argv is None else argv), "original": ref.to_dict(),
           "versions": versions(), "pf_willow_rows": rows, "speed": sp, "parity_items": [i.to_dict() for i in items]}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "vs_original.json"), doc)
    write_text(os.path.join(args.out, "vs_original.md"), "\n".join([
        f"# Speed vs the original eval.py ({args.backbone})", "", f"Command: `{doc['command']}`", "",
        f"Original: {ref.to_dict()['repository']} at `{ref.commit}`; {sp['pairs']} PF-WILLOW pairs, {sp['threads']} threads, "
        f"{sp['runs']} runs each, alternated. {sp['conditions']}", "",
        "| implementation | seconds (median) | pairs/s | all runs (s) |", "|---|---|---|---|",
        f"| original eval.py | {sp['original_median_s']:.2f} | {sp['original_pairs_per_s']:.2f} | {', '.join(f'{s:.2f}' for s in sp['original_seconds'])} |",
        f"| predict_pairs (fast path) | {sp['ours_median_s']:.2f} | {sp['ours_pairs_per_s']:.2f} | {', '.join(f'{s:.2f}' for s in sp['ours_seconds'])} |",
        "", f"**Ratio: {sp['ratio']:.2f}x**; the same run's parity items (theta, per-pair PCK): "
        f"{'all pass' if all(i.passed for i in items) else 'SOME FAIL'}.", ""]))
    print(f"original {sp['original_median_s']:.1f} s, ours {sp['ours_median_s']:.1f} s, ratio {sp['ratio']:.2f}x ({sp['pairs']} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
