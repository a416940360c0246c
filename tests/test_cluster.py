"""Notebook 03 on an existing two-node Ray cluster on 127.0.0.1 (RAY_ADDRESS set)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PROJECT_ROOT, series
from helpers.cluster import environment

RAY = str(Path(sys.executable).with_name("ray"))
NOTEBOOK_03 = tuple(nb for nb in series.NOTEBOOKS if nb.name.startswith("03"))


def _start(arguments: list[str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """`ray start --block ...` in ``cwd``, returned once it reports that Ray runs."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1",
                                    "--disable-usage-stats", *arguments],
                                   cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    series.wait_until_started(log_path, process)
    return process


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A head with no CPUs (so all work must go elsewhere) and a worker node, started from an
    unrelated directory, that carries the custom resource ``second_node``."""
    logs, elsewhere = tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("unrelated")
    port = series.free_port()
    with environment(RAY_AUTH_MODE="token"):
        head = _start(["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false"],
                      PROJECT_ROOT, logs / "head.log")
        worker = _start([f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"second_node": 1}'],
                        elsewhere, logs / "worker.log")
        with environment(RAY_ADDRESS=f"127.0.0.1:{port}"):
            yield elsewhere
        for process in (worker, head):
            process.terminate()
            process.wait(timeout=90)


def test_notebook_03_runs_on_the_cluster(two_nodes, tmp_path):
    series.execute_series(tmp_path, {"limit": 24, "batch_size": 8}, notebooks=NOTEBOOK_03, progress=False)
    manifest = json.loads((tmp_path / "predictions.json").read_text())
    assert manifest["num_images"] == 24 and manifest["num_actors"] == 2  # one per CPU of the worker
    notebook = (tmp_path / "notebooks" / NOTEBOOK_03[0].name).read_text()
    assert "2 node(s)" in notebook and '"output_type": "error"' not in notebook


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


def test_helpers_reach_the_second_node_through_runtime_env(two_nodes):
    """A driver outside the project (as on a real cluster, where no node has the checkout)."""
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=two_nodes, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["nodes"] == 2 and found["cpus"] == 2 and found["on_second_node"]
    assert "runtime_resources" in found["module_file"]  # the package Ray shipped, not the checkout
    assert Path(found["cwd"]).resolve() != PROJECT_ROOT
