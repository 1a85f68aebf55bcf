"""``weakalign train STAGE``: run a training stage declared in the method registry
(:class:`weakalign.methods.TrainingStage`), and ``weakalign train-strong`` / ``train-weak``, the
historical names of two of them (``train-ncnet``: :mod:`weakalign.ncnet.commands`).

=====================================================  =========================================
``weakalign train train_strong --model affine|tps``    strong synthetic supervision (CNNGeometric)
``weakalign train train_weak [--variant NAME]``        weakly-supervised soft-inlier fine-tuning
``weakalign train train_ncnet``                        NCNet (docs/ncnet.md)
``weakalign train --help``                             every declared stage, with its method
=====================================================  =========================================

``weakalign train-strong ...`` is exactly ``weakalign train train_strong ...`` (same options,
same code path: the stage's ``run``), and likewise ``train-weak`` and ``train-ncnet``.

Common options: ``--params`` (default ``params.yaml`` at the project root), ``--profile``
(default: the file's ``profile:`` key, else ``default``), ``--set KEY=VALUE`` (repeatable,
dotted key inside the block), ``--resume`` (continue from the training-state checkpoint; error
if there is none or it does not match; ``--resume=auto``: continue when possible, otherwise
start from scratch, as the DVC stages do), ``--max-steps N`` (stop after N steps with the state
saved, for tests and time-boxed runs; exit status 3), ``--no-progress``. A stage adds its own
(:class:`weakalign.methods.StageOption`). The device, threads etc. are parameters of the block.

Multi-GPU / multi-node: run the same command under ``torchrun``, e.g.
``torchrun --nproc_per_node=4 -m weakalign.cli train-strong --model affine``.
"""

from __future__ import annotations

import argparse

PAUSED_EXIT = 3  # --max-steps reached before the end: state saved, outputs not written


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, help="parameters file (default: params.yaml at the project root)")
    p.add_argument("--profile", default=None, help="profile to apply (default: the `profile:` key of the params file, else 'default')")
    p.add_argument("--set", dest="set_", action="append", metavar="KEY=VALUE",
                   help="override a parameter of this stage's block (dotted key, YAML value); repeatable")
    p.add_argument("--resume", nargs="?", const="must", default="never", choices=["must", "auto", "never"],
                   help="continue from the training-state checkpoint (bare --resume: it must exist and match; "
                        "--resume=auto: when it exists and matches)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimisation steps (state saved; continue with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the summary line is still printed)")


def stage_options(p: argparse.ArgumentParser, stage) -> None:
    """Add the options of ``stage`` (a :class:`weakalign.methods.TrainingStage`), then the common ones."""
    for opt in stage.options:
        p.add_argument(*opt.flags, **opt.kwargs)
    _common(p)


def block_config(args, block: str, variant=None):
    """The resolved ``block`` of ``args.params`` under ``args.profile`` and ``args.set_``, as the
    block's dataclass (with the profile used): :func:`weakalign.training.params.resolve` for
    ``train_strong`` / ``train_weak`` (and a ``train_weak`` ``variant``),
    :func:`weakalign.config.resolve_block` for any other block registered in
    :mod:`weakalign.config` (a third method's; a block registered without a dataclass stays a
    dict with a ``_profile`` entry)."""
    from ..config import resolve_block, schema, typed_block
    from .params import BLOCKS, parse_set, read_params_file, resolve

    doc, path = read_params_file(args.params)
    if block in BLOCKS:
        return resolve(block, doc, where=str(path), profile=args.profile, variant=variant, overrides=parse_set(args.set_))
    cfg, profile = resolve_block(block, doc, str(path), args.profile, extra=[("--set", parse_set(args.set_))])
    if schema(block).cls is None:
        cfg["_profile"] = profile
        return cfg
    return typed_block(block, cfg, profile=profile)


def fit_options(args) -> dict:
    """The keyword arguments every training function takes from the common options:
    ``resume``, ``max_steps``, ``progress``."""
    return {"resume": args.resume, "max_steps": args.max_steps, "progress": not args.no_progress}


