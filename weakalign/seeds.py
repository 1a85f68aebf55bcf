"""``weakalign seeds``: the weak fine-tuning and its ablations trained with several seeds.

The bootstrap intervals of ``reports/metrics/pck.json`` say how much a PCK would move with
*other evaluation pairs*; they say nothing about *another training run*. This command measures
the second: it trains the WeakAlign fine-tuning and each ablation variant of
``train_weak.variants`` once per seed, scores every model on the keypoint benchmarks of
``evaluate.benchmarks`` (cached predictions, same PCK protocols and bootstrap as
``weakalign evaluate metrics``), and reports per model the mean and standard deviation over the
seeds beside each seed's bootstrap interval; the paired differences of
:data:`weakalign.evaluation.stats.COMPARISONS` likewise.

It is **not** a stage of ``dvc repro`` (about 14 CPU-minutes per seed on the default profile;
three seeds would push a fresh-clone ``dvc repro`` past its 45-minute budget). Run it after the
pipeline, which provides the strong checkpoints, the splits and the main run::

    weakalign seeds                       # seeds 1 2 3; main model + no_mask, tolerance_1, tolerance_2
    weakalign seeds --seeds 1 2 3 4 5 --variants default no_mask
    weakalign seeds --dry-run             # print the training commands, run nothing

What a seed changes: ``train_weak.seed`` (``--set seed=N``), i.e. the order in which the weak
training pairs are visited and, with a ``max_train_pairs`` limit, which pairs are used (the
default profile uses all 2,000, so only the order changes; flips are fixed by the split file);
the regressors start from the same strong checkpoints. Seed 1 is the seed of the main run
(``params.yaml``), so its row should reproduce ``pck.json`` (training is deterministic on CPU).

Outputs (per seed ``N``; a non-default ``--profile P`` writes to ``seeds_P`` instead of ``seeds``):

* ``models/seeds/seed_N/weak_affine_tps.pt``, ``models/seeds/seed_N/ablations/<variant>.pt``
  (training state under ``models/state/seeds/``; ``--resume=auto`` continues an interrupted run);
* ``reports/metrics/seeds/seed_N/train_weak[_<variant>].json`` and the training curves under
  ``reports/plots/seeds/seed_N/``;
* ``data/seeds/predictions/seed_N/<benchmark>/<model>.pt`` (prediction caches; outside ``data/predictions``, the DVC output of ``evaluate predict``, so a seeds run leaves the pipeline up to date);
* ``reports/metrics/seeds.json`` and ``reports/tables/seeds_<benchmark>.md``; the README results
  block is regenerated (``weakalign readme``) unless ``--no-readme``.

A seed whose checkpoint and training metrics exist is not retrained (``--retrain`` forces it).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SEEDS = (1, 2, 3)
OUTPUT_KEYS = ("checkpoint", "state", "metrics", "plot", "steps_plot")


def _user_error(msg: str) -> Exception:
    from weakalign.cli import UserError

    return UserError(msg)


def tag(profile: str) -> str:
    """Folder / file stem of the results: ``seeds`` (default profile) or ``seeds_<profile>``."""
    return "seeds" if profile in (None, "", "default") else f"seeds_{profile}"


def output_paths(seed: int, variant: str, profile: str = "default") -> dict:
    """Where ``train-weak`` writes the run of (seed, variant): never the main run's files."""
    t = tag(profile)
    stem = "train_weak" if variant == "default" else f"train_weak_{variant}"
    ckpt = "weak_affine_tps.pt" if variant == "default" else f"ablations/{variant}.pt"
    return {
        "checkpoint": f"models/{t}/seed_{seed}/{ckpt}",
        "state": f"models/state/{t}/seed_{seed}/{stem}.pt",
        "metrics": f"reports/metrics/{t}/seed_{seed}/{stem}.json",
        "plot": f"reports/plots/{t}/seed_{seed}/{stem}.csv",
        "steps_plot": f"reports/plots/{t}/seed_{seed}/{stem}_steps.csv",
    }


def train_argv(seed: int, variant: str, params: str | None = None, profile: str | None = None, extra_set=()) -> list[str]:
    """``weakalign`` arguments that train (seed, variant) into :func:`output_paths`."""
    key = "outputs" if variant == "default" else "variant_outputs"
    argv = ["train-weak"]
    if variant != "default":
        argv += ["--variant", variant]
    if params:
        argv += ["--params", str(params)]
    if profile:
        argv += ["--profile", profile]
    argv += ["--set", f"seed={int(seed)}"]
    for k, v in output_paths(seed, variant, profile or "default").items():
        argv += ["--set", f"{key}.{k}={v}"]
    for s in extra_set:
        argv += ["--set", s]
    return argv + ["--resume=auto", "--no-progress"]


