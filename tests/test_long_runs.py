"""Long runs: notebook 03 killed half way (its kernel, SIGKILL), then stopped during the resume
(SIGINT to the kernel, as Jupyter's Stop button sends), then run to the end: nothing written is
lost, and every image is classified once.

The helpers that run notebook 03 in the background serve the lost-node test of test_cluster too.
They run it without its extra pipelines (support.notebook_03): the series' runs test those."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from support.folders import replicate
from support.notebook_03 import NOTEBOOK_03, without_extra_pipelines
from helpers import sample
from helpers.machinery import series

COPIES = 2  # of the sample (504 crops, 3 broken files): a folder of 1,014 files


def complete_files(output_dir: Path, run_id: str | None) -> dict[str, int]:
    """The complete Parquet files of the runs other than ``run_id`` (the complete one), with
    their rows."""
    files = {}
    for file in (output_dir / "predictions").glob("*/*.parquet"):
        if file.parent.name != run_id:
            try:
                files[str(file)] = pq.read_metadata(file).num_rows
            except (OSError, ValueError):  # being written
                pass
    return files


def start_notebook_03(output_dir: Path, parameters: dict, env: dict, log: Path) -> subprocess.Popen:
    """Notebook 03 (without its extra pipelines: a copy beside ``log``) run by papermill in the
    background (in a session of its own), into ``output_dir/running.ipynb``."""
    notebook = without_extra_pipelines(log.parent / "notebook-03")
    options = [arg for name, value in {"output_dir": str(output_dir), **parameters}.items()
               for arg in ("-p", name, str(value))]
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "papermill", str(notebook), str(output_dir / "running.ipynb"),
             "--cwd", str(notebook.parent), "-k", "python3", "--no-progress-bar", *options],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for_rows(rows: int, output_dir: Path, papermill: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    """Return once the runs in progress hold at least ``rows`` rows in complete files."""
    manifest = output_dir / "predictions.json"
    current = json.loads(manifest.read_text())["run_id"] if manifest.exists() else None
    deadline = time.monotonic() + timeout_s
    while sum(complete_files(output_dir, current).values()) < rows:
        assert papermill.poll() is None, f"notebook 03 ended before {rows} rows were written: see {log}"
        assert time.monotonic() < deadline, f"{rows} rows not written in {timeout_s} s: see {log}"
        time.sleep(0.2)


def kernel_of(papermill: subprocess.Popen) -> psutil.Process:
    kernels = [child for child in psutil.Process(papermill.pid).children(recursive=True)
               if "ipykernel" in " ".join(child.cmdline())]
    assert len(kernels) == 1, kernels
    return kernels[0]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_killed_then_stopped_then_run_to_the_end_loses_nothing(sample_dir, executed, series_ray, tmp_path):
    folder = replicate(sample_dir, tmp_path / "images", COPIES)
    total = len(list(folder.glob("*/*")))
    assert total >= 1000
    output_dir = tmp_path / "outputs"
    shutil.copytree(executed[0], output_dir, ignore=shutil.ignore_patterns("notebooks", "logs", "figures"))
    earlier = json.loads((output_dir / "predictions.json").read_text())
    parameters, env = {"data_uri": str(folder)}, {**os.environ, **series_ray}

    # 1. Killed half way: the kernel (the Ray driver) dies with SIGKILL.
    papermill = start_notebook_03(output_dir, parameters, env, tmp_path / "killed.log")
    try:
        wait_for_rows(total // 2, output_dir, papermill, tmp_path / "killed.log")
        kernel_of(papermill).send_signal(signal.SIGKILL)
    finally:
        os.killpg(papermill.pid, signal.SIGKILL)
        papermill.wait(timeout=30)
    killed = complete_files(output_dir, earlier["run_id"])
    assert json.loads((output_dir / "predictions.json").read_text()) == earlier  # still the last complete run
    assert len(pd.read_parquet([output_dir / file for file in earlier["files"]])) == earlier["num_rows"]

    # 2. The resume is stopped once it has written more, as Jupyter's Stop button does it.
    log = tmp_path / "stopped.log"
    papermill = start_notebook_03(output_dir, parameters, env, log)
    try:
        wait_for_rows(sum(killed.values()) + 64, output_dir, papermill, log)
        kernel_of(papermill).send_signal(signal.SIGINT)
        assert papermill.wait(timeout=300) != 0  # the write cell ends with KeyboardInterrupt
    finally:
        if papermill.poll() is None:
            os.killpg(papermill.pid, signal.SIGKILL)
    stopped = complete_files(output_dir, earlier["run_id"])
    assert set(killed) < set(stopped)  # the killed run's files, and the stopped run's own
    text = (output_dir / "running.ipynb").read_text()
    assert "Resuming run" in text and "KeyboardInterrupt" in text and "are kept" in text

    # 3. Run to the end: it resumes, and keeps every file written before the Stop.
    with mock.patch.dict(os.environ, series_ray):
        series.execute_series(output_dir, parameters, notebooks=(without_extra_pipelines(tmp_path / "notebook-03"),),
                              progress=False)
    manifest = json.loads((output_dir / "predictions.json").read_text())
    assert {str(output_dir / file) for file in manifest["files"]} >= set(stopped)
    assert manifest["resumed_rows"] == sum(stopped.values())
    assert manifest["num_rows"] == total and manifest["num_images"] == total - COPIES * len(sample.BROKEN_FILES)
    predictions = pd.read_parquet([output_dir / file for file in manifest["files"]])
    assert len(predictions) == predictions["path"].nunique() == total
    assert set(predictions["path"]) == {str(path) for path in folder.glob("*/*")}
    assert [path.name for path in (output_dir / "predictions").iterdir()] == [manifest["run_id"]]
    # Copies of an image have the same bytes: the three runs agree on them.
    predictions["image"] = predictions["path"].str.replace(r"/\d+_([^/]+)$", r"/\1", regex=True)
    assert (predictions.groupby("image")["top1_wnid"].nunique(dropna=False) == 1).all()  # None for a broken file
    notebook = (output_dir / "notebooks" / NOTEBOOK_03.name).read_text()
    assert f"Resuming run {manifest['run_id']}: {sum(stopped.values())} of {total} images" in notebook
