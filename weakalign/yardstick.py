"""Held-out soft-inlier score of two-stage models on one fixed correlation, whatever their input size.

``python -m weakalign.yardstick --model NAME=SPEC ... --at 240 [--at 320] [--out FILE]``

Why: the weak stage's held-out score (``heldout_score_before`` / ``_after`` in
``reports/metrics/train_weak.json``) is taken on the model's *own* stage-1 correlation: 15 x 15
cells for a 240 x 240 model, 20 x 20 for a 320 x 320 one. Those two numbers cannot be compared
(another number of cells, another normalisation of the mask). The transformations can: theta maps
target to source in normalised coordinates (``docs/conventions.md``), independent of the input
size. So each model predicts theta at its own input size, and every theta is scored on the *same*
correlation: the frozen backbone's, from the images resized to ``--at`` (one column per size).
At the model's own size this is exactly the training code's held-out score (tested against
``train_weak``'s ``heldout_score_before``).

What is scored (the training code's conventions, read from ``train_weak`` in the params file):
the held-out pair list ``train_weak.data.val`` subsampled as the stage does
(``max_val_pairs``, ``seed``), its *odd* rows (the report rows; ``--rows selection``: the even
rows that select epochs, ``all``: both), flips as listed, the loss's ``TwoStageInlierScore`` with
``train_weak.loss``. No keypoints are used anywhere. The identity transformation is scored too
(row ``identity``), as the floor. ``--variant NAME`` scores with that ``train_weak`` variant's
loss instead. Everything runs in float32 (``train_weak.amp`` is not applied).

SPEC: ``AFFINE.pt+TPS.pt`` (two strong one-stage checkpoints, assembled like ``train_weak``'s
init) or ``TWO_STAGE.pt`` (a ``train_weak`` output). All models must share one frozen backbone
(the default profile trains regressors only); the correlation of column ``--at S`` is that
backbone's on S x S images.

Output: a Markdown table on stdout (mean score per model and size with a 95% BCa bootstrap
interval over pairs, each model's paired difference to the first ``--model``, and with
``--compare A-B`` more paired differences) and, with ``--out``, a JSON file (written atomically)
with every number, the per-pair scores and the inputs (each model file's MD5, as ``dvc.lock``
records it). Used for the 320 x 320 experiment in ``reports/experiments/model_choice/``.

Kept out of ``weakalign/training``: the training stages of ``dvc.yaml`` depend on that whole
folder, and no stage runs this module.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

__all__ = ["heldout_records", "load_two_stage", "yardstick_scores", "per_pair_scores", "summarise", "main"]


def _user_error(msg: str):
    from weakalign.cli import UserError

    return UserError(msg)


def heldout_records(cfg, rows: str = "report"):
    """``(records, image_root)`` of the weak stage's held-out pairs as ``train_weak`` builds them:
    ``data.val`` subsampled to ``data.max_val_pairs`` (seed ``cfg.seed``); even rows select
    epochs, odd rows are the reported before/after numbers (``rows``: report | selection | all)."""
    from .training.sources import check_images, pair_list, subsample

    data = cfg.data
    recs, root = pair_list(data.val, data.root, "train_weak.data.val", data.use_flip)
    recs = [recs[i] for i in subsample(len(recs), int(data.max_val_pairs), int(cfg.seed), "weak-val-pairs")]
    picked = {"selection": recs[0::2], "report": recs[1::2], "all": recs}
    if rows not in picked:
        raise _user_error(f"rows must be one of {', '.join(picked)} (got {rows!r})")
    check_images(list(dict.fromkeys(root / p for r in picked[rows] for p in (r.source, r.target))), "train_weak.data.val")
    return picked[rows], root


def load_two_stage(spec: str, backbone_factory=None):
    """A :class:`~weakalign.models.TwoStageCNNGeometric` from ``AFFINE.pt+TPS.pt`` or ``TWO_STAGE.pt``
    (``backbone_factory``: builds a backbone the registry does not know, for the strong pair; tests)."""
    from .models import TwoStageCNNGeometric, load_checkpoint
    from .training.weak import load_stage

    parts = [Path(p) for p in spec.split("+")]
    for p in parts:
        if not p.is_file():
            raise _user_error(f"model file {p} not found (in --model ...={spec})")
    if len(parts) == 2:
        aff, tps = load_stage(parts[0], "affine", backbone_factory), load_stage(parts[1], "tps", backbone_factory)
        try:
            return TwoStageCNNGeometric.from_stages(aff, tps)
        except ValueError as exc:
            raise _user_error(f"{parts[0]} and {parts[1]} cannot be combined: {exc}") from exc
    if len(parts) == 1:
        model, _ = load_checkpoint(parts[0])
        if model.geometric_model != "affine_tps":
            raise _user_error(f"{parts[0]} holds a {model.geometric_model} model; give AFFINE.pt+TPS.pt or a two-stage checkpoint")
        return model
    raise _user_error(f"model spec {spec!r}: expected AFFINE.pt+TPS.pt or TWO_STAGE.pt")


#: the model settings the scoring correlation depends on (the first model's are used for all)
_CORRELATION_SETTINGS = ("backbone", "normalize_features", "normalize_matches")


def _same_backbone(models: dict) -> None:
    names = list(models)
    first = models[names[0]]
    ref = first.feature_extraction.state_dict()
    for n in names[1:]:
        m = models[n]
        for key in _CORRELATION_SETTINGS:
            if getattr(m.config, key) != getattr(first.config, key):
                raise _user_error(f"models {names[0]} and {n} differ in {key} ({getattr(first.config, key)!r} vs "
                                  f"{getattr(m.config, key)!r}); the yardstick scores every model on one correlation")
        sd = m.feature_extraction.state_dict()
        if sd.keys() != ref.keys() or any(not torch.equal(sd[k], ref[k]) for k in ref):
            raise _user_error(f"models {names[0]} and {n} have different backbones; the yardstick needs one frozen backbone "
                              "shared by every model (train_parts: regressors)")


def yardstick_scores(models: dict, records, image_root, sizes, loss: dict, **kw) -> dict:
    """``{name: {size: mean score}}`` (plus ``"identity"``) over ``records``: theta from each model
    at its own input size, scored with ``TwoStageInlierScore(**loss)`` on the stage-1 correlation
    of the shared backbone at each of ``sizes`` (``(h, w)`` tuples). Keywords: those of
    :func:`per_pair_scores`."""
    per = per_pair_scores(models, records, image_root, sizes, loss, **kw)
    return {n: {s: float(v.mean()) for s, v in d.items()} for n, d in per.items()}


@torch.no_grad()
def per_pair_scores(models: dict, records, image_root, sizes, loss: dict, *, use_flip: bool = True, seed: int = 1,
                    batch_size: int = 16, device="cpu", progress: bool = False) -> dict:
    """``{name: {size: float64 array of one score per record}}``, as :func:`yardstick_scores` averages them."""
    from torch.utils.data import DataLoader

    from .geometry import affine_identity, tps_identity
    from .losses import TwoStageInlierScore
    from .training.weak import WeakPairs

    if not models:
        raise _user_error("no model to score")
    if not records:
        raise _user_error("no held-out pair to score")
    _same_backbone(models)
    device = torch.device(device)
    for m in models.values():
        m.to(device).eval()
    first = next(iter(models.values()))
    fe, correlation = first.feature_extraction, first.correlation
    sizes = [tuple(int(v) for v in s) for s in sizes]
    needed = sorted({*sizes, *(tuple(m.config.image_size) for m in models.values())})
    loaders = {s: DataLoader(WeakPairs(records, image_root, s, use_flip, False, seed, "val"), batch_size=batch_size, shuffle=False)
               for s in needed}
    scorers = {}
    parts = {n: {s: [] for s in sizes} for n in [*models, "identity"]}
    batches = zip(*(loaders[s] for s in needed))
    if progress:
        from .training.engine import progress_bar

        batches = progress_bar(batches, total=len(loaders[needed[0]]), desc="yardstick", unit="batch")
    for group in batches:
        by_size = dict(zip(needed, group))
        # the backbone is shared (checked above): stage-1 features once per size, for every model and the yardstick
        images = {s: (b["source_image"].to(device), b["target_image"].to(device)) for s, b in by_size.items()}
        feats = {s: (fe(fe.normalize(src)), fe(fe.normalize(tgt))) for s, (src, tgt) in images.items()}
        thetas = {}
        for n, m in models.items():
            s = tuple(m.config.image_size)
            out = m(images[s][0], None, f_src=feats[s][0], f_tgt=feats[s][1])
            thetas[n] = (out.theta_aff, out.theta_aff_tps)
        for s in sizes:
            corr = correlation(*feats[s])
            if s not in scorers:
                scorers[s] = TwoStageInlierScore(corr.shape[-2], corr.shape[-1], **loss).to(device)
            k = corr.shape[0]
            thetas["identity"] = (affine_identity(k, device=device), tps_identity(k, device=device))
            for n, (ta, tt) in thetas.items():
                parts[n][s].append(scorers[s](ta, tt, corr).double().cpu())
    return {n: {s: torch.cat(v).numpy() for s, v in per.items()} for n, per in parts.items()}


def _md5(path) -> str:
    """MD5 of a model file, as ``dvc.lock`` records outputs (to tell which run a file came from)."""
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _label(size) -> str:
    return f"{size[0]}x{size[1]}"


def _mean_ci(values, resamples: int, seed: int) -> dict:
    """Mean over pairs with its 95% BCa bootstrap interval (:mod:`weakalign.evaluation.stats`; the
    same seed draws the same resampled pairs for every model, so differences are paired)."""
    import numpy as np

    from .evaluation.stats import multiplicities, weighted_mean_ci

    r = weighted_mean_ci(values, np.ones(len(values)), multiplicities(len(values), resamples, seed))
    return {"estimate": r["estimate"], "low": r["low"], "high": r["high"]}


def differences(per_pair: dict, comparisons, resamples: int = 2000, seed: int = 0) -> dict:
    """``{"A - B": {size: {estimate, low, high}}}``: mean over pairs of (score of A - score of B)
    with a 95% BCa bootstrap interval, the same resampled pairs for both models."""
    out = {}
    for a, b in comparisons:
        for n in (a, b):
            if n not in per_pair:
                raise _user_error(f"--compare {a}-{b}: no model named {n!r} (known: {', '.join(per_pair)})")
        out[f"{a} - {b}"] = {s: _mean_ci(v - per_pair[b][s], resamples, seed) for s, v in per_pair[a].items()}
    return out


def summarise(per_pair: dict, baseline: str, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean with a 95% BCa bootstrap interval per model and size, and each model's paired
    difference to ``baseline`` (same resampled pairs for both; :mod:`weakalign.evaluation.stats`)."""
    out = {}
    for n, per in per_pair.items():
        out[n] = {}
        for s, v in per.items():
            out[n][s] = {"mean": _mean_ci(v, resamples, seed)}
            if n != baseline:
                out[n][s][f"minus_{baseline}"] = _mean_ci(v - per_pair[baseline][s], resamples, seed)
    return out


