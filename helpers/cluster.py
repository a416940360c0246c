"""Start Ray on this machine, or join the cluster that ``RAY_ADDRESS`` names.

Workers get the same ``helpers`` package as the driver through Ray's ``runtime_env``, so a
worker started in any directory, on any node, can import it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import helpers


@dataclass(frozen=True)
class ClusterInfo:
    """What Ray has to work with: live nodes and their total resources."""

    nodes: int
    cpus: float
    gpus: float
    object_store_bytes: float

    def __str__(self) -> str:
        import ray

        return (
            f"Ray {ray.__version__}: {self.nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs, "
            f"{self.object_store_bytes / 2**30:.1f} GiB object store"
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
    """Connect this process to Ray (once) and describe the cluster.

    Without ``RAY_ADDRESS`` a new local instance starts, listening on 127.0.0.1 only, with
    the dashboard off and token authentication as Ray's default.
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        with contextlib.nullcontext() if address else loopback_only():
            ray.init(
                # "local": a new instance, never the last `ray start` cluster, which may be gone.
                address=address or "local",
                runtime_env={"py_modules": [str(Path(helpers.__file__).parent)]},
                logging_level=logging.ERROR,
                log_to_driver=False,
                **({} if address else {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}),
            )
        _quiet_ray_data()
    resources = ray.cluster_resources()
    return ClusterInfo(
        nodes=sum(1 for node in ray.nodes() if node["Alive"]),
        cpus=resources.get("CPU", 0.0),
        gpus=resources.get("GPU", 0.0),
        object_store_bytes=resources.get("object_store_memory", 0.0),
    )


def stop() -> None:
    """Disconnect from Ray; a local instance started by ``start_or_join`` shuts down."""
    import ray

    ray.shutdown()


@contextlib.contextmanager
def native_stderr_to(path: Path):
    """Send what native code writes to file descriptor 2 (Ray's C++ core) into ``path``.

    Ray 2.60's core logs one alarming-looking line for every actor pool (issue #53727 on
    actors whose arguments live in the object store) that no setting turns off. Python's
    own warnings and exceptions do not go through descriptor 2 in Jupyter, so they still
    show; the C++ lines land in the log file for whoever needs them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield path
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _spurious_no_cpu_warning(record: logging.LogRecord) -> bool:
    """Drop Ray Data's "no available CPUs" warning.

    Ray samples free CPUs when an execution starts, often while the previous execution's
    tasks are still returning theirs, and then warns that the job may hang. The hang it
    means (actors holding every CPU) cannot happen here: ``plan_actors`` always leaves
    CPUs for the readers.
    """
    return "does not have any available CPUs" not in record.getMessage()


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
    logging.getLogger("ray.data.dataset").addFilter(_spurious_no_cpu_warning)
    if context.enable_progress_bars and hasattr(sys.stdout, "_isatty"):  # ipykernel's OutStream
        sys.stdout._isatty = True