def run_strong(args) -> dict:
    """``run`` of the ``train_strong`` stage (:mod:`weakalign.methods`)."""
    from .strong import train_strong

    return train_strong(block_config(args, "train_strong"), args.model, **fit_options(args))


def run_weak(args) -> dict:
    """``run`` of the ``train_weak`` stage (:mod:`weakalign.methods`)."""
    from .weak import train_weak

    return train_weak(block_config(args, "train_weak", args.variant), **fit_options(args))


def run_stage(args) -> int:
    """Run the registry's stage ``args.stage`` with the parsed options: 0, or :data:`PAUSED_EXIT`
    (message on stdout) when ``--max-steps`` stopped it with the state saved."""
    from ..cli import UserError
    from ..methods import UnknownStage, training_stage
    from .engine import Paused

    try:
        _, stage = training_stage(args.stage)
    except UnknownStage as exc:
        raise UserError(str(exc)) from None
    try:
        stage.run(args)
    except Paused as exc:
        print(f"weakalign {args.command}: {exc}")
        return PAUSED_EXIT
    return 0


def builtin_stage(block: str):
    """The built-in stage ``block`` as :mod:`weakalign.methods` declares it, read when the parser
    is built (no plugin is loaded then)."""
    from .. import methods

    return next(t for m in (methods.CNNGEOMETRIC, methods.NCNET) for t in m.training if t.block == block)


def add_alias(p: argparse.ArgumentParser, stage) -> None:
    """Make ``p`` (``weakalign train-strong``...) the historical name of ``stage``: its options,
    and at run time the stage of that block the registry holds (:func:`run_stage`)."""
    stage_options(p, stage)
    p.set_defaults(func=run_stage, stage=stage.block)


def _stage_list() -> str:
    from ..methods import training_stages

    lines = ["stages (STAGE = the params.yaml block it reads; `weakalign train STAGE --help` for its options):"]
    for block, (method, stage) in training_stages().items():
        alias = f"; also `weakalign {stage.command}`" if stage.command else ""
        lines.append(f"  {block:<14} {method.name}: {stage.help}{alias}")
    return "\n".join(lines)


class _HelpWithStages(argparse.Action):
    """``weakalign train --help``: the usage, then the stages declared when it is asked (plugins
    included), so that building the parser loads no plugin."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        print("\n" + _stage_list())
        parser.exit()


def _train(args) -> int:
    """``weakalign train STAGE ...``: the stage's own parser reads the rest of the command line."""
    from ..cli import UserError, _global_options
    from ..methods import UnknownStage, training_stage

    try:
        _, stage = training_stage(args.stage or "")
    except UnknownStage as exc:
        raise UserError(str(exc)) from None
    p = argparse.ArgumentParser(prog=f"weakalign train {stage.block}", description=stage.description or stage.help)
    stage_options(p, stage)
    _global_options(p, argparse.SUPPRESS, trust=False)  # --debug after the stage too
    p.parse_args(args.rest, namespace=args)
    return run_stage(args)


def register(sub) -> None:
    p = sub.add_parser("train", add_help=False, help="train any stage a method declares (weakalign train --help lists them)",
                       usage="weakalign train STAGE [stage options] [--params FILE] [--profile NAME] [--set KEY=VALUE] "
                             "[--resume[=auto]] [--max-steps N] [--no-progress]",
                       description="Run a training stage declared in the method registry (weakalign.methods). "
                                   "See docs/training.md and docs/methods.md.")
    p.add_argument("-h", "--help", action=_HelpWithStages, help="show this help and the declared stages, then exit")
    p.add_argument("stage", nargs="?", metavar="STAGE", help="a training stage: the params.yaml block it reads (train_strong, ...)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=_train)

    strong, weak = builtin_stage("train_strong"), builtin_stage("train_weak")
    add_alias(sub.add_parser("train-strong", help=strong.help, description=strong.description), strong)
    add_alias(sub.add_parser("train-weak", help=weak.help, description=weak.description), weak)
