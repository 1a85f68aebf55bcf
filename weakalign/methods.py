"""One interface for every alignment method of the suite: what evaluation, the reports and the
training commands need to know about a method, declared once per method.

A method is a :class:`Method`. The evaluation (``weakalign evaluate predict``) asks the registry
which method a spec of ``evaluate.models`` belongs to (its ``type:``; a spec without one is a
CNNGeometric / WeakAlign checkpoint), then calls the method's ``load`` and ``predict``; it never
names a method itself. The methods table of the reports (``weakalign.reports.methods_frame``,
notebook 01) lists the :class:`TableRow` s the methods declare. Training: each method declares
its :class:`TrainingStage` s, one per ``params.yaml`` training block, each with the callable that
runs it; ``weakalign train BLOCK`` runs any declared stage (:mod:`weakalign.training.commands`;
``train-strong``, ``train-weak`` and ``train-ncnet`` are the built-ins' historical names for it).
Every training loop is a :class:`weakalign.training.engine.Task` driven by the shared
:func:`weakalign.training.engine.fit` (checkpoints, resume, selection, curves).

Built in: ``identity`` (no model), ``cnngeometric`` (CNNGeometric affine / TPS / two-stage,
WeakAlign: :mod:`weakalign.models`, :mod:`weakalign.training`), ``ncnet``
(:mod:`weakalign.ncnet`). Adding a third method is one module that builds a :class:`Method` and
calls :func:`register` (plus its params block and a dvc.yaml stage), with no command-line code of
its own; an installed package can do it through the ``weakalign.methods`` entry-point group
(:func:`load_plugins`): ``docs/methods.md``.

Conventions every ``predict`` keeps (they are what the metrics read, from the cache only):
the prediction dict of :mod:`weakalign.evaluation.predict` -- ``kinds``, ``transferred[kind]``
(``B x 2 x N`` target keypoints in source pixels, in the frame
:func:`weakalign.evaluation.predict.transfer_frame_for` gives), ``source_points`` /
``target_points``, ``source_size`` / ``target_size``, ``theta_aff`` / ``theta_tps`` (``None``
for a method without a parametric transformation) and ``seconds``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UnknownMethod(ValueError):
    """A ``type:`` in ``evaluate.models`` that no registered method declares."""


class UnknownStage(ValueError):
    """A training stage (params block) that no registered method declares."""


@dataclass(frozen=True)
class TableRow:
    """One row of the methods table: ``label``, the model's name in ``evaluate.models`` /
    ``pck.json``, its transform kind there, and the training records
    (``reports/metrics/<stem>.json``, key ``seconds``) that add up to its training time."""

    label: str
    model: str
    kind: str
    training_records: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageOption:
    """An option of one training stage only, as ``argparse`` takes it:
    ``add_argument(*flags, **kwargs)`` (e.g. ``--model affine|tps``); ``run`` reads its value from
    ``args.<dest>``. Build it with :func:`option`."""

    flags: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)


def option(*flags: str, **kwargs) -> StageOption:
    """``option("--model", required=True, choices=["affine", "tps"], help=...)``."""
    return StageOption(flags, kwargs)


@dataclass(frozen=True)
class TrainingStage:
    """A training stage of a method: the ``params.yaml`` block it reads, named ``block``, is also
    the stage's name (``weakalign train BLOCK``), so it is unique over the registry.

    ``run(args) -> dict`` trains and returns the metrics record (the dict also written to
    ``reports/metrics/``). ``args`` is the parsed command line (an ``argparse.Namespace``): the
    options every stage has, ``params``, ``profile``, ``set_`` (list of ``KEY=VALUE``),
    ``resume`` (``never`` | ``must`` | ``auto``), ``max_steps`` (0 = no limit), ``no_progress``,
    then one attribute per :class:`StageOption` of ``options``. ``run`` resolves its block itself
    (:func:`weakalign.training.commands.block_config` does it for a block of
    :mod:`weakalign.config`) and raises :class:`weakalign.training.engine.Paused` when
    ``max_steps`` stops it early (the command then exits with status 3); errors the user can fix
    are :class:`weakalign.cli.UserError`. ``help`` is one line (``weakalign train --help``),
    ``description`` the stage's help text. ``command``: an older sub-command name that stays an
    alias of ``weakalign train BLOCK`` (the built-ins' ``train-strong``...; a new stage has none)."""

    block: str
    run: Callable[[Any], dict]
    help: str = ""
    description: str = ""
    options: tuple[StageOption, ...] = ()
    command: str = ""

    @property
    def cli(self) -> str:
        """The command that runs the stage: ``weakalign train-strong`` or ``weakalign train BLOCK``."""
        return f"weakalign {self.command}" if self.command else f"weakalign train {self.block}"


@dataclass(frozen=True)
class Method:
    """An alignment method as the suite drives it.

    ``load(spec, root)`` returns the model for an ``evaluate.models`` spec (paths relative to the
    project ``root``; ``FileNotFoundError`` naming a missing file). ``predict(model, dataset, *,
    batch_size, device, progress, num_workers)`` returns the prediction dict (module docstring);
    ``device`` is a resolved ``torch.device`` (:mod:`weakalign.devices`).
    ``parametric``: the method estimates a transformation (θ), so the dense benchmarks
    (Caltech-101, TSS: masks and flow warped with θ) apply; otherwise ``dense_reason`` says why
    its rows are absent there. ``released_prefixes``: file-name prefixes of released reference
    checkpoints (``models/reference/<prefix>*.pth.tar``) that belong to this method."""

    name: str
    label: str
    load: Callable[[dict, Path], Any]
    predict: Callable[..., dict]
    parametric: bool = True
    dense_reason: str = ""
    training: tuple[TrainingStage, ...] = ()
    table_rows: tuple[TableRow, ...] = ()
    released_prefixes: tuple[str, ...] = ()
    docs: str = ""
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[str, Method] = {}

#: The ``type:`` of a spec that names none (``{checkpoint: ...}`` or ``{affine: ..., tps: ...}``).
DEFAULT_TYPE = "cnngeometric"


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to redefine a name, e.g. in tests)."""
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


#: Entry-point group through which an installed package adds methods: each entry point names a
#: module (or a callable) that registers its Method(s) when loaded (``docs/methods.md``).
ENTRY_POINT_GROUP = "weakalign.methods"
_plugins_loaded = False


def load_plugins(force: bool = False) -> list[str]:
    """Import the ``weakalign.methods`` entry points of installed packages once (each registers
    its methods); returns their names. A plugin that fails to load is an error naming it."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    from importlib.metadata import entry_points

    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001  (re-raised with the plugin named)
            raise ImportError(f"weakalign method plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if callable(obj):
            obj()
        names.append(ep.name)
    return names


def methods() -> dict[str, Method]:
    """Registered methods by name, in registration order (the built-ins first, then plugins)."""
    load_plugins()
    return dict(_REGISTRY)


def get_method(name: str) -> Method:
    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethod(f"unknown method type {name!r}; registered: {', '.join(_REGISTRY)} "
                            "(a new method registers itself with weakalign.methods.register: docs/methods.md)") from None


def method_for_spec(spec: dict) -> Method:
    """The method an ``evaluate.models`` spec belongs to (its ``type:``, default cnngeometric)."""
    return get_method(spec.get("type", DEFAULT_TYPE))


def spec_for_released(filename: str) -> dict | None:
    """``{"type": ...}`` of a released checkpoint file name whose prefix a method declares
    (``ncnet_pfpascal.pth.tar`` -> ncnet), ``{}`` for CNNGeometric / WeakAlign files, whose names
    vary (``best_pascal_checkpoint_adam_affine_grid_loss.pth.tar``...)."""
    low = filename.lower()
    for m in methods().values():
        if any(low.startswith(p) for p in m.released_prefixes):
            return {"type": m.name}
    return {}


def training_stages() -> dict[str, tuple[Method, TrainingStage]]:
    """Every declared training stage by its block: ``{block: (method, stage)}``, in registration
    order."""
    return {t.block: (m, t) for m in methods().values() for t in m.training}


def training_stage(block: str) -> tuple[Method, TrainingStage]:
    """The method and stage that train ``block``; :class:`UnknownStage` (one line listing the
    declared stages) if no registered method declares it."""
    stages = training_stages()
    try:
        return stages[block]
    except KeyError:
        known = ", ".join(f"{b} ({m.name})" for b, (m, _) in stages.items())
        what = f"unknown training stage {block!r}" if block else "no training stage given"
        raise UnknownStage(f"{what}; declared: {known} "
                           "(a method declares its stages in weakalign.methods.TrainingStage: docs/methods.md)") from None


def table_rows() -> list[TableRow]:
    """Rows of the methods table, every registered method's in registration order."""
    return [row for m in methods().values() for row in m.table_rows]


# --- built-in methods (imports inside the functions: importing this module stays light) -------

def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return path


def _load_identity(spec: dict, root: Path):
    return None


def _predict_identity(model, dataset, *, batch_size: int = 16, device="cpu", progress: bool = True, **kw) -> dict:
    from .evaluation.predict import predict_pairs

    return predict_pairs(None, dataset, batch_size=batch_size, device=device, progress=progress, **kw)


def _load_cnngeometric(spec: dict, root: Path):
    """A checkpoint, or ``affine`` + ``tps`` one-stage checkpoints assembled into the two-stage
    model; ``affine_refinements: N`` (two-stage models only, not the paper's model) runs the
    affine stage N more times at test time (:class:`weakalign.models.TwoStageCNNGeometric`)."""
    from .models import TwoStageCNNGeometric, load_checkpoint

    if "checkpoint" in spec:
        model = load_checkpoint(root / spec["checkpoint"])[0]
    elif "affine" in spec and "tps" in spec:
        aff, _ = load_checkpoint(root / spec["affine"])
        tps, _ = load_checkpoint(root / spec["tps"])
        model = TwoStageCNNGeometric.from_stages(aff, tps).eval()
    else:
        raise ValueError(f"model spec {spec} needs type: identity, checkpoint, or affine + tps")
    refinements = int(spec.get("affine_refinements", 0))
    if refinements:
        if not isinstance(model, TwoStageCNNGeometric):
            raise ValueError(f"affine_refinements needs a two-stage (affine+TPS) model; {spec} is {model.geometric_model}")
        model.affine_refinements = refinements
    return model


def _predict_cnngeometric(model, dataset, *, batch_size: int = 16, device="cpu", progress: bool = True, **kw) -> dict:
    from .evaluation.predict import predict_pairs

    return predict_pairs(model, dataset, batch_size=batch_size, device=device, progress=progress, **kw)


def _load_ncnet(spec: dict, root: Path):
    from .ncnet import load_ncnet_checkpoint

    return load_ncnet_checkpoint(_require(root / spec["checkpoint"]))[0]


def _predict_ncnet(model, dataset, *, batch_size: int = 16, device="cpu", progress: bool = True, **kw) -> dict:
    from .ncnet import predict_pairs_ncnet

    return predict_pairs_ncnet(model, dataset, batch_size=batch_size, device=device, progress=progress, **kw)


def _stage_run(module: str, name: str) -> Callable[[Any], dict]:
    """The ``run`` of a built-in stage: ``module.name(args)``, the module imported when the stage
    runs, so that importing the registry (evaluation does) brings in no training code, and the
    evaluation stages of dvc.yaml do not depend on it. ``module`` is the one that registers the
    stage's older command name, so the import graph of that command (what dvc.yaml's training
    stages run; ``tests/test_dvc_pipeline.py``) still contains the training code."""

    def run(args) -> dict:
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    run.__qualname__ = run.__name__ = f"{module}.{name}"
    return run


#: Why an NCNet row is absent from the dense benchmarks (they warp with a parametric transform).
NCNET_DENSE_REASON = "NCNet gives sparse matches and no parametric transformation; Caltech-101 and TSS warp with theta"

IDENTITY = register(Method(
    name="identity", label="identity (no alignment)", load=_load_identity, predict=_predict_identity,
    docs="the identity transformation: a floor for every benchmark"))

CNNGEOMETRIC = register(Method(
    name="cnngeometric", label="CNNGeometric / WeakAlign", load=_load_cnngeometric, predict=_predict_cnngeometric,
    training=(
        TrainingStage(
            "train_strong", _stage_run("weakalign.training.commands", "run_strong"), command="train-strong",
            help="train a CNNGeometric model (affine or TPS) with strong synthetic supervision",
            description="Strong supervision on synthetic pairs (CNNGeometric). Reads the train_strong block of params.yaml. See docs/training.md.",
            options=(option("--model", required=True, choices=["affine", "tps"], help="geometric model to train"),)),
        TrainingStage(
            "train_weak", _stage_run("weakalign.training.commands", "run_weak"), command="train-weak",
            help="weakly-supervised fine-tuning of the two-stage model (soft-inlier loss)",
            description="WeakAlign fine-tuning from the strong affine and TPS checkpoints. Reads the train_weak block of params.yaml. See docs/training.md.",
            options=(option("--variant", default=None,
                            help="a named parameter set of train_weak.variants (ablations, e.g. no_mask); default: the main model"),)),
    ),
    table_rows=(
        TableRow("CNNGeometric (strong supervision)", "strong_affine_tps", "affine_tps", ("train_strong_affine", "train_strong_tps")),
        TableRow("WeakAlign (strong, then weak fine-tuning)", "weak_affine_tps", "affine_tps",
                 ("train_strong_affine", "train_strong_tps", "train_weak")),
    ),
    docs="docs/training.md"))

NCNET = register(Method(
    name="ncnet", label="NCNet", load=_load_ncnet, predict=_predict_ncnet, parametric=False, dense_reason=NCNET_DENSE_REASON,
    training=(TrainingStage(
        "train_ncnet", _stage_run("weakalign.ncnet.commands", "run_ncnet"), command="train-ncnet",
        help="train NCNet (neighbourhood consensus) with its weak matching loss",
        description="Neighbourhood Consensus Networks (Rocco et al., NeurIPS 2018): weakly-supervised training "
                    "of the consensus network on matching pairs. Reads the train_ncnet block of params.yaml. "
                    "See docs/ncnet.md."),),
    table_rows=(TableRow("NCNet (weak supervision)", "ncnet", "ncnet", ("train_ncnet",)),),
    released_prefixes=("ncnet",),  # ncnet_pfpascal.pth.tar, ncnet_ivd.pth.tar
    docs="docs/ncnet.md"))
