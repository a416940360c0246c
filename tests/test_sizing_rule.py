"""Notebook 03's sizing rule, read from its cell and run on every node shape: however Ray places
the actors it asks for, each finds a node with room, and some node keeps room for a task."""
import itertools
import re
from types import SimpleNamespace

import nbformat
import pytest

from helpers.machinery import series
from helpers.machinery.node_watch import UNITS

SHAPES = [  # (CPUs, GPUs) per node; the cluster tests' shapes first
    ((2, 0),), ((1, 0), (1, 0)), ((0, 0), (2, 0)), ((1, 0), (1, 0), (2, 0)),
    ((1, 0),), ((3, 0),), ((8, 0),), ((16, 0),), ((1, 0), (16, 0)), ((2, 0), (3, 0)), ((1, 0),) * 4,
    ((16, 2),), ((1, 1),), ((8, 1), (8, 1)), ((4, 1), (2, 0)), ((0, 0), (1, 1), (2, 0)),
]


def _rule_cell() -> str:
    notebook = nbformat.read(series.NOTEBOOKS[2], as_version=4)
    return next(cell.source for cell in notebook.cells if cell.cell_type == "code" and "share = " in cell.source)


def _apply_rule(shape, num_actors=None) -> dict:
    """The rule's cell run against a cluster of this shape: its num_actors, share and GPUs."""
    resources = {"CPU": float(sum(cpus for cpus, _ in shape))}
    if any(gpus for _, gpus in shape):
        resources["GPU"] = float(sum(gpus for _, gpus in shape))
    namespace = {"ray": SimpleNamespace(cluster_resources=lambda: resources),
                 "cfg": SimpleNamespace(num_actors=num_actors), "print": lambda *args: None}
    exec(_rule_cell(), namespace)  # noqa: S102 - the notebook's own cell
    return namespace


def _placements(shape, actors, share, gpus_each):
    """Every count of actors per node, up to ``actors`` in all, that the nodes' resources allow."""
    room = []
    for cpus, gpus in shape:
        most = round(cpus * UNITS) // round(share * UNITS)
        room.append(min(most, int(gpus // gpus_each)) if gpus_each else most)
    for counts in itertools.product(*(range(most + 1) for most in room)):
        if sum(counts) <= actors:
            yield counts, room


def test_the_rule_is_typed_on_rays_resources_with_its_reason():
    cell = _rule_cell()
    assert "ray.cluster_resources()" in cell and "plan" not in cell
    assert len([line for line in cell.splitlines() if line.strip() and not line.strip().startswith("#")]) <= 10


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_placement_leaves_a_node_room_for_a_task(shape):
    rule = _apply_rule(shape)
    actors, share, gpus_each = rule["num_actors"], rule["share"], rule["gpu"].get("num_gpus", 0)
    task = round(share * UNITS)
    assert actors >= 1
    placements = 0
    for counts, room in _placements(shape, actors, share, gpus_each):
        placements += 1
        free = [round(cpus * UNITS) - count * round(share * UNITS) for (cpus, _), count in zip(shape, counts)]
        assert max(free) >= task, (shape, actors, counts)  # a read, decode or write task can start
        if sum(counts) < actors:  # the next actor finds room somewhere
            assert any(count < most for count, most in zip(counts, room)), (shape, actors, counts)
    assert placements > 1


def test_one_actor_per_cpu_and_per_gpu_where_there_are_gpus():
    assert _apply_rule(((2, 0),))["num_actors"] == 2 and _apply_rule(((2, 0),))["gpu"] == {}
    assert _apply_rule(((16, 2),))["num_actors"] == 2 and _apply_rule(((16, 2),))["gpu"] == {"num_gpus": 1}
    assert _apply_rule(((2, 0),), num_actors=3)["num_actors"] == 3  # yours, where it leaves room


def test_more_actors_than_leave_a_cpu_for_the_tasks_fail_at_once_naming_num_actors():
    with pytest.raises(ValueError, match=re.escape("num_actors=4 leaves no CPU for the tasks on 2 CPUs: use at most 3.")):
        _apply_rule(((2, 0),), num_actors=4)
