"""A user's checkout of the original code: checked before anything runs, described in reports."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: files that identify each original repository (relative to its root)
PROBES = {
    "weakalign": ("eval.py", "model/cnn_geometric_model.py", "model/loss.py", "geotnf/transformation.py",
                  "data/pf_dataset.py", "util/eval_util.py"),
    "ncnet": ("lib/model.py", "lib/point_tnf.py", "lib/pf_dataset.py", "lib/eval_util.py"),
}
REPOSITORIES = {"weakalign": "ignacio-rocco/weakalign", "ncnet": "ignacio-rocco/ncnet"}


class ReferenceCheckoutError(ValueError):
    """The given directory is not a checkout of the original code."""


@dataclass(frozen=True)
class Checkout:
    kind: str  # "weakalign" or "ncnet"
    path: Path
    commit: str | None

    def to_dict(self) -> dict:
        return {"repository": REPOSITORIES[self.kind], "path": str(self.path), "commit": self.commit}


def git_commit(path: Path) -> str | None:
    """``git -C path rev-parse HEAD``, or None (not a git checkout, or no git)."""
    try:
        proc = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def open_checkout(path: str | os.PathLike, kind: str, option: str = "--reference-dir") -> Checkout:
    """Check that ``path`` holds the original ``kind`` repository; one clear error otherwise."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ReferenceCheckoutError(f"{option} {path}: no such directory; clone {REPOSITORIES[kind]} "
                                     f"(git clone https://github.com/{REPOSITORIES[kind]}) and pass its folder")
    missing = [f for f in PROBES[kind] if not (p / f).is_file()]
    if missing:
        raise ReferenceCheckoutError(f"{option} {path}: not a checkout of {REPOSITORIES[kind]} (missing {', '.join(missing[:3])}"
                                     f"{' ...' if len(missing) > 3 else ''}); pass the folder of a clone of that repository")
    return Checkout(kind, p.resolve(), git_commit(p))
