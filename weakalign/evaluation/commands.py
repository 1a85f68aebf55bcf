"""``weakalign evaluate predict`` and ``weakalign evaluate metrics``.

``predict`` runs every configured model once per benchmark and caches its per-pair
predictions (``data/predictions/<benchmark>/<model>.pt``); ``metrics`` computes every number
from those caches only, writing DVC metrics (``reports/metrics/pck.json``), PCK-vs-alpha plot
data (``reports/plots/pck_curve_<benchmark>.csv``) and markdown tables (``reports/tables/``).
A benchmark whose files are missing is recorded as "not available" with the reason; it never
fails the run and never gets a number.

The ``evaluate:`` block of ``params.yaml``::

    evaluate:
      batch_size: 16
      device: auto                  # auto (the GPU when there is one) | cpu | cuda | cuda:N
      amp: none                     # backbone mixed precision: none | bf16 | fp16 (weakalign/devices.py)
      num_workers: 0                # image-decoding processes (0 = in the main process)
      benchmarks: [pf-willow, pf-pascal, caltech-101, tss]
      predictions_dir: data/predictions
      models:                       # name -> spec; order = row order in the tables
        identity: {type: identity}
        strong_affine: {checkpoint: models/strong_affine.pt}
        strong_affine_tps: {affine: models/strong_affine.pt, tps: models/strong_tps.pt}
        weak_affine_tps: {checkpoint: models/weak_affine_tps.pt, optional: true}
      reference_checkpoints_dir: models/reference   # released .pth.tar files, if any
      max_pairs: 0                  # 0 = every pair; N = N evenly spaced pairs (smoke profile)
      protocols: {}                 # benchmark -> PCK protocol names to report (default: every
                                    # protocol its BenchmarkSpec declares; "default" always kept)

Benchmarks, their kind and their protocols are declared once, in
:data:`weakalign.data.registry.BENCHMARKS`; a benchmark not declared there is an error.

A profile can override it like the training blocks: ``profiles.<name>.evaluate`` (the top-level
``profile:`` key selects it; ``dvc exp run -S profile=smoke``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RESOLVED, Block, defaults_of
from .stats import BootstrapConfig

from ..methods import NCNET_DENSE_REASON  # noqa: F401  (re-exported: the reason is declared by the method)

def _default_models() -> dict:
    # name -> spec, in table order (as params.yaml states them)
    return {
        "identity": {"type": "identity"},
        "strong_affine": {"checkpoint": "models/strong_affine.pt"},
        "strong_tps": {"checkpoint": "models/strong_tps.pt"},
        "strong_affine_tps": {"affine": "models/strong_affine.pt", "tps": "models/strong_tps.pt"},
        "weak_affine_tps": {"checkpoint": "models/weak_affine_tps.pt"},
        "weak, no inlier mask": {"checkpoint": "models/ablations/no_mask.pt"},
        "weak, mask tolerance 1": {"checkpoint": "models/ablations/tolerance_1.pt"},
        "weak, mask tolerance 2": {"checkpoint": "models/ablations/tolerance_2.pt"},
        "ncnet": {"type": "ncnet", "checkpoint": "models/ncnet.pt"},
        # not the paper's model: one more affine pass at test time (TwoStageCNNGeometric.affine_refinements)
        "weak + test-time affine refinement (not in paper)": {"checkpoint": "models/weak_affine_tps.pt", "affine_refinements": 1},
    }


@dataclass(frozen=True)
class EvaluateParams(Block):
    """The ``evaluate:`` block: its field defaults are the defaults (the one place)."""

    batch_size: int = 16
    # auto = cuda when available, else cpu (weakalign/devices.py); evaluation is deterministic
    # on the CPU, so auto on a CPU-only machine gives the numbers of `device: cpu`
    device: str = "auto"
    amp: str = "none"  # none | bf16 | fp16: autocast around the backbone only (weakalign/devices.py)
    num_workers: int = 0  # image-decoding processes for the benchmark images (0 = main process)
    benchmarks: tuple[str, ...] = ("pf-willow", "pf-pascal", "caltech-101", "tss")
    predictions_dir: str = "data/predictions"
    metrics: str = "reports/metrics/pck.json"
    plots_dir: str = "reports/plots"
    tables_dir: str = "reports/tables"
    # name -> spec, in table order (free-form; each spec is checked by its method)
    models: dict = field(default_factory=_default_models)
    reference_checkpoints_dir: str = "models/reference"
    max_pairs: int = 0
    # benchmark -> names of the declared PCK protocols to report ({} = all; "default" always kept)
    protocols: dict = field(default_factory=dict)
    # bootstrap intervals of every PCK and paired differences (weakalign.evaluation.stats)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    alphas_curve: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2)
    profile: str = field(default="default", metadata=RESOLVED)  # the profile it was resolved with


#: The defaults as a dict (derived from :class:`EvaluateParams`; read-only use).
DEFAULTS: dict = defaults_of(EvaluateParams)


def __getattr__(name: str):
    """``KEYPOINT_BENCHMARKS`` / ``DENSE_BENCHMARKS``: names by kind, from the registry's
    BenchmarkSpecs (computed on access, so that importing this module stays light). Dense ones
    are scored from the cached transforms with :mod:`weakalign.evaluation.dense` (annotations
    read again at metrics time; the models are not rerun)."""
    kinds = {"KEYPOINT_BENCHMARKS": "keypoints", "DENSE_BENCHMARKS": "dense"}
    if name in kinds:
        from ..data.registry import BENCHMARKS

        return tuple(n for n, s in BENCHMARKS.items() if s.kind == kinds[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _validate(block: str, cfg: dict) -> None:
    """Rules of the evaluate block after the generic type/range checks of weakalign.config
    (non-negative max_pairs, numbers are numbers, no NaN: there)."""
    from ..config import user_error
    from ..devices import check_amp, check_device_name

    check_device_name(f"{block}.device", cfg["device"])
    check_amp(f"{block}.amp", cfg["amp"])
    if cfg["batch_size"] < 1:
        raise user_error(f"{block}.batch_size must be >= 1, got {cfg['batch_size']!r}")
    if not all(isinstance(b, str) for b in cfg["benchmarks"]):
        raise user_error(f"{block}.benchmarks must be a list of benchmark names, got {cfg['benchmarks']!r}")
    if not isinstance(cfg["models"], dict) or not all(isinstance(v, dict) for v in cfg["models"].values()):
        raise user_error(f"{block}.models must map model names to specs ({{checkpoint: path}}, ...), got {cfg['models']!r}")
    for name, spec in cfg["models"].items():
        if "affine_refinements" in spec:
            r = spec["affine_refinements"]
            if isinstance(r, bool) or not isinstance(r, int) or r < 0:
                raise user_error(f"{block}.models.{name}.affine_refinements must be an integer >= 0, got {r!r}")
            if spec.get("type", "cnngeometric") != "cnngeometric":
                raise user_error(f"{block}.models.{name}.affine_refinements applies to two-stage CNNGeometric / WeakAlign models only, "
                                 f"not type {spec['type']!r}")
    if not isinstance(cfg["protocols"], dict):
        raise user_error(f"{block}.protocols must map benchmark names to lists of protocol names, got {cfg['protocols']!r}")
    if any(isinstance(a, bool) or not isinstance(a, (int, float)) or a <= 0 for a in cfg["alphas_curve"]):
        raise user_error(f"{block}.alphas_curve must be a list of numbers > 0, got {cfg['alphas_curve']!r}")
    b = cfg["bootstrap"]
    if b["resamples"] < 100:  # the interval needs them (weakalign.evaluation.stats.BootstrapConfig): refused here, before predict runs
        raise user_error(f"{block}.bootstrap.resamples must be >= 100, got {b['resamples']!r}")
    if not 0 < b["confidence"] < 1:
        raise user_error(f"{block}.bootstrap.confidence must be between 0 and 1 (e.g. 0.95), got {b['confidence']!r}")
    if b["method"] not in ("bca", "percentile"):
        raise user_error(f"{block}.bootstrap.method must be bca or percentile, got {b['method']!r}")


def _register() -> None:
    from ..config import BlockSchema, register

    register("evaluate", BlockSchema(lambda: defaults_of(EvaluateParams), frozenset({("models",), ("protocols",)}),
                                     validate=_validate, cls=EvaluateParams))


_register()


def load_block(params_path: str | Path | None) -> EvaluateParams:
    """The effective ``evaluate`` block (:func:`weakalign.config.resolve_block`: deep merge of
    ``profiles.<profile>.evaluate``, unknown keys, types and ranges checked), as
    :class:`EvaluateParams`."""
    from ..config import load_block as _load

    return _load("evaluate", params_path)


def model_specs(cfg: EvaluateParams, root: Path) -> dict:
    """Configured models plus released reference checkpoints found on disk (each tagged with the
    method its file name declares: :func:`weakalign.methods.spec_for_released`)."""
    from ..methods import spec_for_released

    specs = dict(cfg.models)
    ref_dir = root / cfg.reference_checkpoints_dir
    if ref_dir.is_dir():
        for p in sorted(ref_dir.glob("*.pth.tar")):
            spec = {"checkpoint": str(p.relative_to(root)), "optional": True, **spec_for_released(p.name)}
            specs.setdefault(f"released:{p.name.removesuffix('.pth.tar')}", spec)
    return specs


def is_ncnet_spec(spec: dict) -> bool:
    return spec.get("type") == "ncnet"


def load_model(spec: dict, root: Path):
    """Model for a spec (None = identity), loaded by the method the spec's ``type:`` names
    (:func:`weakalign.methods.method_for_spec`; no type = a CNNGeometric / WeakAlign checkpoint
    or ``affine`` + ``tps`` stages). Raises FileNotFoundError naming a missing file."""
    from ..methods import method_for_spec

    return method_for_spec(spec).load(spec, root)


def subset(dataset, max_pairs: int):
    """``max_pairs`` evenly spaced pairs of ``dataset`` (:func:`weakalign.data.datasets.evenly_spaced`)."""
    from ..data.datasets import evenly_spaced

    return evenly_spaced(dataset, max_pairs)


def unavailable_reason(exc) -> str:
    """One readable line for a missing dataset (full details stay in the exception); the first missing
    file is named relative to the project root, so reports do not depend on where the clone is."""
    missing = getattr(exc, "missing", None)
    how = getattr(exc, "how", "")
    if missing:
        from ..data.paths import project_root

        first = Path(missing[0])
        try:
            first = first.relative_to(project_root())
        except ValueError:
            pass
        first_step = how.split(";")[0].strip()
        return f"{len(missing)} file(s) missing, e.g. {first}. To get it: {first_step}"
    return str(exc)


def _safe_name(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def _predict(args) -> int:
    import torch

    from ..atomic import atomic_open
    from ..data.paths import project_root
    from ..data.registry import DatasetNotAvailable, benchmark_spec, get_dataset
    from ..info import environment

    from ..devices import resolve_device, set_backbone_amp

    t0 = time.time()
    root = project_root()
    cfg = load_block(args.params)
    device = resolve_device(cfg.device, "evaluate.device")
    out_dir = root / cfg.predictions_dir
    status = {}
    n_done = 0
    check_protocols(cfg, args.params)
    from ..atomic import check_dir_writable

    check_dir_writable(out_dir)  # fail before the predictions are computed, not after
    methods = check_methods(model_specs(cfg, root), args.params)
    for bench in cfg.benchmarks:
        try:
            ds = subset(get_dataset(bench, root=root / "data"), cfg.max_pairs)
        except DatasetNotAvailable as exc:
            status[bench] = {"available": False, "reason": unavailable_reason(exc)}
            print(f"{bench}: not available ({status[bench]['reason']})")
            continue
        status[bench] = {"available": True, "pairs": len(ds), "models": {}, "environment": environment(str(device))}
        if cfg.amp != "none":
            status[bench]["environment"]["amp"] = cfg.amp
        if getattr(ds, "pairs_total", None):
            status[bench]["pairs_total"] = ds.pairs_total
            print(f"{bench}: evaluating {len(ds)} evenly spaced pairs of {ds.pairs_total} (evaluate.max_pairs)")
        for name, spec in model_specs(cfg, root).items():
            method = methods[name]
            if not method.parametric and benchmark_spec(bench).kind == "dense":
                status[bench]["models"][name] = {"available": False, "reason": method.dense_reason}
                continue
            try:
                model = method.load(spec, root)
            except FileNotFoundError as exc:
                if spec.get("optional"):
                    # relative to the project root: the reason is committed (pck.json, tables, README)
                    reason = str(exc).replace(f"{root.resolve()}/", "").replace(f"{root}/", "")
                    status[bench]["models"][name] = {"available": False, "reason": reason}
                    print(f"{bench} / {name}: skipped ({exc})")
                    continue
                from weakalign.cli import UserError

                raise UserError(f"model {name!r}: {exc}. Train it first (dvc repro) or mark it optional in params.yaml") from exc
            set_backbone_amp(model, cfg.amp)
            pred = method.predict(model, ds, batch_size=cfg.batch_size, device=device, progress=not args.quiet,
                                  num_workers=cfg.num_workers)
            pred["model"] = name
            pred["model_spec"] = {k: str(v) for k, v in spec.items()}
            path = out_dir / bench / f"{_safe_name(name)}.pt"
            with atomic_open(path, "wb") as fh:
                torch.save(pred, fh)
            status[bench]["models"][name] = {"available": True, "predictions": str(path.relative_to(root)), "seconds": round(pred["seconds"], 2)}
            n_done += 1
            print(f"{bench} / {name}: {len(ds)} pairs in {pred['seconds']:.1f}s -> {path.relative_to(root)}")
    from ..atomic import write_json

    write_json(out_dir / "status.json", status)
    print(f"evaluate predict: {n_done} prediction files, {time.time() - t0:.0f}s -> {out_dir.relative_to(root)}")
    return 0


def check_methods(specs: dict, params_path=None) -> dict:
    """The method of every model spec (name -> :class:`weakalign.methods.Method`), checked before
    any model runs: an unknown ``type:`` is a one-line UserError naming the model and the file."""
    from weakalign.cli import UserError

    from ..methods import UnknownMethod, method_for_spec

    out = {}
    for name, spec in specs.items():
        try:
            out[name] = method_for_spec(spec)
        except UnknownMethod as exc:
            raise UserError(f"{params_path or 'params.yaml'}: evaluate.models.{name}: {exc}") from None
    return out


def check_protocols(cfg: EvaluateParams, params_path=None) -> None:
    """Every ``evaluate.benchmarks`` entry is declared and every ``evaluate.protocols`` entry
    names a declared keypoint benchmark and its declared protocols (one-line UserError)."""
    from weakalign.cli import UserError

    from ..data.registry import UndeclaredBenchmark, benchmark_spec

    where = f"{params_path or 'params.yaml'}: evaluate"
    try:
        for bench in cfg.benchmarks:
            benchmark_spec(bench)
        for bench, names in (cfg.protocols or {}).items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise UndeclaredBenchmark(f"protocols.{bench} must be a list of protocol names, got {names!r}")
            benchmark_spec(bench).pck_protocols(names)
    except UndeclaredBenchmark as exc:
        raise UserError(f"{where}: {exc}") from None


def protocols_for(bench: str, selected=None):
    """The benchmark's declared PCK protocols (:class:`weakalign.data.registry.BenchmarkSpec`),
    ``"default"`` first; ``selected`` keeps only those names (``evaluate.protocols.<bench>``).
    A benchmark without declared PCK protocols raises ``UndeclaredBenchmark``."""
    from ..data.registry import benchmark_spec

    return benchmark_spec(bench).pck_protocols(selected)


def dense_metrics(bench: str, st: dict, load_predictions, dataset) -> tuple[dict, str]:
    """A dense benchmark (Caltech-101: LT-ACC, IoU, LOC-ERR; TSS: flow PCK per subset) from
    cached transforms, with the scorer and measures its BenchmarkSpec declares."""
    from ..data.registry import benchmark_spec
    from .dense import SCORERS

    spec = benchmark_spec(bench)
    score, protocol, row = SCORERS[spec.scorer]
    measures = spec.measures
    from .metrics import pairs_label

    out = {"available": True, "pairs": st["pairs"], **({"pairs_total": st["pairs_total"]} if "pairs_total" in st else {}), "kind": "dense", "protocol": protocol, "measures": list(measures), "models": {}}
    rows = []
    for name, mst in st["models"].items():
        if not mst.get("available"):
            out["models"][name] = {"available": False, "reason": mst.get("reason", "")}
            continue
        pred = load_predictions(mst["predictions"])
        res = score(pred, dataset)
        entry = {}
        for kind, r in res["kinds"].items():
            vals, entry[kind] = row(r, measures)
            rows.append((name, kind, *[vals[m] for m in measures]))
        out["models"][name] = entry
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"### {bench} ({pairs_label(out)})", "", f"Protocol: {protocol}", "",
             "| model | transform | " + " | ".join(measures) + " |", "|---|---|" + "---|" * len(measures)]
    lines += [f"| {r[0]} | {r[1]} | " + " | ".join(fmt(v) for v in r[2:]) + " |" for r in rows]
    return out, "\n".join(lines) + "\n"


def compute_metrics(status: dict, load_predictions, alphas_curve, load_dataset=None, bootstrap: dict | None = None,
                    protocols: dict | None = None) -> tuple[dict, str, dict]:
    """Metrics JSON, markdown tables and PCK-curve rows from a prediction ``status`` dict
    (as written by ``predict``); ``load_predictions(relpath)`` returns one cache and
    ``load_dataset(name)`` a dataset (only needed for the dense benchmarks, whose ground truth
    is masks / flow fields rather than points stored in the cache). Keypoint benchmarks also get
    bootstrap intervals and paired differences (``bootstrap``: the ``evaluate.bootstrap`` block);
    ``protocols``: the ``evaluate.protocols`` block (benchmark -> protocol names; default all)."""
    from ..data.registry import benchmark_spec

    from .metrics import finite_or_none, keypoint_uncertainty, pck_markdown, pck_table
    from .pck import nonfinite_predictions
    from .predict import check_transfer_frame

    metrics, tables, curves = {}, [], {}
    for bench, st in status.items():
        if not st.get("available"):
            metrics[bench] = {"available": False, "reason": st.get("reason", "")}
            tables.append(f"### {bench}\n\nnot available: {st.get('reason', '')}\n")
            continue
        if benchmark_spec(bench).kind == "dense":
            if load_dataset is None:
                raise ValueError(f"{bench}: dense metrics need load_dataset")
            metrics[bench], table = dense_metrics(bench, st, load_predictions, load_dataset(bench))
            tables.append(table)
            continue
        protos = protocols_for(bench, (protocols or {}).get(bench))
        metrics[bench] = {"available": True, "pairs": st["pairs"], **({"pairs_total": st["pairs_total"]} if "pairs_total" in st else {}), "protocols": {k: p.to_dict() for k, p in protos.items()}, "models": {}}
        if st.get("environment"):  # the machine that ran the predictions (weakalign.info.environment)
            metrics[bench]["environment"] = st["environment"]
        nonfinite, loaded = {}, {}
        for name, mst in st["models"].items():
            if not mst.get("available"):
                metrics[bench]["models"][name] = {"available": False, "reason": mst.get("reason", "")}
                continue
            pred = loaded[name] = load_predictions(mst["predictions"])
            entry = {}
            for kind in pred["kinds"]:
                # annotated keypoints whose prediction is NaN/inf: counted wrong by the PCK, reported here
                res = {"nonfinite_predictions": int(nonfinite_predictions(pred["source_points"], pred["target_points"], pred["transferred"][kind]).sum())}
                if res["nonfinite_predictions"]:
                    nonfinite[f"{name} ({kind})"] = res["nonfinite_predictions"]
                for pname, proto in protos.items():
                    check_transfer_frame(pred, proto)
                    t = pck_table(pred, proto, kind)
                    res[pname] = {f"{a:g}": finite_or_none(v) for a, v in t["result"].pck.items()}
                    if pname == "default":
                        res["per_category"] = t["per_category"]
                        res["num_keypoints"] = t["result"].num_keypoints
                entry[kind] = res
            metrics[bench]["models"][name] = entry
            if "seconds" in mst:
                metrics[bench].setdefault("predict_seconds", {})[name] = mst["seconds"]
        metrics[bench]["nonfinite_predictions"] = sum(nonfinite.values())
        # bootstrap intervals (every model, kind, protocol, alpha, curve point) and paired differences
        unc = keypoint_uncertainty(loaded, protos, alphas_curve, bootstrap)
        for name, kinds in unc["ci"].items():
            for kind, ci in kinds.items():
                metrics[bench]["models"][name][kind]["ci"] = ci
        metrics[bench]["bootstrap"] = unc["bootstrap"]
        metrics[bench]["differences"] = unc["differences"]
        curves[bench] = [(f"{name} ({kind})", *row) for name, kinds in unc["curves"].items() for kind, rows in kinds.items() for row in rows]
        lines = pck_markdown(bench, metrics[bench], protos).rstrip("\n").split("\n")
        if nonfinite:
            lines += ["", f"**Warning:** {sum(nonfinite.values())} predicted keypoint position(s) were not finite (NaN/inf) and are "
                      "counted as wrong: " + ", ".join(f"{k} {v}" for k, v in nonfinite.items()) + "."]
        tables.append("\n".join(lines) + "\n")
    return metrics, "\n".join(tables), curves


def write_metrics(metrics: dict, tables: str, curves: dict, metrics_path: Path, plots_dir: Path, tables_dir: Path) -> None:
    from ..atomic import write_csv, write_json, write_text

    for bench, rows in curves.items():
        write_csv(plots_dir / f"pck_curve_{bench}.csv", ["model", "alpha", "pck", "low", "high"], rows)
    write_json(metrics_path, metrics)
    write_text(tables_dir / "pck.md", tables)


def _metrics(args) -> int:
    import torch

    from ..data.paths import project_root

    t0 = time.time()
    root = project_root()
    cfg = load_block(args.params)
    check_protocols(cfg, args.params)
    status_path = root / cfg.predictions_dir / "status.json"
    if not status_path.is_file():
        from weakalign.cli import UserError

        raise UserError(f"{status_path} not found: run `weakalign evaluate predict` first")
    status = json.loads(status_path.read_text())
    from ..data.registry import get_dataset

    metrics, tables, curves = compute_metrics(status, lambda rel: torch.load(root / rel, weights_only=True), cfg.alphas_curve,
                                              load_dataset=lambda name: subset(get_dataset(name, root=root / "data"), cfg.max_pairs),
                                              bootstrap=cfg.bootstrap, protocols=cfg.protocols)
    write_metrics(metrics, tables, curves, root / cfg.metrics, root / cfg.plots_dir, root / cfg.tables_dir)
    for bench, m in metrics.items():
        if m.get("nonfinite_predictions"):
            print(f"warning: {bench}: {m['nonfinite_predictions']} non-finite predicted keypoint(s), counted as wrong "
                  f"(see {cfg.tables_dir}/pck.md)")
    print(f"evaluate metrics: {sum(1 for m in metrics.values() if m.get('available'))} benchmark(s) available, "
          f"{time.time() - t0:.1f}s -> {cfg.metrics}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="run models on benchmarks (predict) and compute metrics from the cache")
    s = p.add_subparsers(dest="evaluate_command", metavar="STEP")
    for name, fn, helptext in (("predict", _predict, "run every model once per benchmark, cache predictions"),
                               ("metrics", _metrics, "compute metrics/tables/plots from cached predictions")):
        q = s.add_parser(name, help=helptext)
        q.add_argument("--params", default=None, help="params.yaml (default: the project's)")
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        q.set_defaults(func=fn)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
