"""``node_watch.Pool.fits``: whether the nodes left after a loss still hold the pool with room for a
task, checked against every placement Ray could choose."""
import itertools

import pytest

from helpers.machinery.node_watch import UNITS, Pool


def _placements(sizes, pool):
    share = round(pool.cpus_each * UNITS)
    room = []
    for cpus, gpus in sizes:
        most = round(cpus * UNITS) // share
        room.append(min(most, int(gpus // pool.gpus_each)) if pool.gpus_each else most)
    for counts in itertools.product(*(range(most + 1) for most in room)):
        if sum(counts) == pool.actors:
            yield counts


POOLS = [Pool(2, 0.5), Pool(3, 0.5), Pool(4, 0.5), Pool(2, 1.0, task_cpus=0.5), Pool(2, 0.5, gpus_each=1)]
NODES = [((1, 0),), ((2, 0),), ((1, 0), (1, 0)), ((1, 0), (2, 0)), ((0, 0), (2, 0)), ((3, 0),),
         ((1, 1),), ((2, 1), (2, 1)), ((1, 2),), ((2, 0), (2, 0), (1, 0))]


@pytest.mark.parametrize("pool", POOLS, ids=str)
@pytest.mark.parametrize("sizes", NODES, ids=str)
def test_fits_agrees_with_every_placement(pool, sizes):
    task = round((pool.task_cpus or pool.cpus_each) * UNITS)
    full = list(_placements(sizes, pool))
    expected = bool(full) and all(
        max(round(cpus * UNITS) - count * round(pool.cpus_each * UNITS) for (cpus, _), count in zip(sizes, counts)) >= task
        for counts in full)
    assert pool.fits(sizes) == expected


@pytest.mark.parametrize("sizes, fits", [
    (((1, 0),), False),  # two 1-CPU nodes lost one: both 0.5-CPU actors on the head, no CPU for a task
    (((1, 0), (2, 0)), True),  # a 1-CPU node of 1 + 1 + 2 lost: the actors and a task still fit
    (((2, 0),), True),  # 2 actors of 0.5 on 2 CPUs leave a whole CPU
])
def test_the_cluster_tests_losses(sizes, fits):
    assert Pool(2, 0.5).fits(sizes) == fits


def test_a_pool_describes_itself():
    assert str(Pool(2, 0.5)) == "2 actor(s) x 0.5 CPU" and str(Pool(1, 0.5, gpus_each=1)) == "1 actor(s) x 0.5 CPU + 1 GPU"
