"""Safe extraction: crafted zip-slip / tar-slip archives are rejected before anything is written."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from weakalign.data.archives import (
    ArchiveContentError,
    UnsafeArchiveError,
    count_members,
    count_tree,
    list_members,
    safe_extract,
)


def _zip(path, entries):
    """entries: (name, bytes) or (name, target, "symlink")."""
    with zipfile.ZipFile(path, "w") as zf:
        for e in entries:
            if len(e) == 3:
                info = zipfile.ZipInfo(e[0])
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, e[1])
            else:
                zf.writestr(zipfile.ZipInfo(e[0]), e[1])
    return path


def _tar(path, entries, mode="w:gz"):
    """entries: (name, bytes) | (name, target, "sym"|"hard") | (name, None, "chr")."""
    with tarfile.open(path, mode) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e[0])
            if len(e) == 3:
                ti.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                           "chr": tarfile.CHRTYPE}[e[2]]
                if e[1] is not None:
                    ti.linkname = e[1]
                tf.addfile(ti)
            else:
                ti.size = len(e[1])
                tf.addfile(ti, io.BytesIO(e[1]))
    return path


def _nothing_written(tmp_path, dest):
    assert not (tmp_path / "evil.txt").exists()
    assert not dest.exists() or not any(dest.rglob("*"))


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil.txt",
                                  "..\\evil.txt", "C:/evil.txt", "a/./../../evil.txt"])
def test_zip_slip_rejected(tmp_path, name):
    arc = _zip(tmp_path / "a.zip", [("good/file.txt", b"x"), (name, b"evil")])
    dest = tmp_path / "out" / "dest"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(arc, dest)
    _nothing_written(tmp_path, dest)


@pytest.mark.parametrize("target", ["../../evil.txt", "/etc/passwd", "../../sibling", "a/../../.."])
def test_zip_symlink_outside_rejected(tmp_path, target):
    arc = _zip(tmp_path / "a.zip", [("good/file.txt", b"x"), ("good/link", target, "symlink")])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(arc, dest)
    _nothing_written(tmp_path, dest)


def test_zip_internal_symlink_refused(tmp_path):
    # links are refused altogether, even pointing inside (no dataset needs them; see
    # tests/test_security_archives.py for the link-chain escapes this closes)
    arc = _zip(tmp_path / "a.zip", [("top/sub/file.txt", b"hello"),
                                    ("top/link", "sub/file.txt", "symlink")])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match="link"):
        safe_extract(arc, dest)
    _nothing_written(tmp_path, dest)


@pytest.mark.parametrize("entry", [
    ("../evil.txt", b"evil"),
    ("/abs/evil.txt", b"evil"),
    ("top/../../evil.txt", b"evil"),
    ("top/link", "/etc/passwd", "sym"),
    ("top/link", "../../evil.txt", "sym"),
    ("link", "..", "sym"),
    ("top/hard", "/etc/passwd", "hard"),
    ("top/hard", "../outside.txt", "hard"),
    ("top/hard", "top/not-a-member", "hard"),
    ("top/dev", None, "chr"),
])
def test_tar_slip_rejected(tmp_path, entry):
    arc = _tar(tmp_path / "a.tar.gz", [("top/good.txt", b"x"), entry])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(arc, dest)
    _nothing_written(tmp_path, dest)


def test_tar_symlink_then_write_through_it_rejected(tmp_path):
    # classic two-step: a link to the parent folder, then a file "through" the link
    arc = _tar(tmp_path / "a.tar", [("esc", "..", "sym"), ("esc/evil.txt", b"evil")], mode="w")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(arc, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()


def test_safe_archives_extract_and_count(tmp_path):
    entries = [("top/a/1.png", b"1"), ("top/a/1.mat", b"1"), ("top/b/2.png", b"2"),
               ("__MACOSX/top/._1.png", b"junk"),
               ("top/.DS_Store", b"junk")]
    arc = _tar(tmp_path / "ok.tar.gz", entries)
    dest = tmp_path / "dest"
    safe_extract(arc, dest)
    assert (dest / "top" / "a" / "1.png").read_bytes() == b"1"
    assert not (dest / "__MACOSX").exists() and not (dest / "top" / ".DS_Store").exists()
    c = count_members(list_members(arc), ("top",))
    assert c["ext:png"] == 2 and c["ext:mat"] == 1 and c["dirs"] == 2
    assert count_tree(dest, ("top",))["ext:png"] == 2

    zarc = _zip(tmp_path / "ok.zip", [("top/a/1.png", b"1"), ("top/b/", b""), ("top/b/2.png", b"2")])
    safe_extract(zarc, tmp_path / "zdest")
    assert (tmp_path / "zdest" / "top" / "b" / "2.png").read_bytes() == b"2"


def test_truncated_archives_are_unreadable(tmp_path):
    arc = _tar(tmp_path / "t.tar.gz", [(f"top/f{i}.bin", bytes(range(256)) * 400) for i in range(20)])
    data = arc.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveContentError):
        list_members(tmp_path / "cut.tar.gz")
    z = _zip(tmp_path / "z.zip", [("top/a.txt", b"a" * 10000)])
    (tmp_path / "cut.zip").write_bytes(z.read_bytes()[:-30])
    with pytest.raises(ArchiveContentError):
        list_members(tmp_path / "cut.zip")
