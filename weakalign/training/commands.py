"""``weakalign train-strong`` and ``weakalign train-weak``.

=====================================================  =========================================
``weakalign train-strong --model affine|tps``          strong synthetic supervision (CNNGeometric)
``weakalign train-weak [--variant NAME]``              weakly-supervised soft-inlier fine-tuning
=====================================================  =========================================

Common options: ``--params`` (default ``params.yaml`` at the project root), ``--profile``
(default: the file's ``profile:`` key, else ``default``), ``--set KEY=VALUE`` (repeatable,
dotted key inside the block), ``--resume`` (continue from the training-state checkpoint; error
if there is none or it does not match; ``--resume=auto``: continue when possible, otherwise
start from scratch, as the DVC stages do), ``--max-steps N`` (stop after N steps with the state
saved, for tests and time-boxed runs; exit status 3), ``--no-progress``.

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


def _config(args, block: str, variant=None) -> dict:
    from .params import parse_set, read_params_file, resolve

    doc, path = read_params_file(args.params)
    return resolve(block, doc, where=str(path), profile=args.profile, variant=variant, overrides=parse_set(args.set_))


def _run(fn, args, *a, **kw) -> int:
    from .engine import Paused

    try:
        fn(*a, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress, **kw)
    except Paused as exc:
        print(f"weakalign {args.command}: {exc}")
        return PAUSED_EXIT
    return 0


def _train_strong(args) -> int:
    from .strong import train_strong

    return _run(train_strong, args, _config(args, "train_strong"), args.model)


def _train_weak(args) -> int:
    from .weak import train_weak

    return _run(train_weak, args, _config(args, "train_weak", args.variant))


def register(sub) -> None:
    p = sub.add_parser("train-strong", help="train a CNNGeometric model (affine or TPS) with strong synthetic supervision",
                       description="Strong supervision on synthetic pairs (CNNGeometric). Reads the train_strong block of params.yaml. See docs/training.md.")
    p.add_argument("--model", required=True, choices=["affine", "tps"], help="geometric model to train")
    _common(p)
    p.set_defaults(func=_train_strong)

    p = sub.add_parser("train-weak", help="weakly-supervised fine-tuning of the two-stage model (soft-inlier loss)",
                       description="WeakAlign fine-tuning from the strong affine and TPS checkpoints. Reads the train_weak block of params.yaml. See docs/training.md.")
    p.add_argument("--variant", default=None, help="a named parameter set of train_weak.variants (ablations, e.g. no_mask); default: the main model")
    _common(p)
    p.set_defaults(func=_train_weak)
