"""``weakalign methods``: list the registered alignment methods (:mod:`weakalign.methods`), their
training stages (params block -> the command that runs it: ``weakalign train BLOCK``,
or a built-in's older name such as ``train-strong``) and whether the dense benchmarks apply to them."""

from __future__ import annotations


def _run(args) -> int:
    from .methods import methods

    for m in methods().values():
        stages = ", ".join(f"{t.block} -> {t.cli}" for t in m.training) or "not trained"
        dense = "dense benchmarks too" if m.parametric else f"keypoint benchmarks only ({m.dense_reason})"
        print(f"{m.name}: {m.label}; training: {stages}; {dense}" + (f"; see {m.docs}" if m.docs.startswith("docs/") else ""))
    return 0


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the alignment methods the suite can train and evaluate (docs/methods.md)")
    p.set_defaults(func=_run)
