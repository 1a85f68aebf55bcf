"""The ``weakalign`` command.

Sub-commands live next to the code they drive: every module listed in ``COMMAND_MODULES``
exposes ``register(subparsers)`` which adds its sub-parsers and sets ``func`` on them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "weakalign.info",
    "weakalign.data.commands",
    "weakalign.training.commands",
    "weakalign.ncnet.commands",
    "weakalign.evaluation.commands",
    "weakalign.align",
    "weakalign.notebooks",
    "weakalign.reports",
)


class UserError(Exception):
    """An error caused by input the user can fix; printed as one line, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    from weakalign import __version__

    parser = argparse.ArgumentParser(
        prog="weakalign",
        description="WeakAlign / CNNGeometric reproduction suite. See README.md.",
    )
    parser.add_argument("--version", action="version", version=f"weakalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import torch

    # Denormal floats are very slow on x86 CPUs and appear in real-image activations; flushing
    # them changes values only below ~1e-38 (see weakalign.models.inference).
    torch.set_flush_denormal(True)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        print(f"weakalign {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    # ``python -m weakalign.cli``: run the importable module's main so that the UserError
    # class raised by sub-commands is the one caught here.
    from weakalign.cli import main as _main

    sys.exit(_main())
