"""Start Ray on this machine, or join the cluster that ``RAY_ADDRESS`` names.

On a cluster, workers get the same ``helpers`` package as the driver through Ray's
``runtime_env``, so a worker started in any directory, on any node, can import it. A Ray on
this machine alone runs its workers with this Python, which imports ``helpers`` already.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import helpers


@dataclass(frozen=True)
class ClusterInfo:
    """What Ray has to work with: live nodes, their total resources, and each node's size.

    ``node_sizes`` holds each live node's (CPUs, GPUs); where it is left empty (a
    ``ClusterInfo`` built by hand), the totals count as one node.
    """

    nodes: int
    cpus: float
    gpus: float
    object_store_bytes: float
    node_sizes: tuple[tuple[float, float], ...] = ()

    @property
    def sizes(self) -> tuple[tuple[float, float], ...]:
        """Each node's (CPUs, GPUs): ``node_sizes``, or the totals as one node."""
        return self.node_sizes or ((self.cpus, self.gpus),)

    def describe_nodes(self) -> str:
        """The node sizes in words: "1, 2 CPUs", or "8 CPUs + 2 GPUs, 4 CPUs" with GPUs."""
        if not any(gpus for _, gpus in self.sizes):
            return ", ".join(f"{cpus:g}" for cpus, _ in self.sizes) + " CPUs"
        return ", ".join(f"{cpus:g} CPUs" + (f" + {gpus:g} GPUs" if gpus else "") for cpus, gpus in self.sizes)

    def __str__(self) -> str:
        import ray

        return (
            f"Ray {ray.__version__}: {self.nodes} node(s) ({self.describe_nodes()}), {self.cpus:g} CPUs, "
            f"{self.gpus:g} GPUs, {self.object_store_bytes / 2**30:.1f} GiB object store"
        )


# Ray's servers listen on 127.0.0.1 only when the node's IP is exactly 127.0.0.1, and Ray
# replaces 127.0.0.1 by the machine's IP unless multi-node clusters are turned off with this
# variable (read when Ray is imported). Without it gcs_server, raylet and every worker listen
# on all interfaces, and Ray's runtime-env agent on the machine's IP.
LOOPBACK_ONLY_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def environment(**values: str):
    """Within: these environment variables set (for child processes too); restored after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def loopback_only():
    """Within: Ray instances started by this process, and drivers that join them, keep
    127.0.0.1 as their node IP, so that every port Ray opens listens on 127.0.0.1 only."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this process, in case Ray was imported before
    try:
        with environment(**{LOOPBACK_ONLY_VARIABLE: "0"}):  # for the processes started meanwhile
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def start_or_join() -> ClusterInfo:
    """Connect this process to Ray (once, with ``init_options``) and describe the cluster.

    For scripts and tests (the notebooks call ``ray.init`` themselves): after a local
    instance starts, this process's own settings are restored (``loopback_only``).
    """
    import ray

    if not ray.is_initialized():
        with contextlib.nullcontext() if os.environ.get("RAY_ADDRESS") else loopback_only():
            ray.init(**init_options())
    return describe()


def stop() -> None:
    """Disconnect from Ray; a local instance started by ``start_or_join`` shuts down."""
    import ray

    ray.shutdown()


