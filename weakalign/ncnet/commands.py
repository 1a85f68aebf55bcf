"""``weakalign train-ncnet``: NCNet weakly-supervised training (reads ``train_ncnet:``).

Options as for ``train-strong`` / ``train-weak`` (``docs/training.md``): ``--params``,
``--profile``, ``--set KEY=VALUE``, ``--resume`` / ``--resume=auto``, ``--max-steps N``
(exit status 3 when it stops early), ``--no-progress``. See ``docs/ncnet.md``.
"""

from __future__ import annotations


def _train_ncnet(args) -> int:
    from ..training.commands import PAUSED_EXIT
    from ..training.engine import Paused
    from .params import config_from_file
    from .runtime import reuse_freed_memory
    from .train import train_ncnet

    cfg = config_from_file(args.params, args.profile, args.set_)
    reuse_freed_memory()  # large temporaries: keep freed blocks (weakalign.ncnet.runtime)
    try:
        train_ncnet(cfg, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    except Paused as exc:
        print(f"weakalign {args.command}: {exc}")
        return PAUSED_EXIT
    return 0


def register(sub) -> None:
    from ..training.commands import _common

    p = sub.add_parser("train-ncnet", help="train NCNet (neighbourhood consensus) with its weak matching loss",
                       description="Neighbourhood Consensus Networks (Rocco et al., NeurIPS 2018): weakly-supervised training "
                                   "of the consensus network on matching pairs. Reads the train_ncnet block of params.yaml. "
                                   "See docs/ncnet.md.")
    _common(p)
    p.set_defaults(func=_train_ncnet)
