"""Notebook 03 on existing Ray clusters of several node sizes on 127.0.0.1 (RAY_ADDRESS set)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest

from helpers import PROJECT_ROOT, cluster, sample, series
from helpers.cluster import environment
from test_long_runs import NOTEBOOK_03, start_notebook_03, wait_for_rows

RAY = str(Path(sys.executable).with_name("ray"))


def _launch(arguments: list[str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """`ray start --block ...` in ``cwd``, writing to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                                 *arguments], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


# The CPUs of the head, then of each worker; and the actors the plan gives them (one per CPU).
# Planned from the total CPUs, as before, the actors of every one but cpus-0-2 could leave no node
# the whole CPU that each read or write task reserved (on 2-2 and 1-1-2 they always did): a stall.
# In this order, cpus-1-1-2 is cpus-1-1 with one more worker: one cluster serves both.
CLUSTERS = {
    "cpus-1-1": ((1, 1), 2),  # actors of 0.5 CPU, one per node, leave tasks half a CPU
    "cpus-1-1-2": ((1, 1, 2), 4),
    "cpus-2-2": ((2, 2), 4),
    "cpus-0-2": ((0, 2), 2),  # all work goes to the worker
}
HEAD_AND_WORKER = "cpus-0-2"


class LoopbackClusters:
    """One cluster at a time: a head and workers on 127.0.0.1, the workers started from an
    unrelated directory, the first carrying the custom resource ``second_node``. A shape that
    only adds workers to the running cluster grows it; any other replaces it."""

    def __init__(self, logs: Path, elsewhere: Path):
        self.logs, self.elsewhere = logs, elsewhere
        self.cpus: tuple[int, ...] = ()
        self.processes: list[subprocess.Popen] = []
        self.address = ""

    def shaped(self, cpus: tuple[int, ...]) -> None:
        """The cluster with these CPUs (head first) runs, and ``RAY_ADDRESS`` names it."""
        if not self.cpus or self.cpus[0] != cpus[0] or self.cpus != cpus[:len(self.cpus)]:
            self.stop()
            port = series.free_port()
            self.address = f"127.0.0.1:{port}"
            self._start([(["--head", f"--port={port}", f"--num-cpus={cpus[0]}", "--include-dashboard=false"],
                          PROJECT_ROOT)])
            self.cpus = cpus[:1]
        new = [([f"--address={self.address}", f"--num-cpus={count}",
                 *(['--resources={"second_node": 1}'] if index == 1 else [])], self.elsewhere)
               for index, count in enumerate(cpus[len(self.cpus):], len(self.cpus))]
        self._start(new)  # side by side: each waits for its own start
        self.cpus = cpus
        os.environ["RAY_ADDRESS"] = self.address

    def _start(self, nodes: list[tuple[list[str], Path]]) -> None:
        launched = []
        for arguments, cwd in nodes:
            log_path = self.logs / f"node-{len(self.processes)}.log"
            self.processes.append(_launch(arguments, cwd, log_path))
            launched.append((log_path, self.processes[-1]))
        try:
            for log_path, process in launched:
                series.wait_until_started(log_path, process)
        except BaseException:  # not started, or interrupted: leave no Ray behind
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to every node, and SIGKILL to the process group of any still up after 15 s."""
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        self.processes, self.cpus = [], ()
        os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    with environment(RAY_AUTH_MODE="token"):
        cluster.ensure_auth_token()  # `ray start` needs one; the tests' fresh home has none yet
        running = LoopbackClusters(tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("unrelated"))
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module", params=list(CLUSTERS))
def ray_cluster(request, clusters) -> LoopbackClusters:
    """A cluster of the shape that ``CLUSTERS`` names, joined through ``RAY_ADDRESS``."""
    clusters.shaped(CLUSTERS[request.param][0])
    return clusters


def assert_planned_for(shape: str, notebook: Path, manifest: dict) -> None:
    """Notebook 03 saw the cluster of ``shape`` and planned its actors for it, without error."""
    sizes, actors = CLUSTERS[shape]
    text = notebook.read_text()
    nodes = ", ".join(str(cpus) for cpus in sorted(sizes))
    assert f"{len(sizes)} node(s) ({nodes} CPUs)" in text and '"output_type": "error"' not in text
    assert manifest["num_actors"] == actors


# cpus-2-2 runs notebook 03 in the lost-node test below.
@pytest.mark.parametrize("ray_cluster", [shape for shape in CLUSTERS if shape != "cpus-2-2"], indirect=True)
@pytest.mark.timeout(900)  # a stage that waits for CPUs no node has stalls for ever
def test_notebook_03_runs_on_the_cluster(ray_cluster, request, tmp_path):
    series.execute_series(tmp_path, {"limit": 24, "batch_size": 8}, notebooks=(NOTEBOOK_03,), progress=False)
    manifest = json.loads((tmp_path / "predictions.json").read_text())
    assert manifest["num_images"] == 24
    assert_planned_for(request.node.callspec.params["ray_cluster"], tmp_path / "notebooks" / NOTEBOOK_03.name,
                       manifest)


PROBE = """
import json, os, ray
from helpers import cluster

