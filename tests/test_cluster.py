"""Notebook 03 on existing Ray clusters of several node sizes on 127.0.0.1 (RAY_ADDRESS set)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PROJECT_ROOT, cluster, series
from helpers.cluster import environment

RAY = str(Path(sys.executable).with_name("ray"))
NOTEBOOK_03 = tuple(nb for nb in series.NOTEBOOKS if nb.name.startswith("03"))


def _start(arguments: list[str], cwd: Path, log_path: Path) -> subprocess.Popen:
    """`ray start --block ...` in ``cwd``, returned once it reports that Ray runs."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1",
                                    "--disable-usage-stats", *arguments],
                                   cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        series.wait_until_started(log_path, process)
    except BaseException:  # not started, or interrupted: leave no Ray behind
        process.terminate()
        process.wait(timeout=90)
        raise
    return process


# The CPUs of the head, then of each worker; and the actors the plan gives them (one per CPU).
# Planned from the total CPUs, as before, the actors of every one but cpus-0-2 could leave no node
# the whole CPU that each read or write task reserved (on 2-2 and 1-1-2 they always did): a stall.
CLUSTERS = {
    "cpus-1-1": ((1, 1), 2),  # actors of 0.5 CPU, one per node, leave tasks half a CPU
    "cpus-2-2": ((2, 2), 4),
    "cpus-0-2": ((0, 2), 2),  # all work goes to the worker
    "cpus-1-1-2": ((1, 1, 2), 4),
}
HEAD_AND_WORKER = "cpus-0-2"


@pytest.fixture(scope="module", params=list(CLUSTERS))
def ray_cluster(request, tmp_path_factory):
    """A head and worker nodes of the CPUs that ``CLUSTERS`` names, the workers started from an
    unrelated directory (yielded), the last one carrying the custom resource ``second_node``."""
    head_cpus, *worker_cpus = CLUSTERS[request.param][0]
    logs, elsewhere = tmp_path_factory.mktemp("logs"), tmp_path_factory.mktemp("unrelated")
    port = series.free_port()
    started = []
    with environment(RAY_AUTH_MODE="token"):
        cluster.ensure_auth_token()  # `ray start` needs one; the tests' fresh home has none yet
        try:
            started.append(_start(["--head", f"--port={port}", f"--num-cpus={head_cpus}",
                                   "--include-dashboard=false"], PROJECT_ROOT, logs / "head.log"))
            for index, cpus in enumerate(worker_cpus, 1):
                marked = ['--resources={"second_node": 1}'] if index == len(worker_cpus) else []
                started.append(_start([f"--address=127.0.0.1:{port}", f"--num-cpus={cpus}", *marked],
                                      elsewhere, logs / f"worker-{index}.log"))
            with environment(RAY_ADDRESS=f"127.0.0.1:{port}"):
                yield elsewhere
        finally:
            for process in reversed(started):
                process.terminate()
                process.wait(timeout=90)


@pytest.mark.timeout(900)  # a stage that waits for CPUs no node has stalls for ever
def test_notebook_03_runs_on_the_cluster(ray_cluster, request, tmp_path):
    sizes, actors = CLUSTERS[request.node.callspec.params["ray_cluster"]]
    series.execute_series(tmp_path, {"limit": 24, "batch_size": 8}, notebooks=NOTEBOOK_03, progress=False)
    manifest = json.loads((tmp_path / "predictions.json").read_text())
    assert manifest["num_images"] == 24 and manifest["num_actors"] == actors
    notebook = (tmp_path / "notebooks" / NOTEBOOK_03[0].name).read_text()
    nodes = ", ".join(str(cpus) for cpus in sorted(sizes))
    assert f"{len(sizes)} node(s) ({nodes} CPUs)" in notebook and '"output_type": "error"' not in notebook


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
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ray_cluster, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["nodes"] == 2 and found["cpus"] == 2 and found["on_second_node"]
    assert "runtime_resources" in found["module_file"]  # the package Ray shipped, not the checkout
    assert Path(found["cwd"]).resolve() != PROJECT_ROOT
