"""Downloads against a local HTTP server: checksums, mirror fallback, no partial files."""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from pyneuro.data import DataError, download_file, load_mnist
from pyneuro.data.download import DATASETS, download_dataset

BODY = bytes(range(256)) * 40
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def server():
    """A local HTTP server on a free port. ``routes`` maps a path to ("ok" | "short", body);
    anything else is a 404. "short" announces 1000 more bytes than it sends, then hangs up."""
    routes: dict[str, tuple[str, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a stuck client cannot hold a handler thread for long

        def do_GET(self):
            if self.path not in routes:
                self.send_error(404)
                return
            kind, body = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + (1000 if kind == "short" else 0)))
            self.end_headers()
            self.wfile.write(body)  # HTTP/1.0: the connection closes after this

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60, httpd.shutdown)  # stops by itself even if teardown never runs
    watchdog.daemon = True
    watchdog.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}", routes=routes)
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def folder_listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_md5_and_sha256(server, tmp_path):
    server.routes["/m/file.bin"] = ("ok", BODY)
    dest = download_file([f"{server.url}/m/file.bin"], tmp_path / "dl" / "file.bin", md5=MD5.upper(), timeout=5)
    assert dest.read_bytes() == BODY
    sha256 = hashlib.sha256(BODY).hexdigest()
    dest2 = download_file([f"{server.url}/m/file.bin"], tmp_path / "dl" / "again.bin", sha256=sha256, timeout=5)
    assert dest2.read_bytes() == BODY
    assert folder_listing(tmp_path / "dl") == ["again.bin", "file.bin"]  # no temporary files left


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    server.routes["/m/file.bin"] = ("ok", BODY)
    expected_error = r"(?s)file\.bin: download failed.*md5 checksum .* does not match the expected 0{32}"
    with pytest.raises(DataError, match=expected_error) as info:
        download_file([f"{server.url}/m/file.bin"], tmp_path / "file.bin", md5="0" * 32, timeout=5)
    assert "/m/file.bin" in str(info.value)
    assert folder_listing(tmp_path) == []


def test_interrupted_transfer_leaves_no_file(server, tmp_path):
    server.routes["/m/file.bin"] = ("short", BODY)
    with pytest.raises(DataError, match="file.bin: download failed") as info:
        download_file([f"{server.url}/m/file.bin"], tmp_path / "file.bin", md5=MD5, timeout=5)
    assert "IncompleteRead" in str(info.value) or f"after {len(BODY)} of {len(BODY) + 1000} bytes" in str(info.value)
    assert folder_listing(tmp_path) == []


def test_falls_over_to_the_next_mirror(server, tmp_path):
    server.routes["/second/file.bin"] = ("ok", BODY)
    server.routes["/short/file.bin"] = ("short", BODY)
    urls = [f"{server.url}/first/file.bin", f"{server.url}/short/file.bin", f"{server.url}/second/file.bin"]
    assert download_file(urls, tmp_path / "file.bin", md5=MD5, timeout=5).read_bytes() == BODY
    assert folder_listing(tmp_path) == ["file.bin"]


def test_every_mirror_failing_lists_each_failure(server, tmp_path):
    urls = [f"{server.url}/a/file.bin", f"{server.url}/b/file.bin"]
    with pytest.raises(DataError) as info:
        download_file(urls, tmp_path / "file.bin", md5=MD5, timeout=5)
    assert all(url in str(info.value) for url in urls) and str(info.value).count("HTTP Error 404") == 2
    assert folder_listing(tmp_path) == []


class _DyingResponse:
    """Sends one chunk, then fails the way a user's Ctrl-C (or a reset connection) would."""

    def __init__(self, error):
        self.headers, self.error, self.sent = {"Content-Length": str(2 * len(BODY))}, error, False

    def read(self, n):
        if self.sent:
            raise self.error
        self.sent = True
        return BODY

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ConnectionResetError("reset by peer")])
def test_exception_mid_stream_leaves_no_temporary_file(monkeypatch, tmp_path, error):
    seen_partial = []

    def fake_urlopen(url, timeout):
        seen_partial.append(url)
        return _DyingResponse(error)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    expected = type(error) if isinstance(error, KeyboardInterrupt) else DataError
    with pytest.raises(expected):
        download_file(["http://mirror.invalid/a", "http://mirror.invalid/b"], tmp_path / "f", md5=MD5)
    assert folder_listing(tmp_path) == []
    # Ctrl-C stops at once; a network error moves on to the next mirror.
    assert len(seen_partial) == (1 if isinstance(error, KeyboardInterrupt) else 2)


def test_download_needs_exactly_one_checksum(tmp_path):
    with pytest.raises(ValueError, match="exactly one of md5 or sha256"):
        download_file(["http://mirror.invalid/x"], tmp_path / "x")


def test_load_mnist_downloads_from_mirrors_in_env(
    server, tmp_path, monkeypatch, fake_mnist, write_idx_set, no_offline_copy
):
    arrays = fake_mnist(n_train=30, n_test=6)
    paths = write_idx_set(tmp_path / "published", arrays, gz=True)
    md5 = {}
    for path in paths.values():
        server.routes[f"/mirror/{path.name}"] = ("ok", path.read_bytes())
        md5[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], md5=md5))
    monkeypatch.setenv("PYNEURO_MNIST_MIRRORS", f"{server.url}/nothing-here, {server.url}/mirror")

    root = tmp_path / "root"
    images, labels = load_mnist(root, split="test")
    np.testing.assert_array_equal(images.numpy(), arrays["test_images"])
    np.testing.assert_array_equal(labels.numpy(), arrays["test_labels"])
    assert folder_listing(root) == sorted(md5)  # downloaded into root, nothing else left there

    # A file already there that fails its checksum is fetched again, not trusted...
    tampered = root / "t10k-labels-idx1-ubyte.gz"
    tampered.write_bytes(b"tampered")
    download_dataset(DATASETS["mnist"], root)
    assert hashlib.md5(tampered.read_bytes()).hexdigest() == md5[tampered.name]
    # ...and fails loudly when no mirror has it.
    tampered.write_bytes(b"tampered")
    server.routes.clear()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: download failed"):
        download_dataset(DATASETS["mnist"], root)
    assert tampered.read_bytes() == b"tampered"  # left as it was, not half-overwritten
