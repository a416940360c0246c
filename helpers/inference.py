"""Around notebook 03's pipeline (its classes and calls are typed in the notebook): the actor
plan, predictions as a table of names, the steady images per second."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from helpers import labels
from helpers.cluster import ClusterInfo
from helpers.settings import SettingsError

LARGE_NODE_THREADS = 4  # threads per CPU actor where some node has more CPUs than this
UNITS = 10_000  # Ray's resolution: resource shares are rounded down to 1/10,000
READS_AT_ONCE_FROM_A_BUCKET = 8  # read tasks per task share: their requests' latency overlaps


@dataclass(frozen=True)
class ActorPlan:
    """How many model copies (actors), what each reserves, and what the read and write tasks get."""

    num_actors: int
    num_cpus: float  # reserved by each actor
    num_gpus: int  # per actor: 1 where there are GPUs
    threads: int  # PyTorch threads per actor
    task_cpus: float  # reserved by each write task, and by each read task of local files
    read_cpus: float  # reserved by each read task
    read_tasks: int | None = None  # read tasks for the whole read (None: Ray's default)
    max_actors: int = 0  # the pool grows to this many as nodes join (0: num_actors)

    @property
    def decodes_in_actors(self) -> bool:
        """Single-threaded CPU actors decode their own images (Ray fuses the decoding ``map``
        into the actor when both reserve the same); GPU actors and actors of several threads
        get their pixels from decode tasks, which run while they infer."""
        return not self.num_gpus and self.threads == 1

    @property
    def decode_cpus(self) -> float:
        """What each ``ds.map(preprocess)`` task reserves: the actors' share, or a small one."""
        return self.num_cpus if self.decodes_in_actors else min(0.5, self.task_cpus)

    def __str__(self) -> str:
        gpu = " + 1 GPU" if self.num_gpus else ""
        grows = f" (up to {self.max_actors} as nodes join)" if self.max_actors > self.num_actors else ""
        return (f"{self.num_actors} actor(s){grows} x {self.num_cpus:g} CPU{gpu} ({self.threads} thread(s) each); "
                f"{self.task_cpus:g} CPU per write task, {self.read_cpus:g} per read task"
                + (f" ({self.read_tasks} read tasks)" if self.read_tasks else ""))

    def fits(self, node_sizes: tuple[tuple[float, float], ...]) -> bool:
        """Whether these nodes hold every actor and, however Ray places them, leave some node
        room for a task: what the plan guarantees for the nodes it was made for."""
        share, task = round(self.num_cpus * UNITS), round(max(self.task_cpus, self.read_cpus) * UNITS)
        room, fill = [], []  # per node: the most actors it holds; the fewest that leave it no room
        for cpus, gpus in node_sizes:
            units = round(cpus * UNITS)
            most = units // share if share else self.num_actors
            room.append(min(most, int(gpus)) if self.num_gpus else most)
            fill.append(0 if units < task else (units - task) // share + 1 if share else math.inf)
        return sum(room) >= self.num_actors and (any(low > high for low, high in zip(fill, room))
                                                 or sum(fill) > self.num_actors)


def plan_actors(cluster: ClusterInfo, num_actors: int | None, reads_from_a_bucket: bool = False) -> ActorPlan:
    """One actor per GPU; on CPUs one single-threaded actor per core (4 threads per 4 cores where
    a node has more than 4), node by node, so that however Ray places them all find room and some
    node keeps ``task_cpus`` (a whole CPU, or half the smallest node) for a read or write task.
    Reads from a bucket reserve an eighth of that and come as 8 tasks per node, so that their
    requests wait together. A given ``num_actors`` share what the tasks leave (README: Performance).
    Unless ``num_actors`` fixes it, the pool may grow onto joining nodes as far as the cluster's
    CPUs (GPUs) may (twice, where Ray does not know).
    """
    cpu_nodes = [cpus for cpus, _ in cluster.node_sizes if cpus > 0]
    if not cpu_nodes:
        raise SettingsError("Ray reports no CPUs: check the cluster (`ray status`).")
    task_cpus = min(1.0, min(cpu_nodes) / 2)
    bucket_nodes = len(cpu_nodes) if reads_from_a_bucket else 0
    gpu_nodes = [(cpus, int(gpus)) for cpus, gpus in cluster.node_sizes if gpus >= 1]
    most = sum(gpus for _, gpus in gpu_nodes) or sum(int(cpus) for cpus in cpu_nodes)
    if num_actors and num_actors > most:
        per = "one actor per GPU" if gpu_nodes else "at most one actor per CPU"
        raise SettingsError(f"num_actors={num_actors} is more than this cluster can host (nodes of "
                            f"{cluster.describe_nodes()}; {per}): use at most {most}, or None for automatic.")
    if gpu_nodes:
        actors, task_cpus = num_actors or most, min(0.5, task_cpus)
        share = min(1.0, *(max(0.0, cpus - task_cpus) / gpus for cpus, gpus in gpu_nodes))
        threads = max(1, int(sum(cpus for cpus, _ in gpu_nodes)) // actors)
        return _plan(actors, share, 1, threads, task_cpus, bucket_nodes, cluster, num_actors)
    for_tasks = [max(task_cpus, cpus // 4) for cpus in cpu_nodes]
    if actors := num_actors:  # each reserves what the tasks leave, at most what lets all find room however placed
        shares = sorted({cpus / count for cpus in cpu_nodes for count in range(1, actors + 1)}, reverse=True)
        fitting = next(s for s in shares if sum(math.floor(cpus / s + 1e-9) for cpus in cpu_nodes) >= actors)
        share = min((sum(cpu_nodes) - sum(for_tasks)) / actors, fitting)
    else:
        per_actor = 1 if max(cpu_nodes) <= LARGE_NODE_THREADS else LARGE_NODE_THREADS
        intended = [max(1, int(cpus // per_actor)) for cpus in cpu_nodes]
        actors = sum(intended)
        share = min((cpus - kept) / k for cpus, kept, k in zip(cpu_nodes, for_tasks, intended))
    threads = max(1, min(int(sum(cpu_nodes)) // actors, int(max(cpu_nodes))))  # no more than a node has
    return _plan(actors, share, 0, threads, task_cpus, bucket_nodes, cluster, num_actors)


def _plan(actors: int, share: float, gpus: int, threads: int, task_cpus: float, bucket_nodes: int,
          cluster: ClusterInfo, num_actors: int | None) -> ActorPlan:
    """Shares rounded down to Ray's resolution, so that Ray's sums agree with the plan's;
    ``bucket_nodes``: the CPU nodes that read from a bucket (0: local files); growth as ``plan_actors`` says."""
    now, largest = sum(size[gpus] for size in cluster.node_sizes), cluster.largest  # size[1]: GPUs, [0]: CPUs
    growth = 1.0 if num_actors else 2.0 if largest is None else max(1.0, largest[gpus] / now)
    read_cpus = task_cpus / READS_AT_ONCE_FROM_A_BUCKET if bucket_nodes else task_cpus
    return ActorPlan(actors, math.floor(share * UNITS + 1e-6) / UNITS, gpus, threads, task_cpus, read_cpus,
                     READS_AT_ONCE_FROM_A_BUCKET * bucket_nodes or None, math.floor(actors * growth + 1e-9))


def describe_predictions(scores: np.ndarray, indices: np.ndarray, valid: np.ndarray | None = None,
                         **leading_columns) -> pa.Table:
    """A table of top-1 and top-k (index, WordNet id, name, score) per image, as in the Parquet:
    ``scores`` and ``indices`` hold the rows where ``valid`` is True, the others get nulls."""
    valid = np.ones(len(indices), bool) if valid is None else np.asarray(valid, bool)
    index, score = np.zeros((len(valid), indices.shape[1]), np.int64), np.zeros((len(valid), scores.shape[1]), np.float32)
    index[valid], score[valid] = indices, scores
    top = {"index": (index, pa.int64()), "wnid": (np.array(labels.wnids())[index], pa.string()),
           "name": (np.array(labels.class_names())[index], pa.string()), "score": (score, pa.float32())}
    columns = {name: pa.array(values) for name, values in leading_columns.items()}
    columns |= {f"top1_{key}": pa.array(values[:, 0], kind, mask=~valid) for key, (values, kind) in top.items()}
    columns |= {f"top5_{key}": pa.array(list(values), pa.list_(kind), mask=~valid) for key, (values, kind) in top.items()}
    return pa.table(columns)


def steady_images_per_second(finished: pd.DataFrame) -> float:
    """Images/s from the moment the last actor to start finished its first batch to the last
    batch (NaN when none finishes after): ``finished`` has ``predicted_at`` and ``actor`` per
    image. It leaves out the start-up every run pays once, so that runs of any size compare."""
    all_up = finished.groupby("actor")["predicted_at"].min().max()
    later = finished["predicted_at"][finished["predicted_at"] > all_up]
    span = later.max() - all_up if len(later) else 0.0
    return float(len(later) / span) if span > 0 else math.nan