def markdown(summary: dict, models: dict, feature_sizes: dict, pairs: int, rows: str, baseline: str, diffs: dict | None = None) -> str:
    from .evaluation.stats import fmt_ci, fmt_signed_ci

    sizes = list(next(iter(summary.values())))
    head = "| model | input | " + " | ".join(f"score on the {_label(feature_sizes[s])} correlation ({_label(s)} images)"
                                               for s in sizes) + " |"
    lines = [head, "|" + "---|" * (2 + len(sizes))]
    for n, per in summary.items():
        size = _label(models[n].config.image_size) if n in models else "-"
        cells = []
        for s in sizes:
            m = per[s]["mean"]
            cell = fmt_ci(m["estimate"], m["low"], m["high"], digits=4)
            d = per[s].get(f"minus_{baseline}")
            if d is not None:
                cell += f"; minus {baseline}: {fmt_signed_ci(d['estimate'], d['low'], d['high'], digits=4)}"
            cells.append(cell)
        lines.append(f"| {n} | {size} | " + " | ".join(cells) + " |")
    if diffs:
        lines += ["", "| paired difference | " + " | ".join(f"on the {_label(feature_sizes[s])} correlation" for s in sizes) + " |",
                  "|" + "---|" * (1 + len(sizes))]
        for name, per in diffs.items():
            lines.append(f"| {name} | " + " | ".join(fmt_signed_ci(per[s]["estimate"], per[s]["low"], per[s]["high"], digits=4)
                                                    for s in sizes) + " |")
    lines.append("")
    lines.append(f"{pairs} held-out pairs ({rows} rows); mean two-stage soft-inlier score (train_weak.loss), 95% BCa "
                 "bootstrap intervals over pairs (2000 resamples, seed 0; differences paired); no keypoints.")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .atomic import write_json
    from .cli import UserError, _one_line, expected_errors
    from .training.params import read_params_file, resolve

    p = argparse.ArgumentParser(prog="python -m weakalign.yardstick", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=SPEC",
                   help="a model to score: NAME=AFFINE.pt+TPS.pt or NAME=TWO_STAGE.pt (repeatable)")
    p.add_argument("--at", action="append", type=int, required=True, metavar="SIZE",
                   help="square image size of a scoring correlation (repeatable), e.g. 240 (15 x 15 cells)")
    p.add_argument("--compare", action="append", default=[], metavar="A-B",
                   help="also report the paired difference of models A and B (repeatable; names as in --model)")
    p.add_argument("--rows", default="report", choices=["report", "selection", "all"])
    p.add_argument("--params", default=None, help="parameters file (default: params.yaml at the project root)")
    p.add_argument("--profile", default=None)
    p.add_argument("--variant", default=None, help="a train_weak variant whose loss scores (e.g. tolerance_1; default: the main run's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="JSON file to write (atomically)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_flush_denormal(True)  # as the weakalign command (and so the training stages) runs
    try:
        specs = {}
        for item in args.model:
            name, sep, spec = item.partition("=")
            if not sep or not name or not spec or name == "identity" or name in specs or "-" in name:
                raise _user_error(f"--model {item!r}: expected NAME=SPEC with a new NAME (no '-', not 'identity')")
            specs[name] = spec
        comparisons = []
        for item in args.compare:
            a, sep, b = item.partition("-")
            if not sep or a not in specs | {"identity": ""} or b not in specs | {"identity": ""}:
                raise _user_error(f"--compare {item!r}: expected A-B with two names given to --model (or 'identity')")
            comparisons.append((a, b))
        if any(s < 16 for s in args.at):
            raise _user_error(f"--at {min(args.at)}: a size in pixels, e.g. 240")
        models = {n: load_two_stage(s) for n, s in specs.items()}
        doc, path = read_params_file(args.params)
        cfg = resolve("train_weak", doc, where=str(path), profile=args.profile, variant=args.variant)
        records, root = heldout_records(cfg, args.rows)
        sizes = [(s, s) for s in dict.fromkeys(args.at)]
        per_pair = per_pair_scores(models, records, root, sizes, cfg.loss.to_dict(), use_flip=bool(cfg.data.use_flip),
                                   seed=int(cfg.seed), batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except expected_errors() as exc:  # a corrupt image, an unreadable checkpoint...: one line, no traceback
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    from .models.cnngeometric import _feature_size

    first = next(iter(models.values()))
    feature_sizes = {s: _feature_size(first.feature_extraction, s) for s in sizes}
    baseline = next(iter(models))
    summary = summarise(per_pair, baseline)
    diffs = differences(per_pair, comparisons)
    print(markdown(summary, models, feature_sizes, len(records), args.rows, baseline, diffs))
    if args.out:
        write_json(args.out, {
            "command": "python -m weakalign.yardstick " + " ".join(sys.argv[1:] if argv is None else argv),
            "rows": args.rows, "pairs": len(records), "profile": cfg.profile, "variant": args.variant or "default",
            "loss": cfg.loss.to_dict(),
            "models": {n: {"spec": specs[n], "image_size": list(models[n].config.image_size),
                           "md5": [_md5(p) for p in specs[n].split("+")]} for n in models},
            "baseline": baseline,
            "scores": {n: {_label(s): d for s, d in per.items()} for n, per in summary.items()},
            "differences": {k: {_label(s): d for s, d in per.items()} for k, per in diffs.items()},
            "per_pair": {n: {_label(s): [round(float(x), 7) for x in v] for s, v in per.items()} for n, per in per_pair.items()},
            "pairs_listed": [f"{r.source}|{r.target}|{int(bool(r.flip))}" for r in records],
            "correlation_cells": {_label(s): list(feature_sizes[s]) for s in sizes},
            "seconds": round(time.perf_counter() - t0, 1),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
