import itertools
import re

import numpy as np
import pytest
from helpers import inference
from helpers.cluster import ClusterInfo
from helpers.settings import SettingsError


def _nodes(*sizes):
    """A cluster of nodes of these sizes: CPUs, or (CPUs, GPUs)."""
    return ClusterInfo(tuple(size if isinstance(size, tuple) else (size, 0) for size in sizes), 2**30)


def _cluster(cpus, gpus=0):
    return _nodes((cpus, gpus))


def test_two_cpus_get_two_single_threaded_actors_that_leave_a_core_for_the_tasks():
    plan = inference.plan_actors(_cluster(2), None)
    assert (plan.num_actors, plan.num_cpus, plan.num_gpus, plan.threads) == (2, 0.5, 0, 1)
    assert plan.decodes_in_actors and plan.decode_cpus == plan.num_cpus  # Ray fuses decoding in
    assert plan.task_cpus == plan.read_cpus == 1  # one read or write at a time: one worker serves them all
    assert str(plan) == ("2 actor(s) (up to 4 as nodes join) x 0.5 CPU (1 thread(s) each); 1 CPU per write task, "
                         "1 per read task")


@pytest.mark.parametrize("nodes, largest, num_actors, most", [
    ((2, 0), (2, 0), None, 2),  # Ray on this machine alone: nothing joins, the pool keeps its size
    ((2, 0), None, None, 4),  # a cluster that does not say how far it grows: twice the plan
    ((2, 0), (9, 0), None, 9),  # an autoscaler allows 9 CPUs: as many actors a CPU as now
    ((2, 0), None, 2, 2),  # a given num_actors is the pool's size
    ((16, 2), (48, 6), None, 6),  # one actor a GPU, on as many GPUs as the cluster may have
])
def test_the_pool_may_grow_onto_joining_nodes_as_far_as_the_cluster_may(nodes, largest, num_actors, most):
    plan = inference.plan_actors(ClusterInfo((nodes,), 2**30, largest), num_actors)
    assert (plan.num_actors, plan.max_actors) == (nodes[1] or 2, most)
    assert ("up to" in str(plan)) == (most > plan.num_actors)


def test_reads_from_a_bucket_reserve_an_eighth_so_that_eight_wait_at_once():
    plan = inference.plan_actors(_cluster(2), None, reads_from_a_bucket=True)
    assert (plan.task_cpus, plan.read_cpus, plan.read_tasks) == (1, 0.125, 8)
    assert str(plan).endswith("1 CPU per write task, 0.125 per read task (8 read tasks)")
    assert inference.plan_actors(_cluster(2), None).read_tasks is None  # local files: Ray's default


def test_a_bucket_read_comes_as_eight_read_tasks_per_cpu_node():
    assert inference.plan_actors(_nodes((0, 0), (2, 0), (4, 0)), None, reads_from_a_bucket=True).read_tasks == 16


@pytest.mark.parametrize("cpus, tasks_at_once", [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 16)])
def test_cpu_tasks_take_a_whole_cpu_of_what_the_actors_leave(cpus, tasks_at_once):
    plan = inference.plan_actors(_cluster(cpus), None)
    assert int((cpus - plan.num_actors * plan.num_cpus) / plan.task_cpus) == tasks_at_once


def test_one_actor_on_two_cpus_uses_both_and_leaves_decoding_to_tasks():
    plan = inference.plan_actors(_cluster(2), 1)
    assert (plan.num_actors, plan.num_cpus, plan.threads) == (1, 1, 2)
    assert not plan.decodes_in_actors and plan.decode_cpus != plan.num_cpus


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
def test_actors_never_reserve_every_cpu_and_their_threads_fill_the_cores(cpus):
    plan = inference.plan_actors(_cluster(cpus), None)
    assert plan.num_actors * plan.num_cpus <= cpus - plan.task_cpus
    assert plan.num_actors * plan.threads == cpus


