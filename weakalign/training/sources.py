"""Training inputs: image lists (strong) and pair lists (weak) named in the params, and the
on-disk feature cache.

A list is named either by a split of :mod:`weakalign.data.registry` (``strong_train``,
``strong_val``, ``train``, ``val``, ``pf-pascal``, ``pf-pascal-paper``: files in
``data/splits/`` written by ``weakalign data splits``) or explicitly as
``{csv: path, image_root: folder}``. Missing files raise :class:`weakalign.cli.UserError`
naming the command that creates them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .synthetic import keyed_generator

SPLITS_HINT = "run `weakalign data audit && weakalign data splits` (or `dvc repro data_splits`)"


def _user_error(msg: str) -> Exception:
    from weakalign.cli import UserError

    return UserError(msg)


def _abs(path, base: Path | None = None) -> Path:
    from ..data.paths import project_root

    p = Path(path)
    return p if p.is_absolute() else (base or project_root()) / p


def subsample(n_total: int, n_keep: int, *keys) -> list[int]:
    """``n_keep`` row indices out of ``n_total`` (seeded, kept in file order); all if 0."""
    if not n_keep or n_keep >= n_total:
        return list(range(n_total))
    perm = torch.randperm(n_total, generator=keyed_generator(*keys))[:n_keep]
    return sorted(perm.tolist())


def image_list(spec, data_root: str, what: str) -> list[str]:
    """Absolute image paths of a strong-training image list."""
    from ..data.datasets import DatasetNotAvailable, read_image_list
    from ..data.paths import data_root as resolve_root

    if isinstance(spec, str):
        from ..data.registry import SPLIT_FILES, get_dataset

        if spec not in SPLIT_FILES:
            raise _user_error(f"{what}: unknown split {spec!r} (splits: {', '.join(SPLIT_FILES)}; or give {{csv: ..., image_root: ...}})")
        try:
            ds = get_dataset("synthetic", root=resolve_root(data_root), split=spec)
        except DatasetNotAvailable as exc:
            raise _user_error(f"{what}: split file {exc.missing[0]} is missing; {SPLITS_HINT}") from exc
        return list(ds.paths)
    if isinstance(spec, dict) and "csv" in spec:
        csv = _abs(spec["csv"])
        if not csv.is_file():
            fetch = " (Pascal VOC 2011: `weakalign data fetch pascal-voc-2011` first)" if "voc" in csv.name.lower() else ""
            raise _user_error(f"{what}: image list {csv} not found; {SPLITS_HINT}{fetch}")
        root = _abs(spec.get("image_root") or csv.parent)
        return [str(root / p) for p in read_image_list(csv)]
    raise _user_error(f"{what}: expected a split name or {{csv: path, image_root: folder}}, got {spec!r}")


def pair_list(spec, data_root: str, what: str, use_flip: bool = True):
    """``(records, image_root)`` of a weak-training pair list (records: ``weakalign.data.csvio``
    ``PairRecord`` with ``source``, ``target``, ``category``, ``flip``)."""
    from ..data.datasets import DatasetNotAvailable, PairListDataset
    from ..data.paths import data_root as resolve_root

    if isinstance(spec, str):
        from ..data.registry import SPLIT_FILES, get_dataset

        if spec not in SPLIT_FILES:
            raise _user_error(f"{what}: unknown split {spec!r} (splits: {', '.join(SPLIT_FILES)}; or give {{csv: ..., image_root: ...}})")
        try:
            ds = get_dataset("weak-pairs", root=resolve_root(data_root), split=spec, use_flip=use_flip)
        except DatasetNotAvailable as exc:
            how = exc.how if spec.startswith("pf-pascal") else SPLITS_HINT
            raise _user_error(f"{what}: {exc.missing[0]} is missing ({len(exc.missing)} file(s)); {how}") from exc
        return ds.records, Path(ds.image_root)
    if isinstance(spec, dict) and "csv" in spec:
        csv = _abs(spec["csv"])
        if not csv.is_file():
            raise _user_error(f"{what}: pair list {csv} not found; {SPLITS_HINT}")
        root = _abs(spec.get("image_root") or csv.parent)
        return PairListDataset(csv, root, use_flip=use_flip).records, root
    raise _user_error(f"{what}: expected a split name or {{csv: path, image_root: folder}}, got {spec!r}")


def check_images(paths, what: str) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise _user_error(f"{what}: {len(missing)} image(s) missing, e.g. {', '.join(map(str, missing[:3]))}{more}; "
                          "fetch the dataset first (`weakalign data fetch ...` or `dvc repro`)")


# ---------------------------------------------------------------------------------------------
# feature cache
# ---------------------------------------------------------------------------------------------

def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's state: names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def paths_digest(paths) -> str:
    """SHA-256 (16 hex digits) of the paths as given. Cache keys use it: a cache is local to its
    checkout, so absolute paths are safe (and exact) there."""
    return hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:16]


def portable_paths_digest(paths) -> str:
    """:func:`paths_digest` of the paths written relative to the project root (POSIX separators)
    when they lie inside it, so two clones of the project at different places give the same
    digest for the same images; paths outside the project root enter as they are.

    This is what goes into a run's ``params_fingerprint``, which is committed with the reports and
    compared across machines (``weakalign seeds``)."""
    from ..data.paths import project_root

    roots = dict.fromkeys((project_root(), project_root().resolve()))  # as found, and without symlinks

    def portable(p) -> str:
        path = Path(p)
        for root in roots:
            if path.is_absolute() and path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return path.as_posix()

    return paths_digest(portable(p) for p in paths)


def cache_path(cache_dir, name: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return _abs(cache_dir) / f"{name}-{digest}.pt"


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached(ctx, path: Path, key: dict, compute: Callable[[], dict]) -> dict:
    """Load ``path`` if it holds ``key``; otherwise rank 0 computes and writes it, the other
    ranks wait and read it."""
    from ..models.checkpoints import safe_load

    def try_load():
        if path.is_file():
            try:
                obj = safe_load(path)
            except Exception:  # a damaged cache file is recomputed, never trusted
                return None
            if obj.get("key") == json.loads(json.dumps(key, default=str)):
                return obj
        return None

    # rank 0 decides and writes; every rank passes the same barrier (unconditionally, so the
    # ranks' barriers always pair up), then the others read
    obj = try_load() if ctx.main else None
    if ctx.main and obj is None:
        obj = compute()
        obj["key"] = json.loads(json.dumps(key, default=str))
        _atomic_save(obj, path)
    ctx.barrier()
    if not ctx.main:
        obj = try_load()
        if obj is None:
            raise RuntimeError(f"rank {ctx.rank}: feature cache {path} missing after rank 0 wrote it (shared filesystem needed)")
    return obj


@torch.no_grad()
def extract_features(model, dataset, fields: tuple[str, ...], batch_size: int, num_workers: int, device, desc: str, progress: bool,
                     keep: tuple[str, ...] = ("theta",)) -> dict:
    """Backbone features (L2-normalised, as the model uses them) of ``dataset`` items' image
    ``fields``; the tensor fields named in ``keep`` (e.g. ``theta``) are stacked alongside, every
    other field is dropped (an image field that is not extracted must never land in the cache).
    Uses ``no_grad`` (not ``inference_mode``): the features later enter autograd graphs. The
    features are returned (and cached) on the CPU whatever ``device`` computed them; training
    moves them to its device per batch (pinned memory on CUDA), so a cache made on a GPU is read
    on a CPU and the other way round."""
    from torch.utils.data import DataLoader

    from .engine import progress_bar

    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    out: dict[str, list] = {}
    for batch in progress_bar(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        for k, v in batch.items():
            if k in fields:
                out.setdefault(k, []).append(model.extract(v.to(device)).cpu())
            elif k in keep and isinstance(v, torch.Tensor):
                out.setdefault(k, []).append(v)
    model.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}
