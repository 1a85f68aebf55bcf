"""One interface for every alignment method of the suite: what evaluation, the reports and the
training commands need to know about a method, declared once per method.

A method is a :class:`Method`. The evaluation (``weakalign evaluate predict``) asks the registry
which method a spec of ``evaluate.models`` belongs to (its ``type:``; a spec without one is a
CNNGeometric / WeakAlign checkpoint), then calls the method's ``load`` and ``predict``; it never
names a method itself. The methods table of the reports (``weakalign.reports.methods_frame``,
notebook 01) lists the :class:`TableRow` s the methods declare. Training: each method names its
``params.yaml`` training block(s) and the ``weakalign`` sub-command that runs each; every
training loop is a :class:`weakalign.training.engine.Task` driven by the shared
:func:`weakalign.training.engine.fit` (checkpoints, resume, selection, curves).

Built in: ``identity`` (no model), ``cnngeometric`` (CNNGeometric affine / TPS / two-stage,
WeakAlign: :mod:`weakalign.models`, :mod:`weakalign.training`), ``ncnet``
(:mod:`weakalign.ncnet`). Adding a third method is one module that builds a :class:`Method` and
calls :func:`register` (plus its params block and a dvc.yaml stage); an installed package can
do it through the ``weakalign.methods`` entry-point group (:func:`load_plugins`): ``docs/methods.md``.

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
class TrainingStage:
    """A training stage of a method: the ``params.yaml`` block it reads and the ``weakalign``
    sub-command that runs it (registered by the method's command module)."""

    block: str
    command: str


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


#: Why an NCNet row is absent from the dense benchmarks (they warp with a parametric transform).
NCNET_DENSE_REASON = "NCNet gives sparse matches and no parametric transformation; Caltech-101 and TSS warp with theta"

IDENTITY = register(Method(
    name="identity", label="identity (no alignment)", load=_load_identity, predict=_predict_identity,
    docs="the identity transformation: a floor for every benchmark"))

CNNGEOMETRIC = register(Method(
    name="cnngeometric", label="CNNGeometric / WeakAlign", load=_load_cnngeometric, predict=_predict_cnngeometric,
    training=(TrainingStage("train_strong", "train-strong"), TrainingStage("train_weak", "train-weak")),
    table_rows=(
        TableRow("CNNGeometric (strong supervision)", "strong_affine_tps", "affine_tps", ("train_strong_affine", "train_strong_tps")),
        TableRow("WeakAlign (strong, then weak fine-tuning)", "weak_affine_tps", "affine_tps",
                 ("train_strong_affine", "train_strong_tps", "train_weak")),
    ),
    docs="docs/training.md"))

NCNET = register(Method(
    name="ncnet", label="NCNet", load=_load_ncnet, predict=_predict_ncnet, parametric=False, dense_reason=NCNET_DENSE_REASON,
    training=(TrainingStage("train_ncnet", "train-ncnet"),),
    table_rows=(TableRow("NCNet (weak supervision)", "ncnet", "ncnet", ("train_ncnet",)),),
    released_prefixes=("ncnet",),  # ncnet_pfpascal.pth.tar, ncnet_ivd.pth.tar
    docs="docs/ncnet.md"))
