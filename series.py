"""What ``make run`` and ``make data`` run (the notebooks never import it; the tests do):
the four notebooks in order with papermill, and Imagenette for offline workshops.

    python -m series --output-dir outputs -p limit=50 -p model_name=resnet152

Unless ``RAY_ADDRESS`` names a cluster already, one local Ray head is started for the whole
series (on 127.0.0.1, token authentication on) and each notebook joins it, so the series
pays Ray's start-up once; it is stopped at the end.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from helpers import LOOPBACK_ONLY_VARIABLE, PROJECT_ROOT
from helpers.cluster import ensure_auth_token, free_port

NOTEBOOKS = tuple(sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
SOLUTIONS = tuple(sorted((PROJECT_ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_solutions.ipynb")))
CELL_TIMEOUT_S = 1800
RAY_START_TIMEOUT_S = 120


@contextlib.contextmanager
def ray_head(log_path: Path, stop_timeout_s: float = 60):
    """Run ``ray start --head`` on 127.0.0.1 for the duration; yield the environment variables
    that make a kernel join it: its address, token authentication, and 127.0.0.1 kept as
    the node IP so that all of Ray's ports listen on it alone. The head inherits the rest of
    this process's environment (``AWS_*`` for its workers, say). At the end the head gets
    ``stop_timeout_s`` to stop its processes, then they are killed."""
    variables = {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"), LOOPBACK_ONLY_VARIABLE: "0"}
    with mock.patch.dict(os.environ, variables), open(log_path, "ab") as log:
        if variables["RAY_AUTH_MODE"] == "token":
            ensure_auth_token()  # `ray start` needs one, and a new user has none
        port = free_port()
        head = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}", "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until_started(log_path, head)
        yield {**variables, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        head.terminate()  # `ray start --block` stops its processes on SIGTERM
        try:
            head.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def wait_until_started(log_path: Path, process: subprocess.Popen) -> None:
    """Return once the `ray start` writing to ``log_path`` reports that Ray runs."""
    deadline = time.monotonic() + RAY_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            last_lines = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"`ray start` exited with code {process.returncode}; the end of {log_path}:\n{last_lines}")
        if b"Ray runtime started" in log_path.read_bytes():
            return
        time.sleep(0.5)
    raise TimeoutError(f"`ray start` did not start Ray within {RAY_START_TIMEOUT_S} s: see {log_path}")


def execute_series(output_dir: str | Path, parameters: dict | None = None, notebooks: tuple[Path, ...] = NOTEBOOKS,
                   progress: bool = True) -> dict[str, float]:
    """Run ``notebooks`` in order into ``<output_dir>/notebooks``; return seconds per step.

    The notebooks write their outputs into ``output_dir`` too, unless ``parameters`` name
    another ``output_dir`` (an ``s3://`` URI, say); executed notebooks and logs stay here.
    """
    import papermill
    from traitlets.config import Config

    output_dir = Path(output_dir).resolve()
    (output_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    (output_dir / "logs").mkdir(exist_ok=True)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not os.environ.get("RAY_ADDRESS"):
            variables = stack.enter_context(ray_head(output_dir / "logs" / "ray-head.log"))
            stack.enter_context(mock.patch.dict(os.environ, variables))
        seconds = {"ray_start": round(time.perf_counter() - started, 1)}
        # Kernels talk to papermill over Unix sockets, not TCP ports (whose kernels warn on stderr).
        sockets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kernels-")))
        kernels = Config(KernelManager={"transport": "ipc", "ip": str(sockets / "kernel")})
        for notebook in notebooks:
            started = time.perf_counter()
            papermill.execute_notebook(
                str(notebook), str(output_dir / "notebooks" / notebook.name),
                parameters={"output_dir": str(output_dir), **(parameters or {})}, kernel_name="python3",
                cwd=str(notebook.parent), progress_bar=progress, execution_timeout=CELL_TIMEOUT_S,
                config=kernels,
            )
            seconds[notebook.stem] = round(time.perf_counter() - started, 1)
            if progress:
                print(f"{notebook.stem}: {seconds[notebook.stem]:.1f} s", flush=True)
    return seconds


def fetch_imagenette(size: str = "160", root: str | Path = PROJECT_ROOT / "data") -> Path:
    """Imagenette (``size`` 160, 320 or full) downloaded and md5-checked by torchvision into
    ``root/imagenette2-<size>/{train,val}/<wnid>/``, unless that folder exists. (torchvision
    unpacks in place, so an interrupted unpack would pass for complete: here it unpacks in a
    staging folder, renamed into place whole; the archive goes with it.)"""
    from torchvision.datasets import Imagenette

    folder = Path(root) / ("imagenette2" if size == "full" else f"imagenette2-{size}")
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{folder.name}-", dir=folder.parent) as staging:
            Imagenette(staging, size=size if size == "full" else f"{size}px", download=True)
            os.replace(Path(staging) / folder.name, folder)
    return folder


def _parameter(text: str) -> tuple[str, object]:
    """``name=value``, the value read as a Python literal where it is one (None, 50, ...)."""
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(PROJECT_ROOT / "outputs"))
    parser.add_argument("-p", "--parameter", action="append", default=[], type=_parameter,
                        metavar="NAME=VALUE", help="a notebook parameter; repeat for more")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    seconds = execute_series(args.output_dir, dict(args.parameter))
    print(f"series: {time.perf_counter() - started:.1f} s ({', '.join(f'{k} {v} s' for k, v in seconds.items())}); "
          f"outputs in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
