"""Safe archive extraction (zip and tar) and archive content manifests.

Every member is checked BEFORE anything is written; an archive with any unsafe member is
rejected whole with :class:`UnsafeArchiveError`:

- absolute names (``/etc/passwd``, ``C:\\x``, ``\\\\server\\share``), names with a ``..``
  component, empty names or NUL bytes ("zip-slip" / "tar-slip");
- **any link**: symbolic links (zip and tar) and hard links (tar). No dataset this suite uses
  holds a link (checked: ``PF-dataset.zip``, ``101_ObjectCategories.tar.gz``), and refusing
  them removes every link-chain attack at once (a zip chain ``a/l -> ..``, ``a/l/m -> ..``,
  ``m/DIR/LINK``; a tar chain of symlinks longer than ``PATH_MAX`` that gets past Python's
  ``filter="data"``, CVE-2025-4517; link-to-link; a folder reached through a link);
- device files, FIFOs and unknown member types (tar); a file name given twice;
- encrypted zip members and zip compression methods this Python cannot read
  (:class:`ArchiveContentError`: the archive is unusable here, not unsafe);
- members larger than ``max_member_bytes`` or archives whose members add up to more than
  ``max_total_bytes`` (zip / tar bombs; see :class:`ExtractLimits` for the defaults and the
  environment variables that change them), or with more than ``max_members`` members.

Extraction never uses ``extractall``: folders are created one component at a time (an existing
component that is not a real folder, e.g. a symlink left in ``dest``, stops the extraction),
files are opened with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and written in chunks whose bytes are
counted against the same caps (a zip whose headers lie about sizes is stopped while writing).
Permissions from the archive are ignored (files 0644, folders 0755, minus the umask). On any
error the paths created so far are removed. After extraction every created path is checked
with ``realpath`` to lie inside the destination (defence in depth).

``__MACOSX/`` folders and ``.DS_Store`` files (present in some official zips) are skipped.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

SKIP_PREFIXES = ("__MACOSX/",)
SKIP_NAMES = (".DS_Store",)
CHUNK = 1 << 20

MAX_TOTAL_ENV = "WEAKALIGN_MAX_EXTRACT_BYTES"
MAX_MEMBER_ENV = "WEAKALIGN_MAX_MEMBER_BYTES"
MAX_MEMBERS_ENV = "WEAKALIGN_MAX_ARCHIVE_MEMBERS"
DEFAULT_MAX_TOTAL_BYTES = 16 << 30  # 16 GiB: Pascal VOC 2011, the largest archive, is ~2 GB
DEFAULT_MAX_MEMBER_BYTES = 512 << 20  # 512 MiB: the largest dataset member is ~2 MB
DEFAULT_MAX_MEMBERS = 1_000_000


class UnsafeArchiveError(ValueError):
    """The archive holds a member that would be written outside the destination (or a link,
    device, or a member over the size caps)."""


class ArchiveTooLargeError(UnsafeArchiveError):
    """The archive would extract to more bytes (or members) than the caps allow."""


class ArchiveContentError(ValueError):
    """The archive (or its extraction) does not hold what the manifest expects."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"${name} must be a positive integer (bytes), got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"${name} must be a positive integer (bytes), got {raw!r}")
    return value


@dataclass(frozen=True)
class ExtractLimits:
    """Caps against zip / tar bombs. ``None`` fields take the environment variable
    (``WEAKALIGN_MAX_EXTRACT_BYTES``, ``WEAKALIGN_MAX_MEMBER_BYTES``,
    ``WEAKALIGN_MAX_ARCHIVE_MEMBERS``) or the default (16 GiB, 512 MiB, 1,000,000)."""

    max_total_bytes: int | None = None
    max_member_bytes: int | None = None
    max_members: int | None = None

    def resolved(self) -> "ExtractLimits":
        return ExtractLimits(
            self.max_total_bytes or _env_int(MAX_TOTAL_ENV, DEFAULT_MAX_TOTAL_BYTES),
            self.max_member_bytes or _env_int(MAX_MEMBER_ENV, DEFAULT_MAX_MEMBER_BYTES),
            self.max_members or _env_int(MAX_MEMBERS_ENV, DEFAULT_MAX_MEMBERS),
        )


def _limits(limits: ExtractLimits | None) -> ExtractLimits:
    return (limits or ExtractLimits()).resolved()


def _too_large(archive, what: str, cap: int, env: str) -> ArchiveTooLargeError:
    return ArchiveTooLargeError(
        f"{archive}: {what}, over the cap of {cap:,} bytes (zip/tar bomb?); if the archive is "
        f"trusted, raise the cap with ${env}")


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


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


