"""Atomic writes: everything the suite outputs goes through a temp file + ``os.replace``.

An output that cannot be written (its folder cannot be created, is not a folder, is read-only,
the disk is full...) raises :class:`OutputNotWritableError`: one line naming the path, the
reason and what to do; the ``weakalign`` command prints it without a traceback. Errors raised
by the code that writes INTO an open file are not touched.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputNotWritableError(OSError):
    """An output file or folder cannot be written (see the module docstring)."""


_HINT = "choose another output location or fix the folder's permissions"


def _unwritable(path, exc: OSError, hint: str = _HINT) -> OutputNotWritableError:
    if isinstance(exc, OutputNotWritableError):
        return exc
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        reason = "a file is in the way (expected a folder)"
    else:
        reason = exc.strerror or str(exc)
    return OutputNotWritableError(f"cannot write {path}: {reason}; {hint}")


def ensure_dir(path: str | os.PathLike, hint: str = _HINT) -> Path:
    """Create the folder ``path`` (and its parents) and check it can be written into;
    :class:`OutputNotWritableError` otherwise. ``hint`` says what to do (e.g. the option that
    chooses the folder)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc, hint) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputNotWritableError(f"cannot write {path}: permission denied; {hint}")
    return path


def check_dir_writable(path: str | os.PathLike, hint: str = _HINT) -> None:
    """Fail early, creating nothing, when :func:`ensure_dir` on ``path`` would certainly fail:
    ``path`` (or its nearest existing ancestor) is not a folder or cannot be written into.
    For commands that compute for a while before they write."""
    path = Path(path).absolute()
    for q in (path, *path.parents):
        if os.path.lexists(q):
            if not q.is_dir():
                raise OutputNotWritableError(
                    f"cannot write {path}: {q} is a file, not a folder; {hint}")
            if not os.access(q, os.W_OK | os.X_OK):
                raise OutputNotWritableError(f"cannot write {path}: permission denied on {q}; "
                                             f"{hint}")
            return


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kw):
    """Open a temp file beside ``path``; on success it replaces ``path`` in one step.

    On any exception the temp file is removed and ``path`` is left untouched. Failing to
    create the folder or the temp file, or to move it into place, raises
    :class:`OutputNotWritableError`.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; use the usual permissions
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:  # e.g. ENOSPC surfacing at flush
                raise _unwritable(path, exc) from exc
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. path is an existing folder
            raise _unwritable(path, exc) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_csv(path, header: list[str], rows) -> int:
    """Write a CSV (``\\n`` line ends, minimal quoting) atomically; return the row count."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    n = 0
    for row in rows:
        w.writerow(row)
        n += 1
    write_text(path, buf.getvalue())
    return n


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
