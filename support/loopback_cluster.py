"""Multi-node Ray clusters on 127.0.0.1 for the tests, every process of them on loopback, and a
sampler of sockets that checks it.

Ray 2.60 replaces 127.0.0.1 by the machine's own address for a node that ``ray start`` starts
with multi-node clusters on (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` unset), and its agents then
listen on every interface: a cluster open on the LAN. With them off, ``ray start --address``
refuses to add a worker. Ray's own testing utility, ``ray.cluster_utils.Cluster``, adds nodes
without that check, so here it runs in a keeper process (this file run as a script) with the
variable at 0: every node keeps 127.0.0.1, and so do the workers and job drivers its processes
start, which inherit the variable. The keeper runs in a session of its own, from an unrelated
folder (as on a machine without the checkout), under a scratch folder of its own
(``RAY_TMPDIR``): each worker node gets a temp dir of its own there, as on its own machine (nodes
sharing one unpack a job's working_dir into the same place, each replacing the other's). It takes
one command a line on stdin (add a node, stop) and answers each with a line of JSON; it stops the
cluster when its stdin closes, however the tests ended. A node is its raylet's process tree
(workers and agents) beside what the keeper started for it (the head's GCS, dashboard, monitor).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

import psutil

LOOPBACK_IPS = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
# Ray 2.60's dashboard asks the cloud metadata address which cloud it runs on, once as it starts
# (UsageStatsHead.run, whether usage stats are on or off); on this machine that address answers.
CLOUD_METADATA = ("169.254.169.254", 80)
SINGLE_MACHINE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # ray_start's: the keeper imports nothing of helpers
NODE_START_TIMEOUT_S = 120  # a node started beside a busy run on 2 cores (`ray start` had as long)
STOP_TIMEOUT_S = 30
# A raylet waits 15 s for its dashboard agent to write its ports (a Python process's start: its
# imports), then aborts, whatever RAY_agent_register_timeout_ms says; beside other busy processes
# on 2 cores that start can take longer. A worker node is then started again (nothing of it is
# left: its agents end with its raylet); a head is not (its GCS and dashboard run on), and the
# harness starts the whole cluster again.
WORKER_ATTEMPTS = CLUSTER_ATTEMPTS = 3


# The keeper: this file run as a script, in the process that holds the Cluster.
def keep() -> None:
    """Hold a ``Cluster``: read commands from stdin, one JSON object a line, answer each on
    stdout; stop the cluster on ``{"op": "stop"}`` or at the end of stdin."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else written to stdout (Ray's, its processes') goes to the log
    sys.stdout = sys.stderr
    from ray.cluster_utils import Cluster

    assert os.environ.get(SINGLE_MACHINE_VARIABLE) == "0", "the keeper needs multi-node clusters off"
    cluster = Cluster(shutdown_at_exit=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            try:
                if command["op"] == "stop":
                    break
                node = _added(cluster, {"object_store_memory": _object_store_bytes(), **command["node"]})
                reply = {"node": _described(node), "address": cluster.address}
            except Exception:  # said to the harness, which raises it there
                reply = {"error": traceback.format_exc()}
            replies.write(json.dumps(reply) + "\n")
    finally:
        cluster.shutdown()  # every node's processes, SIGTERM then SIGKILL


def _added(cluster, arguments: dict):
    """The node that ``Cluster.add_node`` starts with ``arguments``, once the GCS lists it alive;
    a worker node is tried ``WORKER_ATTEMPTS`` times, each in a temp dir of its own."""
    attempts = WORKER_ATTEMPTS if cluster.head_node else 1
    for attempt in range(1, attempts + 1):
        started, node = time.monotonic(), None
        try:
            temp_dir = {"temp_dir": f"{arguments['temp_dir']}-{attempt}"} if attempt > 1 else {}
            node = cluster.add_node(wait=False, **{**arguments, **temp_dir})
            _wait_for(cluster, node.node_id)
        except Exception:
            print(f"attempt {attempt} failed after {time.monotonic() - started:.1f} s:\n{traceback.format_exc()}",
                  flush=True)
            if node is not None and attempt < attempts:  # started, but not alive in time: not twice
                with contextlib.suppress(Exception):
                    cluster.remove_node(node, allow_graceful=False)
            if attempt == attempts:
                raise
        else:
            print(f"node {node.node_id} alive in {time.monotonic() - started:.1f} s", flush=True)
            return node


def _wait_for(cluster, node_id: str) -> None:
    """Return once the GCS lists the node ``node_id`` alive."""
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(entry["NodeID"] == node_id and entry["Alive"] for entry in cluster.global_state.node_table()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"node {node_id} not alive within {NODE_START_TIMEOUT_S} s")


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (as ``ray_start.free_port``)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _object_store_bytes() -> int:
    """What `ray start` gives a node's object store (``Cluster.add_node`` gives 150 MiB)."""
    import ray._private.utils  # the keeper's only private names beside Cluster's own

    return ray._private.utils.resolve_object_store_memory(ray._private.utils.estimate_available_memory())


def _described(node) -> dict:
    """What the harness needs of a node: its ID and address, its raylet, the processes started for it."""
    return {"node_id": node.node_id, "address": node.node_ip_address, "temp_dir": node.get_temp_dir_path(),
            "raylet": node.all_processes["raylet"][0].process.pid,
            "pids": sorted(info.process.pid for infos in node.all_processes.values() for info in infos)}


# A driver that holds CPUs: an actor pinned to each node of ``argv[1]`` ({node ID: CPUs}), until
# its stdin closes. It answers "held" on stdout once every actor is placed (all else goes to stderr).
HOLDER = """
import json, os, sys
replies = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from helpers.machinery import ray_start

ray.init(**ray_start.init_options())


@ray.remote
class Hold:
    def ready(self) -> bool:
        return True


free, timeout_s = json.loads(sys.argv[1]), float(sys.argv[2])
holds = [Hold.options(num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
         .remote() for node_id, cpus in free.items() if cpus > 0]
ray.get([hold.ready.remote() for hold in holds], timeout=timeout_s)
print("held", file=replies)
sys.stdin.read()
"""


# The harness: in the tests' process.
class LoopbackClusters:
    """One cluster at a time, held by a keeper: a head and workers on 127.0.0.1, all started
    from the unrelated folder ``elsewhere``, the first worker carrying the custom resource
    ``second_node``. A shape that only adds workers to the running cluster grows it; any other
    replaces it. ``RAY_ADDRESS`` names the running cluster."""

    def __init__(self, logs: Path, elsewhere: Path):
        self.logs, self.elsewhere = logs, elsewhere
        self.cpus: tuple[int, ...] = ()
        self.nodes: list[dict] = []  # the keeper's answers: node_id, address, raylet, pids; head first
        self.address = self.dashboard = ""
        self.keeper: subprocess.Popen | None = None
        self._log = self.logs / "keeper.log"
        self._scratch = ""  # the keeper's folder: RAY_TMPDIR, the head's temp dir, a folder for each worker

    def shaped(self, cpus: tuple[int, ...], dashboard: bool = False) -> None:
        """The cluster with these CPUs (head first) runs, and ``RAY_ADDRESS`` names it; with
        ``dashboard``, its dashboard (and Jobs API) listens on 127.0.0.1 at ``self.dashboard``.
        A new cluster is tried ``CLUSTER_ATTEMPTS`` times (see ``WORKER_ATTEMPTS``)."""
        if self.cpus and self.cpus == cpus[:len(self.cpus)] and dashboard == bool(self.dashboard):
            self._add_workers(cpus)
        else:
            for attempt in range(1, CLUSTER_ATTEMPTS + 1):
                self.stop()
                try:
                    self._start(cpus, dashboard)
                    break
                except NodeNotStarted:
                    if attempt == CLUSTER_ATTEMPTS:
                        raise
        os.environ["RAY_ADDRESS"] = self.address

    def _start(self, cpus: tuple[int, ...], dashboard: bool) -> None:
        self._start_keeper()
        dashboard_port = _free_port()
        head = {"num_cpus": cpus[0], "include_dashboard": dashboard, "dashboard_host": "127.0.0.1",
                "dashboard_port": dashboard_port, "dashboard_agent_listen_port": 0}  # 0: any free port, not 52365
        self.address = self._add(head)
        self.dashboard = f"http://127.0.0.1:{dashboard_port}" if dashboard else ""
        self.cpus = cpus[:1]
        self._add_workers(cpus)

    def _add_workers(self, cpus: tuple[int, ...]) -> None:
        """The workers of ``cpus`` that the cluster lacks, one by one (two side by side timed
        out on 2 cores), each with a temp dir of its own."""
        for index, count in enumerate(cpus[len(self.cpus):], len(self.cpus)):
            temp_dir = tempfile.mkdtemp(prefix=f"node-{index}-", dir=self._scratch)
            self._add({"num_cpus": count, "temp_dir": temp_dir,
                       "resources": {"second_node": 1} if index == 1 else {}})
            self.cpus = cpus[:index + 1]

    def _start_keeper(self) -> None:
        """The keeper, in a session of its own, from ``elsewhere``, logging to a file of its own."""
        self._scratch = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Unix socket paths
        environment = {**os.environ, SINGLE_MACHINE_VARIABLE: "0", "RAY_TMPDIR": self._scratch}
        environment.pop("RAY_ADDRESS", None)
        self._log = self.logs / f"keeper-{len(list(self.logs.glob('keeper-*.log')))}.log"
        with open(self._log, "wb") as log:
            self.keeper = subprocess.Popen([sys.executable, "-u", __file__], cwd=self.elsewhere, env=environment,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                           start_new_session=True)

    def _add(self, node: dict) -> str:
        """Have the keeper add ``node`` (``Cluster.add_node``'s arguments) on 127.0.0.1; the
        cluster's address. Should it fail, no Ray is left behind."""
        try:
            reply = self._ask({"op": "add", "node": {"node_ip_address": "127.0.0.1", **node}})
            if "error" in reply:
                raise NodeNotStarted(f"the keeper could not add a node (its log: {self._log}, Ray's logs "
                                     f"beside it):\n{reply['error']}")
        except BaseException:  # not started, or interrupted
            self._keep_ray_logs()
            self.stop()
            raise
        assert reply["node"]["address"] == "127.0.0.1", reply
        self.nodes.append(reply["node"])
        return reply["address"]

    def _keep_ray_logs(self) -> None:
        """Copy the nodes' Ray logs beside the keeper's log, before ``stop`` deletes them."""
        for logs in Path(self._scratch).glob("*/session_*/logs"):
            shutil.copytree(logs, self._log.with_suffix("") / logs.parent.parent.name, dirs_exist_ok=True,
                            ignore_dangling_symlinks=True)

    def _ask(self, command: dict) -> dict:
        self.keeper.stdin.write(json.dumps(command) + "\n")
        self.keeper.stdin.flush()
        line = self.keeper.stdout.readline()
        if not line:
            raise NodeNotStarted(f"the keeper exited with code {self.keeper.wait(timeout=30)}: see {self._log}")
        return json.loads(line)

    def stop(self) -> None:
        """Stop the cluster: the keeper stops its nodes; its whole session is killed should it
        take over ``STOP_TIMEOUT_S``. ``RAY_ADDRESS`` is unset."""
        if self.keeper is not None:
            with contextlib.suppress(OSError, ValueError):  # a keeper gone already
                self.keeper.stdin.write(json.dumps({"op": "stop"}) + "\n")
                self.keeper.stdin.close()
            try:
                self.keeper.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):  # whatever is left in the keeper's session
                os.killpg(self.keeper.pid, signal.SIGKILL)
            self.keeper.wait(timeout=30)
            self.keeper.stdout.close()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
        self.keeper, self._scratch, self.nodes, self.cpus, self.address, self.dashboard = None, "", [], (), "", ""
        os.environ.pop("RAY_ADDRESS", None)

    def node_processes(self, index: int) -> set[int]:
        """The pids of node ``index``'s raylet and everything under it (its workers, its actors)."""
        raylet = psutil.Process(self.nodes[index]["raylet"])
        return {raylet.pid, *(child.pid for child in raylet.children(recursive=True))}

    def kill_node(self, index: int) -> float:
        """SIGKILL the raylet of node ``index`` (its actors, tasks and blocks go with it); when."""
        raylet = psutil.Process(self.nodes[index]["raylet"])
        assert raylet.name() == "raylet", raylet
        raylet.send_signal(signal.SIGKILL)
        return time.monotonic()

    @contextlib.contextmanager
    def yielding_cpu(self, *session_leaders: subprocess.Popen):
        """While a node joins: the lowest priority for the running nodes' process trees and for
        these sessions' processes (a notebook's). On 2 cores a node started beside a busy run is
        too slow for Ray, which gives up on a node not started in 30 s. A session's priority is
        its autogroup's where Linux groups them (else nice 19 for each of its processes); the
        nodes share the keeper's session, so each node's processes get nice 19 and a node the
        keeper starts meanwhile keeps the keeper's (the GCS it registers with too). All is
        restored after, where allowed."""
        groups = [Path(f"/proc/{leader.pid}/autogroup") for leader in session_leaders]
        lowered = []
        for leader, group in zip(session_leaders, groups):
            if group.exists():
                group.write_text("19")
            else:
                lowered.append(psutil.Process(leader.pid))
        lowered += [psutil.Process(node["raylet"]) for node in self.nodes]
        for process in _trees(lowered):
            with contextlib.suppress(psutil.Error):
                process.nice(19)
        try:
            yield
        finally:
            for group in groups:
                with contextlib.suppress(OSError):  # raising a priority may need privileges
                    group.write_text("0")
            for process in _trees(lowered):  # and the workers they started meanwhile
                with contextlib.suppress(psutil.Error):
                    process.nice(0)

    def data_actors(self, index: int) -> list[psutil.Process]:
        """Ray Data's actors (``ray::MapWorker`` processes) on node ``index``."""
        actors = []
        for process in _trees([psutil.Process(self.nodes[index]["raylet"])]):
            with contextlib.suppress(psutil.Error):
                if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::MapWorker"):
                    actors.append(process)
        return actors

    @contextlib.contextmanager
    def pausing_actors(self, *indexes: int):
        """Ray Data's actors on nodes ``indexes`` stopped (SIGSTOP) while inside, continued
        after: their tasks wait, so the pool is busy whatever the input's pace, as when the model
        bounds the run (Ray Data grows a pool only then)."""
        actors = [actor for index in indexes for actor in self.data_actors(index)]
        assert actors, f"no ray::MapWorker process on nodes {indexes}"
        for actor in actors:
            actor.suspend()
        try:
            yield actors
        finally:
            for actor in actors:
                with contextlib.suppress(psutil.Error):
                    actor.resume()

    @contextlib.contextmanager
    def holding_free_cpus(self, actor_cpus: float, *indexes: int, timeout_s: float = 120):
        """The CPUs of nodes ``indexes`` that Ray Data's actors (of ``actor_cpus`` each) leave,
        held by a driver's actors pinned there while inside (each placed once a task there ends):
        nothing new (a task, an actor of a growing pool) starts on those nodes meanwhile."""
        free = {self.nodes[index]["node_id"]: self.cpus[index] - actor_cpus * len(self.data_actors(index))
                for index in indexes}
        log = self.logs / f"holder-{len(list(self.logs.glob('holder-*.log')))}.log"
        with open(log, "wb") as errors:
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, json.dumps(free), str(timeout_s)],
                                      cwd=self.elsewhere, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=errors, text=True, start_new_session=True)
        try:
            assert holder.stdout.readline().strip() == "held", f"the CPUs {free} were not held in {timeout_s} s: {log}"
            yield
        finally:
            with contextlib.suppress(OSError):
                holder.stdin.close()  # the driver ends, and its actors with it
            try:
                holder.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()

    def dashboard_get(self, path: str):
        """The JSON the dashboard answers to GET ``path``, with the token."""
        from helpers.machinery import auth_token

        token = auth_token.auth_token_path().read_text().strip()
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


