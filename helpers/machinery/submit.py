"""``make submit``: the series as a Ray job on a running cluster, through Ray's Jobs API on its
dashboard, with this project as the job's working_dir and Ray's token on every request."""
from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path
from urllib.parse import urlparse

from helpers import PROJECT_ROOT
from helpers.machinery.auth_token import auth_token_path
from helpers.machinery.series import parse_parameter

SERIES_MODULE = "helpers.machinery.series"
# What a job's working_dir leaves behind: the environment, outputs and data stay here.
NOT_SHIPPED = [".venv", "outputs", "data", ".git", "**/.ipynb_checkpoints", "**/__pycache__"]


def job_entrypoint(output_dir: str, parameters: dict) -> str:
    """The command a Ray job runs for the series (``make submit``, ``deploy/rayjob.yaml``); a text
    value is passed as it is where ``-p`` reads it back as the same text, else as its repr."""
    words = ["python", "-m", SERIES_MODULE, "--output-dir", output_dir]
    for name, value in parameters.items():
        as_typed = parse_parameter(f"{name}={value}")[1] == value
        words.append(f"--parameter={name}={value if as_typed else repr(value)}")
    return shlex.join(words)


def submit(address: str, output_dir: str, parameters: dict) -> int:
    """Run the series as a Ray job on the cluster whose dashboard is at ``address``
    (``http://HOST:8265``); stream its logs; return 0 once it succeeded, else 1 after its own error."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported: the client then sends the token
    from ray.job_submission import JobStatus, JobSubmissionClient

    if urlparse(address).scheme not in ("http", "https"):
        raise SystemExit(f"RAY_ADDRESS={address!r}: make submit sends the job to the dashboard's address, "
                         "http://HOST:8265 (Ray's Jobs API), not to the cluster's GCS port.")
    if "://" not in output_dir and not Path(output_dir).is_absolute():
        if urlparse(address).hostname not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"OUTPUT_DIR={output_dir!r} is relative: on a remote cluster it would land in the job's "
                             "temporary working directory. Use an s3:// URI, or a folder every node shares.")
        output_dir = str(Path(output_dir).resolve())  # a cluster on this machine shares its folders
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
