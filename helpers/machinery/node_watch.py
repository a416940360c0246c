"""Watching the nodes during a run: Ray restarts a lost node's actors on the nodes left, and a
run whose actors then leave no node room for a task waits forever. ``watching`` stops such a
run within seconds of Ray marking the node dead, by interrupting the main thread, naming it."""
from __future__ import annotations

import _thread
import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from helpers.machinery import cluster_shape, ray_workarounds
from helpers.machinery.cluster_shape import ClusterInfo, NodeSize

CHECK_EVERY_S = 2.0
UNITS = 10_000  # Ray's resolution: resource shares are rounded down to 1/10,000


@dataclass(frozen=True)
class Pool:
    """An actor pool and the tasks beside it: what each reserves."""

    actors: int
    cpus_each: float
    gpus_each: float = 0.0
    task_cpus: float | None = None  # what each read, decode or write task reserves; None: cpus_each

    def fits(self, node_sizes: tuple[NodeSize, ...]) -> bool:
        """Whether these nodes hold every actor and, however Ray places them, leave some node
        room for a task."""
        share = round(self.cpus_each * UNITS)
        task = round((self.cpus_each if self.task_cpus is None else self.task_cpus) * UNITS)
        room, fill = [], []  # per node: the most actors it holds; the fewest that leave it no room for a task
        for cpus, gpus in node_sizes:
            units = round(cpus * UNITS)
            most = units // share if share else self.actors
            room.append(min(most, int(gpus // self.gpus_each)) if self.gpus_each else most)
            if units < task:
                fill.append(0)
            elif share:
                fill.append((units - task) // share + 1)
            else:
                fill.append(math.inf)
        placeable = sum(room) >= self.actors
        always_room = any(low > high for low, high in zip(fill, room)) or sum(fill) > self.actors
        return placeable and always_room

    def __str__(self) -> str:
        gpus = f" + {self.gpus_each:g} GPU" if self.gpus_each else ""
        return f"{self.actors} actor(s) x {self.cpus_each:g} CPU{gpus}"


@contextlib.contextmanager
def watching(pool: Pool, lost: list[str]) -> Iterator[None]:
    """For the duration, every ``CHECK_EVERY_S``: if a node is gone and the pool (as planned, or
    as grown since it started) no longer fits the nodes left, say why in ``lost`` and interrupt
    the main thread (a ``KeyboardInterrupt`` there)."""
    stop = threading.Event()
    start, before = cluster_shape.live_nodes(), ray_workarounds.live_actors()

    def watch() -> None:
        while not stop.wait(CHECK_EVERY_S):
            try:
                live = cluster_shape.live_nodes()
                gone = [node for node_id, node in start.items() if node_id not in live]
                actors = len(ray_workarounds.live_actors() - before) if gone else 0
            except Exception:  # noqa: BLE001 - the connection to Ray comes and goes
                continue
            sizes = tuple(sorted(cluster_shape.node_size(node) for node in live.values()))
            grown = replace(pool, actors=max(pool.actors, actors))
            if gone and not grown.fits(sizes) and not stop.is_set():
                lost.append(_lost_message(gone, grown, sizes))
                _thread.interrupt_main()
                return

    thread = threading.Thread(target=watch, daemon=True, name="node-watch")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _lost_message(gone: list[dict], pool: Pool, sizes: tuple[NodeSize, ...]) -> str:
    names = ", ".join(f"{node['NodeID'][:12]} ({node['NodeManagerAddress']}, {node['Resources'].get('CPU', 0):g} CPUs)"
                      for node in gone)
    left = ClusterInfo(sizes).describe_nodes()
    return (f"Lost node {names} at {time.strftime('%H:%M:%S')}: the pool ({pool}) does not fit the nodes left "
            f"({left}) with room for a task, so the run would wait forever for a CPU.")