class NodeNotStarted(RuntimeError):
    """The keeper could not add a node (Ray's error)."""


def _trees(roots: list[psutil.Process]) -> list[psutil.Process]:
    """These processes and their descendants, those still running."""
    found = []
    for root in roots:
        with contextlib.suppress(psutil.Error):
            found += [root, *root.children(recursive=True)]
    return found


# The sampler: in the tests' process.
class LoopbackSockets:
    """Every ``interval_s``, the TCP and UDP sockets of every process this one started (the
    keeper and its nodes, their workers and job drivers, the notebooks' kernels, probes and
    `make submit` clients), and of any of those that has since left the tree (a worker whose
    raylet was killed). ``offenders`` lists those with a local or remote address off loopback,
    but for a dashboard's question to the cloud metadata address (``cloud_probes`` counts them)."""

    def __init__(self, interval_s: float = 2.0):
        self.interval_s = interval_s
        self.samples = 0
        self.cloud_probes: set[tuple] = set()
        self.offenders: dict[tuple, str] = {}  # (pid, laddr, raddr, status) -> the process, in words
        self._processes: dict[tuple[int, float], psutil.Process] = {}  # by (pid, create_time)
        self._sockets: set[tuple] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="loopback-sockets")

    def __enter__(self) -> LoopbackSockets:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.sample()  # once more, at the end

    @property
    def seen(self) -> int:
        """How many distinct sockets the samples found (none: the sampler saw nothing to check)."""
        return len(self._sockets)

    @property
    def summary(self) -> str:
        return (f"{self.samples} samples every {self.interval_s:g} s: {len(self._sockets)} sockets of "
                f"{len(self._processes)} processes, {len(self.offenders)} off loopback "
                f"({len(self.cloud_probes)} dashboard question(s) to the cloud metadata address besides)")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a sample missed is no finding; the next one counts
                self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        me = psutil.Process()
        for process in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                self._processes.setdefault((process.pid, process.create_time()), process)
        running = {process.pid: process for process in self._processes.values() if process.is_running()}
        for connection in psutil.net_connections(kind="inet"):
            if connection.pid not in running:
                continue
            key = (connection.pid, tuple(connection.laddr), tuple(connection.raddr), connection.status)
            self._sockets.add(key)
            addresses = [connection.laddr, *([connection.raddr] if connection.raddr else [])]
            if key in self.offenders or all(address.ip in LOOPBACK_IPS for address in addresses):
                continue
            process = _in_words(running[connection.pid])
            if tuple(connection.raddr) == CLOUD_METADATA and "ray/dashboard/dashboard.py" in process:
                self.cloud_probes.add(key)
            else:
                self.offenders[key] = process
        self.samples += 1

    def report(self) -> str:
        return "\n".join(f"pid {pid} ({process}): {laddr} -> {raddr or '-'} {status}"
                         for (pid, laddr, raddr, status), process in sorted(self.offenders.items()))


def _in_words(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return f"{process.name()}: {' '.join(process.cmdline())[:200]}"
    return "gone"


if __name__ == "__main__":
    keep()
