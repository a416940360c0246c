"""What Ray 2.60 offers no public way to do, in one place: nothing else in ``helpers`` or the
notebooks uses a private Ray name. ``tests/test_ray_workarounds.py`` fails, naming the
workaround, when a Ray upgrade changes what one relies on.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import threading
import time
from pathlib import Path

import ray
import ray._common.utils
import ray._private.ray_constants


# 1. Ending a failed run's actors (Ray 2.60.0). After a failed execution, Ray Data's executor
# (and with it its actor pool) lives on as long as the exception does, and Jupyter keeps the
# last exception: the actors keep their CPUs and the next run waits for them forever. Ray Data
# gives out no handle for ``ray.kill``, and ``ray.util.state`` needs the dashboard.
def live_actors() -> set[str]:
    """IDs of this job's live actors, detached ones (Ray Data's own helpers) left out."""
    from ray._private import state
    job = ray.get_runtime_context().get_job_id()
    return {actor_id for actor_id, actor in state.actors().items()
            if actor["State"] != "DEAD" and not actor["IsDetached"] and actor["JobID"] == job}


def kill_actors(actor_ids: set[str]) -> None:
    """Kill these actors of this process's job by ID, without restarting them."""
    core_worker = ray._private.worker.global_worker.core_worker
    for actor_id in actor_ids:
        with contextlib.suppress(Exception):  # already gone
            core_worker.kill_actor(ray.ActorID(bytes.fromhex(actor_id)), True)


def free_resources() -> dict[str, float]:
    """The CPUs and GPUs that nothing reserves now (public API: for ``end_failed_run_actors``)."""
    return {name: ray.available_resources().get(name, 0.0) for name in ("CPU", "GPU")}


def end_failed_run_actors(before: set[str], free_before: dict[str, float], grace_s: float = 2.0,
                          timeout_s: float = 30.0) -> None:
    """After a failed run: end the actors that started since ``before`` and wait until the CPUs
    and GPUs free at its start (``free_before``) are free again."""
    gc.collect()  # the executor's reference cycles, and with them its actors
    deadline = time.monotonic() + grace_s
    while (left := live_actors() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    kill_actors(left)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        still_reserved = any(free < free_before[name] for name, free in free_resources().items())
        if not (live_actors() - before or still_reserved):
            return
        time.sleep(0.1)


# 2. Two harmless lines that no setting turns off. Ray 2.60's core worker logs one error line
# for every Ray Data actor pool, which always passes its arguments through the object store
# (https://github.com/ray-project/ray/issues/53727); and the raylet reports the tasks in
# flight when Ray Data ends an actor pool early (``take_batch``) as killed "by `ray.kill`",
# "to be retried". Only these lines are dropped: every other line, from Ray's C++ core on
# file descriptor 2 or from the workers, still shows.
HARMLESS_LINES = re.compile(
    r"has constructor arguments in the object store and max_restarts > 0"
    r"|Task MapWorker\(.*\)\.submit failed\..*killed by `ray\.kill`"
)
_installed = False


def hide_harmless_lines() -> None:
    """In a Jupyter kernel, from now on: drop ``HARMLESS_LINES`` from what it prints, native
    and Python (elsewhere nothing: a script's output goes to a terminal or a log)."""
    global _installed
    if _installed or "ipykernel" not in sys.modules:
        return
    _installed = True
    sys.stdout, sys.stderr = _LineFilter(sys.stdout), _LineFilter(sys.stderr)  # Ray's log monitor uses both
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    threading.Thread(target=_forward, args=(read_end, original), daemon=True, name="stderr-filter").start()


def _forward(read_end: int, sink: int) -> None:
    """Copy the pipe to ``sink`` line by line, without the harmless lines."""
    with os.fdopen(read_end, "rb") as pipe, os.fdopen(sink, "wb", buffering=0) as out:
        for line in pipe:
            if not HARMLESS_LINES.search(line.decode(errors="replace")):
                out.write(line)


class _LineFilter:
    """A text stream that passes everything on to ``stream`` but the harmless lines."""

    def __init__(self, stream):
        self._stream, self._pending = stream, ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        kept = "".join(line + "\n" for line in lines if not HARMLESS_LINES.search(line))
        if kept:
            self._stream.write(kept)
        return len(text)

    def flush(self) -> None:
        if self._pending and not HARMLESS_LINES.search(self._pending):
            self._stream.write(self._pending)
        self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


# 3. How far a cluster may grow. Ray 2.60 keeps the node groups an autoscaler reports in the GCS
# (Ray Data reads them there); only Ray's private state API reads them.
def largest_cluster() -> tuple[float, float] | None:
    """The most (CPUs, GPUs) the cluster's autoscaler may give it; None where Ray knows no limit."""
    most = ray._private.state.state.get_max_resources_from_cluster_config()
    return (most.get("CPU", 0), most.get("GPU", 0)) if most and most.get("CPU", 0) < sys.maxsize else None


# 4. Loopback stays loopback. Ray 2.60 replaces 127.0.0.1 by the machine's own address, for a
# node it starts and for an address it joins, and its agents then listen on every interface,
# unless multi-node clusters are off: ``ENABLE_RAY_CLUSTER``, which Ray reads once from
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when ``ray`` is imported. Set here when Ray is started or
# joined on 127.0.0.1, whatever was imported first.
def keep_loopback_addresses() -> None:
    """From now on, in this process and the Ray processes it starts (the dashboard's among them,
    which otherwise look for Ray Data's numbers at the machine's address): 127.0.0.1 stays 127.0.0.1."""
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


# 5. A stopped head's address. `ray start` notes the head's address for a plain `ray.init()` to
# join; only `ray stop`, and Ray's private utilities, remove that note.
def address_note() -> Path:
    """Where ``ray start`` notes the last head started on this machine (``/tmp/ray/ray_current_cluster``),
    which a plain ``ray.init()`` joins."""
    return Path(ray._common.utils.get_ray_address_file(None))


def forget_stopped_head(address: str) -> None:
    """Remove that note if it names ``address``, a head that has stopped: ``ray stop`` removes it,
    but a ``ray start --block`` ended by SIGTERM leaves it, and a plain ``ray.init()`` then hangs
    trying to join the head that is gone (over 2 minutes here, after ``make run``)."""
    note = address_note()
    with contextlib.suppress(FileNotFoundError):
        if note.read_text().strip() == address:
            note.unlink()
