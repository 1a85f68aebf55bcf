"""The ``train_strong:`` and ``train_weak:`` blocks of ``params.yaml``, and profiles.

Resolution order (later wins), each level merged key by key (lists are replaced whole); the
merging, profile and checking rules are those of every block, :mod:`weakalign.config`:

1. the defaults: the field defaults of :class:`TrainStrong` and :class:`TrainWeak` below, the one
   place they are defined (:data:`STRONG_DEFAULTS` and :data:`WEAK_DEFAULTS` are derived from them);
2. the block in ``params.yaml`` (``train_strong:`` / ``train_weak:``), which restates them
   (``tests/test_params_defaults.py`` fails if a value there differs from the code's);
3. ``profiles.<name>.train_strong`` / ``profiles.<name>.train_weak`` for the selected profile:
   the top-level ``profile:`` key of ``params.yaml`` (``default`` when absent), or the
   ``--profile`` option of the command;
4. for ``train-weak --variant NAME``: ``train_weak.variants.NAME`` (after the profile);
5. ``--set KEY=VALUE`` options of the command (``KEY`` is dotted, inside the block).

Unknown keys are errors (a typo must not silently train something else), except inside
``train_weak.variants`` whose entries are named freely.

Switching profile for the whole pipeline: ``dvc exp run -S profile=smoke`` (or edit
``profile:`` in ``params.yaml``); see ``docs/training.md``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from ..config import OMIT_DEFAULT, RESOLVED, Block, defaults_of

#: An image or pair list: a split name of :mod:`weakalign.data.registry` (``data/splits/...``)
#: or ``{csv: path, image_root: folder the csv entries are relative to}``.
ListSpec = Union[str, dict]


@dataclass(frozen=True)
class Phase(Block):
    """One phase of a ``schedule``: ``epochs`` at learning rate ``lr``; ``restart_from_best``
    reloads the best weights so far with a fresh optimiser (the reference's second run:
    ``--model best ... --lr 2e-4``)."""

    epochs: int = 1
    lr: float = 1.0e-3
    restart_from_best: bool = field(default=False, metadata=OMIT_DEFAULT)


@dataclass(frozen=True)
class Outputs(Block):
    """Where a training run writes (``{model}`` / ``{variant}`` filled in by the command)."""

    checkpoint: str = ""
    state: str = ""
    metrics: str = ""
    plot: str = ""
    steps_plot: str = ""

    @classmethod
    def of_run(cls, checkpoint: str, run: str, folder: str = "") -> "Outputs":
        """The suite's layout for a run named ``run``: ``models/state/<run>.pt``,
        ``reports/metrics/<folder><run>.json``, ``reports/plots/<folder><run>.csv`` and
        ``..._steps.csv``."""
        return cls(checkpoint, f"models/state/{run}.pt", f"reports/metrics/{folder}{run}.json",
                   f"reports/plots/{folder}{run}.csv", f"reports/plots/{folder}{run}_steps.csv")


@dataclass(frozen=True)
class RegressorModel(Block):
    """Backbone and regression head of a CNNGeometric stage."""

    backbone: str = "efficientnet_lite0"
    backbone_weights: str = "imagenet"
    image_size: tuple[int, int] = (240, 240)
    kernel_sizes: tuple[int, ...] = (7, 5)
    channels: tuple[int, ...] = (128, 64)


@dataclass(frozen=True)
class StrongData(Block):
    """Photos and the synthetic pair generator (reference: SynthDataset + SynthPairTnf)."""

    root: str = "data"
    # image lists: a split name of weakalign.data.registry (data/splits/...) or
    # {csv: path, image_root: folder the csv entries are relative to}
    train: ListSpec = "strong_train"
    val: ListSpec = "strong_val"
    max_train_images: int = 0  # 0 = all
    max_val_images: int = 0
    load_size: tuple[int, int] = (480, 640)  # every photo is first resized to this (h, w)
    padding_factor: float = 0.5  # symmetric (mirror) padding
    crop_factor: float = 0.5625  # 9/16 central crop
    random_t: float = 0.5
    random_s: float = 0.5
    random_alpha: float = 1.0 / 6.0
    random_t_tps: float = 0.4


def _strong_schedule() -> tuple:
    return (Phase(epochs=2, lr=1.0e-3), Phase(epochs=1, lr=2.0e-4, restart_from_best=True))


@dataclass(frozen=True)
class TrainStrong(Block):
    """The ``train_strong:`` block: its field defaults are the defaults (the one place)."""

    seed: int = 1
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N (weakalign/devices.py)
    # mixed precision of the backbone only: none | bf16 | fp16 (weakalign/devices.py)
    amp: str = "none"
    threads: int = 0  # torch intra-op threads; 0 = torch's default (divided among local DDP ranks)
    model: RegressorModel = field(default_factory=RegressorModel)
    data: StrongData = field(default_factory=StrongData)
    # fixed: pairs_per_image seeded random transformations per photo, drawn once (the reference's
    #        default: a fixed CSV of random transformations); backbone features precomputed.
    # random: new random transformations every epoch (reference --random-sample 1); the frozen
    #         backbone runs at every step.
    pairs: str = "fixed"
    # model selection: heldout_split = best epoch on the even rows of data.val, the odd rows
    # report (never select); reference = best epoch on every row of data.val, as the original
    # train_strong.py did with its synthetic test.csv (the paper profile: the original's VOC list)
    selection: str = "heldout_split"
    pairs_per_image: int = 4  # warps per photo (chosen on held-out grid loss per minute: docs/training.md; reference --random-sample: 1)
    # probability of mirroring a cached training pair left-right (features flipped, theta
    # mirrored: weakalign/training/mirror.py); 0 = the reference (no mirroring). pairs: fixed only.
    mirror_prob: float = 0.0
    cache_dir: str = "data/cache/features"
    batch_size: int = 16  # global batch (divided among DDP ranks)
    # phases run one after the other (Phase)
    schedule: tuple[Phase, ...] = field(default_factory=_strong_schedule)
    weight_decay: float = 0.0
    num_workers: int = 0
    checkpoint_every: int = 100  # steps between training-state checkpoints (and every epoch end)
    outputs: Outputs = field(default_factory=lambda: Outputs.of_run("models/strong_{model}.pt", "train_strong_{model}"))
    profile: str = field(default="default", metadata=RESOLVED)  # the profile it was resolved with


@dataclass(frozen=True)
class WeakInit(Block):
    """The strong checkpoints the weak stage starts from."""

    affine: str = "models/strong_affine.pt"
    tps: str = "models/strong_tps.pt"


@dataclass(frozen=True)
class WeakData(Block):
    """Training and held-out pair lists of the weak stage."""

    root: str = "data"
    # pair lists: a weak-pairs split of weakalign.data.registry (train, val, pf-pascal,
    # pf-pascal-paper) or {csv: path, image_root: folder}
    train: ListSpec = "train"
    val: ListSpec = "val"
    max_train_pairs: int = 0
    max_val_pairs: int = 0
    use_flip: bool = True  # honour the flip column (both images mirrored)
    random_crop: bool = False  # reference: True (each image cropped to a random 50-100% box)


@dataclass(frozen=True)
class WeakLoss(Block):
    """The soft-inlier count (:class:`weakalign.losses.inlier.SoftInlierCount`)."""

    tolerance: int = 0
    shape: str = "square"
    mask: str = "identity"  # identity | none (ablation: no inlier mask)
    normalize: bool = True
    offset_factor: float = 227.0 / 210.0
    tps_reg_factor: float = 0.2
    # how the two-stage count composes affine and TPS (weakalign/losses/inlier.py):
    # reference = the original's ComposedGeometricTnf (weakalign parity: equal within 2e-8);
    # analytic = this project's earlier closed form (differs at the border by ~1e-3)
    composition: str = "reference"


def _weak_variants() -> dict:
    return {
        "no_mask": {"label": "no inlier mask", "loss": {"mask": "none"}},
        "tolerance_1": {"label": "inlier mask, tolerance 1", "loss": {"tolerance": 1}},
        "tolerance_2": {"label": "inlier mask, tolerance 2", "loss": {"tolerance": 2}},
    }


@dataclass(frozen=True)
class TrainWeak(Block):
    """The ``train_weak:`` block: its field defaults are the defaults (the one place)."""

    seed: int = 1
    device: str = "auto"
    amp: str = "none"  # bf16 when a gradient passes through the backbone (fp16 is refused there)
    threads: int = 0
    init: WeakInit = field(default_factory=WeakInit)
    data: WeakData = field(default_factory=WeakData)
    # regressors: both regression heads; last_blocks: + the last `last_blocks` backbone blocks;
    # all: everything (the reference's default: --train-fe True, fe_finetune_params [''])
    train_parts: str = "regressors"
    last_blocks: int = 1
    update_bn_buffers: bool = False  # reference default: model.eval() during training
    # reference: the gradient of the stage-2 (TPS) estimate reaches the affine estimate through
    # the backbone's features of the affine-warped source; false runs those features without
    # gradient on a faster frozen copy (CPU budget; needs a frozen backbone, or with last_blocks
    # a frozen prefix: cache_features, the trained blocks then run after it with gradient)
    stage2_backbone_grad: bool = True
    cache_features: bool = True  # stage-1 features of fixed images when the backbone is frozen
    cache_dir: str = "data/cache/features"
    loss: WeakLoss = field(default_factory=WeakLoss)
    batch_size: int = 16
    schedule: tuple[Phase, ...] = (Phase(epochs=3, lr=5.0e-5),)
    weight_decay: float = 0.0
    # heldout_weak_score: mean soft-inlier score on held-out pairs (no keypoints; default)
    # pf_pascal_val_pck: PCK@0.1 on the PF-PASCAL validation pairs (reference code; uses keypoints;
    #                    data.max_val_pairs > 0 keeps that many evenly spaced pairs)
    # reference: the same as pf_pascal_val_pck (the name the paper profile uses in both blocks)
    # last_epoch: no selection
    selection: str = "heldout_weak_score"
    num_workers: int = 0
    checkpoint_every: int = 20
    label: str | None = None  # human-readable name of the variant (derived from `loss` when null)
    # name -> overrides of this block (free-form: merged by `train-weak --variant NAME`)
    variants: dict = field(default_factory=_weak_variants)
    outputs: Outputs = field(default_factory=lambda: Outputs.of_run("models/weak_affine_tps.pt", "train_weak"))
    variant_outputs: Outputs = field(default_factory=lambda: Outputs.of_run(
        "models/ablations/{variant}.pt", "train_weak_{variant}", folder="ablations/"))
    profile: str = field(default="default", metadata=RESOLVED)  # the profile it was resolved with
    variant: str = field(default="default", metadata=RESOLVED)  # the train_weak variant (default = main run)


CLASSES = {"train_strong": TrainStrong, "train_weak": TrainWeak}
#: The defaults as dicts (derived from the dataclasses; read-only use).
STRONG_DEFAULTS: dict = defaults_of(TrainStrong)
WEAK_DEFAULTS: dict = defaults_of(TrainWeak)

BLOCKS = {"train_strong": STRONG_DEFAULTS, "train_weak": WEAK_DEFAULTS}  # block -> defaults dict
FREE_FORM = {("variants",), ("data", "train"), ("data", "val"), ("label",)}
# keys that do not change the trained weights (excluded from the resume fingerprint)
NON_RESULT_KEYS = {"device", "threads", "num_workers", "checkpoint_every", "outputs", "variant_outputs", "cache_dir", "variants", "label"}


def _user_error(msg: str) -> Exception:
    from weakalign.cli import UserError

    return UserError(msg)


def merge(base: dict, over: dict | None, where: str, path: tuple = ()) -> dict:
    """``over`` merged into a copy of ``base``; keys unknown to ``base`` are an error
    (:func:`weakalign.config.merge` with the training blocks' free-form entries)."""
    from ..config import merge as _merge

    return _merge(base, over, where, frozenset(FREE_FORM), path)


def read_params_file(path: str | Path | None) -> tuple[dict, Path]:
    """The whole params file as a dict (``{}`` when the default ``params.yaml`` is absent).

    Malformed YAML, an empty file, a top level that is not a mapping, unknown top-level keys
    and unknown blocks inside ``profiles.<name>`` are errors (one line naming the file)."""
    import yaml

    from ..data.paths import project_root

    from ..config import BLOCK_MODULES, PROFILED_BLOCKS, load_yaml

    known_top = (*BLOCK_MODULES, "profile", "profiles")
    known_profile_blocks = PROFILED_BLOCKS
    p = Path(path) if path else project_root() / "params.yaml"
    if not p.is_file():
        if path:
            raise _user_error(f"params file not found: {p}")
        return {}, p
    try:
        with open(p, encoding="utf-8") as fh:
            doc = load_yaml(fh)  # YAML 1.2 numbers: 5e-08 is a float (weakalign.config)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _user_error(f"{p}: not valid YAML{where} ({what}); fix the file") from exc
    except UnicodeDecodeError as exc:
        raise _user_error(f"{p}: not a UTF-8 text file ({exc.reason})") from exc
    if doc is None:
        raise _user_error(f"{p}: the params file is empty; restore it (git checkout params.yaml) "
                          "or pass --params with a complete file")
    if not isinstance(doc, dict):
        raise _user_error(f"{p}: expected a mapping at the top level")
    unknown = [k for k in doc if k not in known_top]
    if unknown:
        raise _user_error(f"{p}: unknown top-level key(s) {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(known_top)})")
    if doc.get("profile") is not None and not isinstance(doc["profile"], str):
        raise _user_error(f"{p}: profile must be a profile name, got {doc['profile']!r}")
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise _user_error(f"{p}: profiles must be a mapping of profile names to blocks")
    for name, prof in profiles.items():
        if prof is None:
            continue
        if not isinstance(prof, dict):
            raise _user_error(f"{p}: profiles.{name} must be a mapping")
        bad = [k for k in prof if k not in known_profile_blocks]
        if bad:
            raise _user_error(f"{p}: profiles.{name}: unknown block(s) {', '.join(map(repr, bad))} "
                              f"(known: {', '.join(known_profile_blocks)})")
    return doc, p


def parse_set(items: list[str] | None) -> dict:
    """``["optim.lr=0.1", "data.max_train_images=8"]`` -> nested dict (values parsed as YAML 1.2
    numbers, :func:`weakalign.config.load_yaml`)."""
    import yaml

    from ..config import load_yaml

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise _user_error(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        if not all(parts):
            raise _user_error(f"--set {item!r}: empty key")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _user_error(f"--set {item!r} conflicts with another --set of {part}")
        try:
            node[parts[-1]] = load_yaml(value)
        except yaml.YAMLError as exc:
            raise _user_error(f"--set {item!r}: the value is not valid YAML") from exc
    return out


def resolve(block: str, doc: dict, where: str = "params.yaml", profile: str | None = None, variant: str | None = None,
            overrides: dict | None = None) -> "TrainStrong | TrainWeak":
    """The effective parameters of ``block`` (see the module docstring; the merging, profile and
    validation rules are :func:`weakalign.config.resolve_block`'s), as its dataclass
    (:class:`TrainStrong` / :class:`TrainWeak`) with the ``profile`` and ``variant`` used."""
    from ..config import merge as _merge
    from ..config import resolve_block, typed, validate_block

    if block not in BLOCKS:
        raise _user_error(f"unknown training block {block!r} (known: {', '.join(BLOCKS)})")
    cfg, profile = resolve_block(block, doc, where, profile, validate=False)
    free = frozenset(FREE_FORM)
    if variant not in (None, "", "default"):
        if block != "train_weak":
            raise _user_error("variants exist for train_weak only")
        variants = cfg.get("variants") or {}
        if variant not in variants:
            raise _user_error(f"{where}: unknown train_weak variant {variant!r} (defined: {', '.join(sorted(variants)) or '-'})")
        cfg = _merge(cfg, dict(variants[variant] or {}), f"{where}: train_weak.variants.{variant}", free)
    else:
        variant = "default"
    cfg = _merge(cfg, overrides or {}, "--set", free)
    validate_block(block, cfg)
    extra = {"variant": variant} if block == "train_weak" else {}
    return typed(CLASSES[block], cfg, block, profile=profile, **extra)


def check_values(block: str, cfg, defaults, path: tuple = ()) -> None:
    """Types and ranges against the defaults (:func:`weakalign.config.check_values`, with the
    training blocks' free-form entries)."""
    from ..config import check_values as _check

    _check(block, cfg, defaults, frozenset(FREE_FORM), path)


def _is_number_text(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def check_schedule(block: str, sched) -> None:
    """``schedule``: a non-empty list of {epochs: int >= 1, lr: finite > 0[, restart_from_best: bool]}."""
    import math

    if not isinstance(sched, list) or not sched:
        raise _user_error(f"{block}.schedule must be a non-empty list of {{epochs, lr}} phases")
    for i, ph in enumerate(sched):
        if not isinstance(ph, dict) or set(ph) - {"epochs", "lr", "restart_from_best"} or "epochs" not in ph or "lr" not in ph:
            raise _user_error(f"{block}.schedule[{i}] must be {{epochs: N, lr: X[, restart_from_best: bool]}}, got {ph!r}")
        ep, lr = ph["epochs"], ph["lr"]
        if not isinstance(ep, int) or isinstance(ep, bool) or ep < 1:
            raise _user_error(f"{block}.schedule[{i}].epochs must be an integer >= 1, got {ep!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            quoted = " (a quoted string: write the number without quotes)" if isinstance(lr, str) and _is_number_text(lr) else ""
            raise _user_error(f"{block}.schedule[{i}].lr must be a finite number > 0, got {lr!r}{quoted}")
        if not isinstance(ph.get("restart_from_best", False), bool):
            raise _user_error(f"{block}.schedule[{i}].restart_from_best must be true or false")


def _validate(block: str, cfg: dict) -> None:
    """Rules of the training blocks after the generic type/range checks of weakalign.config."""
    from ..devices import check_amp, check_device_name

    check_schedule(block, cfg["schedule"])
    check_device_name(f"{block}.device", cfg["device"])
    # strong training never back-propagates through its frozen backbone
    grad_through_backbone = block == "train_weak" and (cfg["train_parts"] != "regressors" or bool(cfg["stage2_backbone_grad"]))
    check_amp(f"{block}.amp", cfg["amp"], grad_through_backbone)
    if int(cfg["batch_size"]) < 1:
        raise _user_error(f"{block}.batch_size must be >= 1")
    if block == "train_strong":
        if cfg["pairs"] not in ("fixed", "random"):
            raise _user_error(f"train_strong.pairs must be 'fixed' or 'random', got {cfg['pairs']!r}")
        if int(cfg["pairs_per_image"]) < 1:
            raise _user_error("train_strong.pairs_per_image must be >= 1")
        p = float(cfg["mirror_prob"])
        if not 0.0 <= p <= 1.0:
            raise _user_error(f"train_strong.mirror_prob must be in [0, 1], got {cfg['mirror_prob']!r}")
        if cfg["selection"] not in ("heldout_split", "reference"):
            raise _user_error(f"train_strong.selection must be heldout_split or reference, got {cfg['selection']!r}")
        if p > 0.0 and cfg["pairs"] != "fixed":
            raise _user_error("train_strong.mirror_prob applies to cached pairs (pairs: fixed); set it to 0 with pairs: random")
    else:
        if cfg["train_parts"] not in ("regressors", "last_blocks", "all"):
            raise _user_error(f"train_weak.train_parts must be regressors, last_blocks or all, got {cfg['train_parts']!r}")
        if cfg["selection"] not in ("heldout_weak_score", "pf_pascal_val_pck", "reference", "last_epoch"):
            raise _user_error(f"train_weak.selection must be heldout_weak_score, pf_pascal_val_pck, reference or last_epoch, got {cfg['selection']!r}")
        if cfg["loss"]["composition"] not in ("reference", "analytic"):
            raise _user_error(f"train_weak.loss.composition must be reference or analytic, got {cfg['loss']['composition']!r}")
        if cfg["loss"]["mask"] not in ("identity", "none"):
            raise _user_error(f"train_weak.loss.mask must be identity or none, got {cfg['loss']['mask']!r}")


def fingerprint(cfg, extra: dict | None = None) -> str:
    """Hash of everything that determines the trained weights (for safe resuming); ``cfg``: a
    typed block or its dict."""
    if isinstance(cfg, Block):
        cfg = cfg.to_dict()
    keep = {k: v for k, v in cfg.items() if k not in NON_RESULT_KEYS and not k.startswith("_")}
    if keep.get("amp") == "none":  # float32: the fingerprint of a run from before the option existed
        del keep["amp"]
    keep["_extra"] = extra or {}
    blob = json.dumps(keep, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def weak_label(cfg: "TrainWeak") -> str:
    """Human-readable variant label: ``label`` if set, else derived from the loss parameters."""
    if cfg.label:
        return str(cfg.label)
    loss = cfg.loss
    if loss.mask == "none":
        return "no inlier mask"
    shape = "" if loss.shape == "square" or int(loss.tolerance) == 0 else f" ({loss.shape})"
    return f"inlier mask, tolerance {int(loss.tolerance)}{shape}"


def _register() -> None:
    from ..config import BlockSchema, register

    for name, cls in CLASSES.items():
        free = frozenset(p for p in FREE_FORM if name == "train_weak" or p[0] == "data")
        register(name, BlockSchema(lambda c=cls: defaults_of(c), free, validate=_validate, cls=cls))


_register()
