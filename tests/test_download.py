"""helpers.download against a real HTTP server on 127.0.0.1 serving a tiny Imagenette archive."""
from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from helpers import download
from helpers.download import DownloadError, ensure_imagenette

ARCHIVE_PATH = "/imagenette2-160.tgz"
IMAGES = {  # the archive's images, relative to imagenette2-160/
    "train/n01440764/n01440764_1.JPEG": "red",
    "train/n01440764/n01440764_2.JPEG": "green",
    "train/n02102040/n02102040_1.JPEG": "blue",
    "val/n01440764/ILSVRC2012_val_1.JPEG": "yellow",
    "val/n02102040/ILSVRC2012_val_2.JPEG": "white",
}


def _jpeg(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, "JPEG")
    return buffer.getvalue()


def _archive(files: dict[str, bytes], *empty_members: tarfile.TarInfo) -> bytes:
    """A .tgz of ``files`` (member name -> bytes), then ``empty_members``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        for member in empty_members:
            tar.addfile(member)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def imagenette_tgz() -> bytes:
    return _archive({f"imagenette2-160/{name}": _jpeg(color) for name, color in IMAGES.items()})


class ArchiveServer(ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes); ``declared_lengths`` may claim more bytes than sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.declared_lengths: dict[str, int] = {}
        self.requests: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: ArchiveServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(self.server.declared_lengths.get(self.path, len(body))))
        self.end_headers()
        self.wfile.write(body)  # then the connection closes (HTTP/1.0)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(imagenette_tgz):
    server = ArchiveServer()
    server.files[ARCHIVE_PATH] = imagenette_tgz
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _nothing_left_at(dest: Path) -> bool:
    """Nothing at ``dest`` and no staging folders left beside it."""
    return not dest.exists() and not list(dest.parent.glob(f".{dest.name}.download-*"))


def test_downloads_and_unpacks_once(server, tmp_path):
    dest = tmp_path / "data" / "imagenette2-160"
    assert ensure_imagenette(dest=dest, base_url=server.base_url) == dest
    images = sorted(str(path.relative_to(dest)) for path in dest.rglob("*.JPEG"))
    assert images == sorted(IMAGES)
    with Image.open(dest / "val/n01440764/ILSVRC2012_val_1.JPEG") as image:
        assert image.size == (8, 8)
    marker = json.loads((dest / download.COMPLETE_MARKER).read_text())
    assert marker["sha256"] == hashlib.sha256(server.files[ARCHIVE_PATH]).hexdigest()
    assert marker["bytes"] == len(server.files[ARCHIVE_PATH])
    leftovers = [path.name for path in dest.parent.iterdir() if path != dest]
    assert leftovers == [".imagenette2-160.download.lock"]  # no archive or staging folder

    assert ensure_imagenette(dest=dest, base_url=server.base_url) == dest
    assert server.requests == [ARCHIVE_PATH]  # the second run did not download


def test_checks_sha256(server, tmp_path):
    dest = tmp_path / "imagenette2-160"
    with pytest.raises(DownloadError, match="expected 0000"):
        ensure_imagenette(dest=dest, base_url=server.base_url, sha256="0" * 64)
    assert _nothing_left_at(dest)
    digest = hashlib.sha256(server.files[ARCHIVE_PATH]).hexdigest()
    assert ensure_imagenette(dest=dest, base_url=server.base_url, sha256=digest.upper()) == dest


def test_base_url_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(download.BASE_URL_ENV, server.base_url + "/")
    assert download.archive_url("320") == f"{server.base_url}/imagenette2-320.tgz"
    ensure_imagenette(dest=tmp_path / "imagenette2-160")
    assert server.requests == [ARCHIVE_PATH]


@pytest.mark.parametrize("corrupt", ["truncated", "garbage"])
def test_corrupt_archive_is_refused(server, tmp_path, corrupt):
    archive = server.files[ARCHIVE_PATH]
    server.files[ARCHIVE_PATH] = archive[: len(archive) // 2] if corrupt == "truncated" else b"x" * 4096
    dest = tmp_path / "imagenette2-160"
    with pytest.raises(DownloadError, match="not a valid gzip tar archive"):
        ensure_imagenette(dest=dest, base_url=server.base_url)
    assert _nothing_left_at(dest)


def _link(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, target
    return member


@pytest.mark.parametrize(
    "member, message",
    [
        (tarfile.TarInfo("../evil"), r"'\.\./evil', outside imagenette2-160/"),
        (tarfile.TarInfo("/tmp/evil"), r"'/tmp/evil', outside imagenette2-160/"),
        (_link("imagenette2-160/evil", "/etc/passwd"), "absolute path"),
        (_link("imagenette2-160/evil", "../../evil"), "outside the destination"),
    ],
    ids=["dotdot", "absolute", "absolute-link", "escaping-link"],
)
def test_unsafe_members_are_refused(server, tmp_path, member, message):
    images = {f"imagenette2-160/{split}/n01440764/a.JPEG": _jpeg("red") for split in ("train", "val")}
    server.files[ARCHIVE_PATH] = _archive(images, member)
    dest = tmp_path / "data" / "imagenette2-160"
    with pytest.raises(DownloadError, match=f"{message}.*refusing to unpack it"):
        ensure_imagenette(dest=dest, base_url=server.base_url)
    assert _nothing_left_at(dest)
    assert not list(tmp_path.rglob("evil"))


def test_unreachable_host_fails_fast(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/imagenette2-160.tgz"
    dest = tmp_path / "imagenette2-160"
    started = time.monotonic()
    with pytest.raises(DownloadError) as error:
        ensure_imagenette(dest=dest, base_url=f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 5
    assert url in str(error.value) and "make data SIZE=160" in str(error.value)
    assert _nothing_left_at(dest)


def test_silent_server_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        base_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(DownloadError, match=f"{base_url}/imagenette2-160.tgz.*timed out"):
            ensure_imagenette(dest=tmp_path / "imagenette2-160", base_url=base_url)


def test_interrupted_download_leaves_nothing_and_a_rerun_succeeds(server, tmp_path):
    archive = server.files[ARCHIVE_PATH]
    server.files[ARCHIVE_PATH] = archive[: len(archive) // 2]
    server.declared_lengths[ARCHIVE_PATH] = len(archive)
    dest = tmp_path / "imagenette2-160"
    with pytest.raises(DownloadError, match=f"closed after {len(archive) // 2} of {len(archive)} bytes"):
        ensure_imagenette(dest=dest, base_url=server.base_url)
    assert _nothing_left_at(dest)

    server.files[ARCHIVE_PATH] = archive
    del server.declared_lengths[ARCHIVE_PATH]
    assert ensure_imagenette(dest=dest, base_url=server.base_url) == dest
    assert (dest / "val").is_dir() and (dest / download.COMPLETE_MARKER).exists()


def test_leftovers_of_a_killed_run_are_removed(server, tmp_path):
    dest = tmp_path / "imagenette2-160"
    leftover = tmp_path / ".imagenette2-160.download-abc123"
    (leftover / "unpacked" / "imagenette2-160" / "train").mkdir(parents=True)
    (leftover / "imagenette2-160.tgz").write_bytes(b"partial")
    assert ensure_imagenette(dest=dest, base_url=server.base_url) == dest
    assert not leftover.exists()


def test_a_foreign_folder_is_left_alone(server, tmp_path):
    dest = tmp_path / "imagenette2-160"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="not a completed download"):
        ensure_imagenette(dest=dest, base_url=server.base_url)
    assert (dest / "notes.txt").read_text() == "mine" and server.requests == []


def test_command_line_prints_the_data_uri(server, tmp_path, capsys):
    dest = tmp_path / "imagenette2-160"
    assert download.main(["--size", "160", "--dest", str(dest), "--base-url", server.base_url]) == 0
    assert f'data_uri = "{dest / "val"}"' in capsys.readouterr().out
    assert download.main(["--dest", str(tmp_path / "x"), "--base-url", server.base_url + "/missing"]) == 1
    assert "404" in capsys.readouterr().err
