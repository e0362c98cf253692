import gzip
import http.server
import os
import threading
from functools import partial

import pytest
from helpers import SAMPLE

from proteinperf.data import DataError
from proteinperf.data.download import download


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files with Range support; the first request for /flaky.gz stops half way."""

    cut_once = {"done": False}

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        data = open(path, "rb").read()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.endswith("flaky.gz") and not self.cut_once["done"]:
            self.cut_once["done"] = True
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path, monkeypatch):
    for name in list(os.environ):  # urllib would send 127.0.0.1 to a CI machine's proxy
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(_Handler, "cut_once", {"done": False})  # each test's server cuts once
    root = tmp_path / "www"
    root.mkdir()
    payload = gzip.compress(SAMPLE.read_bytes())
    for name in ("good.gz", "flaky.gz"):
        (root / name).write_bytes(payload)
    (root / "corrupt.gz").write_bytes(payload[:-20] + bytes(20))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", payload
    httpd.shutdown()
    httpd.server_close()


def test_download_and_resume(server, tmp_path):
    url, payload = server
    out = download(f"{url}/good.gz", tmp_path / "d" / "good.gz", progress=False)
    assert out.read_bytes() == payload
    dest = tmp_path / "d" / "flaky.gz"
    with pytest.raises(DataError, match="run again"):
        download(f"{url}/flaky.gz", dest, progress=False)
    part = dest.with_name("flaky.gz.part")
    assert not dest.exists() and 0 < part.stat().st_size < len(payload)
    assert download(f"{url}/flaky.gz", dest, progress=False).read_bytes() == payload
    assert not part.exists()


def test_corrupt_download_rejected(server, tmp_path):
    url, _ = server
    with pytest.raises(DataError, match="corrupt gzip"):
        download(f"{url}/corrupt.gz", tmp_path / "c.gz", progress=False)
    assert not (tmp_path / "c.gz").exists()
