"""What ``make run`` and ``make submit`` run: the four notebooks in order with papermill, here,
or as a Ray job on a running cluster (``helpers.machinery.submit``).

    python -m helpers.machinery.series --output-dir outputs -p limit=50 -p model_name=resnet152
    python -m helpers.machinery.series --submit http://HOST:8265 --output-dir s3://bucket/outputs

Unless ``RAY_ADDRESS`` names a cluster already, one local Ray head is started for the whole
series (on 127.0.0.1, token authentication on) and each notebook joins it, so the series pays
Ray's start-up once; it is stopped at the end. (The notebooks never import this module.)
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from helpers import PROJECT_ROOT
from helpers.machinery import preflight  # standard library only, as every import above

NOTEBOOKS = tuple(sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
IMAGES = PROJECT_ROOT / "notebooks" / "images"  # what the notebooks' prose shows, beside their executed copies
SOLUTIONS = tuple(sorted((PROJECT_ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_solutions.ipynb")))
CELL_TIMEOUT_S = 1800


def execute_series(output_dir: str | Path, parameters: dict | None = None, notebooks: tuple[Path, ...] = NOTEBOOKS,
                   progress: bool = True) -> dict[str, float]:
    """Run ``notebooks`` in order into ``<output_dir>/notebooks``; return seconds per step.

    The notebooks write their outputs into ``output_dir`` too, unless ``parameters`` name
    another ``output_dir`` (an ``s3://`` URI, say); executed notebooks and logs stay here.
    """
    import papermill
    from traitlets.config import Config

    from helpers.machinery import ray_start

    output_dir = Path(output_dir).resolve()
    (output_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    (output_dir / "logs").mkdir(exist_ok=True)
    if IMAGES.is_dir():
        shutil.copytree(IMAGES, output_dir / "notebooks" / IMAGES.name, dirs_exist_ok=True)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not os.environ.get("RAY_ADDRESS"):
            variables = stack.enter_context(ray_start.head(output_dir / "logs" / "ray-head.log"))
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
                executed = output_dir / "notebooks" / notebook.name
                print(f"{notebook.stem}: {seconds[notebook.stem]:.1f} s", *reports(executed), sep="\n", flush=True)
    return seconds


def reports(executed: Path) -> list[str]:
    """What the cells tagged ``report`` of an executed notebook printed (notebook 03: where the
    time went), for the logs of ``make run`` and of a job."""
    import nbformat
    texts = []
    for cell in nbformat.read(executed, as_version=4).cells:
        if "report" in cell.metadata.get("tags", []):
            texts += [output["text"].rstrip() for output in cell.get("outputs", []) if output.get("name") == "stdout"]
    return texts


def parse_parameter(text: str) -> tuple[str, object]:
    """``name=value``, the value read as a Python literal where it is one (None, 50, ...)."""
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def run_here(output_dir: str, parameters: dict) -> dict[str, float]:
    """The series on this machine (or the cluster ``RAY_ADDRESS`` names). Into a bucket, the
    notebooks write there, and their executed copies follow, failed or not."""
    if "://" not in output_dir:
        return execute_series(output_dir, parameters)
    from helpers.storage import Location

    with tempfile.TemporaryDirectory(prefix="series-") as local:
        try:
            return execute_series(local, {"output_dir": output_dir, **parameters})
        finally:
            target = Location.parse(output_dir)
            for file in sorted(path for path in Path(local).rglob("*") if path.is_file()):
                (target / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())


def main(argv: list[str] | None = None) -> int:
    preflight.check()  # before anything heavy: a job's node whose `python` lacks the pins says so
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(PROJECT_ROOT / "outputs"))
    parser.add_argument("--submit", metavar="DASHBOARD_URL",
                        help="run the series as a Ray job on the cluster whose dashboard is at this address")
    parser.add_argument("-p", "--parameter", action="append", default=[], type=parse_parameter,
                        metavar="NAME=VALUE", help="a notebook parameter; repeat for more")
    args = parser.parse_args(argv)
    if args.submit:
        from helpers.machinery import submit
        return submit.submit(args.submit, args.output_dir, dict(args.parameter))
    started = time.perf_counter()
    seconds = run_here(args.output_dir, dict(args.parameter))
    steps = ", ".join(f"{step} {value} s" for step, value in seconds.items())
    print(f"series: {time.perf_counter() - started:.1f} s ({steps}); outputs in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