def run_training(argv: list[str]) -> None:
    """Run ``weakalign <argv>`` in a fresh process (as a DVC stage would)."""
    print("+ weakalign " + " ".join(_quote(a) for a in argv), flush=True)
    r = subprocess.run([sys.executable, "-m", "weakalign.cli", *argv])
    if r.returncode != 0:
        raise _user_error(f"training failed (exit {r.returncode}): weakalign {' '.join(argv)}")


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


def model_names(eval_models: dict, weak_cfg) -> dict:
    """variant -> model name, derived from ``evaluate.models``: the entry whose checkpoint is the
    main weak run (``train_weak.outputs.checkpoint``) is ``default``; one whose checkpoint is a
    variant's (``train_weak.variant_outputs.checkpoint``) is that variant. Variants without an
    entry are named ``weak, <variant>``. Only plain ``{checkpoint: ...}`` entries count: an entry
    that runs the same checkpoint with evaluation options (``affine_refinements``) is another row
    of the tables, not the run itself."""
    out = {}
    main = str(weak_cfg.outputs.checkpoint)
    for name, spec in eval_models.items():
        if set(spec or {}) - {"checkpoint"}:
            continue
        ck = str((spec or {}).get("checkpoint", ""))
        if ck == main:
            out.setdefault("default", name)
        for v in weak_cfg.variants or {}:
            if ck == str(weak_cfg.variant_outputs.checkpoint).format(variant=v):
                out.setdefault(v, name)
    for v in ["default", *(weak_cfg.variants or {})]:
        out.setdefault(v, "weak_affine_tps" if v == "default" else f"weak, {v}")
    return out


def predict_checkpoint(root: Path, checkpoint: str, bench: str, eval_cfg) -> dict:
    """Prediction cache of one checkpoint on one benchmark (same subset and batch size as
    ``weakalign evaluate predict``)."""
    from .data.registry import get_dataset
    from .evaluation.commands import load_model, subset
    from .evaluation.predict import predict_pairs

    from .devices import resolve_device, set_backbone_amp

    ds = subset(get_dataset(bench, root=root / "data"), eval_cfg.max_pairs)
    model = set_backbone_amp(load_model({"checkpoint": checkpoint}, root), eval_cfg.amp)
    return predict_pairs(model, ds, batch_size=eval_cfg.batch_size, device=resolve_device(eval_cfg.device, "evaluate.device"),
                         progress=False, num_workers=eval_cfg.num_workers)


def score_seed(preds: dict, bench: str, bootstrap: dict) -> dict:
    """PCK (default protocol), its bootstrap interval and the paired differences of one seed."""
    from .evaluation.commands import protocols_for
    from .evaluation.metrics import finite_or_none, keypoint_uncertainty, pck_table

    proto = protocols_for(bench)["default"]
    unc = keypoint_uncertainty(preds, {"default": proto}, list(proto.alphas), bootstrap)
    models = {}
    for name, pred in preds.items():
        for kind in pred["kinds"]:
            pck = pck_table(pred, proto, kind)["result"].pck
            ci = unc["ci"][name][kind]["default"]
            models.setdefault(name, {})[kind] = {f"{a:g}": {"pck": finite_or_none(v), **ci[f"{a:g}"]} for a, v in pck.items()}
    return {"models": models, "differences": unc["differences"], "bootstrap": unc["bootstrap"]}