def ensure_auth_token() -> Path | None:
    """Make sure Ray's authentication token exists, readable by its owner only; return its file.

    The file is where Ray looks: ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. A new
    user has none, and only ``ray.init`` creates one (``ray start`` fails without it), with
    mode 0644; here a missing or empty one is created with mode 0600 and an existing one
    set to 0600. A token given in ``RAY_AUTH_TOKEN`` is left alone (None). The token itself
    is never printed or logged.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if not path.is_file() or path.stat().st_size == 0:
        import secrets

        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))  # what Ray's own generator makes: 256 random bits
        os.chmod(scratch, 0o600)  # whatever the umask
        os.replace(scratch, path)
        _forget_cached_token()
    elif path.stat().st_mode & 0o077:
        with contextlib.suppress(PermissionError):  # someone else's file: Ray reads it as it is
            os.chmod(path, 0o600)
    return path


def _forget_cached_token() -> None:
    """Let Ray in this process (if imported) read the token file again."""
    if "ray" in sys.modules:
        with contextlib.suppress(Exception):
            from ray._raylet import AuthenticationTokenLoader

            AuthenticationTokenLoader.instance().reset_cache()


def _live_actors(job_hex: str) -> dict[str, dict]:
    """This job's actors that are not dead and not detached (Ray Data keeps its own detached
    helpers for the whole session), by ID, from the GCS actor table (no dashboard needed)."""
    from ray._private import state

    return {actor_id: actor for actor_id, actor in state.actors(job_id=None).items()
            if actor["State"] != "DEAD" and not actor["IsDetached"] and actor["JobID"] == job_hex}


def _free(names=("CPU", "GPU")) -> dict[str, float]:
    import ray

    available = ray.available_resources()
    return {name: available.get(name, 0.0) for name in names}


@contextlib.contextmanager
def releasing_actors(grace_s: float = 2.0, timeout_s: float = 30.0):
    """Within: run a Ray Data execution; on exit, success or failure, every actor created
    meanwhile by this process is dead and Ray reports their CPUs and GPUs free again.

    Ray Data 2.60 ends an actor pool by dropping its references to the actors, not by
    killing them. After a failed execution the executor's state (the operators, their
    in-flight tasks, the actor handles) can outlive the exception, so the actors live on
    holding their CPUs, and the next execution waits forever for a task's CPU. On exit
    this collects garbage, waits ``grace_s`` for the actors to end by themselves, kills
    those left, then waits for Ray to report their resources free (at most ``timeout_s``;
    it warns rather than hangs). An exception from the block propagates unchanged.
    """
    import ray

    if not ray.is_initialized():  # nothing to follow; Ray Data would start a Ray of its own
        yield
        return
    job = ray.get_runtime_context().get_job_id()
    before, free_before = set(_live_actors(job)), _free()
    try:
        yield
    finally:
        try:
            _release_actors(job, before, free_before, grace_s, timeout_s)
        except Exception as error:  # noqa: BLE001 - never hide the block's own exception
            import warnings

            warnings.warn(f"Could not check that the run's actors ended: {error!r}", RuntimeWarning, stacklevel=3)


def _release_actors(job: str, before: set[str], free_before: dict[str, float],
                    grace_s: float, timeout_s: float, settle_s: float = 10.0) -> None:
    """Collect, wait ``grace_s``, kill what is left, wait for the deaths (``timeout_s``), then
    for Ray's report of free CPUs and GPUs (``settle_s``; other jobs may hold them)."""
    import gc
    import time
    import warnings

    import ray

    gc.collect()  # the executor's reference cycles, and with them its actor handles
    started = time.monotonic()
    killed = False
    while left := [actor_id for actor_id in _live_actors(job) if actor_id not in before]:
        waited = time.monotonic() - started
        if not killed and waited >= grace_s:
            # By ID: the handles are this process's (it owns the actors: were they gone here,
            # Ray would have ended the actors); ray.kill would need the Python objects.
            worker = ray._private.worker.global_worker
            for actor_id in left:
                with contextlib.suppress(Exception):  # already gone, or no longer ours
                    worker.core_worker.kill_actor(ray.ActorID(bytes.fromhex(actor_id)), True)
            killed = True
        elif waited >= grace_s + timeout_s:
            warnings.warn(f"{len(left)} actor(s) of the last run still alive after {waited:.0f} s; "
                          "the next run may wait for their CPUs.", RuntimeWarning, stacklevel=4)
            return
        time.sleep(0.1)
    settled = time.monotonic() + settle_s
    while time.monotonic() < settled:
        free = _free()
        if all(free[name] >= free_before[name] for name in free):
            return
        time.sleep(0.1)


NATIVE_LOG = helpers.PROJECT_ROOT / "outputs" / "logs" / "ray-core.log"
_NATIVE_STDERR_REDIRECTED = False


