"""``weakalign align SOURCE TARGET``: align your own image pair with a trained model.

Every expected failure is one line and exit status 1 (``--debug`` for the traceback): a
missing, empty, truncated, refused (unsafe pickle) or malformed checkpoint, an NCNet
checkpoint, non-finite weights or metadata out of bounds (see
:func:`weakalign.models.checkpoints.load_checkpoint`); an unreadable image or one over the
pixel cap (checked on the header before decoding: ``--max-image-pixels``, default
:data:`weakalign.data.images.DEFAULT_MAX_PIXELS`) or with a side under 16 pixels
(:func:`weakalign.data.images.check_alignable`; an aspect ratio over 10:1 is only a warning);
an output folder (``--out``) that cannot be written (checked before the model runs); a model
that produces a non-finite transformation (nothing is written then).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _run(args) -> int:
    import torch
    from PIL import Image

    from . import figures
    from .cli import UserError
    from .atomic import atomic_open, check_dir_writable, ensure_dir
    from .data.images import (
        CorruptImageError,
        ImageShapeError,
        check_alignable,
        load_image,
        max_pixels,
    )
    from .models import load_checkpoint
    from .models.checkpoints import CheckpointFormatError, UnsafeCheckpointError

    t0 = time.time()
    ckpt = Path(args.model)
    if not ckpt.is_file():
        raise UserError(f"model checkpoint {ckpt} not found: train it with `dvc repro` or pass --model PATH "
                        "(a weakalign checkpoint or a released .pth.tar)")
    out = Path(args.out)
    out_hint = "choose another folder with --out"
    check_dir_writable(out, out_hint)  # before any work; created only when there is a result
    limit = args.max_image_pixels or max_pixels()
    try:
        src = load_image(args.source, max_pixels=limit)
        tgt = load_image(args.target, max_pixels=limit)
        for path, img in ((args.source, src), (args.target, tgt)):
            warning = check_alignable(path, img.shape)
            if warning:
                print(f"weakalign align: warning: {warning}", file=sys.stderr)
    except (CorruptImageError, ImageShapeError) as exc:
        raise UserError(str(exc)) from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - load_image converts it
        raise UserError(f"{args.source} / {args.target}: {exc}") from exc
    try:
        model, _ = load_checkpoint(ckpt)
    except (CheckpointFormatError, UnsafeCheckpointError) as exc:
        raise UserError(f"cannot use --model {ckpt}: {exc}") from exc
    try:
        with torch.no_grad():
            res = figures.align(model, src, tgt)
    except figures.NonFiniteTransformError as exc:
        raise UserError(f"{ckpt}: {exc} for {args.source} -> {args.target}; no image written "
                        "(is the checkpoint damaged or the training diverged?)") from exc
    ensure_dir(out, out_hint)
    stem = f"{Path(args.source).stem}_to_{Path(args.target).stem}"
    kind = "affine_tps" if "affine_tps" in res["aligned"] else next(iter(res["aligned"]))
    aligned_path = out / f"{stem}_aligned.png"
    with atomic_open(aligned_path, "wb") as fh:
        Image.fromarray(res["aligned"][kind]).save(fh, format="PNG")
    fig_path = figures.save(figures.figure(src, tgt, res, title=f"{args.source} -> {args.target}"), out / f"{stem}_matches.png")
    print(f"align: {kind.replace('_', '+')} with {ckpt.name}, {time.time() - t0:.1f}s -> {aligned_path}, {fig_path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("align", help="align SOURCE to TARGET; writes the aligned image and a match figure")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--model", default="models/weak_affine_tps.pt", help="checkpoint (default: %(default)s)")
    p.add_argument("--out", default="aligned", help="output folder (default: %(default)s)")
    p.add_argument("--max-image-pixels", type=_positive_int, default=None, metavar="N",
                   help="refuse images with more than N pixels, checked before decoding "
                        "(default: $WEAKALIGN_MAX_IMAGE_PIXELS or 50000000)")
    p.set_defaults(func=_run)
