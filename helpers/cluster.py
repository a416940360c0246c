"""Start Ray on this machine, or join the cluster that ``RAY_ADDRESS`` names, and describe it."""
from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import helpers
from helpers import LOOPBACK_ONLY_VARIABLE, ray_workarounds


@dataclass(frozen=True)
class ClusterInfo:
    """What Ray has to work with: each live node's (CPUs, GPUs), the object store, how far it may grow."""

    node_sizes: tuple[tuple[float, float], ...]
    object_store_bytes: float = 0.0
    largest: tuple[float, float] | None = None  # the most (CPUs, GPUs) it may have; None: Ray does not know

    cpus = property(lambda self: sum(cpus for cpus, _ in self.node_sizes))

    def describe_nodes(self) -> str:
        """The node sizes in words: "1, 2 CPUs", or "8 CPUs + 2 GPUs, 4 CPUs" with GPUs."""
        if not any(gpus for _, gpus in self.node_sizes):
            return ", ".join(f"{cpus:g}" for cpus, _ in self.node_sizes) + " CPUs"
        return ", ".join(f"{cpus:g} CPUs" + (f" + {gpus:g} GPUs" if gpus else "") for cpus, gpus in self.node_sizes)

    def __str__(self) -> str:
        import ray
        return (f"Ray {ray.__version__}: {len(self.node_sizes)} node(s) ({self.describe_nodes()}), "
                f"{self.object_store_bytes / 2**30:.1f} GiB object store")


def auth_token_path() -> Path:
    """Where Ray reads its token: ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_auth_token() -> Path | None:
    """Make sure the token file exists, readable by its owner only (a new user has none), and
    return it; None where ``RAY_AUTH_TOKEN`` holds the token. The token is never printed."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = auth_token_path()
    if not path.is_file() or path.stat().st_size == 0:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        with os.fdopen(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(secrets.token_hex(32))  # what Ray's own generator makes: 256 random bits
        os.chmod(scratch, 0o600)  # whatever the umask
        os.replace(scratch, path)
    elif path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():  # another's: Ray reads it as it is
        os.chmod(path, 0o600)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_options() -> dict:
    """Keyword arguments for ``ray.init``: join ``RAY_ADDRESS``, or start a local instance on 127.0.0.1
    only, with token authentication and the dashboard on 127.0.0.1. On a cluster ``helpers`` reaches
    every worker (``runtime_env``); a Ray on this machine alone does without (it cost 5 s a worker)."""
    import ray.data
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()  # set before any Dataset: each keeps a copy
    context.print_on_execution_start = False
    context.wait_for_min_actors_s = 600  # a run starts with its whole pool, or says it cannot
    ray_workarounds.hide_harmless_lines()
    options = {"logging_level": logging.ERROR, "log_to_driver": True}
    if address := os.environ.get("RAY_ADDRESS"):
        if os.environ.get(LOOPBACK_ONLY_VARIABLE) != "0":
            options["runtime_env"] = {"py_modules": [str(Path(helpers.__file__).parent)]}
        return {"address": address, **options}
    if not helpers.RAY_SEES_LOOPBACK_ONLY:
        raise RuntimeError(f"Ray was imported before helpers, without {LOOPBACK_ONLY_VARIABLE}=0: a local Ray "
                           "would listen on every network interface. Restart the kernel and import helpers first.")
    ensure_auth_token()
    return {"address": "local", "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(), **options}


def live_nodes() -> dict[str, dict]:
    """The live nodes, by ID: ``ray.nodes()`` entries with ``Alive``."""
    import ray
    return {node["NodeID"]: node for node in ray.nodes() if node["Alive"]}


def describe() -> ClusterInfo:
    """The cluster this process is connected to: its live nodes, their resources, how far it may grow."""
    import ray
    sizes = [(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0)) for node in live_nodes().values()]
    alone = not os.environ.get("RAY_ADDRESS") or os.environ.get(LOOPBACK_ONLY_VARIABLE) == "0"  # nothing joins it
    largest = tuple(map(sum, zip(*sizes))) if alone else ray_workarounds.largest_cluster()
    return ClusterInfo(tuple(sorted(sizes)), ray.cluster_resources().get("object_store_memory", 0.0), largest)