def test_large_cpu_nodes_get_several_four_thread_actors():
    plan = inference.plan_actors(_nodes(8, 8), None)
    assert (plan.num_actors, plan.num_cpus, plan.threads) == (4, 3, 4) and not plan.decodes_in_actors


def test_one_actor_per_gpu():
    plan = inference.plan_actors(_cluster(16, gpus=2), None)
    assert (plan.num_actors, plan.num_gpus) == (2, 1)


def test_cpu_plans_never_ask_for_gpus():
    assert inference.plan_actors(_cluster(8), None).num_gpus == 0


@pytest.mark.parametrize("cpus, gpus, asked", [(2, 0, 3), (8, 0, 9), (8, 2, 3)])
def test_more_actors_than_the_cluster_hosts_fail_at_once(cpus, gpus, asked):
    with pytest.raises(SettingsError, match=f"num_actors={asked} is more than"):
        inference.plan_actors(_cluster(cpus, gpus), asked)


# What the plan gave before it looked at nodes: (cpus, num_actors) -> (actors, num_cpus, threads, task_cpus).
SINGLE_NODE_PLANS = {
    (1, None): (1, 0.5, 1, 0.5), (1, 1): (1, 0.5, 1, 0.5),
    (2, None): (2, 0.5, 1, 1.0), (2, 1): (1, 1.0, 2, 1.0), (2, 2): (2, 0.5, 1, 1.0),
    (3, None): (3, 2 / 3, 1, 1.0), (3, 1): (1, 2.0, 3, 1.0), (3, 2): (2, 1.0, 1, 1.0),
    (4, None): (4, 0.75, 1, 1.0), (4, 1): (1, 3.0, 4, 1.0), (4, 2): (2, 1.5, 2, 1.0), (4, 3): (3, 1.0, 1, 1.0),
    (5, None): (1, 4.0, 5, 1.0), (5, 3): (3, 4 / 3, 1, 1.0),
    (8, None): (2, 3.0, 4, 1.0), (8, 3): (3, 2.0, 2, 1.0), (8, 4): (4, 1.5, 2, 1.0),
    (12, None): (3, 3.0, 4, 1.0), (12, 4): (4, 2.25, 3, 1.0),
    (16, None): (4, 3.0, 4, 1.0), (16, 1): (1, 12.0, 16, 1.0), (16, 3): (3, 4.0, 5, 1.0),
    (64, None): (16, 3.0, 4, 1.0), (64, 3): (3, 16.0, 21, 1.0),
}


@pytest.mark.parametrize("cpus, num_actors", SINGLE_NODE_PLANS)
def test_single_nodes_keep_the_plans_they_had(cpus, num_actors):
    """Node by node or from the totals, one machine gets the same plan (shares to Ray's 0.0001)."""
    actors, num_cpus, threads, task_cpus = SINGLE_NODE_PLANS[cpus, num_actors]
    for cluster in (_nodes(cpus), _nodes(0, cpus)):  # a 0-CPU head changes nothing
        plan = inference.plan_actors(cluster, num_actors)
        assert (plan.num_actors, plan.threads, plan.task_cpus) == (actors, threads, task_cpus)
        assert plan.num_cpus == pytest.approx(num_cpus, abs=1e-4) and plan.num_cpus <= num_cpus


def test_single_gpu_nodes_keep_the_plans_they_had():
    plan = inference.plan_actors(_nodes((16, 2)), None)
    assert (plan.num_actors, plan.num_cpus, plan.num_gpus, plan.threads, plan.task_cpus) == (2, 1, 1, 8, 0.5)


UNITS = inference.UNITS


