"""Where things live: the project root, the ``data/`` folder and the offline mirror.

Project root
    The directory that holds ``dvc.yaml``. Found by walking up from the current working
    directory first (so ``dvc repro`` and commands run from the root do the obvious thing),
    then from this package's own location (an editable install or a plain checkout).
    ``WEAKALIGN_PROJECT_ROOT`` overrides both.

Offline mirror
    ``WEAKALIGN_DATA_MIRROR`` names a folder holding files under the names the official URLs
    serve (``PF-dataset.zip``, ``101_ObjectCategories.tar.gz``, ``pf-pascal/*.csv``...). When it
    is set, files come from there and the network is never used. When it is unset and the
    folder ``<project root>/../shared/datasets`` exists (these machines), that folder is the
    mirror. Setting the variable to an empty string or ``none`` disables the mirror (download
    from the official URLs).
"""

from __future__ import annotations

import os
from pathlib import Path

MIRROR_ENV = "WEAKALIGN_DATA_MIRROR"
ROOT_ENV = "WEAKALIGN_PROJECT_ROOT"
DEFAULT_MIRROR_RELATIVE = Path("..") / "shared" / "datasets"

_PACKAGE_DIR = Path(__file__).resolve().parent


def _walk_up_for(marker: str, start: Path) -> Path | None:
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / marker).is_file():
            return candidate
    return None


def project_root() -> Path:
    """The directory holding ``dvc.yaml`` (see the module docstring for the search order).

    Falls back to the checkout that contains this package (the parent of ``weakalign/``) when
    no ``dvc.yaml`` is found, so a bare source tree still works.
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).resolve()
    for start in (Path.cwd(), _PACKAGE_DIR):
        found = _walk_up_for("dvc.yaml", start)
        if found is not None:
            return found
    return _PACKAGE_DIR.parent.parent


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the ``data/`` folder. A relative ``root`` is taken relative to the cwd if it
    exists there, else relative to the project root."""
    if root is None:
        root = "data"
    p = Path(root).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return project_root() / p


def mirror_dir() -> Path | None:
    """The offline mirror folder in use, or ``None`` for "download from the network"."""
    env = os.environ.get(MIRROR_ENV)
    if env is not None:
        if env.strip() == "" or env.strip().lower() in {"none", "off", "0", "false"}:
            return None
        return Path(env).expanduser().resolve()
    default = (project_root() / DEFAULT_MIRROR_RELATIVE).resolve()
    return default if default.is_dir() else None


def describe_mirror() -> str:
    m = mirror_dir()
    env = os.environ.get(MIRROR_ENV)
    if m is None:
        return "no offline mirror (files come from the official URLs)"
    how = f"${MIRROR_ENV}" if env is not None else "default ../shared/datasets"
    state = "" if m.is_dir() else " (MISSING)"
    return f"offline mirror {m}{state} ({how})"
