"""What notebook 03 reads of the cluster beyond its sizing rule: node sizes in words, whether it
is this machine alone, how far a pool may grow."""
import pytest

from helpers.machinery import cluster_shape
from helpers.machinery.cluster_shape import ClusterInfo


def test_node_sizes_in_words():
    assert "2 node(s) (0, 2 CPUs), 1.0 GiB object store" in str(ClusterInfo(((0, 0), (2, 0)), 2**30))
    assert ClusterInfo(((8, 2), (4, 0))).describe_nodes() == "8 CPUs + 2 GPUs, 4 CPUs"


@pytest.mark.parametrize("nodes, largest, most", [
    (((2, 0),), (2, 0), 2),  # this machine alone: nothing joins, the pool keeps its size
    (((2, 0),), None, 4),  # a cluster that does not say how far it grows: twice the pool
    (((2, 0),), (9, 0), 9),  # an autoscaler allows 9 CPUs: as many actors a CPU as now
    (((16, 2),), (48, 6), 6),  # one actor a GPU, on as many GPUs as the cluster may have
])
def test_a_pool_may_grow_as_far_as_the_cluster_may(nodes, largest, most):
    info = ClusterInfo(nodes, 2**30, largest)
    actors = int(info.gpus) or int(info.cpus)
    assert info.most_actors(actors) == most


def test_this_machine_alone_is_one_node_on_loopback():
    node = {"NodeManagerAddress": "127.0.0.1", "Alive": True}
    assert cluster_shape.this_machine_alone([node])
    assert not cluster_shape.this_machine_alone([node, node])  # a loopback cluster of two nodes can grow
    assert not cluster_shape.this_machine_alone([{**node, "NodeManagerAddress": "10.0.0.7"}])
