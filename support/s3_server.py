"""A real S3 server on 127.0.0.1 (moto's), and a proxy that puts it far away or makes it
flaky: for the tests and ``make bench``, never for the notebooks.

    with moto_s3() as variables, mock.patch.dict(os.environ, variables):
        ...  # s3:// URIs now reach moto, with test credentials
        with Proxy(port, delay_s=0.030) as proxy, mock.patch.dict(os.environ, AWS_ENDPOINT_URL=proxy.url):
            ...  # each request costs 30 ms more
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

from helpers.machinery.ray_start import free_port


@contextlib.contextmanager
def moto_s3():
    """moto's S3 server on a free port of 127.0.0.1 for the duration; yields the AWS
    variables that point at it (endpoint, test credentials, region)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.stop()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        first = self.request.recv(65536)
        if self.server.drop and self.server.count(self.server.drop(first)):
            return  # the request arrived, and the connection goes without a reply
        if self.server.drop:  # one request per connection, so that every request is looked at
            first = re.sub(rb"(?im)^connection:[^\r\n]*\r\n", b"", first).replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
        with socket.create_connection(self.server.target) as upstream:
            replies = threading.Thread(target=_pump, args=(upstream, self.request, 0.0), daemon=True)
            replies.start()
            time.sleep(self.server.delay_s)
            upstream.sendall(first)
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

    def __init__(self, target: tuple[str, int], delay_s: float, drop: Callable[[bytes], bool] | None):
        self.target, self.delay_s, self.drop = target, delay_s, drop
        self.dropped, self._lock = 0, threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def count(self, dropping: bool) -> bool:
        with self._lock:
            self.dropped += dropping
        return dropping


class Proxy:
    """A TCP proxy on a free port of 127.0.0.1 to the S3 endpoint ``endpoint_url`` while the
    ``with`` block runs: each chunk a client sends waits ``delay_s`` before it goes on (an S3
    GET is one chunk, so each request costs about one delay more, as from a laptop to a
    bucket in another region: 20 to 80 ms). With ``drop``, a request for which ``drop(request
    bytes)`` is true loses its connection without a reply, as on a flaky network."""

    def __init__(self, endpoint_url: str, delay_s: float = 0.0, drop: Callable[[bytes], bool] | None = None):
        target = urlparse(endpoint_url)
        self.server = _Server((target.hostname, target.port), delay_s, drop)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def delay_s(self) -> float:
        """The delay of each chunk; set it to change it for the connections that follow."""
        return self.server.delay_s

    @delay_s.setter
    def delay_s(self, seconds: float) -> None:
        self.server.delay_s = seconds

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
