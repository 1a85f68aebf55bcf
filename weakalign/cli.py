"""The ``weakalign`` command (also ``python -m weakalign``).

Sub-commands live next to the code they drive: every module listed in ``COMMAND_MODULES``
exposes ``register(subparsers)`` which adds its sub-parsers and sets ``func`` on them.

Expected failures (bad input the user can fix: a missing or damaged checkpoint, a refused
pickle, a malformed params file, an image over the size cap, a file that fails verification,
an unsafe archive...) end as ONE line on stderr and exit status 1; the traceback is shown only
with ``--debug`` (accepted before or after the sub-command). Anything else is a bug and keeps
its traceback.

``--trust-unverified`` (before or after the sub-command) lets the data layer accept files for
which no SHA-256 is known, on their content manifest alone; it is logged, and the files are
labelled UNVERIFIED (see ``weakalign.data.download``).
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
    "weakalign.methods_command",
    "weakalign.evaluation.commands",
    "weakalign.align",
    "weakalign.notebooks",
    "weakalign.reports",
    "weakalign.parity.commands",
)


class UserError(Exception):
    """An error caused by input the user can fix; printed as one line, no traceback."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input", reported as one line (no traceback)."""
    import yaml
    from PIL import Image

    from weakalign.data.archives import ArchiveContentError, UnsafeArchiveError
    from weakalign.atomic import OutputNotWritableError
    from weakalign.data.csvio import CsvFormatError
    from weakalign.data.download import VerificationError
    from weakalign.data.images import CorruptImageError, ImageShapeError
    from weakalign.models.backbones import BackboneWeightsMismatch, UnknownBackbone
    from weakalign.models.checkpoints import CheckpointFormatError, UnsafeCheckpointError

    return (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            CheckpointFormatError, UnsafeCheckpointError, CorruptImageError, ImageShapeError,
            CsvFormatError, Image.DecompressionBombError, VerificationError, UnsafeArchiveError,
            ArchiveContentError, OutputNotWritableError, UnknownBackbone, BackboneWeightsMismatch, yaml.YAMLError)


def _global_options(p: argparse.ArgumentParser, default, trust: bool = True) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback of an error")
    if trust:
        p.add_argument("--trust-unverified", action="store_true", default=default,
                       help="accept data files with no known SHA-256 on their content "
                            "manifest alone (logged; labelled UNVERIFIED)")


def _leaf_parsers(parser: argparse.ArgumentParser):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    yield parser
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaf_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    from weakalign import __version__

    parser = argparse.ArgumentParser(
        prog="weakalign",
        description="WeakAlign / CNNGeometric reproduction suite. See README.md.",
    )
    parser.add_argument("--version", action="version", version=f"weakalign {__version__}")
    _global_options(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # the same options after the sub-command (SUPPRESS: an absent one does not reset the
    # value given before the sub-command)
    for p in _leaf_parsers(parser):
        if p is not parser and "--debug" not in p._option_string_actions:
            _global_options(p, argparse.SUPPRESS, trust=p.prog.split()[1:2] == ["data"])
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import torch

    if args.trust_unverified:
        from weakalign.data.download import set_trust_unverified

        set_trust_unverified(True)
    # Denormal floats are very slow on x86 CPUs and appear in real-image activations; flushing
    # them changes values only below ~1e-38 (see weakalign.models.inference).
    torch.set_flush_denormal(True)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except expected_errors() as exc:
        if args.debug:
            raise
        print(f"weakalign {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if args.trust_unverified:
            from weakalign.data.download import set_trust_unverified

            set_trust_unverified(False)


if __name__ == "__main__":  # pragma: no cover
    # ``python -m weakalign.cli``: run the importable module's main so that the UserError
    # class raised by sub-commands is the one caught here.
    from weakalign.cli import main as _main

    sys.exit(_main())