info = cluster.start_or_join()

@ray.remote(num_cpus=0, resources={"second_node": 1})
def where():
    import helpers
    return helpers.__file__, os.getcwd(), ray.get_runtime_context().get_node_id()

module_file, cwd, node_id = ray.get(where.remote())
second = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "second_node" in n["Resources"]]
print(json.dumps({"nodes": info.nodes, "cpus": info.cpus, "module_file": module_file,
                  "cwd": cwd, "on_second_node": [node_id] == second}))
"""


@pytest.mark.parametrize("ray_cluster", [HEAD_AND_WORKER], indirect=True)
@pytest.mark.timeout(600)
def test_helpers_reach_the_second_node_through_runtime_env(ray_cluster):
    """A driver outside the project (as on a real cluster, where no node has the checkout)."""
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ray_cluster.elsewhere, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["nodes"] == 2 and found["cpus"] == 2 and found["on_second_node"]
    assert "runtime_resources" in found["module_file"]  # the package Ray shipped, not the checkout
    assert Path(found["cwd"]).resolve() != PROJECT_ROOT


@pytest.mark.parametrize("ray_cluster", ["cpus-2-2"], indirect=True)
@pytest.mark.timeout(900)
def test_notebook_03_finishes_when_the_worker_node_is_killed(ray_cluster, sample_dir, tmp_path):
    """The worker's raylet is SIGKILLed mid-run: its actors, tasks and blocks are lost with it.
    Ray restarts the actors and retries the tasks (Ray Data's defaults for an actor pool)."""
    log = tmp_path / "papermill.log"
    papermill = start_notebook_03(tmp_path, {}, os.environ.copy(), log)
    try:
        wait_for_rows(64, tmp_path, papermill, log)
        assert not (tmp_path / "predictions.json").exists(), "the run completed before the node was killed"
        worker = ray_cluster.processes[1]
        raylets = [child for child in psutil.Process(worker.pid).children(recursive=True) if child.name() == "raylet"]
        assert raylets, "no raylet under the worker's `ray start`"
        for raylet in raylets:
            raylet.send_signal(signal.SIGKILL)
        papermill.wait(timeout=600)
    finally:
        if papermill.poll() is None:
            os.killpg(papermill.pid, signal.SIGKILL)
        ray_cluster.stop()  # one node is gone: the next test starts a whole cluster
    assert papermill.returncode == 0, log.read_text()[-3000:]
    manifest = json.loads((tmp_path / "predictions.json").read_text())
    files = len(list(sample_dir.glob("*/*")))
    predictions = pd.read_parquet([tmp_path / file for file in manifest["files"]])
    assert manifest["num_rows"] == len(predictions) == predictions["path"].nunique() == files
    assert manifest["num_images"] == files - len(sample.BROKEN_FILES)  # the broken files are rows with an error
    assert_planned_for("cpus-2-2", tmp_path / "running.ipynb", manifest)
