"""``weakalign align SOURCE TARGET``: align your own image pair with a trained model."""

from __future__ import annotations

import time
from pathlib import Path


def _run(args) -> int:
    from PIL import Image

    from . import figures
    from .cli import UserError
    from .data.images import CorruptImageError, load_image
    from .models import load_checkpoint

    t0 = time.time()
    ckpt = Path(args.model)
    if not ckpt.is_file():
        raise UserError(f"model checkpoint {ckpt} not found: train it with `dvc repro` or pass --model PATH "
                        "(a weakalign checkpoint or a released .pth.tar)")
    try:
        src, tgt = load_image(args.source), load_image(args.target)
    except CorruptImageError as exc:
        raise UserError(str(exc)) from exc
    model, _ = load_checkpoint(ckpt)
    res = figures.align(model, src, tgt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(args.source).stem}_to_{Path(args.target).stem}"
    kind = "affine_tps" if "affine_tps" in res["aligned"] else next(iter(res["aligned"]))
    aligned_path = out / f"{stem}_aligned.png"
    tmp = aligned_path.with_name(f".{aligned_path.name}.tmp")
    Image.fromarray(res["aligned"][kind]).save(tmp, format="PNG")
    tmp.replace(aligned_path)
    fig_path = figures.save(figures.figure(src, tgt, res, title=f"{args.source} -> {args.target}"), out / f"{stem}_matches.png")
    print(f"align: {kind.replace('_', '+')} with {ckpt.name}, {time.time() - t0:.1f}s -> {aligned_path}, {fig_path}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("align", help="align SOURCE to TARGET; writes the aligned image and a match figure")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--model", default="models/weak_affine_tps.pt", help="checkpoint (default: %(default)s)")
    p.add_argument("--out", default="aligned", help="output folder (default: %(default)s)")
    p.set_defaults(func=_run)