_ZIP_ENCRYPTED = 0x1  # general-purpose flag bit 0 (APPNOTE 4.4.4)
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _zip_readable(info: zipfile.ZipInfo, archive) -> None:
    """Refuse members ``zipfile`` would fail on when opened (a bare RuntimeError /
    NotImplementedError otherwise): encrypted ones and unknown compression methods."""
    if info.flag_bits & _ZIP_ENCRYPTED:
        raise ArchiveContentError(
            f"{archive}: member {info.filename!r} is encrypted (password-protected); encrypted "
            "archives are not supported, use an unencrypted copy")
    if info.compress_type not in _ZIP_METHODS:
        raise ArchiveContentError(
            f"{archive}: member {info.filename!r} uses zip compression method "
            f"{info.compress_type}, which Python's zipfile cannot read; repack it with deflate")


def _zip_link_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """The first 100 characters of a zip symlink's target, read without inflating the rest
    (a "link" member can be a bomb too)."""
    with zf.open(info) as fh:
        raw = fh.read(100)
    return raw.decode("utf-8", "replace")


def _zip_unix_type(info: zipfile.ZipInfo) -> int:
    return stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0


def _refuse_link(archive, name: str, target: str, kind: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{archive}: member {name!r} is a {kind} (-> {target!r}); archives with links are refused "
        "(no dataset here needs them, and link chains can write outside the folder)")


def archive_kind(path) -> str:
    name = str(path).lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    raise ValueError(f"{path}: not a .zip or .tar[.gz] archive")


class _Budget:
    """Counts members and bytes against the caps (declared sizes, then bytes written)."""

    def __init__(self, archive, limits: ExtractLimits):
        self.archive, self.limits = archive, limits
        self.total = 0
        self.members = 0

    def member(self, name: str, size: int) -> None:
        lim = self.limits
        self.members += 1
        if self.members > lim.max_members:
            raise ArchiveTooLargeError(
                f"{self.archive}: more than {lim.max_members:,} members (zip/tar bomb?); if the "
                f"archive is trusted, raise the cap with ${MAX_MEMBERS_ENV}")
        self.add(name, size, size)

    def add(self, name: str, member_bytes: int, delta: int) -> None:
        lim = self.limits
        if member_bytes > lim.max_member_bytes:
            raise _too_large(self.archive, f"member {name!r} expands to {member_bytes:,}+ bytes",
                             lim.max_member_bytes, MAX_MEMBER_ENV)
        self.total += delta
        if self.total > lim.max_total_bytes:
            raise _too_large(self.archive, f"members add up to {self.total:,}+ bytes",
                             lim.max_total_bytes, MAX_TOTAL_ENV)


def _check_entry(rel: PurePosixPath, typ: str, seen: dict[str, str], archive) -> None:
    key = rel.as_posix()
    prev = seen.get(key)
    if prev is not None and not (prev == typ == "dir"):
        raise UnsafeArchiveError(f"{archive}: member {key!r} appears twice")
    seen[key] = typ
    # a member below a file member ("a" is a file, then "a/b") cannot be extracted
    for parent in rel.parents:
        if seen.get(parent.as_posix()) == "file":
            raise UnsafeArchiveError(f"{archive}: member {key!r} lies below the file {parent}")


def list_members(archive, kind: str | None = None, limits: ExtractLimits | None = None,
                 ) -> list[tuple[PurePosixPath, str]]:
    """(relative path, type) of the members that would be extracted; type in file/dir.

    Raises UnsafeArchiveError for unsafe members (links included), ArchiveTooLargeError for
    members over the caps (declared sizes), ArchiveContentError if the archive cannot be read
    to its end (truncated or corrupt).
    """
    archive = Path(archive)
    kind = kind or archive_kind(archive)
    budget = _Budget(archive, _limits(limits))
    out: list[tuple[PurePosixPath, str]] = []
    seen: dict[str, str] = {}
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _norm_member(info.filename, archive)
                    _zip_readable(info, archive)
                    if _zip_is_symlink(info):
                        target = _zip_link_target(zf, info)
                        raise _refuse_link(archive, info.filename, target, "symbolic link")
                    utype = _zip_unix_type(info)
                    if utype not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise UnsafeArchiveError(
                            f"{archive}: member {info.filename!r} is not a regular file or folder")
                    if rel is None:
                        continue
                    typ = "dir" if info.is_dir() else "file"
                    budget.member(info.filename, 0 if typ == "dir" else info.file_size)
                    _check_entry(rel, typ, seen, archive)
                    out.append((rel, typ))
        else:
            with tarfile.open(archive) as tf:
                for m in tf:  # iterating reads the whole stream: truncation shows up here
                    rel = _norm_member(m.name, archive)
                    if m.issym():
                        raise _refuse_link(archive, m.name, m.linkname, "symbolic link")
                    if m.islnk():
                        raise _refuse_link(archive, m.name, m.linkname, "hard link")
                    if m.isdev() or m.isfifo():
                        raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device/FIFO")
                    if not (m.isdir() or m.isfile()):
                        raise UnsafeArchiveError(f"{archive}: member {m.name!r} has unknown type")
                    if rel is None:
                        continue
                    typ = "dir" if m.isdir() else "file"
                    budget.member(m.name, 0 if typ == "dir" else m.size)
                    _check_entry(rel, typ, seen, archive)
                    out.append((rel, typ))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RuntimeError,
            NotImplementedError, zlib.error) as exc:
        raise ArchiveContentError(f"{archive}: unreadable or truncated archive ({exc})") from exc
    return out