def mean_std(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": m, "std": sd, "n": len(vals)}


def aggregate(per_seed: dict) -> dict:
    """``per_seed[seed] = score_seed(...)`` -> per model/kind/alpha and per difference: every
    seed's value with its bootstrap interval, and mean and standard deviation (n - 1) over seeds."""
    seeds = list(per_seed)
    models, diffs = {}, {}
    for seed in seeds:
        for name, kinds in per_seed[seed]["models"].items():
            for kind, alphas in kinds.items():
                for a, r in alphas.items():
                    models.setdefault(name, {}).setdefault(kind, {}).setdefault(a, {"per_seed": {}})["per_seed"][str(seed)] = r
        for key, d in per_seed[seed]["differences"].items():
            e = diffs.setdefault(key, {"label": d["label"], "a": d["a"], "b": d["b"], "available": False, "kinds": {}})
            if not d.get("available"):
                e.setdefault("reason", d.get("reason", ""))
                continue
            e["available"] = True
            for kk, kd in d["kinds"].items():
                k = e["kinds"].setdefault(kk, {"a_kind": kd["a_kind"], "b_kind": kd["b_kind"]})
                for a, r in kd.items():
                    if isinstance(r, dict):
                        k.setdefault(a, {"per_seed": {}})["per_seed"][str(seed)] = r
    for kinds in models.values():
        for alphas in kinds.values():
            for r in alphas.values():
                r.update(mean_std([v["pck"] for v in r["per_seed"].values()]))
    for d in diffs.values():
        for k in d["kinds"].values():
            for a, r in k.items():
                if isinstance(r, dict):
                    r.update(mean_std([v["difference"] for v in r["per_seed"].values()]))
                    r["seeds_excluding_zero"] = sum(bool(v["excludes_zero"]) for v in r["per_seed"].values())
    return {"models": models, "differences": diffs}


def _pm(r: dict) -> str:
    if r.get("mean") is None:
        return "n/a"
    return f"{r['mean']:.3f} ± {r['std']:.3f}" if r.get("std") is not None else f"{r['mean']:.3f}"


def seeds_staleness(doc: dict, root: Path | None = None) -> str | None:
    """A warning when the seeds were trained with other ``train_weak`` parameters than the current
    main run (params fingerprints of ``seeds.json`` and ``reports/metrics/train_weak.json``)."""
    from .data.paths import project_root

    metrics = Path(root or project_root()) / "reports" / "metrics" / "train_weak.json"
    try:
        current = json.loads(metrics.read_text()).get("params_fingerprint")
        then = doc["training"][str(doc["main_run_seed"])]["default"]["params_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not current or current == then:
        return None
    return (f"**Stale:** these seeds were trained with other `train_weak` parameters than the current main run "
            f"(params fingerprint {then} vs {current} in `reports/metrics/train_weak.json`); their 'main run' column "
            "is the main run of that time. Refresh with `weakalign seeds --seeds 1 2 3` (about 30 minutes here).")


def seeds_markdown(doc: dict, alpha: str = "0.1") -> str:
    """Tables of ``seeds.json``: per model every seed's PCK with its bootstrap interval, the mean ±
    standard deviation over seeds, and the main run's PCK [CI] from ``pck.json``; then the paired
    differences per seed and over seeds."""
    from .evaluation.stats import fmt_ci, fmt_signed_ci

    out = []
    seeds = [str(s) for s in doc["seeds"]]
    stale = seeds_staleness(doc)
    for bench, b in doc["benchmarks"].items():
        if not b.get("available", True) or "protocol" not in b:
            continue  # a benchmark without files here (e.g. PF-PASCAL images): nothing to tabulate
        conf = f"{b.get('bootstrap', {}).get('confidence', 0.95):.0%}"
        out += [f"**Training seeds on {bench}** ({len(seeds)} seeds: {', '.join(seeds)}; `{doc['command']}`, profile {doc['profile']}). "
                f"PCK@{alpha}, {b['protocol']}; brackets: {conf} bootstrap CI over pairs of that run; mean ± sd: over seeds "
                f"(sd with n - 1). Main run: `reports/metrics/pck.json`.", ""]
        if stale:
            out += [stale, ""]
        head = ["model", "transform", "main run"] + [f"seed {s}" for s in seeds] + ["mean ± sd over seeds"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, kinds in b["models"].items():
            for kind, alphas in kinds.items():
                r = alphas.get(alpha)
                if r is None:
                    continue
                main = ((b.get("main_run") or {}).get(name) or {}).get(kind, {}).get(alpha) or {}
                cells = [fmt_ci(main.get("pck"), main.get("low"), main.get("high")) if main else "n/a"]
                cells += [fmt_ci(r["per_seed"][s]["pck"], r["per_seed"][s]["low"], r["per_seed"][s]["high"]) if s in r["per_seed"] else "n/a" for s in seeds]
                out.append(f"| {name} | {kind} | " + " | ".join(cells) + f" | {_pm(r)} |")
        rows = []
        for d in b["differences"].values():
            if not d.get("available"):
                continue
            for kk, k in d["kinds"].items():
                r = k.get(alpha)
                if not r:
                    continue
                cells = []
                for s in seeds:
                    v = r["per_seed"].get(s)
                    cells.append("n/a" if v is None else fmt_signed_ci(v["difference"], v["low"], v["high"]) + (" *" if v["excludes_zero"] else ""))
                pm = f"{r['mean']:+.3f} ± {r['std']:.3f}" if r.get("std") is not None else (f"{r['mean']:+.3f}" if r.get("mean") is not None else "n/a")
                rows.append(f"| {d['label']} | {kk} | " + " | ".join(cells) + f" | {pm} | {r['seeds_excluding_zero']} of {len(r['per_seed'])} |")
        if rows:
            head = ["comparison", "transform"] + [f"seed {s}" for s in seeds] + ["mean ± sd over seeds", "seeds whose CI excludes 0"]
            out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def expected_minutes(root: Path, variants, n_seeds: int) -> float | None:
    """Training time of ``n_seeds`` seeds from the main runs' ``seconds`` (None if not recorded)."""
    total = 0.0
    for v in variants:
        f = root / ("reports/metrics/train_weak.json" if v == "default" else f"reports/metrics/ablations/train_weak_{v}.json")
        if not f.is_file():
            return None
        total += float(json.loads(f.read_text()).get("seconds") or 0)
    return total * n_seeds / 60


def run(seeds, variants=None, params: str | None = None, profile: str | None = None, retrain: bool = False,
        dry_run: bool = False, readme: bool = True, extra_set=()) -> dict | None:
    from .atomic import atomic_open, write_json, write_text
    from .data.paths import project_root
    from .data.registry import DatasetNotAvailable
    from .config import load_block as load_params_block
    from .evaluation.commands import KEYPOINT_BENCHMARKS, protocols_for
    from .training.params import read_params_file, resolve

    t0 = time.time()
    root = project_root()
    doc, ppath = read_params_file(params)
    prof = profile or doc.get("profile") or "default"
    weak_cfg = resolve("train_weak", doc, where=str(ppath), profile=prof)
    # the same profile as the weak block, merged key by key like every block (weakalign.config)
    eval_cfg = load_params_block("evaluate", ppath if ppath.is_file() else None, prof)
    known = ["default", *(weak_cfg.variants or {})]
    variants = list(variants or known)
    bad = [v for v in variants if v not in known]
    if bad:
        raise _user_error(f"unknown variant(s) {bad}; train_weak.variants defines: {', '.join(known)}")
    names = model_names(eval_cfg.models, weak_cfg)
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise _user_error(f"--seeds must be distinct integers, got {seeds}")
    prof_arg = profile if profile else None

    est = expected_minutes(root, variants, len(seeds))
    print(f"seeds {seeds} x variants {variants}: {len(seeds) * len(variants)} trainings"
          + (f", about {est:.0f} CPU-minutes (from the main runs' `seconds`)" if est else ""), flush=True)
    todo = []
    for seed in seeds:
        for v in variants:
            paths = output_paths(seed, v, prof)
            done = (root / paths["checkpoint"]).is_file() and (root / paths["metrics"]).is_file()
            argv = train_argv(seed, v, params, prof_arg, extra_set)
            if dry_run:
                print(("(done) " if done and not retrain else "") + "weakalign " + " ".join(_quote(a) for a in argv))
                continue
            if done and not retrain:
                print(f"seed {seed} / {v}: trained ({paths['checkpoint']})")
            else:
                todo.append(argv)
    if dry_run:
        return None
    for init in weak_cfg.init.to_dict().values():
        if not (root / init).is_file():
            raise _user_error(f"{init} not found: run the pipeline first (`dvc repro train_strong`)")
    for argv in todo:
        run_training(argv)

    t = tag(prof)
    result = {"command": "weakalign seeds --seeds " + " ".join(map(str, seeds)) + ("" if variants == known else " --variants " + " ".join(variants))
              + (f" --profile {prof}" if prof_arg else ""),
              "profile": prof, "seeds": seeds, "variants": variants, "models": {v: names[v] for v in variants},
              "seed_key": "train_weak.seed", "main_run_seed": int(weak_cfg.seed), "benchmarks": {}, "training": {}}
    for seed in seeds:
        for v in variants:
            f = root / output_paths(seed, v, prof)["metrics"]
            if f.is_file():
                m = json.loads(f.read_text())
                result["training"].setdefault(str(seed), {})[v] = {k: m.get(k) for k in ("seconds", "training_seconds", "heldout_score_after", "params_fingerprint")}
    main_metrics = root / eval_cfg.metrics
    main = json.loads(main_metrics.read_text()) if main_metrics.is_file() and prof == "default" else {}
    import torch

    for bench in eval_cfg.benchmarks:
        if bench not in KEYPOINT_BENCHMARKS:
            continue
        per_seed = {}
        try:
            for seed in seeds:
                preds = {}
                for v in variants:
                    ck = output_paths(seed, v, prof)["checkpoint"]
                    cache = root / "data" / t / "predictions" / f"seed_{seed}" / bench / f"{names[v].replace(':', '_').replace('/', '_')}.pt"
                    if cache.is_file() and cache.stat().st_mtime >= (root / ck).stat().st_mtime:
                        preds[names[v]] = torch.load(cache, weights_only=True)
                    else:
                        pred = predict_checkpoint(root, ck, bench, eval_cfg)
                        with atomic_open(cache, "wb") as fh:
                            torch.save(pred, fh)
                        preds[names[v]] = pred
                    print(f"{bench} / seed {seed} / {names[v]}: predictions {cache.relative_to(root)}", flush=True)
                per_seed[seed] = score_seed(preds, bench, eval_cfg.bootstrap)
        except DatasetNotAvailable as exc:
            from .evaluation.commands import unavailable_reason

            result["benchmarks"][bench] = {"available": False, "reason": unavailable_reason(exc)}
            continue
        agg = aggregate(per_seed)
        mb = (main.get(bench) or {}) if main.get(bench, {}).get("available") else {}
        main_run = {}
        for name, kinds in agg["models"].items():
            for kind in kinds:
                res = ((mb.get("models") or {}).get(name) or {}).get(kind)
                if res:
                    main_run.setdefault(name, {})[kind] = {a: {"pck": res["default"].get(a), **(res.get("ci", {}).get("default", {}).get(a) or {})}
                                                           for a in res.get("default", {})}
        result["benchmarks"][bench] = {"available": True, "protocol": "; ".join(protocols_for(bench)["default"].describe().split("; ")[1:]),
                                       "bootstrap": per_seed[seeds[0]]["bootstrap"], **agg, "main_run": main_run}
    result["seconds"] = round(time.time() - t0, 1)
    write_json(root / "reports" / "metrics" / f"{t}.json", result)
    md = seeds_markdown(result) if any(b.get("available") for b in result["benchmarks"].values()) else "No keypoint benchmark available.\n"
    for bench, b in result["benchmarks"].items():
        if b.get("available"):
            write_text(root / "reports" / "tables" / f"{t}_{bench}.md", seeds_markdown({**result, "benchmarks": {bench: b}}))
    print(md)
    if readme and prof == "default" and (root / "README.md").is_file():
        from .reports import update_readme

        update_readme(root)
        print("README results block regenerated")
    print(f"weakalign seeds: {len(seeds)} seeds x {len(variants)} variants in {time.time() - t0:.0f}s -> reports/metrics/{t}.json")
    return result


def _cmd(args) -> int:
    run(args.seeds, args.variants, args.params, args.profile, args.retrain, args.dry_run, not args.no_readme, args.set_ or ())
    return 0


def register(sub) -> None:
    p = sub.add_parser("seeds", help="train the weak fine-tuning and its ablations with several seeds; mean ± sd beside the bootstrap CI",
                       description=__doc__.split("\n\n")[0] + " Not part of `dvc repro`; see weakalign/seeds.py.")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="training seeds (default: 1 2 3)")
    p.add_argument("--variants", nargs="+", default=None, help="'default' (the main model) and/or train_weak.variants names (default: all)")
    p.add_argument("--params", default=None, help="parameters file (default: params.yaml at the project root)")
    p.add_argument("--profile", default=None, help="profile (default: the file's `profile:` key); results go to seeds_<profile> unless default")
    p.add_argument("--set", dest="set_", action="append", metavar="KEY=VALUE", help="extra train_weak override passed to every training")
    p.add_argument("--retrain", action="store_true", help="retrain seeds whose checkpoint already exists")
    p.add_argument("--dry-run", action="store_true", help="print the training commands and exit")
    p.add_argument("--no-readme", action="store_true", help="do not regenerate the README results block")
    p.set_defaults(func=_cmd)
