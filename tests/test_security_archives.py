"""Extraction can never write outside the destination, through any chain of links, and is
capped against zip / tar bombs (issues 17 and 20).

Each archive below is built so that, if extraction went wrong, anything escaping would land in
``box`` (the parent of the destination), never further out; the tests check that ``box`` holds
nothing but the destination folder afterwards.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile

import pytest

from weakalign.data.archives import (
    ArchiveTooLargeError,
    ExtractLimits,
    UnsafeArchiveError,
    list_members,
    safe_extract,
)


def _zip(path, entries, compression=zipfile.ZIP_STORED):
    """entries: (name, bytes) or (name, link target, "symlink")."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for e in entries:
            info = zipfile.ZipInfo(e[0])
            info.compress_type = compression
            if len(e) == 3:
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, e[1])
    return path


def _tar(path, entries, mode="w"):
    """entries: (name, bytes) | (name, target, "sym"|"hard") | (name, None, "dir")."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e[0])
            if len(e) == 3:
                ti.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE}[e[2]]
                if e[1] is not None:
                    ti.linkname = e[1]
                if e[2] == "dir":
                    ti.mode = 0o755
                tf.addfile(ti)
            else:
                ti.size = len(e[1])
                tf.addfile(ti, io.BytesIO(e[1]))
    return path


@pytest.fixture
def box(tmp_path):
    b = tmp_path / "box"
    b.mkdir()
    return b


def _extract_refused(arc, box, exc=UnsafeArchiveError, **kw):
    dest = box / "dest"
    with pytest.raises(exc):
        safe_extract(arc, dest, **kw)
    assert sorted(os.listdir(box)) == (["dest"] if dest.exists() else []), os.listdir(box)
    assert not dest.exists() or not os.listdir(dest)  # refused before anything was written
    return dest


def test_zip_symlink_chain_of_issue_17(tmp_path, box):
    # a/l -> ..  (inside), a/l/m -> .. (created as dest/m -> parent of dest), m/DIR/LINK
    arc = _zip(tmp_path / "chain.zip", [("a/f.txt", b"x"), ("a/l", "..", "symlink"),
                                        ("a/l/m", "..", "symlink"), ("m/DIR/LINK", "x", "symlink")])
    _extract_refused(arc, box)
    with pytest.raises(UnsafeArchiveError, match="link"):
        list_members(arc)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_link_to_link(tmp_path, box, kind):
    entries = [("top/f.txt", b"x"), ("top/l1", "l2", "symlink" if kind == "zip" else "sym"),
               ("top/l2", "..", "symlink" if kind == "zip" else "sym"),
               ("top/l1/evil.txt", b"evil")]
    arc = (_zip if kind == "zip" else _tar)(tmp_path / f"a.{kind}", entries)
    _extract_refused(arc, box)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_link_then_directory_through_it(tmp_path, box, kind):
    sym = "symlink" if kind == "zip" else "sym"
    entries = [("top/l", "..", sym), ("top/l/newdir/", b""), ("top/l/newdir/evil.txt", b"evil")]
    if kind == "tar":
        entries[1] = ("top/l/newdir", None, "dir")
    arc = (_zip if kind == "zip" else _tar)(tmp_path / f"a.{kind}", entries)
    _extract_refused(arc, box)


@pytest.mark.parametrize("target", ["top/f.txt", "f.txt", "../f.txt", "/etc/passwd"])
def test_tar_hard_links_refused(tmp_path, box, target):
    arc = _tar(tmp_path / "h.tar", [("top/f.txt", b"x"), ("top/h", target, "hard")])
    _extract_refused(arc, box)


def test_tar_long_symlink_chain_cve_2025_4517(tmp_path, box):
    # The pattern that gets past tarfile's filter="data" on unpatched Pythons: a chain of
    # symlinks whose resolved path is longer than PATH_MAX, so realpath() gives up and checks
    # the rest as text while the kernel follows it out of the folder.
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    entries, path = [], ""
    for s in steps:
        entries.append((os.path.join(path, comp), None, "dir"))
        entries.append((os.path.join(path, s), comp, "sym"))
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    entries.append((linkpath, "../" * len(steps), "sym"))  # -> dest, seen through the chain
    entries.append(("escape", linkpath + "/..", "sym"))  # lexically inside; really dest/..
    entries.append(("escape/evil.txt", b"evil"))
    arc = _tar(tmp_path / "cve.tar", entries)
    _extract_refused(arc, box)
    assert not (box / "evil.txt").exists()


def test_existing_symlink_in_destination_is_not_followed(tmp_path, box):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = box / "dest"
    dest.mkdir()
    (dest / "top").symlink_to(outside)
    arc = _zip(tmp_path / "ok.zip", [("top/evil.txt", b"evil")])
    with pytest.raises(UnsafeArchiveError, match="not a real folder"):
        safe_extract(arc, dest)
    assert not any(outside.iterdir())


def test_zip_bomb_member_cap(tmp_path, box, monkeypatch):
    # 8 MiB of zeros deflate to ~8 KB: a small stand-in for the 1.8 MB zip that wrote 1 GiB
    arc = _zip(tmp_path / "bomb.zip", [("top/ok.txt", b"fine"), ("top/big.bin", bytes(8 << 20))],
               compression=zipfile.ZIP_DEFLATED)
    assert arc.stat().st_size < 100_000
    _extract_refused(arc, box, ArchiveTooLargeError, limits=ExtractLimits(max_member_bytes=1 << 20))
    monkeypatch.setenv("WEAKALIGN_MAX_MEMBER_BYTES", str(1 << 20))  # the same cap from the env
    with pytest.raises(ArchiveTooLargeError, match="WEAKALIGN_MAX_MEMBER_BYTES"):
        list_members(arc)
    monkeypatch.delenv("WEAKALIGN_MAX_MEMBER_BYTES")
    assert len(safe_extract(arc, tmp_path / "ok")) == 3  # under the default caps: fine


def test_total_size_cap_zip_and_tar(tmp_path, box):
    files = [(f"top/f{i}.bin", bytes(300_000)) for i in range(4)]
    lim = ExtractLimits(max_total_bytes=1_000_000)
    _extract_refused(_zip(tmp_path / "t.zip", files, zipfile.ZIP_DEFLATED), box, ArchiveTooLargeError, limits=lim)
    _extract_refused(_tar(tmp_path / "t.tar.gz", files, "w:gz"), box, ArchiveTooLargeError, limits=lim)
    with pytest.raises(ArchiveTooLargeError, match="members"):
        list_members(tmp_path / "t.zip", limits=ExtractLimits(max_members=3))


def test_zip_lying_about_its_size_stops_while_writing(tmp_path, box):
    # the header says 10 bytes; the data are 2 MiB: zipfile stops at the declared size and the
    # CRC check fails, so the member is never completed and what was written is removed
    arc = tmp_path / "liar.zip"
    _zip(arc, [("top/x.bin", bytes(2 << 20))], zipfile.ZIP_DEFLATED)
    raw = bytearray(arc.read_bytes())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        i = raw.index(sig)
        raw[i + off:i + off + 4] = (10).to_bytes(4, "little")
    arc.write_bytes(bytes(raw))
    dest = box / "dest"
    with pytest.raises(ValueError):
        safe_extract(arc, dest)
    assert sorted(os.listdir(box)) == ["dest"] and not list(dest.rglob("*"))


def test_duplicate_member_refused(tmp_path, box):
    arc = _tar(tmp_path / "d.tar", [("top/a.txt", b"1"), ("top/a.txt", b"2")])
    _extract_refused(arc, box)


def test_zip_symlink_member_is_inspected_with_a_bounded_read(tmp_path, box):
    # a "symlink" member that inflates to 64 MiB: naming its target must not inflate all of it
    import tracemalloc

    arc = _zip(tmp_path / "l.zip", [("top/f.txt", b"x"), ("top/l", bytes(64 << 20), "symlink")],
               compression=zipfile.ZIP_DEFLATED)
    assert arc.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchiveError, match="symbolic link"):
            list_members(arc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak:,} bytes: the whole member was read"
    _extract_refused(arc, box)


def _encrypt_flag(path):
    """Set the "encrypted" flag bit of every member (local and central headers): what a
    password-protected zip looks like to zipfile, which then refuses to open the member."""
    raw = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # general-purpose flag fields
        i = raw.find(sig)
        while i != -1:
            raw[i + off] |= 0x1
            i = raw.find(sig, i + 4)
    path.write_bytes(bytes(raw))
    return path


def test_encrypted_zip_member_is_one_clear_error(tmp_path, box):
    from weakalign.data.archives import ArchiveContentError

    arc = _encrypt_flag(_zip(tmp_path / "enc.zip", [("top/a.txt", b"secret")]))
    with pytest.raises(ArchiveContentError) as ei:
        list_members(arc)
    msg = str(ei.value)
    assert "enc.zip" in msg and "'top/a.txt'" in msg and "encrypted" in msg and "\n" not in msg
    _extract_refused(arc, box, ArchiveContentError)


def test_unknown_zip_compression_method_is_one_clear_error(tmp_path, box):
    from weakalign.data.archives import ArchiveContentError

    arc = _zip(tmp_path / "m.zip", [("top/a.txt", b"data")])
    raw = bytearray(arc.read_bytes())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # compression method fields
        i = raw.index(sig)
        raw[i + off:i + off + 2] = (99).to_bytes(2, "little")  # 99 = AES (WinZip)
    arc.write_bytes(bytes(raw))
    with pytest.raises(ArchiveContentError, match=r"'top/a.txt' uses zip compression method 99"):
        list_members(arc)
    _extract_refused(arc, box, ArchiveContentError)


def test_member_declaring_1_gib_refused_under_the_default_caps(tmp_path, box, monkeypatch):
    # issue 20: a 1.8 MB zip wrote a 1 GiB file. Here a small member whose headers declare
    # 1 GiB: refused on the declared size by the default 512 MiB cap, before anything is written
    for env in ("WEAKALIGN_MAX_MEMBER_BYTES", "WEAKALIGN_MAX_EXTRACT_BYTES"):
        monkeypatch.delenv(env, raising=False)
    arc = _zip(tmp_path / "gib.zip", [("top/big.bin", bytes(1000))], zipfile.ZIP_DEFLATED)
    raw = bytearray(arc.read_bytes())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        i = raw.index(sig)
        raw[i + off:i + off + 4] = (1 << 30).to_bytes(4, "little")
    arc.write_bytes(bytes(raw))
    with pytest.raises(ArchiveTooLargeError, match=r"'top/big.bin' expands to 1,073,741,824\+ bytes"):
        list_members(arc)
    _extract_refused(arc, box, ArchiveTooLargeError)
