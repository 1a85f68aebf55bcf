"""Safe archive extraction (zip and tar) and archive content manifests.

Every member is checked BEFORE anything is written; an archive with any unsafe member is
rejected whole with :class:`UnsafeArchiveError`:

- absolute names (``/etc/passwd``, ``C:\\x``, ``\\\\server\\share``), names with a ``..``
  component, empty names or NUL bytes ("zip-slip" / "tar-slip");
- symbolic links whose target is absolute or resolves outside the extraction folder;
- hard links (tar) whose target is not a regular member name inside the archive;
- device files and FIFOs (tar).

Links that stay inside the folder are kept. Zip symlinks are created only after every regular
file has been written, so no write can go through a link. Tar extraction additionally uses
Python's ``filter="data"`` (defence in depth). After extraction every created path is checked
with ``realpath`` to lie inside the destination.

``__MACOSX/`` folders and ``.DS_Store`` files (present in some official zips) are skipped.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

SKIP_PREFIXES = ("__MACOSX/",)
SKIP_NAMES = (".DS_Store",)


class UnsafeArchiveError(ValueError):
    """The archive holds a member that would be written outside the destination."""


class ArchiveContentError(ValueError):
    """The archive (or its extraction) does not hold what the manifest expects."""


def _norm_member(name: str, archive) -> PurePosixPath | None:
    """Validated relative POSIX path of a member, or None for members to skip."""
    if name is None or name == "" or "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member with an empty or NUL-containing name")
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) >= 2 and raw[1] == ":") or raw.startswith("//"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the folder ('..')")
    if not parts:
        return None
    rel = PurePosixPath(*parts)
    if rel.as_posix().startswith(SKIP_PREFIXES) or parts[0] == "__MACOSX" or parts[-1] in SKIP_NAMES:
        return None
    return rel


def _link_target_inside(member: PurePosixPath, target: str, archive) -> PurePosixPath:
    """Lexically resolve a symlink target relative to the member's folder; must stay inside."""
    t = target.replace("\\", "/")
    if t.startswith("/") or (len(t) >= 2 and t[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: link {member} points to absolute path {target!r}")
    parts = list(member.parent.parts)
    for p in t.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                raise UnsafeArchiveError(
                    f"{archive}: link {member} -> {target!r} points outside the folder"
                )
            parts.pop()
        else:
            parts.append(p)
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_inside(dest: Path, created: list[Path], archive) -> None:
    root = os.path.realpath(dest)
    for p in created:
        rp = os.path.realpath(p)
        if rp != root and not rp.startswith(root + os.sep):
            raise UnsafeArchiveError(f"{archive}: extracted path {p} resolves outside {dest}")


def archive_kind(path) -> str:
    name = str(path).lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    raise ValueError(f"{path}: not a .zip or .tar[.gz] archive")


def list_members(archive, kind: str | None = None) -> list[tuple[PurePosixPath, str]]:
    """(relative path, type) of the members that would be extracted; type in file/dir/link.

    Raises UnsafeArchiveError for unsafe members, ArchiveContentError if the archive cannot be
    read to its end (truncated or corrupt).
    """
    archive = Path(archive)
    kind = kind or archive_kind(archive)
    out: list[tuple[PurePosixPath, str]] = []
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _norm_member(info.filename, archive)
                    if rel is None:
                        continue
                    if _zip_is_symlink(info):
                        _link_target_inside(rel, zf.read(info).decode("utf-8", "replace"), archive)
                        out.append((rel, "link"))
                    else:
                        out.append((rel, "dir" if info.is_dir() else "file"))
        else:
            with tarfile.open(archive) as tf:
                names = set()
                for m in tf:  # iterating reads the whole stream: truncation shows up here
                    rel = _norm_member(m.name, archive)
                    if rel is None:
                        continue
                    if m.isdev() or m.isfifo():
                        raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device/FIFO")
                    if m.issym():
                        _link_target_inside(rel, m.linkname, archive)
                        out.append((rel, "link"))
                    elif m.islnk():
                        tgt = _norm_member(m.linkname, archive)
                        if tgt is None or tgt.as_posix() not in names:
                            raise UnsafeArchiveError(
                                f"{archive}: hard link {m.name!r} -> {m.linkname!r} does not "
                                "point to an earlier member of the archive"
                            )
                        out.append((rel, "file"))
                    elif m.isdir():
                        out.append((rel, "dir"))
                    elif m.isfile():
                        out.append((rel, "file"))
                    else:
                        raise UnsafeArchiveError(f"{archive}: member {m.name!r} has unknown type")
                    names.add(rel.as_posix())
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveContentError(f"{archive}: unreadable or truncated archive ({exc})") from exc
    return out


def safe_extract(archive, dest, kind: str | None = None) -> list[Path]:
    """Extract ``archive`` into ``dest`` (created) after validating every member.

    Returns the list of created paths. Nothing is written if any member is unsafe.
    """
    archive, dest = Path(archive), Path(dest)
    kind = kind or archive_kind(archive)
    members = list_members(archive, kind)  # raises before anything is written
    dest.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    if kind == "zip":
        links: list[tuple[Path, str]] = []
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = _norm_member(info.filename, archive)
                if rel is None:
                    continue
                target = dest.joinpath(*rel.parts)
                if _zip_is_symlink(info):
                    links.append((target, zf.read(info).decode("utf-8")))
                    continue
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                created.append(target)
        for target, link in links:  # after all regular files: no write goes through a link
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link, target)
            created.append(target)
    else:
        keep = {m.as_posix() for m, _ in members}
        with tarfile.open(archive) as tf:
            selected = []
            for m in tf.getmembers():
                rel = _norm_member(m.name, archive)
                if rel is None or rel.as_posix() not in keep:
                    continue
                selected.append(m)
                created.append(dest.joinpath(*rel.parts))
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            try:
                tf.extractall(dest, members=selected, **kwargs)
            except tarfile.FilterError as exc:  # pragma: no cover - our checks come first
                raise UnsafeArchiveError(f"{archive}: {exc}") from exc
    _check_inside(dest, created, archive)
    return created


def count_members(members, under: tuple[str, ...] = ()) -> Counter:
    """Counts used by content manifests: ``dirs`` (sub-folders one level below each ``under``
    folder), ``files`` and ``ext:<lower-case extension>``."""
    c: Counter = Counter()
    dirs = set()
    for rel, typ in members:
        rel = PurePosixPath(rel)
        if under:
            if not rel.parts or rel.parts[0] not in under:
                continue
            inner = rel.parts[1:]
        else:
            inner = rel.parts
        if typ == "dir":
            if len(inner) == 1:
                dirs.add((rel.parts[0], inner[0]))
            continue
        if len(inner) >= 2:
            dirs.add((rel.parts[0], inner[0]))
        c["files"] += 1
        suffix = rel.suffix.lower().lstrip(".")
        if suffix:
            c[f"ext:{suffix}"] += 1
    c["dirs"] = len(dirs)
    return c


def check_counts(counts, expected: dict, what) -> list[str]:
    """Problems (empty list = fine) comparing ``counts`` to a manifest ``expected`` dict.

    Keys: ``"ext:png": 100`` exact, ``"min:ext:jpg": 1343`` lower bound, ``"dirs": 10`` exact.
    Other keys (``rows``, ``columns``...) are ignored here.
    """
    problems = []
    for key, want in expected.items():
        if key.startswith("min:"):
            have = counts.get(key[4:], 0)
            if have < want:
                problems.append(f"{what}: expected at least {want} {key[4:]}, found {have}")
        elif key.startswith("ext:") or key in ("dirs", "files"):
            have = counts.get(key, 0)
            if have != want:
                problems.append(f"{what}: expected {want} {key}, found {have}")
    return problems


def count_tree(root: Path, under: tuple[str, ...]) -> Counter:
    """Same counts as :func:`count_members`, for an extracted folder on disk."""
    members = []
    for top in under:
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
            for d in dirnames:
                members.append((rel_dir / d, "dir"))
            for f in filenames:
                if f in SKIP_NAMES:
                    continue
                members.append((rel_dir / f, "file"))
    return count_members(members, under)
