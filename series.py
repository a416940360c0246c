"""What ``make run``, ``make submit`` and ``make data`` run (the notebooks never import it; the
tests do): the four notebooks in order with papermill, here or as a Ray job on a running
cluster, and Imagenette for offline workshops.

    python -m series --output-dir outputs -p limit=50 -p model_name=resnet152
    python -m series --submit http://HOST:8265 --output-dir s3://bucket/outputs -p data_uri=s3://...

Unless ``RAY_ADDRESS`` names a cluster already, one local Ray head is started for the whole
series (on 127.0.0.1, token authentication on) and each notebook joins it, so the series
pays Ray's start-up once; it is stopped at the end.
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

from helpers import LOOPBACK_ONLY_VARIABLE, PROJECT_ROOT
from helpers.cluster import auth_token_path, ensure_auth_token, free_port
from helpers.storage import Location

NOTEBOOKS = tuple(sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
SOLUTIONS = tuple(sorted((PROJECT_ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_solutions.ipynb")))
CELL_TIMEOUT_S = 1800
RAY_START_TIMEOUT_S = 120
# What a job's working_dir leaves behind: the environment, outputs and data stay here.
NOT_SHIPPED = [".venv", "outputs", "data", ".git", "**/.ipynb_checkpoints", "**/__pycache__"]


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
                print(f"{notebook.stem}: {seconds[notebook.stem]:.1f} s", *reports(output_dir / "notebooks" / notebook.name),
                      sep="\n", flush=True)
    return seconds


def reports(executed: Path) -> list[str]:
    """What the cells tagged ``report`` of an executed notebook printed (notebook 03: where the
    time went), for the logs of ``make run`` and of a job."""
    import nbformat
    return [output["text"].rstrip() for cell in nbformat.read(executed, as_version=4).cells
            if "report" in cell.metadata.get("tags", []) for output in cell.get("outputs", [])
            if output.get("name") == "stdout"]


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


def job_entrypoint(output_dir: str, parameters: dict) -> str:
    """The command a Ray job runs for the series (``make submit``, ``deploy/rayjob.yaml``);
    a text value is passed as it is where ``-p`` reads it back as the same text."""
    return shlex.join(["python", "-m", "series", "--output-dir", output_dir, *(
        f"--parameter={name}={value if _parameter(f'{name}={value}')[1] == value else repr(value)}"
        for name, value in parameters.items())])


def submit(address: str, output_dir: str, parameters: dict) -> int:
    """Run the series as a Ray job on the cluster whose dashboard is at ``address``
    (``http://HOST:8265``), with this project as its working_dir and token authentication;
    stream its logs; return 0 once it succeeded, else 1 after its own error."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if urlparse(address).scheme not in ("http", "https"):
        raise SystemExit(f"RAY_ADDRESS={address!r}: make submit sends the job to the dashboard's address, "
                         "http://HOST:8265 (Ray's Jobs API), not to the cluster's GCS port.")
    if "://" not in output_dir and not Path(output_dir).is_absolute():
        if urlparse(address).hostname not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"OUTPUT_DIR={output_dir!r} is relative: on a remote cluster it would land in the job's "
                             "temporary working directory. Use an s3:// URI, or a folder every node shares.")
        output_dir = str(Path(output_dir).resolve())  # a cluster on this machine shares its folders
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # the client then sends the token in every request
    if not os.environ.get("RAY_AUTH_TOKEN") and not (token := auth_token_path()).is_file():
        raise SystemExit(f"make submit needs the cluster's token: set RAY_AUTH_TOKEN, or put it in {token} "
                         "(`ray get-auth-token` prints it on the head node).")
    entrypoint = job_entrypoint(output_dir, parameters)
    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=entrypoint,
                               runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": NOT_SHIPPED})
    print(f"Job {job_id} on {address}: {entrypoint}\nIts logs follow (Ctrl-C leaves it running).", flush=True)

    async def stream_logs() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(stream_logs())
    except KeyboardInterrupt:
        print(f"\nJob {job_id} goes on: `ray job stop --address {address} {job_id}` stops it.", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    if info.status != JobStatus.SUCCEEDED:
        print(f"Job {job_id} {info.status.value}: {info.message}", file=sys.stderr)
        return 1
    print(f"Job {job_id} succeeded; outputs in {output_dir}")
    return 0


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
    parser.add_argument("--submit", metavar="DASHBOARD_URL",
                        help="run the series as a Ray job on the cluster whose dashboard is at this address")
    parser.add_argument("-p", "--parameter", action="append", default=[], type=_parameter,
                        metavar="NAME=VALUE", help="a notebook parameter; repeat for more")
    args = parser.parse_args(argv)
    if args.submit:
        return submit(args.submit, args.output_dir, dict(args.parameter))
    started = time.perf_counter()
    if "://" not in args.output_dir:
        seconds = execute_series(args.output_dir, dict(args.parameter))
    else:  # a bucket: the notebooks write there, and their executed copies follow, failed or not
        with tempfile.TemporaryDirectory(prefix="series-") as local:
            try:
                seconds = execute_series(local, {"output_dir": args.output_dir, **dict(args.parameter)})
            finally:
                target = Location.parse(args.output_dir)
                for file in sorted(path for path in Path(local).rglob("*") if path.is_file()):
                    (target / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())
    print(f"series: {time.perf_counter() - started:.1f} s ({', '.join(f'{k} {v} s' for k, v in seconds.items())}); "
          f"outputs in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
