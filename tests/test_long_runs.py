"""Long runs: notebook 03 killed midway (its kernel, with SIGKILL) resumes where it stopped.

The helpers that run notebook 03 in the background serve the lost-node test of test_cluster too."""
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from helpers import inference, sample, series, settings, storage
from helpers.cluster import environment

NOTEBOOK_03 = next(nb for nb in series.NOTEBOOKS if nb.name.startswith("03"))
COPIES = 2  # of the sample (504 crops, 3 broken files): a folder of 1,014 files


def rows_written(output_dir: Path, run_id: str | None) -> int:
    """Rows in the complete Parquet files of the runs other than ``run_id`` (the complete one)."""
    rows = 0
    for file in (output_dir / "predictions").glob("*/*.parquet"):
        if file.parent.name != run_id:
            try:
                rows += pq.read_metadata(file).num_rows
            except (OSError, ValueError):  # being written
                pass
    return rows


def start_notebook_03(output_dir: Path, parameters: dict, env: dict, log: Path) -> subprocess.Popen:
    """Notebook 03 run by papermill in the background (in a session of its own), into
    ``output_dir/running.ipynb``."""
    options = [arg for name, value in {"output_dir": str(output_dir), **parameters}.items()
               for arg in ("-p", name, str(value))]
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "papermill", str(NOTEBOOK_03), str(output_dir / "running.ipynb"),
             "--cwd", str(NOTEBOOK_03.parent), "-k", "python3", "--no-progress-bar", *options],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for_rows(rows: int, output_dir: Path, papermill: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    """Return once the run in progress has written at least ``rows`` rows."""
    manifest = output_dir / "predictions.json"
    complete = json.loads(manifest.read_text())["run_id"] if manifest.exists() else None
    deadline = time.monotonic() + timeout_s
    while rows_written(output_dir, complete) < rows:
        assert papermill.poll() is None, f"notebook 03 ended before {rows} rows were written: see {log}"
        assert time.monotonic() < deadline, f"{rows} rows not written in {timeout_s} s: see {log}"
        time.sleep(0.2)


def kill_notebook_03_after(rows: int, output_dir: Path, parameters: dict, env: dict, log: Path) -> None:
    """Run notebook 03 and SIGKILL its kernel (the Ray driver) once the run has written at
    least ``rows`` rows; papermill goes with it."""
    papermill = start_notebook_03(output_dir, parameters, env, log)
    try:
        wait_for_rows(rows, output_dir, papermill, log)
        kernels = [child for child in psutil.Process(papermill.pid).children(recursive=True)
                   if "ipykernel" in " ".join(child.cmdline())]
        assert kernels, "no kernel found under papermill"
        for kernel in kernels:
            kernel.send_signal(signal.SIGKILL)
    finally:
        os.killpg(papermill.pid, signal.SIGKILL)
        papermill.wait(timeout=30)


@pytest.mark.timeout(1200)
def test_a_killed_run_resumes_and_classifies_only_what_was_left(sample_dir, executed, series_ray, tmp_path):
    folder = sample.replicate(sample_dir, tmp_path / "images", COPIES)
    total = COPIES * len(list(sample_dir.glob("*/*")))
    assert total >= 1000
    output_dir = tmp_path / "outputs"
    shutil.copytree(executed[0], output_dir, ignore=shutil.ignore_patterns("notebooks", "logs", "figures"))
    earlier = storage.read_json(storage.Location.parse(output_dir / "predictions.json"))
    parameters = {"data_uri": str(folder)}

    env = {**os.environ, **series_ray}
    kill_notebook_03_after(total // 2, output_dir, parameters, env, tmp_path / "killed.log")

    # The last complete run is still what predictions.json names, and readable.
    assert json.loads((output_dir / "predictions.json").read_text()) == earlier
    assert len(pd.read_parquet([output_dir / file for file in earlier["files"]])) == earlier["num_rows"]

    with environment(**series_ray):
        series.execute_series(output_dir, parameters, notebooks=(NOTEBOOK_03,), progress=False)
    manifest = json.loads((output_dir / "predictions.json").read_text())
    assert total // 2 <= manifest["resumed_rows"] < total
    assert manifest["num_rows"] == total and manifest["num_images"] == total - COPIES * len(sample.BROKEN_FILES)
    predictions = pd.read_parquet([output_dir / file for file in manifest["files"]])
    assert len(predictions) == predictions["path"].nunique() == total
    assert set(predictions["path"]) == {str(path) for path in folder.glob("*/*")}
    assert [path.name for path in (output_dir / "predictions").iterdir()] == [manifest["run_id"]]

    # Copies of an image have the same bytes: the killed run and its resumption agree on them.
    predictions["image"] = predictions["path"].str.replace(r"/\d+_([^/]+)$", r"/\1", regex=True)
    assert (predictions.groupby("image")["top1_wnid"].nunique(dropna=False) == 1).all()  # None for a broken file

    notebook = (output_dir / "notebooks" / NOTEBOOK_03.name).read_text()
    assert f"Resuming the killed run {manifest['run_id']}: {manifest['resumed_rows']} images" in notebook
    left = total - manifest["resumed_rows"]
    assert f"{manifest['resumed_rows']} rows written by a killed run that this run resumed; {left}" in notebook


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_run_is_the_unfinished_run_with_the_same_settings(where, tmp_path, request, monkeypatch):
    if where == "s3":
        import boto3

        request.getfixturevalue("s3_endpoint")
        boto3.client("s3").create_bucket(Bucket="resume")
        output = "s3://resume/outputs"
    else:
        output = str(tmp_path / "outputs")
    cfg = settings.resolve("sample", settings.OFFLINE_MODEL, output, 10, 32, None)
    other = dataclasses.replace(cfg, limit=20)

    def run_folder(run_id: str, settings_of, *files: list[str]) -> storage.Location:
        folder = cfg.predictions_dir / run_id
        storage.write_json(folder / inference.RUN_RECORD, {"data_uri": settings_of.data_uri,
                                                          "model_name": settings_of.model_name,
                                                          "limit": settings_of.limit})
        for number, paths in enumerate(files):
            parquet = io.BytesIO()
            pd.DataFrame({"path": paths, "top1_wnid": "n01440764"}).to_parquet(parquet)
            (folder / f"part-{number}.parquet").write_bytes(parquet.getvalue())
        return folder

    assert inference.killed_run(cfg) is None
    complete = run_folder("20261126-100000-aaaaaa", cfg, ["a/1.jpg"])
    storage.write_json(cfg.predictions_manifest, {"run_id": complete.name})
    assert inference.killed_run(cfg) is None  # the complete run is no killed run

    killed = run_folder("20261126-110000-bbbbbb", cfg, ["a/1.jpg", "a/2.jpg"], ["b/3.jpg"])
    whole = (killed / "part-1.parquet").read_bytes()
    (killed / "part-2.parquet").write_bytes(whole[: len(whole) // 2])  # cut off mid-write
    run_folder("20261126-120000-cccccc", other, ["a/9.jpg"])

    found = inference.killed_run(cfg)
    assert found.location.name == killed.name and found.classified == {"a/1.jpg", "a/2.jpg", "b/3.jpg"}
    assert sorted(child.name for child in killed.children()) == ["part-0.parquet", "part-1.parquet", "run.json"]
    assert inference.killed_run(other).classified == {"a/9.jpg"}

    # A dataset read when the killed run had classified fewer images would repeat some.
    monkeypatch.setitem(inference._left_out_by_read, str(cfg.predictions_dir), frozenset({"a/1.jpg"}))
    with pytest.raises(RuntimeError, match="had classified 1 of its images; now 3 are"):
        with inference.new_run(cfg, listing=None, plan=None):
            pass
    assert sorted(child.name for child in killed.children()) == ["part-0.parquet", "part-1.parquet", "run.json"]
