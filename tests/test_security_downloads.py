"""Downloads you can trust (issues 17 and 20): known hashes are enforced for mirror and network
files alike, unverifiable files are refused unless --trust-unverified, and resuming can never
produce a wrong file. The HTTP server is a loopback one started by the test."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from weakalign.data.download import (
    HashMismatchError,
    UnverifiedSourceError,
    VerificationError,
    fetch,
)
from weakalign.data.sources import SOURCES, SourceFile

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _csv(rows=400):
    return ("source_image,target_image,class\n"
            + "".join(f"a/{i}.jpg,b/{i}.jpg,{i % 20}\n" for i in range(rows))).encode()


class _Server:
    """Serves ``files``. ``mode`` per path: "normal" (honours Range: 206 + Content-Range),
    "range_from_zero" (answers a Range request with 206 for the WHOLE file, Content-Range from
    byte 0), "no_length" (200, no Content-Length, body cut at ``cut`` bytes, then close)."""

    def __init__(self):
        self.files, self.mode, self.cut, self.log = {}, {}, {}, []
        self.etag = {}
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                data = outer.files.get(self.path)
                rng = self.headers.get("Range")
                outer.log.append((self.path, rng, self.headers.get("If-Range")))
                mode = outer.mode.get(self.path, "normal")
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if mode == "no_length":
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[:outer.cut.get(self.path, len(data))])
                    self.close_connection = True
                    return
                start = 0
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if mode == "range_from_zero":
                        start = 0
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if self.path in outer.etag:
                    self.send_header("ETag", outer.etag[self.path])
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def _shared_server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def server(_shared_server):
    s = _shared_server
    for d in (s.files, s.mode, s.cut, s.etag):
        d.clear()
    s.log.clear()
    return s


def _src(url, data=None, **kw):
    kw.setdefault("kind", "csv")
    kw.setdefault("expected", {"rows": 400, "columns": ["source_image", "target_image", "class"]})
    return SourceFile(key="f", dataset="ds", filename=kw.pop("filename", "pairs.csv"), url=url,
                      sha256=hashlib.sha256(data).hexdigest() if data is not None else None, **kw)


def _nothing_kept(d: Path, name="pairs.csv"):
    assert not (d / name).exists() and not (d / f"{name}.sha256").exists()
    assert not (d / f"{name}.part").exists()


# --- resume ----------------------------------------------------------------------------------

def test_garbage_part_is_not_resumed_without_a_way_to_check_it(server, tmp_path):
    # 7,000 garbage bytes left as .part (no record of what they are): an unverifiable file
    # must not be completed from them, it is fetched from zero
    data = _csv()
    server.files["/p.csv"] = data
    (tmp_path / "pairs.csv.part").write_bytes(b"9" * 7000)
    res = fetch(_src(server.url + "/p.csv"), tmp_path, mirror=None, timeout=5, trust_unverified=True)
    assert (tmp_path / "pairs.csv").read_bytes() == data
    assert [r for _, r, _ in server.log] == [None]
    assert "UNVERIFIED" in res.verified_by


def test_garbage_part_with_known_hash_is_refetched(server, tmp_path):
    data = _csv()
    server.files["/p.csv"] = data
    (tmp_path / "pairs.csv.part").write_bytes(b"9" * 7000)
    fetch(_src(server.url + "/p.csv", data), tmp_path, mirror=None, timeout=5)
    assert (tmp_path / "pairs.csv").read_bytes() == data


def test_zero_filled_part_of_full_length(server, tmp_path):
    data = _csv()
    server.files["/p.csv"] = data
    (tmp_path / "pairs.csv.part").write_bytes(bytes(len(data)))  # 416 "already complete"
    fetch(_src(server.url + "/p.csv", data), tmp_path, mirror=None, timeout=5)
    assert (tmp_path / "pairs.csv").read_bytes() == data
    # unverifiable: the zero .part is not even resumed
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "pairs.csv.part").write_bytes(bytes(len(data)))
    fetch(_src(server.url + "/p.csv"), tmp_path / "u", mirror=None, timeout=5, trust_unverified=True)
    assert (tmp_path / "u" / "pairs.csv").read_bytes() == data


@pytest.mark.parametrize("hashed", [True, False])
def test_206_from_byte_zero_restarts(server, tmp_path, hashed):
    # a server answering a Range request for bytes=1000- with the whole file (206, Content-Range
    # from 0): appending it would make the file 1,000 bytes too long
    data = _csv()
    server.files["/p.csv"] = data
    server.mode["/p.csv"] = "range_from_zero"
    server.etag["/p.csv"] = '"v1"'
    src = _src(server.url + "/p.csv", data if hashed else None)
    (tmp_path / "pairs.csv.part").write_bytes(data[:1000])
    (tmp_path / "pairs.csv.part.meta").write_text(
        f'{{"url": "{src.url}", "etag": "\\"v1\\"", "last_modified": null, "length": {len(data)}}}')
    fetch(src, tmp_path, mirror=None, timeout=5, trust_unverified=True)
    assert (tmp_path / "pairs.csv").read_bytes() == data
    assert server.log[0][1] == "bytes=1000-" and server.log[0][2] == '"v1"'  # If-Range sent
    assert server.log[-1][1] is None  # then from scratch


def test_resume_with_validators_continues(server, tmp_path):
    data = _csv()
    server.files["/p.csv"] = data
    server.etag["/p.csv"] = '"v1"'
    src = _src(server.url + "/p.csv")
    (tmp_path / "pairs.csv.part").write_bytes(data[:1000])
    (tmp_path / "pairs.csv.part.meta").write_text(
        f'{{"url": "{src.url}", "etag": "\\"v1\\"", "last_modified": null, "length": {len(data)}}}')
    res = fetch(src, tmp_path, mirror=None, timeout=5, trust_unverified=True)
    assert res.action == "resumed" and (tmp_path / "pairs.csv").read_bytes() == data
    assert not (tmp_path / "pairs.csv.part.meta").exists()


def test_csv_without_content_length_cut_short(server, tmp_path):
    data = _csv(400)
    cut = data.index(b"a/100.jpg")  # 100 of 400 rows
    server.files["/p.csv"] = data
    server.mode["/p.csv"] = "no_length"
    server.cut["/p.csv"] = cut
    src = _src(server.url + "/p.csv", expected={"columns": ["source_image", "target_image", "class"]})
    with pytest.raises(VerificationError, match="no Content-Length"):
        fetch(src, tmp_path, mirror=None, timeout=5, trust_unverified=True)
    _nothing_kept(tmp_path)
    with pytest.raises(HashMismatchError, match="expected"):
        fetch(_src(server.url + "/p.csv", data), tmp_path, mirror=None, timeout=5)
    _nothing_kept(tmp_path)


# --- known hashes: mirror and network ----------------------------------------------------------

def _zip_bytes(replace=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(4):
            body = b"png%d" % i if i != replace else b"tampered"
            zf.writestr(f"top/c{i % 2}/{i}.png", body)
    return buf.getvalue()


def test_tampered_zip_in_mirror_is_refused_and_not_kept(tmp_path):
    good = _zip_bytes()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.zip").write_bytes(_zip_bytes(replace=2))  # one PNG replaced
    src = SourceFile(key="a", dataset="ds", filename="a.zip", url="http://x.invalid/a.zip",
                     kind="zip", mirror_names=("a.zip",), extract_dirs=("top",),
                     expected={"ext:png": 4}, mirror_sha256=hashlib.sha256(good).hexdigest())
    out = tmp_path / "downloads"
    with pytest.raises(HashMismatchError) as ei:
        fetch(src, out, mirror=mirror)
    msg = str(ei.value)
    assert "a.zip" in msg and hashlib.sha256(good).hexdigest() in msg
    assert hashlib.sha256((mirror / "a.zip").read_bytes()).hexdigest() in msg and "\n" not in msg
    _nothing_kept(out, "a.zip")
    # the mirror's own SHA256SUMS (which whoever tampered could rewrite) does not help
    (mirror / "SHA256SUMS").write_text(
        f"{hashlib.sha256((mirror / 'a.zip').read_bytes()).hexdigest()}  a.zip\n")
    with pytest.raises(HashMismatchError):
        fetch(src, out, mirror=mirror)
    _nothing_kept(out, "a.zip")


def test_pinned_hash_of_pf_willow_is_enforced(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "PF-dataset.zip").write_bytes(_zip_bytes())  # not the real archive
    src = SOURCES["PF-dataset.zip"]
    with pytest.raises(HashMismatchError, match=src.mirror_sha256):
        fetch(src, tmp_path / "downloads", mirror=mirror)
    _nothing_kept(tmp_path / "downloads", "PF-dataset.zip")


def test_every_mirror_file_has_a_pinned_hash():
    sums = {}
    for line in (MIRROR / "SHA256SUMS").read_text().splitlines() if MIRROR.is_dir() else []:
        h, name = line.split(None, 1)
        sums[name.strip()] = h
    pinned = {s.mirror_names[0]: s.mirror_sha256 for s in SOURCES.values() if s.mirror_sha256}
    assert set(pinned) == {"PF-dataset.zip", "101_ObjectCategories.tar.gz",
                           "pf-pascal/test_pairs_pf_pascal.csv", "pf-pascal/val_pairs_pf_pascal.csv",
                           "pf-pascal/train_pairs_pf_pascal.csv"}
    for name, h in sums.items():
        assert pinned[name] == h, name


@pytest.mark.skipif(not (MIRROR / "pf-pascal" / "test_pairs_pf_pascal.csv").is_file(),
                    reason="offline mirror not present")
def test_tampered_pf_pascal_csv_one_keypoint_changed(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "pf-pascal").mkdir(parents=True)
    text = (MIRROR / "pf-pascal" / "test_pairs_pf_pascal.csv").read_text()
    lines = text.split("\n")
    lines[5] = lines[5].replace(";", "1;", 1)  # one coordinate of one keypoint changed
    (mirror / "pf-pascal" / "test_pairs_pf_pascal.csv").write_text("\n".join(lines))
    with pytest.raises(HashMismatchError):
        fetch(SOURCES["test_pairs_pf_pascal.csv"], tmp_path / "out", mirror=mirror)
    _nothing_kept(tmp_path / "out", "test_pairs_pf_pascal.csv")


def test_network_file_with_wrong_hash_never_kept(server, tmp_path):
    data = _csv()
    server.files["/p.csv"] = data.replace(b"a/7.jpg", b"a/8.jpg")
    with pytest.raises(HashMismatchError, match=hashlib.sha256(data).hexdigest()):
        fetch(_src(server.url + "/p.csv", data), tmp_path, mirror=None, timeout=5)
    _nothing_kept(tmp_path)


def test_existing_download_with_wrong_hash_is_deleted(server, tmp_path):
    data = _csv()
    server.files["/p.csv"] = data
    (tmp_path / "pairs.csv").write_bytes(data.replace(b"a/7.jpg", b"a/8.jpg"))
    fetch(_src(server.url + "/p.csv", data), tmp_path, mirror=None, timeout=5)
    assert (tmp_path / "pairs.csv").read_bytes() == data


# --- files with no known hash ----------------------------------------------------------------

def test_unverified_file_refused_without_trust(server, tmp_path):
    data = _csv()
    server.files["/p.csv"] = data
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "pairs.csv").write_bytes(data)
    src = _src(server.url + "/p.csv", mirror_names=("pairs.csv",))
    for m in (None, mirror):
        with pytest.raises(UnverifiedSourceError, match="--trust-unverified"):
            fetch(src, tmp_path / "out", mirror=m, timeout=5)
        _nothing_kept(tmp_path / "out")
    assert server.log == []  # nothing was even downloaded
    res = fetch(src, tmp_path / "out", mirror=None, timeout=5, trust_unverified=True)
    assert "UNVERIFIED" in res.verified_by
    assert "UNVERIFIED" in (tmp_path / "out" / "pairs.csv.sha256").read_text()
    n_requests = len(server.log)
    # its own UNVERIFIED note does not make it trusted on a later run: the flag is needed again
    # (whoever can write data/ can write the note too)
    with pytest.raises(UnverifiedSourceError, match=r"pairs\.csv: accepted earlier with "
                       r"--trust-unverified .*pass --trust-unverified again"):
        fetch(src, tmp_path / "out", mirror=None, timeout=5)
    assert (tmp_path / "out" / "pairs.csv").read_bytes() == data  # refused, not deleted
    res = fetch(src, tmp_path / "out", mirror=None, timeout=5, trust_unverified=True)
    assert res.action == "present" and "UNVERIFIED" in res.verified_by
    assert len(server.log) == n_requests  # re-checked in place, not downloaded again
    # a note rewritten to look verified does not help either
    note = tmp_path / "out" / "pairs.csv.sha256"
    note.write_text(note.read_text().replace("UNVERIFIED", "official sha256"))
    with pytest.raises(UnverifiedSourceError, match="--trust-unverified"):
        fetch(src, tmp_path / "out", mirror=None, timeout=5)


def test_urls_are_https_where_the_host_serves_it():
    # the two hosts below serve plain http only; their files have no pinned hash, so they are
    # refused unless the user passes --trust-unverified (test_unverified_file_refused_without_trust)
    from urllib.parse import urlparse

    http_only = {"www.hci.iis.u-tokyo.ac.jp", "host.robots.ox.ac.uk"}
    for s in SOURCES.values():
        u = urlparse(s.url)
        assert u.scheme == "https" or u.hostname in http_only, s.url
