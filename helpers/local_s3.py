"""A real S3 server on 127.0.0.1 (moto's), and a proxy that puts it far away: for the tests
and ``make bench``, never for the notebooks.

    with moto_server(log_path) as variables, environment(**variables):
        ...  # s3:// URIs now reach moto, with test credentials
        with LatencyProxy("127.0.0.1", port, delay_s=0.030) as proxy:
            ...  # with AWS_ENDPOINT_URL=proxy.url each request costs 30 ms more
"""
from __future__ import annotations

import contextlib
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers.cluster import free_port


@contextlib.contextmanager
def moto_server(log_path: Path, timeout_s: float = 60):
    """moto's S3 server on a free port of 127.0.0.1 for the duration; yields the AWS
    variables that point at it (endpoint, test credentials, region)."""
    port = free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not _listens(port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"moto_server did not start: see {log_path}")
            time.sleep(0.2)
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        with socket.create_connection(self.server.target) as upstream:
            replies = threading.Thread(target=_pump, args=(upstream, self.request, 0.0), daemon=True)
            replies.start()
            _pump(self.request, upstream, self.server.delay_s)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)
            replies.join()


def _pump(source: socket.socket, sink: socket.socket, delay_s: float) -> None:
    """Copy ``source`` to ``sink`` until ``source`` closes, holding each chunk ``delay_s``."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            if delay_s:
                time.sleep(delay_s)
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: tuple[str, int], delay_s: float):
        self.target, self.delay_s = target, delay_s
        super().__init__(("127.0.0.1", 0), _Handler)


class LatencyProxy:
    """A TCP proxy on a free port of 127.0.0.1 to ``host:port`` while the ``with`` block runs.

    Each chunk a client sends waits ``delay_s`` before it goes on to the server; an S3 GET is
    one chunk, so each request costs about one delay more, as from a laptop to a bucket in
    another region (20 to 80 ms). Replies pass at once.
    """

    def __init__(self, host: str, port: int, delay_s: float):
        self._server = _Server((host, port), delay_s)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