def _placements(sizes, plan):
    """Every count of actors per node, up to ``plan.num_actors`` in all, that Ray's resources allow."""
    share = round(plan.num_cpus * UNITS)
    room = [min(cpus * UNITS // share if share else plan.num_actors, gpus if plan.num_gpus else plan.num_actors)
            for cpus, gpus in sizes]
    for counts in itertools.product(*(range(int(most) + 1) for most in room)):
        if sum(counts) <= plan.num_actors:
            yield counts, room


SHAPES = [
    (1,), (2,), (3,), (4,), (5,), (8,), (16,),
    (1, 1), (2, 2), (0, 2), (1, 2, 3), (1, 1, 2), (2, 3), (1, 16), (2, 16), (8, 8), (1, 1, 1, 1),
    ((16, 2),), ((1, 1),), ((2, 1),), ((8, 1), (8, 1)), ((4, 1), 2), ((0, 0), (1, 1), 2), ((0, 1), 4),
    ((2, 1), (2, 1), 1), ((3, 2), 1),
]


def _asked(sizes):
    """None, and every actor count the cluster accepts up to 6."""
    gpus = sum(g for _, g in sizes)
    most = gpus or sum(int(c) for c, _ in sizes)
    return [None, *range(1, min(most, 6) + 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_placement_of_the_actors_leaves_room_for_every_stage(shape):
    """However Ray places the actors, each one finds a node with room, and once they are all
    placed (or any number of them) some node still has room for a read, decode or write task."""
    cluster = _nodes(*shape)
    for num_actors in _asked(cluster.node_sizes):
        plan = inference.plan_actors(cluster, num_actors)
        assert plan.num_actors == (num_actors or plan.num_actors) and plan.num_actors >= 1
        assert plan.num_gpus == (1 if any(gpus for _, gpus in cluster.node_sizes) else 0)
        assert 0 < plan.task_cpus <= min(c for c, _ in cluster.node_sizes if c) / 2 and plan.decode_cpus > 0
        task = round(max(plan.task_cpus, 0 if plan.decodes_in_actors else plan.decode_cpus) * UNITS)
        share = round(plan.num_cpus * UNITS)
        placements = 0
        for counts, room in _placements(cluster.node_sizes, plan):
            placements += 1
            free = [cpus * UNITS - count * share for (cpus, _), count in zip(cluster.node_sizes, counts)]
            assert max(free) >= task, (shape, num_actors, plan, counts)
            if sum(counts) < plan.num_actors:  # the next actor finds room somewhere
                assert any(count < most for count, most in zip(counts, room)), (shape, num_actors, plan, counts)
        assert placements > 1


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (0, 2), (1, 2, 3)], ids=str)
def test_cpu_actors_on_small_nodes_run_one_thread_each_and_fill_the_cores(shape):
    plan = inference.plan_actors(_nodes(*shape), None)
    assert plan.threads == 1 and plan.num_actors == sum(shape) and plan.decodes_in_actors


def test_two_one_cpu_nodes_get_an_actor_each_and_tasks_of_half_a_cpu():
    plan = inference.plan_actors(_nodes(1, 1), None)
    assert (plan.num_actors, plan.num_cpus, plan.threads, plan.task_cpus) == (2, 0.5, 1, 0.5)


def test_a_gpu_node_with_one_cpu_leaves_half_of_it_for_the_tasks():
    plan = inference.plan_actors(_nodes((1, 1)), None)
    assert (plan.num_actors, plan.num_cpus, plan.num_gpus, plan.task_cpus) == (1, 0.5, 1, 0.5)


@pytest.mark.parametrize("shape, asked, sizes", [
    ((1, 1), 3, "nodes of 1, 1 CPUs"), ((0, 2), 3, "nodes of 0, 2 CPUs"), ((1, 2, 3), 7, "nodes of 1, 2, 3 CPUs"),
    (((16, 2), 4), 3, "nodes of 16 CPUs + 2 GPUs, 4 CPUs"),
], ids=str)
def test_too_many_actors_fail_naming_num_actors_and_the_node_sizes(shape, asked, sizes):
    with pytest.raises(SettingsError, match=f"num_actors={asked} .*{re.escape(sizes)}.*use at most") as raised:
        inference.plan_actors(_nodes(*shape), asked)
    assert str(sum(g for _, g in _nodes(*shape).node_sizes) or sum(shape)) in str(raised.value)


def test_cluster_info_names_its_node_sizes():
    assert "2 node(s) (0, 2 CPUs), 1.0 GiB object store" in str(_nodes(0, 2))
    assert _nodes((8, 2), 4).describe_nodes() == "8 CPUs + 2 GPUs, 4 CPUs"


@pytest.mark.parametrize("shape, lost, fits", [
    ((1, 1), 1, False),  # both 0.5-CPU actors on the head leave no CPU for a task: the run would hang
    ((2, 2), 1, False),
    ((1, 1, 2), 0, True),  # a 1-CPU worker lost: 1 + 2 CPUs hold the 4 actors and a task
    ((1, 1, 2), 2, False),
    ((0, 2), 0, True),  # the head had nothing
    (((2, 1), (2, 1)), 1, False),  # one GPU left for two GPU actors
], ids=str)
def test_a_plan_knows_whether_the_nodes_left_still_hold_it(shape, lost, fits):
    cluster = _nodes(*shape)
    plan = inference.plan_actors(cluster, None)
    assert plan.fits(cluster.node_sizes)
    assert plan.fits(cluster.node_sizes[:lost] + cluster.node_sizes[lost + 1:]) == fits


def test_steady_throughput_excludes_the_first_batch():
    import pandas as pd

    finished = pd.DataFrame({"predicted_at": [10.0] * 32 + [11.0] * 32 + [12.0] * 10, "actor": "a"})
    assert inference.steady_images_per_second(finished) == 21.0
    assert np.isnan(inference.steady_images_per_second(pd.DataFrame({"predicted_at": [5.0] * 8, "actor": "a"})))


def test_steady_throughput_starts_once_every_actor_is_up():
    import pandas as pd

    early = pd.DataFrame({"predicted_at": [10.0] * 8 + [11.0] * 8 + [12.0] * 8 + [13.0] * 8, "actor": "a"})
    late = pd.DataFrame({"predicted_at": [12.0] * 8 + [13.0] * 8, "actor": "b"})  # up 2 s later
    # From 12.0 (b's first batch) to 13.0: a's and b's batches at 13.0 count, 16 images in 1 s.
    assert inference.steady_images_per_second(pd.concat([early, late])) == 16.0


def test_describe_predictions_gives_plain_arrow_columns_and_nulls_for_unreadable_rows():
    scores = np.array([[0.5, 0.2, 0.1, 0.1, 0.1]], np.float32)
    indices = np.array([[281, 282, 285, 0, 1]])
    table = inference.describe_predictions(scores, indices, np.array([True, False]), label=np.array(["n02123045"] * 2))
    row, unreadable = table.to_pylist()
    assert row["label"] == "n02123045" and row["top1_wnid"] == "n02123045"
    assert row["top1_name"] == "tabby" and row["top5_name"][2] == "Egyptian cat"
    assert row["top5_index"] == [281, 282, 285, 0, 1]
    assert unreadable["top1_name"] is None and unreadable["top5_wnid"] is None
    assert str(table.schema.field("top5_wnid").type) == "list<item: string>"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fits_agrees_with_every_placement_on_the_nodes_left(shape):
    """``fits`` says yes exactly when every placement of all the actors on the nodes left
    leaves some node room for a task (counted placement by placement, as Ray could place them)."""
    cluster = _nodes(*shape)
    for num_actors in _asked(cluster.node_sizes):
        plan = inference.plan_actors(cluster, num_actors)
        task = round(max(plan.task_cpus, plan.read_cpus) * UNITS)
        for lost in range(len(shape)):
            left = cluster.node_sizes[:lost] + cluster.node_sizes[lost + 1:]
            full = [counts for counts, _ in _placements(left, plan) if sum(counts) == plan.num_actors]
            expected = bool(full) and all(
                max(cpus * UNITS - count * round(plan.num_cpus * UNITS) for (cpus, _), count in zip(left, counts)) >= task
                for counts in full)
            assert plan.fits(left) == expected, (shape, num_actors, lost, plan)
