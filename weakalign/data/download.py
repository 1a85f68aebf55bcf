"""Fetching files: from the offline mirror or the official URL; resumable, atomic, verified.

- A file is written to ``<dest>.part`` and renamed to ``<dest>`` only after it has been
  verified (:func:`verify_file`), so a half-written or truncated file is never taken as done.
- An interrupted download leaves ``<dest>.part``; the next call resumes it with an HTTP
  ``Range`` request (or by copying on from the same offset, for the mirror). If the server
  ignores the range (answers 200), the download restarts from zero. If a resumed file fails
  verification it is deleted and fetched once more from scratch; if that fails too, an error.
- A ``<dest>`` already present is re-verified; one that fails verification is deleted and
  fetched again (idempotent, self-healing).
- Beside each verified file, ``<dest>.sha256`` records the observed checksum (``sha256sum``
  format) and where the file came from, so the official checksum can be recorded once known.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .archives import ArchiveContentError, UnsafeArchiveError, check_counts, count_members, list_members
from .atomic import sha256_file, write_text
from .sources import SourceFile

CHUNK = 1 << 20
USER_AGENT = "weakalign-data/0.1 (+https://github.com/ignacio-rocco/weakalign reproduction)"


class SourceUnavailable(FileNotFoundError):
    """The file cannot be obtained here (not in the mirror, or network failure)."""


class VerificationError(ValueError):
    """A fetched file failed its checksum or content-manifest check."""


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
                mirror_relname: str | None = None) -> tuple[str, str]:
    """Verify ``path`` as the file ``src``; return (sha256, how). Raise VerificationError.

    Order: official sha256 (if known) -> recorded mirror sha256 -> the mirror's SHA256SUMS
    entry (mismatch = error). The content manifest must ALWAYS hold as well.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = sha256_file(path)
    how = None
    if src.sha256 and digest == src.sha256:
        how = "official sha256"
    elif src.mirror_sha256 and digest == src.mirror_sha256:
        how = "recorded sha256 of the offline-mirror copy"
    else:
        if src.sha256 and mirror_relname is None:
            raise VerificationError(
                f"{path}: sha256 {digest} differs from the official {src.sha256}"
            )
        if src.size is not None and mirror_relname is None and size != src.size:
            raise VerificationError(f"{path}: {size} bytes, official size is {src.size}")
        if mirror_sums and mirror_relname in mirror_sums:
            if mirror_sums[mirror_relname] != digest:
                raise VerificationError(
                    f"{path}: sha256 {digest} differs from the mirror's SHA256SUMS entry "
                    f"{mirror_sums[mirror_relname]} for {mirror_relname}"
                )
            how = "mirror SHA256SUMS"
    problems = content_problems(path, src)
    if problems:
        raise VerificationError("; ".join(problems))
    if how is None and not src.expected:
        raise VerificationError(f"{path}: no checksum and no content manifest to verify it by")
    if how is None:
        how = "content manifest (official sha256 unknown)"
    else:
        how += " + content manifest"
    return digest, how


# ---------------------------------------------------------------------------------------------
# transfer


def _copy_resume(src_path: Path, part: Path, desc: str) -> None:
    total = src_path.stat().st_size
    have = part.stat().st_size if part.exists() else 0
    if have > total:
        part.unlink()
        have = 0
    with open(src_path, "rb") as fin, open(part, "ab") as fout, _progress(total, desc, have) as bar:
        fin.seek(have)
        while True:
            b = fin.read(CHUNK)
            if not b:
                break
            fout.write(b)
            bar.update(len(b))


def _http_resume(url: str, part: Path, desc: str, timeout: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range not satisfiable: .part may be complete already
            return
        raise SourceUnavailable(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise SourceUnavailable(f"{url}: {getattr(exc, 'reason', exc)}") from exc
    with resp:
        status = getattr(resp, "status", 200)
        if status == 206 and have:
            mode, start = "ab", have
        else:  # server ignored the range (or fresh start): restart from zero
            mode, start = "wb", 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        got = 0
        with open(part, mode) as fout, _progress(total, desc, start) as bar:
            while True:
                try:
                    b = resp.read(CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as exc:  # dropped mid-body
                    raise SourceUnavailable(f"{url}: transfer interrupted ({exc}); "
                                            f"{part} kept for resuming") from exc
                if not b:
                    break
                fout.write(b)
                got += len(b)
                bar.update(len(b))
        if length is not None and got != int(length):
            raise SourceUnavailable(
                f"{url}: transfer ended after {got} of {length} bytes; {part} kept for resuming"
            )


def fetch(src: SourceFile, dest_dir: Path, *, mirror: Path | None, timeout: float = 60.0,
          allow_network: bool = True) -> FetchResult:
    """Make ``dest_dir/src.filename`` a verified copy of ``src`` (see module docstring)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.filename
    part = dest.with_name(dest.name + ".part")

    mirror_sums = read_sha256sums(mirror) if mirror else {}
    mirror_path = find_in_mirror(src, mirror) if mirror else None
    relname = mirror_path.relative_to(mirror).as_posix() if mirror_path else None

    if dest.exists():
        try:
            digest, how = verify_file(dest, src, mirror_sums, relname)
            return FetchResult(src, dest, digest, dest.stat().st_size, "present", how, "present")
        except VerificationError as exc:
            print(f"  {dest}: existing file fails verification ({exc}); fetching again",
                  file=sys.stderr)
            dest.unlink()

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
            _copy_resume(mirror_path, part, src.filename)
    else:
        if not allow_network:
            raise SourceUnavailable(f"{src.filename}: no mirror and network use disabled")
        origin = f"url:{src.url}"

        def transfer():
            _http_resume(src.url, part, src.filename, timeout)

    resumed = part.exists() and part.stat().st_size > 0
    for attempt in (1, 2):
        transfer()
        try:
            digest, how = verify_file(part, src, mirror_sums, relname)
            break
        except VerificationError as exc:
            part.unlink(missing_ok=True)
            if attempt == 2 or not resumed:
                raise VerificationError(f"{src.filename} from {origin}: {exc}") from exc
            print(f"  {src.filename}: resumed file fails verification; refetching from scratch",
                  file=sys.stderr)
            resumed = False
    os.replace(part, dest)
    size = dest.stat().st_size
    write_text(dest.with_name(dest.name + ".sha256"),
               f"{digest}  {dest.name}\n# {size} bytes; from {origin}; verified by {how}\n")
    return FetchResult(src, dest, digest, size, origin, how, "resumed" if resumed else "fetched")

