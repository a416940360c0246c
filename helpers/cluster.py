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


def start_or_join() -> ClusterInfo:
    """Connect this process to Ray (once) and describe the cluster."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
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