class _Writer:
    """Creates folders and files strictly inside ``root`` (a real folder), never following a
    link, and remembers what it created so a failed extraction can be undone."""

    def __init__(self, root: Path, archive, budget: _Budget):
        self.root, self.archive, self.budget = root, archive, budget
        self.created: list[Path] = []

    def _dir(self, rel_parts: tuple[str, ...]) -> Path:
        path = self.root
        for part in rel_parts:
            path = path / part
            try:
                os.mkdir(path, 0o755)
                self.created.append(path)
            except FileExistsError:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):  # a symlink or a file: never go through it
                    raise UnsafeArchiveError(
                        f"{self.archive}: {path} exists and is not a real folder; "
                        "extract into an empty folder") from None
        return path

    def mkdir(self, rel: PurePosixPath) -> None:
        self._dir(rel.parts)

    def write(self, rel: PurePosixPath, src, name: str) -> None:
        parent = self._dir(rel.parts[:-1])
        path = parent / rel.parts[-1]
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            raise UnsafeArchiveError(f"{self.archive}: {path} already exists; extract into an "
                                     "empty folder") from None
        self.created.append(path)
        written = 0
        with os.fdopen(fd, "wb") as dst:
            while True:
                b = src.read(CHUNK)
                if not b:
                    break
                written += len(b)
                # bytes actually written, whatever the headers declared
                self.budget.add(name, written, len(b))
                dst.write(b)

    def undo(self) -> None:
        for p in reversed(self.created):
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    os.rmdir(p)
                else:
                    os.unlink(p)
            except OSError:
                pass
        self.created.clear()


def _check_inside(dest: Path, created: list[Path], archive) -> None:
    root = os.path.realpath(dest)
    for p in created:
        rp = os.path.realpath(p)
        if rp != root and not rp.startswith(root + os.sep):
            raise UnsafeArchiveError(f"{archive}: extracted path {p} resolves outside {dest}")


def safe_extract(archive, dest, kind: str | None = None, limits: ExtractLimits | None = None,
                 ) -> list[Path]:
    """Extract ``archive`` into ``dest`` (created) after validating every member.

    Returns the list of created paths. Nothing is written if any member is unsafe or the
    declared sizes exceed the caps; if a cap is exceeded while writing, what was written is
    removed again.
    """
    archive, dest = Path(archive), Path(dest)
    kind = kind or archive_kind(archive)
    lim = _limits(limits)
    members = list_members(archive, kind, lim)  # raises before anything is written
    dest.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(dest))
    if not root.is_dir():
        raise UnsafeArchiveError(f"{archive}: destination {dest} is not a folder")
    writer = _Writer(root, archive, _Budget(archive, lim))
    keep = {m.as_posix() for m, _ in members}
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _norm_member(info.filename, archive)
                    if rel is None or rel.as_posix() not in keep:
                        continue
                    if info.is_dir():
                        writer.mkdir(rel)
                    else:
                        with zf.open(info) as src:
                            writer.write(rel, src, info.filename)
        else:
            with tarfile.open(archive) as tf:
                for m in tf:
                    rel = _norm_member(m.name, archive)
                    if rel is None or rel.as_posix() not in keep:
                        continue
                    if m.isdir():
                        writer.mkdir(rel)
                    elif m.isfile():
                        src = tf.extractfile(m)
                        with src:
                            writer.write(rel, src, m.name)
                    else:  # pragma: no cover - list_members refused it already
                        raise UnsafeArchiveError(f"{archive}: member {m.name!r} is not a file")
        _check_inside(root, writer.created, archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, RuntimeError, NotImplementedError,
            zlib.error) as exc:  # zipfile: RuntimeError = encrypted, NotImplementedError = method
        writer.undo()
        raise ArchiveContentError(f"{archive}: unreadable or corrupt archive ({exc})") from exc
    except OSError as exc:
        writer.undo()
        if exc.errno == errno.ELOOP:
            raise UnsafeArchiveError(f"{archive}: a path in {dest} is a link ({exc})") from exc
        raise
    except BaseException:
        writer.undo()
        raise
    return [dest / p.relative_to(root) for p in writer.created]


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
