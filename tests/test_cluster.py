"""Notebook 03 on existing Ray clusters of several node sizes on 127.0.0.1 (RAY_ADDRESS set),
a node joining one mid-run and nodes lost, and the series sent to one as a Ray job (`make submit`,
Ray's Jobs API on the dashboard). Every node of every cluster is on 127.0.0.1, and no process
of theirs, nor any driver, uses an address off loopback (support.loopback_cluster), but for the
question Ray's dashboard asks the cloud metadata address as it starts. (The plan's
other shapes are pinned in test_inference.)"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from unittest import mock

import nbformat
import pandas as pd
import pyarrow.parquet as pq
import pytest

from helpers import PROJECT_ROOT, data, sample
from helpers.machinery import auth_token, ray_start
from helpers.machinery import series
from support.folders import replicate
from support.loopback_cluster import LoopbackClusters, LoopbackSockets
from support.notebook_03 import NOTEBOOK_03, without_extra_pipelines
from test_long_runs import complete_files, start_notebook_03, wait_for_rows

pytestmark = pytest.mark.slow

# The CPUs of the head, then of each worker; and the actors the plan gives them (one per CPU).
CLUSTERS = {
    "cpus-1-1": ((1, 1), 2),  # actors of 0.5 CPU, one per node, leave tasks half a CPU
    "cpus-0-2": ((0, 2), 2),  # all work goes to the worker
}
HEAD_AND_WORKER = "cpus-0-2"  # as on Kubernetes, where the head takes no work; with the dashboard (Jobs API)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """The module's clusters, and a look every 2 s at the sockets of every process the tests
    start meanwhile (the clusters' processes, their workers, every driver): at the end, none
    may have used an address off loopback. The drivers that join run with
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` unset, as a user's may (``init_options`` keeps a
    loopback address loopback); the nodes' ``python`` is this environment's, as a cluster's is
    the one with the requirements."""
    environment = {name: value for name, value in os.environ.items() if name != ray_start.SINGLE_MACHINE_VARIABLE}
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # a job's `python`
    health_checks = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}  # a lost node
    # is marked dead in about 3 s rather than 15 to 30 (what the lost-node tests mostly waited for)
    with mock.patch.dict(os.environ, {**environment, **health_checks, "RAY_AUTH_MODE": "token", "PATH": path},
                         clear=True):
        auth_token.ensure_auth_token()  # the nodes need one; the tests' fresh home has none yet
        running = LoopbackClusters(tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("unrelated"))
        with LoopbackSockets(interval_s=2) as sockets:
            try:
                yield running
            finally:
                running.stop()
        print(f"\nSockets of the processes the cluster tests started: {sockets.summary}")
        assert sockets.samples > 10 and sockets.seen > 0 and not sockets.offenders, \
            f"sockets off loopback ({sockets.summary}):\n{sockets.report()}"


@pytest.fixture(scope="module", params=list(CLUSTERS))
def ray_cluster(request, clusters) -> LoopbackClusters:
    """A cluster of the shape that ``CLUSTERS`` names, joined through ``RAY_ADDRESS``."""
    clusters.shaped(CLUSTERS[request.param][0], dashboard=request.param == HEAD_AND_WORKER)
    return clusters


def assert_planned_for(shape: str, notebook: Path, manifest: dict) -> None:
    """Notebook 03 saw the cluster of ``shape`` and planned its actors for it, without error."""
    sizes, actors = CLUSTERS[shape]
    text = notebook.read_text()
    nodes = ", ".join(str(cpus) for cpus in sorted(sizes))
    assert f"{len(sizes)} node(s) ({nodes} CPUs)" in text and '"output_type": "error"' not in text
    assert manifest["num_actors"] == actors


PROBE = """
import json, os, ray
from helpers.machinery import cluster_shape, ray_start

ray.init(**ray_start.init_options())
info = cluster_shape.describe()

@ray.remote(num_cpus=0, resources={"second_node": 1})
def where():
    import helpers
    return helpers.__file__, os.getcwd(), ray.get_runtime_context().get_node_id()

module_file, cwd, node_id = ray.get(where.remote())
live = [n for n in ray.nodes() if n["Alive"]]
second = [n["NodeID"] for n in live if "second_node" in n["Resources"]]
print(json.dumps({"nodes": len(info.node_sizes), "cpus": info.cpus, "module_file": module_file,
                  "cwd": cwd, "on_second_node": [node_id] == second,
                  "addresses": [n["NodeManagerAddress"] for n in live]}))
"""


@pytest.mark.parametrize("ray_cluster", [HEAD_AND_WORKER], indirect=True)
@pytest.mark.timeout(600)
def test_helpers_reach_the_second_node_through_runtime_env(ray_cluster):
    """A driver outside the project (as on a real cluster, where no node has the checkout),
    which sees every node on 127.0.0.1."""
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ray_cluster.elsewhere, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["nodes"] == 2 and found["cpus"] == 2 and found["on_second_node"]
    assert found["addresses"] == ["127.0.0.1", "127.0.0.1"]  # as ray.nodes() reports them
    assert "runtime_resources" in found["module_file"]  # the package Ray shipped, not the checkout
    assert Path(found["cwd"]).resolve() != PROJECT_ROOT


def _make_submit(ray_cluster: LoopbackClusters, output_dir: Path, *parameters: str,
                 timeout_s: float) -> subprocess.CompletedProcess:
    """`make submit` to the cluster's dashboard, as a user types it (the token from ~/.ray)."""
    params = " ".join(f"-p {parameter}" for parameter in parameters)
    return subprocess.run(["make", "-s", "submit", f"RAY_ADDRESS={ray_cluster.dashboard}",
                           f"OUTPUT_DIR={output_dir}", f"PARAMS={params}"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout_s,
                          env={name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"})


@pytest.mark.parametrize("ray_cluster", [HEAD_AND_WORKER], indirect=True)
@pytest.mark.timeout(1200)
def test_make_submit_runs_the_series_as_a_ray_job(ray_cluster, tmp_path):
    """The series as a job on a head of 0 CPUs and a worker of 2: every image once, and the
    accuracy the real photographs get (metrics.json, hand-chosen sets)."""
    result = _make_submit(ray_cluster, tmp_path, "limit=100", "batch_size=8", timeout_s=1100)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "Job raysubmit_" in result.stdout and "succeeded" in result.stdout
    assert "03_distributed_inference" in result.stdout  # the job's own log, streamed
    actors = CLUSTERS[HEAD_AND_WORKER][1]
    assert f"of its {actors} actors busy at once on average" in result.stdout  # with where the time went
    manifest = json.loads((tmp_path / "predictions.json").read_text())
    predictions = pd.read_parquet([tmp_path / file for file in manifest["files"]])
    assert manifest["num_rows"] == len(predictions) == predictions["path"].nunique() == 100
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 0.80 measured on these 100 (0.84 on all 504): EfficientNet-Lite0 on the sample's photographs
    assert metrics["num_images"] == 100 and metrics["top1"] >= 0.75 and metrics["top5"] >= 0.95, metrics
    for notebook in series.NOTEBOOKS:
        assert '"output_type": "error"' not in (tmp_path / "notebooks" / notebook.name).read_text()
    assert_planned_for(HEAD_AND_WORKER, tmp_path / "notebooks" / NOTEBOOK_03.name, manifest)


@pytest.mark.parametrize("ray_cluster", [HEAD_AND_WORKER], indirect=True)
@pytest.mark.timeout(300)
def test_a_job_with_a_missing_data_uri_fails_at_once_naming_it(ray_cluster, tmp_path):
    def actors() -> dict[str, str]:
        listed = ray_cluster.dashboard_get("/api/v0/actors?limit=10000")["data"]["result"]["result"]
        return {actor["actor_id"]: actor["class_name"] for actor in listed}

    before, started = actors(), time.monotonic()
    result = _make_submit(ray_cluster, tmp_path, "data_uri='/no/such/folder'", timeout_s=200)
    assert result.returncode != 0 and time.monotonic() - started < 60, result.stderr[-3000:]
    assert "FAILED" in result.stderr and "data_uri='/no/such/folder': no such folder" in result.stderr[-3000:]
    started_since = [name for actor_id, name in actors().items() if actor_id not in before]
    assert not [name for name in started_since if "MapWorker" in name], started_since  # no Ray Data actor


@pytest.mark.parametrize("ray_cluster", [HEAD_AND_WORKER], indirect=True)
def test_the_jobs_api_refuses_a_request_without_the_token(ray_cluster):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ray_cluster.dashboard}/api/jobs/", timeout=30)
    assert refused.value.code in (401, 403)
    assert isinstance(ray_cluster.dashboard_get("/api/jobs/"), list)  # with it: the jobs


def test_make_submit_refuses_a_relative_output_dir_for_a_remote_cluster():
    result = subprocess.run(["make", "-s", "submit", "RAY_ADDRESS=http://ray-head.example:8265", "OUTPUT_DIR=outputs"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "OUTPUT_DIR='outputs' is relative" in result.stderr
    result = subprocess.run(["make", "-s", "submit", "RAY_ADDRESS=127.0.0.1:6379"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "http://HOST:8265" in result.stderr


def _every_image_once(output_dir: Path, sample_dir: Path, limit: int | None = None) -> dict:
    """The run named by ``predictions.json`` holds one row for each of the first ``limit``
    sample files (all of them by default; a limit leaves the broken files out)."""
    manifest = json.loads((output_dir / "predictions.json").read_text())
    listing = data.list_files(str(sample_dir))
    selected = data.select_images(listing.images, listing.root, limit)
    broken = [path for path in selected if sample.acceptable_labels(path) is None]
    predictions = pd.read_parquet([output_dir / file for file in manifest["files"]])
    assert manifest["num_rows"] == len(predictions) == predictions["path"].nunique() == len(selected)
    assert sorted(predictions["path"]) == selected
    assert manifest["num_images"] == len(selected) - len(broken)  # the broken files are rows with an error
    assert len(broken) == (len(sample.BROKEN_FILES) if limit is None else 0)
    return manifest


@pytest.mark.parametrize("ray_cluster", ["cpus-1-1"], indirect=True)
@pytest.mark.timeout(1200)
def test_losing_a_node_that_the_plan_needs_stops_the_run_and_a_rerun_completes_it(ray_cluster, sample_dir,
                                                                                  tmp_path):
    """Two 1-CPU nodes lose the worker mid-run: Ray would restart its actor beside the other on
    the head, leaving no CPU for the read and write tasks (a run that waits for ever). The run
    stops within seconds of the loss, naming the node; run again, it resumes on the head."""
    log = tmp_path / "papermill.log"
    try:
        papermill = start_notebook_03(tmp_path, {}, os.environ.copy(), log)
        try:
            wait_for_rows(64, tmp_path, papermill, log)
            assert not (tmp_path / "predictions.json").exists(), "the run completed before the node was killed"
            lost_at = ray_cluster.kill_node(1)
            papermill.wait(timeout=600)
            ended_after = time.monotonic() - lost_at
        finally:
            if papermill.poll() is None:
                os.killpg(papermill.pid, signal.SIGKILL)
        assert papermill.returncode != 0 and ended_after < 600
        failed = nbformat.read(tmp_path / "running.ipynb", as_version=4)
        errors = [output for cell in failed.cells for output in cell.get("outputs", []) if output.output_type == "error"]
        assert [error.ename for error in errors] == ["RunError"], errors
        assert errors[0].evalue.startswith(f"Lost node {ray_cluster.nodes[1]['node_id'][:12]} (127.0.0.1, 1 CPUs) at ")
        assert "are kept" in errors[0].evalue and "it resumes" in errors[0].evalue

        notebook = without_extra_pipelines(tmp_path / "notebook-03")
        series.execute_series(tmp_path, {}, notebooks=(notebook,), progress=False)  # on the head alone
        manifest = _every_image_once(tmp_path, sample_dir)
        assert manifest["resumed_rows"] >= 64 and manifest["num_actors"] == 1
    finally:
        ray_cluster.stop()  # one node is gone: the next test starts a whole cluster


def _rows_by_node(output_dir: Path, node_processes: set[int]) -> int:
    """Rows in complete files classified by an actor among ``node_processes`` (on 127.0.0.1 every
    node has the same host name: an actor's node is the node whose process tree holds its pid)."""
    rows = 0
    for file in complete_files(output_dir, None):
        actors = pq.read_table(file, columns=["actor"])["actor"].to_pylist()
        rows += sum(int(actor.rsplit(":", 1)[1]) in node_processes for actor in actors)
    return rows


@pytest.mark.parametrize("ray_cluster", ["cpus-1-1"], indirect=True)
@pytest.mark.timeout(900)
def test_a_node_that_joins_mid_run_classifies_rows_and_one_the_plan_can_spare_costs_no_images(
        ray_cluster, sample_dir, tmp_path):
    """Notebook 03 plans 2 actors for 1 + 1 CPUs (the pool may grow to 4), on the sample three
    times over. Mid-run, its actors paused (Ray Data grows a pool only while its actors are
    busy, and at batch 8 here they often wait for input) and the CPUs they leave held (else a
    new actor may start there, as a task of the run there ends), a 2-CPU node joins: the pool
    grows onto it, and its actors classify rows.
    Then the first 1-CPU worker is lost: the nodes left (1 + 2 CPUs) still fit the plan, Ray
    restarts its actors and retries its tasks, and the run ends with every image once."""
    ray_cluster.shaped(CLUSTERS["cpus-1-1"][0])  # the test before stopped the cluster it broke
    folder = replicate(sample_dir, tmp_path / "images", 3)
    output_dir, log = tmp_path / "outputs", tmp_path / "papermill.log"
    output_dir.mkdir()
    papermill = start_notebook_03(output_dir, {"data_uri": str(folder)}, os.environ.copy(), log)
    try:
        wait_for_rows(64, output_dir, papermill, log)
        with ray_cluster.holding_free_cpus(0.5, 0, 1), ray_cluster.pausing_actors(0, 1), \
                ray_cluster.yielding_cpu(papermill):
            ray_cluster.shaped((*CLUSTERS["cpus-1-1"][0], 2))
            deadline = time.monotonic() + 300
            while not _rows_by_node(output_dir, ray_cluster.node_processes(2)):
                assert papermill.poll() is None, f"the run ended before an actor on the new node wrote a row: {log}"
                assert time.monotonic() < deadline, "no row from an actor on the new node within 300 s"
                time.sleep(0.5)
        assert not (output_dir / "predictions.json").exists()
        ray_cluster.kill_node(1)
        papermill.wait(timeout=600)
    finally:
        if papermill.poll() is None:
            os.killpg(papermill.pid, signal.SIGKILL)
        ray_cluster.stop()
    assert papermill.returncode == 0, log.read_text()[-3000:]
    manifest = json.loads((output_dir / "predictions.json").read_text())
    predictions = pd.read_parquet([output_dir / file for file in manifest["files"]])
    files = {str(path) for path in folder.glob("*/*")}
    assert len(predictions) == predictions["path"].nunique() == len(files) and set(predictions["path"]) == files
    assert manifest["num_actors"] == predictions["actor"].nunique() > 2  # the pool outgrew the plan
    notebook = (output_dir / "running.ipynb").read_text()
    assert "2 actors of 0.5 CPU each, on 2 CPUs" in notebook  # planned for 1 + 1 CPUs
    assert "2 actors of levers each actor measures, growing to 4 as nodes join" in notebook
    assert "2 node(s) (1, 2 CPUs)" in notebook  # at the end: the head and the node that joined
    assert '"output_type": "error"' not in notebook
