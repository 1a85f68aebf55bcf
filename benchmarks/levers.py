"""What the untried quality levers of issue 11 would cost on this machine (measured, not asserted).

The default profile runs EfficientNet-Lite0 at 240 x 240 (stride 16 -> 15 x 15 features, a 225-channel
correlation). Two levers the method allows were estimated from FLOPs only: a larger input (320 x 320
-> 20 x 20, 400 channels) and a stride-8 layer (240 x 240 -> 30 x 30, 900 channels). This script
measures, on this machine and in one process per case (``benchmarks.run.in_subprocess``):

* the frozen backbone's time per image as the feature caches use it (traced, BN-folded,
  channels-last: ``weakalign.models.inference.optimize_for_inference``), batch 16;
* one optimiser step of each training stage as the default profile runs it (``benchmarks.run``'s
  training-step cases; the weak one with ``stage2_backbone_grad: false``), batch 16, at 240 and 320;
* for stride 8, the head side only (correlation + regression head + grid loss + Adam on cached
  random features of the shape EfficientNet-Lite0's last stride-8 stage gives, 40 x 30 x 30); its
  backbone is a prefix of the stride-16 one, so the stride-16 time bounds it from above.

It then projects each lever onto the default pipeline: every training run's measured
``prepare_seconds`` (mostly feature caching) scaled by the backbone ratio and its
``training_seconds`` by the step ratio, from the committed metrics JSONs (``reports/metrics/``:
the two strong runs, the weak run and its three ablations; NCNet, evaluation and notebooks are left
unchanged, so the projection is a lower bound). Writes ``reports/benchmarks/levers.json`` / ``.md``.

    .venv/bin/python -m benchmarks.levers            # about 5 minutes on 2 cores
    .venv/bin/python -m benchmarks.levers --quick    # seconds, tiny settings (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

import torch

from benchmarks.run import ROOT, _loadavg, _training_step_case, environment, in_subprocess, measure

TRAINING_RUNS = ("train_strong_affine", "train_strong_tps", "train_weak", "ablations/train_weak_no_mask",
                 "ablations/train_weak_tolerance_1", "ablations/train_weak_tolerance_2")


def _backbone_case(q, image_size, batch, weights, min_run_time):
    torch.set_num_threads(int(os.environ.get("WEAKALIGN_BENCH_THREADS", torch.get_num_threads())))
    from weakalign.models import CNNGeometric, ModelConfig
    from weakalign.models.inference import optimize_for_inference

    model = CNNGeometric("affine", ModelConfig(backbone="efficientnet_lite0", image_size=(image_size, image_size)),
                         backbone_weights=weights).eval()
    fast = optimize_for_inference(model, batch)
    x = torch.rand(batch, 3, image_size, image_size)
    with torch.inference_mode():
        r = measure(lambda: fast.extract(x), min_run_time)
    r["ms_per_image"] = r["median_s"] / batch * 1e3
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(r)


def _head_step_case(q, kind, channels, fh, batch, min_run_time):
    """One strong-stage step on cached features of shape ``channels x fh x fh`` (correlation,
    regression head, grid loss, Adam): the part of a strong step that grows with the feature grid."""
    torch.set_num_threads(int(os.environ.get("WEAKALIGN_BENCH_THREADS", torch.get_num_threads())))
    torch.manual_seed(0)
    from weakalign.geometry import affine_identity, tps_identity
    from weakalign.losses import TransformedGridLoss
    from weakalign.models import FeatureCorrelation, FeatureRegression
    from weakalign.models.correlation import feature_l2norm

    reg = FeatureRegression(6 if kind == "affine" else 18, feature_size=(fh, fh)).train()
    corr = FeatureCorrelation()
    loss = TransformedGridLoss(kind)
    fa = feature_l2norm(torch.randn(batch, channels, fh, fh))
    fb = feature_l2norm(torch.randn(batch, channels, fh, fh))
    ident = affine_identity(batch) if kind == "affine" else tps_identity(batch)
    theta = ident + 0.05 * torch.randn_like(ident)
    opt = torch.optim.Adam(reg.parameters(), lr=1e-6)

    def one_step():
        opt.zero_grad(set_to_none=True)
        loss(reg(corr(fa, fb)), theta).backward()
        opt.step()

    r = measure(one_step, min_run_time)
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put(r)


def committed_runs(metrics_dir: Path) -> dict:
    runs = {}
    for name in TRAINING_RUNS:
        p = metrics_dir / f"{name}.json"
        if p.is_file():
            d = json.loads(p.read_text())
            runs[name] = {k: d.get(k) for k in ("prepare_seconds", "training_seconds", "steps")}
    return runs


def project(runs: dict, ratios: dict) -> dict:
    """Minutes added to the pipeline by one lever: per run, prepare x backbone ratio + training x
    step ratio (strong runs: the strong step ratio of their kind; weak runs: the weak ratio)."""
    extra, per_run = 0.0, {}
    for name, r in runs.items():
        if r.get("prepare_seconds") is None or r.get("training_seconds") is None:
            continue
        step = ratios["strong_affine"] if name.endswith("affine") else ratios["strong_tps"] if name.endswith("tps") else ratios.get("weak")
        if step is None:
            continue
        new = r["prepare_seconds"] * ratios["backbone"] + r["training_seconds"] * step
        per_run[name] = {"seconds_now": r["prepare_seconds"] + r["training_seconds"], "seconds_projected": new}
        extra += new - per_run[name]["seconds_now"]
    return {"added_minutes": extra / 60, "runs": per_run}


def run(quick: bool = False, metrics_dir: Path = ROOT / "reports" / "metrics") -> dict:
    mrt, batch = (0.05, 2) if quick else (1.0, 16)
    weights = "random" if quick else "imagenet"
    sizes = (176, 240) if quick else (240, 320)  # quick: tiny sizes, same code path
    res = {"quick": quick, "environment": environment(), "batch": batch, "backbone": {}, "steps": {}, "head_steps": {}}
    for s in sizes:
        r = in_subprocess(_backbone_case, s, batch, weights, mrt)
        res["backbone"][str(s)] = r
        print(f"backbone {s}x{s}: {r['ms_per_image']:.1f} ms/image", flush=True)
        for stage in ("strong_affine", "strong_tps", "weak"):
            # the default profile's weak stage: stage2_backbone_grad false
            r = in_subprocess(_training_step_case, stage, batch, s, weights, mrt, stage != "weak")
            res["steps"].setdefault(stage, {})[str(s)] = r
            print(f"step {stage} {s}x{s}: {r['median_s'] * 1e3:.0f} ms", flush=True)
    grids = {"stride16_15x15": (112, 15), "stride8_30x30": (40, 30)} if not quick else {"stride16_11x11": (8, 11), "stride8_14x14": (8, 14)}
    for name, (ch, fh) in grids.items():
        for kind in ("affine", "tps"):
            r = in_subprocess(_head_step_case, kind, ch, fh, batch, mrt)
            res["head_steps"].setdefault(kind, {})[name] = r
            print(f"head step {kind} {name}: {r['median_s'] * 1e3:.0f} ms", flush=True)
    small, large = (str(s) for s in sizes)
    bb = res["backbone"][large]["median_s"] / res["backbone"][small]["median_s"]
    step_ratio = {k: v[large]["median_s"] / v[small]["median_s"] for k, v in res["steps"].items()}
    g16, g8 = list(grids)
    head_ratio = {k: v[g8]["median_s"] / v[g16]["median_s"] for k, v in res["head_steps"].items()}
    runs = committed_runs(metrics_dir)
    res["committed_runs"] = runs
    res["levers"] = {
        f"input {large} x {large}": {"ratios": {"backbone": bb, **step_ratio}, **project(runs, {"backbone": bb, **step_ratio})},
        # stride 8: backbone bounded by the stride-16 time (ratio 1); the strong steps' head part
        # scaled by the measured head ratio, applied to the whole step (the step is almost all head);
        # weak runs not projected (they need a stride-8 two-stage model): a lower bound
        "stride 8 (30 x 30 at 240)": {"ratios": {"backbone": 1.0, "strong_affine": head_ratio["affine"], "strong_tps": head_ratio["tps"]},
                                       **project({k: v for k, v in runs.items() if "strong" in k},
                                                 {"backbone": 1.0, "strong_affine": head_ratio["affine"], "strong_tps": head_ratio["tps"]})},
    }
    res["loadavg_end"] = _loadavg()
    return res


def to_markdown(res: dict) -> str:
    env = res["environment"]
    sizes = list(res["backbone"])
    lines = [f"`python -m benchmarks.levers`, commit `{env['git_commit'][:10]}`, {env['date']}, {env.get('cpu', '')}, "
             f"{env['threads']} threads, batch {res['batch']}, load average at start {env.get('loadavg_start')} / end {res['loadavg_end']}.", "",
             "| measured | " + " | ".join(f"{s} x {s}" for s in sizes) + " | ratio |", "|---|---|---|---|"]
    b = [res["backbone"][s]["ms_per_image"] for s in sizes]
    lines.append(f"| backbone, traced (ms / image) | {b[0]:.1f} | {b[1]:.1f} | {b[1] / b[0]:.2f}x |")
    for stage, v in res["steps"].items():
        t = [v[s]["median_s"] * 1e3 for s in sizes]
        lines.append(f"| training step {stage} (ms) | {t[0]:.0f} | {t[1]:.0f} | {t[1] / t[0]:.2f}x |")
    lines += ["", "| strong head step (ms; correlation + regression + grid loss + Adam) | " + " | ".join(next(iter(res["head_steps"].values()))) + " | ratio |",
              "|---|---|---|---|"]
    for kind, v in res["head_steps"].items():
        t = [r["median_s"] * 1e3 for r in v.values()]
        lines.append(f"| {kind} | {t[0]:.0f} | {t[1]:.0f} | {t[1] / t[0]:.2f}x |")
    lines += ["", "Projection onto the default pipeline (committed `reports/metrics/*.json`: prepare x backbone ratio + "
              "training x step ratio per training run; everything else unchanged, so these are lower bounds):", "",
              "| lever | minutes added | runs projected |", "|---|---|---|"]
    for name, lv in res["levers"].items():
        lines.append(f"| {name} | +{lv['added_minutes']:.1f} | {', '.join(lv['runs'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings, seconds (for tests)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    args = ap.parse_args(argv)
    from weakalign.atomic import write_json, write_text

    res = run(args.quick)
    md = to_markdown(res)
    write_json(Path(args.out) / "levers.json", res)
    write_text(Path(args.out) / "levers.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
