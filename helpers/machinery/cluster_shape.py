"""The cluster Ray reports: its live nodes and their sizes, whether it is this machine alone,
and how far an actor pool may grow with it (what notebook 03's sizing rule cannot see)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from helpers.machinery import ray_workarounds
from helpers.machinery.ray_start import LOOPBACK_HOSTS

NodeSize = tuple[float, float]  # (CPUs, GPUs)
GROWTH_WHERE_UNKNOWN = 2  # a cluster that does not say how far it grows: twice the pool


@dataclass(frozen=True)
class ClusterInfo:
    """What Ray has to work with: each live node's (CPUs, GPUs), the object store, how far it may grow."""

    node_sizes: tuple[NodeSize, ...]
    object_store_bytes: float = 0.0
    largest: NodeSize | None = None  # the most (CPUs, GPUs) it may have; None: Ray does not know

    @property
    def cpus(self) -> float:
        return sum(cpus for cpus, _ in self.node_sizes)

    @property
    def gpus(self) -> float:
        return sum(gpus for _, gpus in self.node_sizes)

    def describe_nodes(self) -> str:
        """The node sizes in words: "1, 2 CPUs", or "8 CPUs + 2 GPUs, 4 CPUs" with GPUs."""
        if not self.gpus:
            return ", ".join(f"{cpus:g}" for cpus, _ in self.node_sizes) + " CPUs"
        sizes = []
        for cpus, gpus in self.node_sizes:
            sizes.append(f"{cpus:g} CPUs + {gpus:g} GPUs" if gpus else f"{cpus:g} CPUs")
        return ", ".join(sizes)

    def most_actors(self, num_actors: int) -> int:
        """How many actors a pool of ``num_actors`` may grow to as nodes join: in step with the
        CPUs (GPUs, where the actors use GPUs) the cluster's autoscaler may add, twice where Ray
        does not know how far the cluster grows, none on this machine alone (nothing joins it)."""
        if self.largest is None:
            return num_actors * GROWTH_WHERE_UNKNOWN
        kind = 1 if self.gpus else 0  # index in (CPUs, GPUs)
        now = self.gpus if self.gpus else self.cpus
        return max(num_actors, math.floor(num_actors * self.largest[kind] / now + 1e-9))

    def __str__(self) -> str:
        import ray
        return (f"Ray {ray.__version__}: {len(self.node_sizes)} node(s) ({self.describe_nodes()}), "
                f"{self.object_store_bytes / 2**30:.1f} GiB object store")


def live_nodes() -> dict[str, dict]:
    """The live nodes, by ID: ``ray.nodes()`` entries with ``Alive``."""
    import ray
    return {node["NodeID"]: node for node in ray.nodes() if node["Alive"]}


def node_size(node: dict) -> NodeSize:
    return node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0)


def this_machine_alone(nodes: list[dict] | None = None) -> bool:
    """Whether the cluster (its live ``nodes``; by default the connected one's) is one node on
    127.0.0.1: Ray there listens on loopback only, so no other machine can join it."""
    nodes = list(live_nodes().values()) if nodes is None else nodes
    return len(nodes) == 1 and nodes[0]["NodeManagerAddress"] in LOOPBACK_HOSTS


def describe() -> ClusterInfo:
    """The cluster this process is connected to: its live nodes, their resources, how far it may grow."""
    import ray
    nodes = list(live_nodes().values())
    sizes = tuple(sorted(node_size(node) for node in nodes))
    if this_machine_alone(nodes):
        largest = (sum(cpus for cpus, _ in sizes), sum(gpus for _, gpus in sizes))
    else:
        largest = ray_workarounds.largest_cluster()
    return ClusterInfo(sizes, ray.cluster_resources().get("object_store_memory", 0.0), largest)
