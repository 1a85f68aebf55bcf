"""Fetching files: from the offline mirror or the official URL; resumable, atomic, verified.

- **A file whose SHA-256 is known must match it** (the official ``sha256`` or the recorded
  ``mirror_sha256`` of :mod:`.sources`), whether it comes from the mirror or the network. A
  mismatch is one :class:`HashMismatchError` naming the file, the expected and the actual
  hash; the file is deleted, never kept in ``data/`` and never extracted.
- **A file with no known SHA-256 is refused** (:class:`UnverifiedSourceError`, reported as
  "not available") unless the user explicitly trusts it: ``weakalign --trust-unverified ...``
  (or ``fetch(..., trust_unverified=True)``). Such a file is then checked on its content
  manifest alone, a warning is logged, and its ``.sha256`` note says "UNVERIFIED"; a later
  run that finds it in place refuses it again unless the flag is given again. A mirror's
  own ``SHA256SUMS`` is checked when present (a mismatch is an error) but never makes a file
  trusted: whoever controls the mirror controls that list too.
- A file is written to ``<dest>.part`` and renamed to ``<dest>`` only after it has been
  verified (:func:`verify_file`), so a half-written or truncated file is never taken as done.
- An interrupted download leaves ``<dest>.part`` (and ``<dest>.part.meta``: URL, ETag,
  Last-Modified, length). The next call resumes it with ``Range`` + ``If-Range`` only when the
  final hash is known or the ``.part.meta`` validators are there; a ``206`` whose
  ``Content-Range`` does not start at the requested offset (or disagrees with the recorded
  length) discards the ``.part`` and restarts; a ``200`` restarts from zero. A resumed file
  that fails verification is deleted and fetched once more from scratch. Without a known hash,
  a download whose length the server did not state is never called complete.
- A ``<dest>`` already present is re-verified; one that fails verification is deleted and
  fetched again (idempotent, self-healing).
- Beside each verified file, ``<dest>.sha256`` records the observed checksum (``sha256sum``
  format), where the file came from and how it was verified.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .archives import ArchiveContentError, UnsafeArchiveError, check_counts, count_members, list_members
from ..atomic import ensure_dir, sha256_file, write_text
from .sources import SourceFile

CHUNK = 1 << 20
USER_AGENT = "weakalign-data/0.1 (+https://github.com/ignacio-rocco/weakalign reproduction)"
UNVERIFIED_TAG = "UNVERIFIED"

_TRUST_UNVERIFIED = False


def set_trust_unverified(flag: bool) -> None:
    """Process-wide default of ``fetch(trust_unverified=...)`` (the ``--trust-unverified``
    option of the ``weakalign`` command)."""
    global _TRUST_UNVERIFIED
    _TRUST_UNVERIFIED = bool(flag)
    if flag:
        print("weakalign: --trust-unverified: files with no known SHA-256 will be accepted on "
              "their content manifest alone (UNVERIFIED)", file=sys.stderr)


class SourceUnavailable(FileNotFoundError):
    """The file cannot be obtained here (not in the mirror, or network failure)."""


class UnverifiedSourceError(SourceUnavailable):
    """No SHA-256 is known for the file and the user did not pass ``--trust-unverified``."""


class VerificationError(ValueError):
    """A fetched file failed its checksum or content-manifest check."""


class HashMismatchError(VerificationError):
    """A file's SHA-256 differs from the known one."""


@dataclass
class FetchResult:
    source: SourceFile
    path: Path
    sha256: str
    size: int
    origin: str  # "mirror:<path>" | "url:<url>" | "present"
    verified_by: str
    action: str  # "fetched" | "resumed" | "present"


def _progress(total, desc, initial=0):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not sys.stderr.isatty(),
        leave=False,
    )


def read_sha256sums(mirror: Path) -> dict[str, str]:
    """``SHA256SUMS`` of a mirror folder as {relative path: sha256}; {} if absent."""
    out: dict[str, str] = {}
    f = mirror / "SHA256SUMS"
    if not f.is_file():
        return out
    for line in f.read_text().splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            out[parts[1].lstrip("*").strip()] = parts[0].lower()
    return out


def find_in_mirror(src: SourceFile, mirror: Path) -> Path | None:
    for name in src.mirror_names or (src.filename,):
        p = mirror / name
        if p.is_file():
            return p
    return None


