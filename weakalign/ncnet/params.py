"""The ``train_ncnet:`` block of ``params.yaml``.

Resolved like every block (:mod:`weakalign.config`), later wins, each level merged key by key
(lists replaced whole), unknown keys are errors:

1. :class:`TrainNCNet` below (the CPU-sized ``default`` profile; ``docs/ncnet.md`` says why);
2. the ``train_ncnet:`` block of ``params.yaml``;
3. ``profiles.<name>.train_ncnet`` for the selected profile (top-level ``profile:`` key, or
   ``--profile``); ``docs/ncnet.md`` has the ``smoke`` and ``paper`` entries;
4. ``--set KEY=VALUE`` options (dotted key inside the block).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import RESOLVED, Block, defaults_of
from ..training.params import ListSpec, Outputs, Phase
from ..training.params import fingerprint, merge, parse_set, read_params_file  # noqa: F401 (re-exported)

BLOCK = "train_ncnet"

@dataclass(frozen=True)
class NCNetModel(Block):
    """Backbone and neighbourhood-consensus network of NCNet."""

    backbone: str = "efficientnet_lite0"  # a name of weakalign.models.backbones (reference: resnet101)
    backbone_weights: str = "imagenet"
    image_size: tuple[int, int] = (240, 240)  # 15 x 15 features at stride 16 (reference: 400 x 400, 25 x 25)
    # reference PF-PASCAL model: [5, 5, 5] / [16, 16, 1]; [3, 3] / [16, 1] is the reference's
    # InLoc/IVD model and what fits the 2-core CPU budget (docs/ncnet.md)
    kernel_sizes: tuple[int, ...] = (3, 3)
    channels: tuple[int, ...] = (16, 1)
    symmetric: bool = True
    conv4d_impl: str = "auto"  # auto | loop | stack_input | stack_output (same result)


@dataclass(frozen=True)
class NCNetData(Block):
    """Training and held-out pair lists (the same pairs as ``train_weak``: same seed, same key)."""

    root: str = "data"
    # pair lists: a weak-pairs split of weakalign.data.registry (train, val, pf-pascal,
    # pf-pascal-paper) or {csv: path, image_root: folder}
    train: ListSpec = "train"
    val: ListSpec = "val"
    max_train_pairs: int = 0  # 0 = all (the same pairs as train_weak: same seed, same key)
    max_val_pairs: int = 0
    use_flip: bool = True  # honour the flip column (both images mirrored)


@dataclass(frozen=True)
class NCNetLoss(Block):
    normalization: str = "softmax"  # softmax (reference) | l1 | none


@dataclass(frozen=True)
class TrainNCNet(Block):
    """The ``train_ncnet:`` block: its field defaults are the defaults (the CPU-sized ``default``
    profile; ``docs/ncnet.md`` says why)."""

    seed: int = 1
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N (weakalign/devices.py)
    amp: str = "none"  # backbone mixed precision: none | bf16 | fp16 (fp16 only with a frozen backbone)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    model: NCNetModel = field(default_factory=NCNetModel)
    fe_finetune: int = 0  # last backbone blocks to fine-tune (reference --fe_finetune_params, default 0)
    data: NCNetData = field(default_factory=NCNetData)
    loss: NCNetLoss = field(default_factory=NCNetLoss)
    cache_features: bool = True  # frozen backbone: features of every distinct image computed once
    cache_dir: str = "data/cache/features"
    batch_size: int = 16
    schedule: tuple[Phase, ...] = (Phase(epochs=2, lr=1.0e-3),)  # reference: 5 epochs at 5e-4 (docs/ncnet.md)
    weight_decay: float = 0.0
    # heldout_weak_loss: weak loss on the even rows of data.val (the reference keeps the best
    # validation loss); last_epoch: no selection
    selection: str = "heldout_weak_loss"
    num_workers: int = 0
    checkpoint_every: int = 10
    outputs: Outputs = field(default_factory=lambda: Outputs.of_run("models/ncnet.pt", "train_ncnet"))
    profile: str = field(default="default", metadata=RESOLVED)  # the profile it was resolved with


#: The defaults as a dict (derived from :class:`TrainNCNet`; read-only use).
NCNET_DEFAULTS: dict = defaults_of(TrainNCNet)

SELECTIONS = ("heldout_weak_loss", "last_epoch")
NORMALIZATIONS = ("softmax", "l1", "none")


def _user_error(msg: str) -> Exception:
    from weakalign.cli import UserError

    return UserError(msg)


def resolve_ncnet(doc: dict, where: str = "params.yaml", profile: str | None = None, overrides: dict | None = None) -> TrainNCNet:
    """Effective ``train_ncnet`` parameters (module docstring; rules of
    :func:`weakalign.config.resolve_block`), as :class:`TrainNCNet` with the profile used."""
    from ..config import resolve_block, typed, validate_block

    cfg, profile = resolve_block(BLOCK, doc, where, profile, validate=False)
    cfg = merge(cfg, overrides or {}, "--set")
    validate_block(BLOCK, cfg)
    return typed(TrainNCNet, cfg, BLOCK, profile=profile)


def validate(cfg: dict) -> None:
    """Rules of the block after the generic type/range checks of weakalign.config."""
    from ..devices import check_amp, check_device_name
    from ..training.params import check_schedule

    check_schedule(BLOCK, cfg["schedule"])
    check_device_name(f"{BLOCK}.device", cfg["device"])
    check_amp(f"{BLOCK}.amp", cfg["amp"], backbone_gradient=int(cfg["fe_finetune"]) > 0)
    if int(cfg["batch_size"]) < 2:
        raise _user_error(f"{BLOCK}.batch_size must be >= 2 (the negatives pair each target with another pair's source)")
    m = cfg["model"]
    ks, ch = list(m["kernel_sizes"]), list(m["channels"])
    if not ks or len(ks) != len(ch):
        raise _user_error(f"{BLOCK}.model.kernel_sizes and channels must be non-empty lists of the same length, got {ks} and {ch}")
    if any(int(k) < 1 or int(k) % 2 == 0 for k in ks):
        raise _user_error(f"{BLOCK}.model.kernel_sizes must be odd, got {ks}")
    if int(ch[-1]) != 1 or any(int(c) < 1 for c in ch):
        raise _user_error(f"{BLOCK}.model.channels must be positive and end with 1, got {ch}")
    if len(m["image_size"]) != 2:
        raise _user_error(f"{BLOCK}.model.image_size must be [h, w], got {m['image_size']}")
    if cfg["selection"] not in SELECTIONS:
        raise _user_error(f"{BLOCK}.selection must be one of {', '.join(SELECTIONS)}, got {cfg['selection']!r}")
    if cfg["loss"]["normalization"] not in NORMALIZATIONS:
        raise _user_error(f"{BLOCK}.loss.normalization must be one of {', '.join(NORMALIZATIONS)}, got {cfg['loss']['normalization']!r}")
    if int(cfg["fe_finetune"]) < 0:
        raise _user_error(f"{BLOCK}.fe_finetune must be >= 0")


def config_from_file(params: str | None = None, profile: str | None = None, sets: list[str] | None = None) -> TrainNCNet:
    """``resolve_ncnet`` of a params file (default: the project's ``params.yaml``)."""
    doc, path = read_params_file(params)
    return resolve_ncnet(doc, where=str(path), profile=profile, overrides=parse_set(sets))


def _register() -> None:
    from ..config import BlockSchema, register

    register(BLOCK, BlockSchema(lambda: defaults_of(TrainNCNet), frozenset({("data", "train"), ("data", "val")}),
                                validate=lambda block, cfg: validate(cfg), cls=TrainNCNet))


_register()
