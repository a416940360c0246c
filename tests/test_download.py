"""`make data` (imagenette.fetch_imagenette, torchvision's Imagenette) against a tiny archive on 127.0.0.1."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from torchvision.datasets import Imagenette

from helpers.machinery import imagenette

IMAGES = ["train/n01440764/a.JPEG", "train/n02102040/b.JPEG", "val/n01440764/c.JPEG", "val/n02102040/d.JPEG"]


def _tgz() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in IMAGES:
            body = os.urandom(4000)  # incompressible, so that a cut archive ends among the images
            member = tarfile.TarInfo(f"imagenette2-160/{name}")
            member.size = len(body)
            tar.addfile(member, io.BytesIO(body))
    return buffer.getvalue()


GOOD = _tgz()
CUT = GOOD[: len(GOOD) * 3 // 4]


@pytest.fixture
def server(monkeypatch):
    """fast.ai's bucket on 127.0.0.1, counting requests: ``server.serve(body, md5_of)`` sets the
    160 px archive and the md5 that torchvision expects (``md5_of``'s, by default ``body``'s)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            server.requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(server.body)))
            self.end_headers()
            self.wfile.write(server.body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/imagenette2-160.tgz"

    def serve(body: bytes, md5_of: bytes | None = None) -> None:
        server.body = body
        monkeypatch.setitem(Imagenette._ARCHIVES, "160px", (url, hashlib.md5(md5_of or body).hexdigest()))

    server.requests, server.serve = [], serve
    serve(GOOD)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_downloads_the_layout_the_notebooks_read_once(server, tmp_path):
    assert imagenette.fetch_imagenette("160", tmp_path) == tmp_path / "imagenette2-160"
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.JPEG")) == [
        f"imagenette2-160/{name}" for name in IMAGES]
    assert [path.name for path in tmp_path.iterdir()] == ["imagenette2-160"]  # no archive left
    requests = len(server.requests)
    assert requests > 0
    imagenette.fetch_imagenette("160", tmp_path)
    assert len(server.requests) == requests  # the second run downloaded nothing


@pytest.mark.parametrize("md5_of, error, message", [
    (GOOD, RuntimeError, "corrupted"),  # the wrong checksum: refused before unpacking
    (None, EOFError, "ended before"),  # the right one: torchvision unpacks and stops midway
], ids=["wrong-checksum", "unpack-stops-midway"])
def test_a_failed_run_leaves_nothing_a_rerun_takes_for_complete(server, tmp_path, md5_of, error, message):
    server.serve(CUT, md5_of)
    with pytest.raises(error, match=message):
        imagenette.fetch_imagenette("160", tmp_path)
    assert list(tmp_path.iterdir()) == []
    server.serve(GOOD)
    assert len(list(imagenette.fetch_imagenette("160", tmp_path).rglob("*.JPEG"))) == len(IMAGES)
