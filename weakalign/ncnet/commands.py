"""``weakalign train-ncnet``: NCNet weakly-supervised training (reads ``train_ncnet:``), the
historical name of ``weakalign train train_ncnet`` (the ``ncnet`` method's stage in
:mod:`weakalign.methods`; same options, same code path).

Options as for ``train-strong`` / ``train-weak`` (``docs/training.md``): ``--params``,
``--profile``, ``--set KEY=VALUE``, ``--resume`` / ``--resume=auto``, ``--max-steps N``
(exit status 3 when it stops early), ``--no-progress``. See ``docs/ncnet.md``.
"""

from __future__ import annotations


def run_ncnet(args) -> dict:
    """``run`` of the ``train_ncnet`` stage (:mod:`weakalign.methods`)."""
    from ..training.commands import fit_options
    from .params import config_from_file
    from .runtime import reuse_freed_memory
    from .train import train_ncnet

    cfg = config_from_file(args.params, args.profile, args.set_)
    reuse_freed_memory()  # large temporaries: keep freed blocks (weakalign.ncnet.runtime)
    return train_ncnet(cfg, **fit_options(args))


def register(sub) -> None:
    from ..training.commands import add_alias, builtin_stage

    stage = builtin_stage("train_ncnet")
    add_alias(sub.add_parser("train-ncnet", help=stage.help, description=stage.description), stage)