def known_hashes(src: SourceFile) -> dict[str, str]:
    """{sha256: what it is} of the checksums recorded for ``src`` (may be empty)."""
    out = {}
    if src.sha256:
        out[src.sha256.lower()] = "official sha256"
    if src.mirror_sha256:
        out.setdefault(src.mirror_sha256.lower(), "recorded sha256 of the offline-mirror copy")
    return out


def _unverified_message(src: SourceFile, origin: str) -> str:
    return (f"{src.filename}: no SHA-256 is recorded for this file in weakalign/data/sources.py, "
            f"so it cannot be verified (from {origin}); refused. Pass --trust-unverified "
            "(weakalign --trust-unverified data fetch ...) to accept it on its content manifest "
            "alone, or record its sha256 in sources.py")


# ---------------------------------------------------------------------------------------------
# verification


def _csv_manifest_problems(path: Path, src: SourceFile) -> list[str]:
    import csv

    exp = src.expected
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        return [f"{path}: not a readable CSV ({exc})"]
    if not rows:
        return [f"{path}: empty file"]
    header, body = rows[0], [r for r in rows[1:] if r]
    problems = []
    if "columns" in exp and [h.strip() for h in header] != list(exp["columns"]):
        problems.append(f"{path}: header {header} != expected {exp['columns']}")
    if "num_columns" in exp and len(header) != exp["num_columns"]:
        problems.append(f"{path}: {len(header)} columns, expected {exp['num_columns']}")
    if "rows" in exp and len(body) != exp["rows"]:
        problems.append(f"{path}: {len(body)} data rows, expected {exp['rows']}")
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        problems.append(f"{path}: rows with a wrong number of fields at lines {bad[:10]}")
    return problems


def content_problems(path: Path, src: SourceFile) -> list[str]:
    """Content-manifest check (archive member counts / CSV rows and columns)."""
    if src.kind == "csv":
        return _csv_manifest_problems(path, src)
    if src.kind not in ("zip", "tar"):
        return []
    try:
        members = list_members(path, src.kind)
    except (ArchiveContentError, UnsafeArchiveError) as exc:
        return [str(exc)]
    counts = count_members(members, src.extract_dirs)
    problems = check_counts(counts, src.expected, path)
    if src.extract_dirs and counts.get("files", 0) == 0:
        problems.append(f"{path}: holds no files under {list(src.extract_dirs)}")
    return problems


def verify_file(path: Path, src: SourceFile, mirror_sums: dict[str, str] | None = None,
                mirror_relname: str | None = None, *, trust_unverified: bool = False,
                ) -> tuple[str, str]:
    """Verify ``path`` as the file ``src``; return (sha256, how). Raise VerificationError.

    A known sha256 (official or recorded mirror copy) must match (:class:`HashMismatchError`
    otherwise). With none known, the file is refused (:class:`UnverifiedSourceError`) unless
    ``trust_unverified``; the mirror's ``SHA256SUMS`` entry, if any, must then match. The
    content manifest must ALWAYS hold as well.
    """
    path = Path(path)
    digest = sha256_file(path)
    known = known_hashes(src)
    if known:
        if digest not in known:
            expected = " or ".join(f"{h} ({what})" for h, what in known.items())
            raise HashMismatchError(
                f"{src.filename}: SHA-256 mismatch: expected {expected}, got {digest}")
        how = known[digest]
    else:
        if mirror_sums and mirror_relname in mirror_sums and mirror_sums[mirror_relname] != digest:
            raise VerificationError(
                f"{src.filename}: sha256 {digest} differs from the mirror's SHA256SUMS entry "
                f"{mirror_sums[mirror_relname]} for {mirror_relname}")
        if not trust_unverified:
            raise UnverifiedSourceError(_unverified_message(src, str(path)))
        how = f"{UNVERIFIED_TAG}: no known sha256, accepted with --trust-unverified"
        if mirror_sums and mirror_relname in mirror_sums:
            how += " (matches the mirror's own SHA256SUMS)"
    problems = content_problems(path, src)
    if problems:
        raise VerificationError("; ".join(problems))
    if not known and not src.expected:
        raise VerificationError(f"{src.filename}: no checksum and no content manifest to verify it by")
    how += " + content manifest"
    return digest, how


