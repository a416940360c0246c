"""Starting Ray on this machine, on 127.0.0.1 only, or joining the cluster ``RAY_ADDRESS`` names:
``ray.init``'s options for a notebook, and ``ray start --head`` for a whole series."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

from helpers import PROJECT_ROOT
from helpers.machinery import ray_workarounds
from helpers.machinery.auth_token import ensure_auth_token

HELPERS_FOLDER = PROJECT_ROOT / "helpers"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# Ray keeps 127.0.0.1 as a node's address only with multi-node clusters off (see ray_workarounds).
SINGLE_MACHINE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
HEAD_START_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_loopback(address: str) -> bool:
    """Whether a Ray address (``HOST:PORT`` or ``http://HOST:PORT``) names this machine's loopback."""
    host = urlparse(address if "://" in address else f"ray://{address}").hostname
    return host in LOOPBACK_HOSTS


def init_options() -> dict:
    """Keyword arguments for ``ray.init``: join ``RAY_ADDRESS`` (``helpers`` reaches its workers
    through ``runtime_env``), or start Ray on 127.0.0.1 alone, with token authentication and the
    dashboard on 127.0.0.1. Either way Ray Data's routine log lines are quieted, and a run starts
    with its whole actor pool or says in 10 minutes that it cannot."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()  # set before any Dataset: each keeps a copy
    context.print_on_execution_start = False
    context.wait_for_min_actors_s = 600
    ray_workarounds.hide_harmless_lines()
    options = {"logging_level": logging.ERROR, "log_to_driver": True}
    address = os.environ.get("RAY_ADDRESS")
    if not address or is_loopback(address):
        ray_workarounds.keep_loopback_addresses()
    if address:
        return {"address": address, "runtime_env": {"py_modules": [str(HELPERS_FOLDER)]}, **options}
    ensure_auth_token()
    return {"address": "local", "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(), **options}


@contextlib.contextmanager
def head(log_path: Path, stop_timeout_s: float = 60) -> Iterator[dict[str, str]]:
    """Run ``ray start --head`` on 127.0.0.1 for the duration; yield the environment variables that
    make a kernel join it (its address, token authentication). Its processes listen on 127.0.0.1
    alone, and inherit the rest of this process's environment (``AWS_*`` for its workers, say).
    At the end the head gets ``stop_timeout_s`` to stop its processes, then they are killed, and
    Ray's note of its address goes with it."""
    variables = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    with mock.patch.dict(os.environ, variables), open(log_path, "ab") as log:
        earlier = log.tell()  # a rerun into the same outputs appends: read only what this start writes
        if variables["RAY_AUTH_MODE"] == "token":
            ensure_auth_token()  # `ray start` needs one, and a new user has none
        port = free_port()
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}", "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # The series stops its head once every notebook is done: nothing is left to drain, yet
            # Ray's detached Ray Data actors made it wait out its 30 s drain on SIGTERM every run.
            env={**os.environ, SINGLE_MACHINE_VARIABLE: "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        )
    try:
        wait_until_started(log_path, process, since=earlier)
        yield {**variables, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        process.terminate()  # `ray start --block` stops its processes on SIGTERM
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        ray_workarounds.forget_stopped_head(f"127.0.0.1:{port}")


def wait_until_started(log_path: Path, process: subprocess.Popen, timeout_s: float = HEAD_START_TIMEOUT_S,
                       since: int = 0) -> None:
    """Return once the ``ray start`` writing to ``log_path`` from byte ``since`` on reports that Ray runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(log_path, "rb") as log:
            log.seek(since)
            written = log.read()
        if process.poll() is not None:
            last_lines = "\n".join(written.decode(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"`ray start` exited with code {process.returncode}; "
                               f"the end of {log_path}:\n{last_lines}")
        if b"Ray runtime started" in written:
            return
        time.sleep(0.5)
    raise TimeoutError(f"`ray start` did not start Ray within {timeout_s} s: see {log_path}")