def _point_native_stderr_at(path: Path) -> None:
    """File descriptor 2 of this process (Ray's C++ core) writes to ``path`` from now on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)


def _send_native_stderr_to(path: Path) -> None:
    """For the rest of this process, Ray's C++ core writes to ``path``."""
    global _NATIVE_STDERR_REDIRECTED
    _point_native_stderr_at(path)
    _NATIVE_STDERR_REDIRECTED = True


@contextlib.contextmanager
def native_stderr_to(path: Path):
    """Send what native code writes to file descriptor 2 (Ray's C++ core) into ``path``.

    Ray 2.60's core logs one alarming-looking line for every actor pool (issue #53727 on
    actors whose arguments live in the object store) that no setting turns off. Python's
    own warnings and exceptions do not go through descriptor 2 in Jupyter, so they still
    show; the C++ lines land in the log file for whoever needs them.
    """
    saved = os.dup(2)
    _point_native_stderr_at(path)
    try:
        yield path
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_ray_data() -> None:
    """Show Ray Data's progress as a bar where someone watches, and keep logs to real problems.

    Ray Data draws bars only on a terminal; a Jupyter kernel's stdout is no terminal, so Ray
    would log progress lines instead. In an interactive kernel we let it draw its bar; under
    papermill and CI (``RAY_DATA_DISABLE_PROGRESS_BARS=1``) it stays quiet.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if context.enable_progress_bars and hasattr(sys.stdout, "_isatty"):  # ipykernel's OutStream
        sys.stdout._isatty = True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_options() -> dict:
    """Keyword arguments for ``ray.init``: join ``RAY_ADDRESS``, or start a local instance.

    A local instance listens on 127.0.0.1 only, with token authentication (the token file
    made first, readable by its owner only) and Ray's dashboard (on 127.0.0.1, on a free
    port). For it, this process keeps 127.0.0.1 as its
    node IP from now on (Ray reads that switch from a constant and the environment).
    On a cluster ``helpers`` travels to every worker (``runtime_env``); a Ray on this
    machine alone (a local instance, or the series' single-node head, which keeps
    multi-node clusters off) does without: shipping it made every worker process wait for
    its environment, 5 s or more per run here. Either way what the workers print shows in
    the notebook (``log_to_driver``). In a Jupyter kernel, what Ray's C++
    core writes to the process's stderr goes to ``outputs/logs/ray-core.log`` instead of
    the notebook (see ``native_stderr_to``).
    """
    address = os.environ.get("RAY_ADDRESS")
    this_machine_only = not address or os.environ.get(LOOPBACK_ONLY_VARIABLE) == "0"
    options = {
        **({} if this_machine_only else {"runtime_env": {"py_modules": [str(Path(helpers.__file__).parent)]}}),
        "logging_level": logging.ERROR,
        "log_to_driver": True,
    }
    _quiet_ray_data()
    if "ipykernel" in sys.modules and not _NATIVE_STDERR_REDIRECTED:
        _send_native_stderr_to(NATIVE_LOG)
    if address:
        return {"address": address, **options}
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[LOOPBACK_ONLY_VARIABLE] = "0"
    ensure_auth_token()  # the one Ray's own ray.init writes is readable by everyone (0644)
    return {
        # "local": a new instance, never the last `ray start` cluster, which may be gone.
        "address": "local", "_node_ip_address": "127.0.0.1",
        "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
        **options,
    }


def describe() -> ClusterInfo:
    """The cluster this process is connected to: its live nodes and their resources."""
    import ray

    resources = ray.cluster_resources()
    alive = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return ClusterInfo(
        nodes=len(alive),
        cpus=resources.get("CPU", 0.0),
        gpus=resources.get("GPU", 0.0),
        object_store_bytes=resources.get("object_store_memory", 0.0),
        node_sizes=tuple(sorted((node.get("CPU", 0.0), node.get("GPU", 0.0)) for node in alive)),
    )


def dashboard_url() -> str | None:
    """Where Ray's dashboard of the connected cluster answers, if it runs."""
    from ray._private.worker import get_dashboard_url

    address = get_dashboard_url()
    return f"http://{address}" if address else None