# ---------------------------------------------------------------------------------------------
# transfer


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".meta")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _read_meta(part: Path) -> dict:
    try:
        meta = json.loads(_meta_path(part).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def _copy_resume(src_path: Path, part: Path, desc: str, resume_ok: bool) -> None:
    total = src_path.stat().st_size
    have = part.stat().st_size if part.exists() else 0
    if have > total or not resume_ok:
        _discard(part)
        have = 0
    with open(src_path, "rb") as fin, open(part, "ab") as fout, _progress(total, desc, have) as bar:
        fin.seek(have)
        while True:
            b = fin.read(CHUNK)
            if not b:
                break
            fout.write(b)
            bar.update(len(b))
    if part.stat().st_size != total:
        raise SourceUnavailable(f"{src_path}: copy ended at {part.stat().st_size} of {total} bytes")


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def _open(url: str, have: int, meta: dict, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
        validator = meta.get("etag") or meta.get("last_modified")
        if validator:  # the server sends the whole file (200) if it changed since
            req.add_header("If-Range", validator)
    return urllib.request.urlopen(req, timeout=timeout)


def _http_resume(url: str, part: Path, desc: str, timeout: float, hash_known: bool) -> None:
    """Download ``url`` into ``part`` (resuming when that is safe). Raises SourceUnavailable
    (kept for resuming) or VerificationError (cannot tell the download is complete)."""
    have = part.stat().st_size if part.exists() else 0
    meta = _read_meta(part)
    if have and not hash_known and not (
            meta.get("url") == url and (meta.get("etag") or meta.get("last_modified"))
            and meta.get("length")):
        have = 0  # nothing to validate the .part against: start again
    if not have:
        _discard(part)
        meta = {}
    for _ in range(2):  # a second round only after discarding a .part the server disowned
        try:
            resp = _open(url, have, meta, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # range not satisfiable: the .part may be complete
                if hash_known or meta.get("length") == have:
                    return
                _discard(part)
                have, meta = 0, {}
                continue
            raise SourceUnavailable(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise SourceUnavailable(f"{url}: {getattr(exc, 'reason', exc)}") from exc
        with resp:
            status = getattr(resp, "status", 200)
            length = resp.headers.get("Content-Length")
            length = int(length) if length is not None and length.strip().isdigit() else None
            if status == 206 and have:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
                first, last = (int(m.group(1)), int(m.group(2))) if m else (None, None)
                full = int(m.group(3)) if m and m.group(3) != "*" else None
                if (m is None or first != have or last < first
                        or (length is not None and length != last - first + 1)
                        or (full is not None and last != full - 1)
                        or (meta.get("length") and full != meta["length"])):
                    print(f"  {desc}: server answered Range bytes={have}- with Content-Range "
                          f"{resp.headers.get('Content-Range')!r}; discarding {part.name} and "
                          "starting again", file=sys.stderr)
                    _discard(part)
                    have, meta = 0, {}
                    continue
                mode, start, total = "ab", have, full
            elif status in (200, 203) or (status == 206 and not have):
                # fresh download, or the server ignored the range / the file changed: from zero
                if status == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
                    if m is None or int(m.group(1)) != 0:
                        raise SourceUnavailable(f"{url}: unexpected partial answer "
                                                f"{resp.headers.get('Content-Range')!r}")
                mode, start, total = "wb", 0, length
                meta = {"url": url, "etag": resp.headers.get("ETag"),
                        "last_modified": resp.headers.get("Last-Modified"), "length": total}
                write_text(_meta_path(part), json.dumps(meta))
            else:
                raise SourceUnavailable(f"{url}: unexpected HTTP status {status}")
            got = 0
            with open(part, mode) as fout, _progress(total, desc, start) as bar:
                while True:
                    try:
                        b = resp.read(CHUNK)
                    except (OSError, ValueError, http.client.HTTPException) as exc:  # dropped
                        raise SourceUnavailable(f"{url}: transfer interrupted ({exc}); "
                                                f"{part} kept for resuming") from exc
                    if not b:
                        break
                    fout.write(b)
                    got += len(b)
                    bar.update(len(b))
            if length is not None and got != length:
                raise SourceUnavailable(
                    f"{url}: transfer ended after {got} of {length} bytes; {part} kept for resuming")
            if total is not None and part.stat().st_size != total:
                raise SourceUnavailable(f"{url}: {part} holds {part.stat().st_size} bytes, the "
                                        f"server announced {total}; kept for resuming")
            if total is None and not hash_known:
                _discard(part)
                raise VerificationError(
                    f"{url}: the server sent no Content-Length and no SHA-256 is known, so the "
                    "download cannot be shown to be complete; refused")
            return
    raise SourceUnavailable(f"{url}: the server did not honour a fresh request")


def fetch(src: SourceFile, dest_dir: Path, *, mirror: Path | None, timeout: float = 60.0,
          allow_network: bool = True, trust_unverified: bool | None = None) -> FetchResult:
    """Make ``dest_dir/src.filename`` a verified copy of ``src`` (see module docstring)."""
    trust = _TRUST_UNVERIFIED if trust_unverified is None else bool(trust_unverified)
    dest_dir = ensure_dir(dest_dir, "choose another data folder (--root) or fix its permissions")
    dest = dest_dir / src.filename
    part = dest.with_name(dest.name + ".part")
    note = dest.with_name(dest.name + ".sha256")
    hash_known = bool(known_hashes(src))

    mirror_sums = read_sha256sums(mirror) if mirror else {}
    mirror_path = find_in_mirror(src, mirror) if mirror else None
    relname = mirror_path.relative_to(mirror).as_posix() if mirror_path else None

    if dest.exists():
        # A file accepted earlier with --trust-unverified is NOT trusted again on the strength
        # of its own .sha256 note (anyone who can write data/ can write the note): every run
        # that uses it needs the flag again.
        if not hash_known and not trust and _accepted_unverified_before(note):
            raise UnverifiedSourceError(
                f"{dest}: accepted earlier with --trust-unverified (its {note.name} says "
                f"{UNVERIFIED_TAG}) but no SHA-256 is recorded for it; pass --trust-unverified "
                "again to use it, or record its sha256 in weakalign/data/sources.py")
        try:
            digest, how = verify_file(dest, src, mirror_sums, relname, trust_unverified=trust)
            return FetchResult(src, dest, digest, dest.stat().st_size, "present", how, "present")
        except UnverifiedSourceError:
            pass  # refused below, with the origin in the message
        except VerificationError as exc:
            print(f"  {dest}: existing file fails verification ({exc}); deleted, fetching again",
                  file=sys.stderr)
            dest.unlink()
            note.unlink(missing_ok=True)

    if mirror is not None:
        if mirror_path is None:
            tried = ", ".join(str(mirror / n) for n in (src.mirror_names or (src.filename,)))
            raise SourceUnavailable(
                f"{src.filename} is not in the offline mirror (looked for {tried}); "
                f"official URL: {src.url}. Put the file there, or unset the mirror "
                f"(WEAKALIGN_DATA_MIRROR=none) to download it"
            )
        origin = f"mirror:{mirror_path}"

        def transfer():
            _copy_resume(mirror_path, part, src.filename, hash_known)
    else:
        if not allow_network:
            raise SourceUnavailable(f"{src.filename}: no mirror and network use disabled")
        origin = f"url:{src.url}"

        def transfer():
            _http_resume(src.url, part, src.filename, timeout, hash_known)

    if not hash_known and not trust:
        _discard(part)
        raise UnverifiedSourceError(_unverified_message(src, origin))
    if not hash_known:
        print(f"  {src.filename}: WARNING: no known SHA-256; accepting it from {origin} on its "
              "content manifest alone (--trust-unverified)", file=sys.stderr)

    resumed = part.exists() and part.stat().st_size > 0
    for attempt in (1, 2):
        try:
            transfer()
            digest, how = verify_file(part, src, mirror_sums, relname, trust_unverified=trust)
            break
        except VerificationError as exc:
            _discard(part)
            if attempt == 2 or not resumed:
                raise type(exc)(f"{exc} (from {origin}; not kept)") from exc
            print(f"  {src.filename}: resumed file fails verification; refetching from scratch",
                  file=sys.stderr)
            resumed = False
    os.replace(part, dest)
    _meta_path(part).unlink(missing_ok=True)
    size = dest.stat().st_size
    write_text(note, f"{digest}  {dest.name}\n# {size} bytes; from {origin}; verified by {how}\n")
    return FetchResult(src, dest, digest, size, origin, how, "resumed" if resumed else "fetched")


def _accepted_unverified_before(note: Path) -> bool:
    """``note`` (a ``<dest>.sha256``) says the file was accepted with --trust-unverified."""
    try:
        return UNVERIFIED_TAG in note.read_text()
    except OSError:
        return False
