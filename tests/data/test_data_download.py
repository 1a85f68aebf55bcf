"""Downloads: resumable, atomic, verified; a truncated file is resumed or refetched, never
accepted. The HTTP server is a loopback one (127.0.0.1) started by the test."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from weakalign.data import paths
from weakalign.data.download import SourceUnavailable, VerificationError, fetch
from weakalign.data.prepare import extract_archive, fetch_sources
from weakalign.data.sources import SourceFile


def _payload(n=300_000):
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


class _Server:
    """Serves ``files`` {path: bytes}. ``drop_after`` {path: n}: the next GET of path sends the
    full Content-Length but only n bytes, then closes (a dropped connection). ``ranges``:
    honour Range requests (206) or ignore them (200)."""

    def __init__(self):
        self.files, self.drop_after, self.ranges, self.log = {}, {}, True, []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                data = outer.files.get(self.path)
                rng = self.headers.get("Range")
                outer.log.append((self.path, rng))
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and outer.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                cut = outer.drop_after.pop(self.path, None)
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _src(url, data, kind="csv", **kw):
    return SourceFile(key="f", dataset="ds", filename=kw.pop("filename", "file.bin"), url=url,
                      kind=kind, sha256=hashlib.sha256(data).hexdigest() if data else None, **kw)


def test_dropped_download_is_resumed_not_accepted(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.drop_after["/f.bin"] = 100_000
    src = _src(server.url + "/f.bin", data, kind="bin")
    with pytest.raises(SourceUnavailable, match="kept for resuming"):
        fetch(src, tmp_path, mirror=None, timeout=5)
    assert not (tmp_path / "file.bin").exists()  # never taken as done
    assert (tmp_path / "file.bin.part").stat().st_size == 100_000
    res = fetch(src, tmp_path, mirror=None, timeout=5)
    assert res.action == "resumed"
    assert (tmp_path / "file.bin").read_bytes() == data
    assert not (tmp_path / "file.bin.part").exists()
    assert server.log[-1] == ("/f.bin", "bytes=100000-")
    assert "official sha256" in res.verified_by
    # idempotent
    assert fetch(src, tmp_path, mirror=None, timeout=5).action == "present"
    assert len(server.log) == 2


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    server.ranges = False
    (tmp_path / "file.bin.part").write_bytes(data[:5000])
    res = fetch(_src(server.url + "/f.bin", data, kind="bin"), tmp_path, mirror=None, timeout=5)
    assert (tmp_path / "file.bin").read_bytes() == data and res.sha256 == hashlib.sha256(data).hexdigest()


def test_corrupt_partial_is_refetched_from_scratch(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    (tmp_path / "file.bin.part").write_bytes(b"\x00" * 5000)  # wrong bytes: resume gives garbage
    res = fetch(_src(server.url + "/f.bin", data, kind="bin"), tmp_path, mirror=None, timeout=5)
    assert (tmp_path / "file.bin").read_bytes() == data
    assert res.action == "fetched"
    assert [r for _, r in server.log] == ["bytes=5000-", None]


def test_truncated_existing_file_is_refetched(server, tmp_path):
    data = _payload()
    server.files["/f.bin"] = data
    (tmp_path / "file.bin").write_bytes(data[:1000])  # a half-written file left by someone
    res = fetch(_src(server.url + "/f.bin", data, kind="bin"), tmp_path, mirror=None, timeout=5)
    assert res.action == "fetched" and (tmp_path / "file.bin").read_bytes() == data


def test_wrong_checksum_never_accepted(server, tmp_path):
    server.files["/f.bin"] = b"not the right content"
    src = _src(server.url + "/f.bin", _payload(), kind="bin")
    with pytest.raises(VerificationError, match="sha256"):
        fetch(src, tmp_path, mirror=None, timeout=5)
    assert not (tmp_path / "file.bin").exists() and not (tmp_path / "file.bin.part").exists()


def _zip_bytes(n_png):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n_png):
            zf.writestr(f"top/c{i % 2}/{i}.png", b"png")
    return buf.getvalue()


def test_unknown_checksum_verified_by_content_manifest(server, tmp_path):
    good, bad = _zip_bytes(4), _zip_bytes(3)
    server.files["/good.zip"], server.files["/bad.zip"] = good, bad
    kw = dict(kind="zip", extract_dirs=("top",), expected={"ext:png": 4, "dirs": 2})
    ok = SourceFile(key="g", dataset="ds", filename="good.zip", url=server.url + "/good.zip", **kw)
    # no known sha256: accepted only with --trust-unverified (tests/test_security_downloads.py)
    res = fetch(ok, tmp_path, mirror=None, timeout=5, trust_unverified=True)
    assert "UNVERIFIED" in res.verified_by and res.verified_by.endswith("content manifest")
    assert (tmp_path / "good.zip.sha256").read_text().startswith(hashlib.sha256(good).hexdigest())
    nok = SourceFile(key="b", dataset="ds", filename="bad.zip", url=server.url + "/bad.zip", **kw)
    with pytest.raises(VerificationError, match="expected 4 ext:png, found 3"):
        fetch(nok, tmp_path, mirror=None, timeout=5, trust_unverified=True)
    assert not (tmp_path / "bad.zip").exists()
    # truncated zip with unknown checksum: rejected by the manifest check too
    server.files["/good.zip"] = good[: len(good) // 2]
    (tmp_path / "good.zip").unlink()
    with pytest.raises(VerificationError):
        fetch(ok, tmp_path, mirror=None, timeout=5, trust_unverified=True)


def test_mirror_copy_and_sha256sums(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "sub").mkdir(parents=True)
    data = b"a,b\n1,2\n"
    (mirror / "sub" / "x.csv").write_bytes(data)
    (mirror / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  sub/x.csv\n")
    src = SourceFile(key="x", dataset="ds", filename="x.csv", url="http://unreachable.invalid/x.csv",
                     kind="csv", mirror_names=("sub/x.csv",), expected={"rows": 1, "columns": ["a", "b"]})
    res = fetch(src, tmp_path / "out", mirror=mirror, trust_unverified=True)
    assert res.origin.startswith("mirror:") and "SHA256SUMS" in res.verified_by
    # a damaged mirror copy is refused (SHA256SUMS mismatch)
    (mirror / "sub" / "x.csv").write_bytes(b"a,b\n1,3\n")
    (tmp_path / "out" / "x.csv").unlink()
    with pytest.raises(VerificationError, match="SHA256SUMS"):
        fetch(src, tmp_path / "out", mirror=mirror, trust_unverified=True)
    # a file absent from the mirror: clear message with the official URL, no network use
    src2 = SourceFile(key="y", dataset="ds", filename="y.csv", url="http://unreachable.invalid/y.csv",
                      kind="csv")
    with pytest.raises(SourceUnavailable, match="unreachable.invalid/y.csv"):
        fetch(src2, tmp_path / "out", mirror=mirror)


def test_extract_archive_is_atomic_and_idempotent(tmp_path):
    arc = tmp_path / "a.zip"
    arc.write_bytes(_zip_bytes(4))
    src = SourceFile(key="a", dataset="ds", filename="a.zip", url="x", kind="zip",
                     extract_dirs=("top",), expected={"ext:png": 4})
    assert extract_archive(arc, src, tmp_path / "data") == "extracted"
    assert extract_archive(arc, src, tmp_path / "data") == "present"
    assert sorted(p.name for p in (tmp_path / "data" / "ds").iterdir()) == ["top"]  # no staging left
    (tmp_path / "data" / "ds" / "top" / "c0" / "0.png").unlink()  # damaged tree: re-extracted
    assert extract_archive(arc, src, tmp_path / "data") == "extracted"
    bad = SourceFile(key="a", dataset="ds2", filename="a.zip", url="x", kind="zip",
                     extract_dirs=("top",), expected={"ext:png": 5})
    with pytest.raises(ValueError, match="expected 5 ext:png"):
        extract_archive(arc, bad, tmp_path / "data")
    assert not (tmp_path / "data" / "ds2" / "top").exists()
    assert not list((tmp_path / "data" / "ds2").iterdir())


def test_fetch_sources_reports_unavailable_without_failing_others(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "a.csv").write_text("a\n1\n")
    srcs = [SourceFile(key="a", dataset="ds", filename="a.csv", url="u", kind="csv",
                       mirror_names=("a.csv",), expected={"rows": 1},
                       sha256=hashlib.sha256((mirror / "a.csv").read_bytes()).hexdigest()),
            SourceFile(key="b", dataset="ds", filename="b.csv", url="http://x.invalid/b.csv",
                       kind="csv")]
    st = fetch_sources(srcs, tmp_path / "data", mirror, log=lambda *a: None)
    assert st["a"].startswith("ok") and st["b"].startswith("not available")


def test_mirror_resolution(monkeypatch, tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("WEAKALIGN_PROJECT_ROOT", str(root))
    monkeypatch.delenv("WEAKALIGN_DATA_MIRROR")
    assert paths.mirror_dir() is None  # no ../shared/datasets beside it
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    assert paths.mirror_dir() == (tmp_path / "shared" / "datasets").resolve()
    monkeypatch.setenv("WEAKALIGN_DATA_MIRROR", "none")
    assert paths.mirror_dir() is None
    monkeypatch.setenv("WEAKALIGN_DATA_MIRROR", str(tmp_path / "elsewhere"))
    assert paths.mirror_dir() == (tmp_path / "elsewhere").resolve()
    monkeypatch.delenv("WEAKALIGN_PROJECT_ROOT")
    monkeypatch.chdir(root)
    assert paths.project_root() == root.resolve()
