import itertools
import re

import numpy as np
import pytest
import torch

from helpers import inference, models
from helpers.cluster import ClusterInfo
from helpers.settings import SettingsError


def _cluster(cpus, gpus=0, nodes=1):
    return ClusterInfo(nodes=nodes, cpus=cpus, gpus=gpus, object_store_bytes=2**30)


def _nodes(*sizes):
    """A cluster of nodes of these sizes: CPUs, or (CPUs, GPUs)."""
    sizes = tuple(size if isinstance(size, tuple) else (size, 0) for size in sizes)
    return ClusterInfo(nodes=len(sizes), cpus=sum(c for c, _ in sizes), gpus=sum(g for _, g in sizes),
                       object_store_bytes=2**30, node_sizes=sizes)


def test_two_cpus_get_two_single_threaded_actors_that_leave_a_core_for_the_tasks():
    plan = inference.plan_actors(_cluster(2), None)
    assert (plan.num_actors, plan.num_cpus, plan.num_gpus, plan.threads) == (2, 0.5, 0, 1)
    assert plan.decodes_in_actors and plan.decode_cpus == plan.num_cpus  # Ray fuses decoding in
    assert plan.remote_args() == {"num_cpus": 0.5}
    assert plan.task_cpus == 1  # one read or write at a time: one worker process serves them all


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
    assert plan.remote_args()["num_gpus"] == 1


def test_cpu_plans_never_ask_for_gpus():
    assert "num_gpus" not in inference.plan_actors(_cluster(8), None).remote_args()


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
    for cluster in (_nodes(cpus), _cluster(cpus), _nodes(0, cpus)):  # a 0-CPU head changes nothing
        plan = inference.plan_actors(cluster, num_actors)
        assert (plan.num_actors, plan.threads, plan.task_cpus) == (actors, threads, task_cpus)
        assert plan.num_cpus == pytest.approx(num_cpus, abs=1e-4) and plan.num_cpus <= num_cpus


def test_single_gpu_nodes_keep_the_plans_they_had():
    plan = inference.plan_actors(_nodes((16, 2)), None)
    assert (plan.num_actors, plan.num_cpus, plan.num_gpus, plan.threads, plan.task_cpus) == (2, 1, 1, 8, 0.5)


UNITS = inference.RESOURCE_UNITS_PER_CPU


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
    for num_actors in _asked(cluster.sizes):
        plan = inference.plan_actors(cluster, num_actors)
        assert plan.num_actors == (num_actors or plan.num_actors) and plan.num_actors >= 1
        assert plan.num_gpus == (1 if cluster.gpus else 0)
        assert 0 < plan.task_cpus <= min(c for c, _ in cluster.sizes if c) / 2 and plan.decode_cpus > 0
        task = round(max(plan.task_cpus, 0 if plan.decodes_in_actors else plan.decode_cpus) * UNITS)
        share = round(plan.num_cpus * UNITS)
        placements = 0
        for counts, room in _placements(cluster.sizes, plan):
            placements += 1
            free = [cpus * UNITS - count * share for (cpus, _), count in zip(cluster.sizes, counts)]
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
    assert plan.remote_args() == {"num_cpus": 0.5, "num_gpus": 1}


@pytest.mark.parametrize("shape, asked, sizes", [
    ((1, 1), 3, "nodes of 1, 1 CPUs"), ((0, 2), 3, "nodes of 0, 2 CPUs"), ((1, 2, 3), 7, "nodes of 1, 2, 3 CPUs"),
    (((16, 2), 4), 3, "nodes of 16 CPUs + 2 GPUs, 4 CPUs"),
], ids=str)
def test_too_many_actors_fail_naming_num_actors_and_the_node_sizes(shape, asked, sizes):
    with pytest.raises(SettingsError, match=f"num_actors={asked} .*{re.escape(sizes)}.*use at most") as raised:
        inference.plan_actors(_nodes(*shape), asked)
    assert str(sum(g for _, g in _nodes(*shape).sizes) or sum(shape)) in str(raised.value)


def test_cluster_info_names_its_node_sizes():
    assert "2 node(s) (0, 2 CPUs), 2 CPUs, 0 GPUs" in str(_nodes(0, 2))
    assert _cluster(4).describe_nodes() == "4 CPUs"  # built by hand: the totals as one node


def _jpeg(width, height) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, "JPEG")
    return buffer.getvalue()


def test_decode_and_preprocess_gives_fixed_size_pixels_and_the_label():
    spec = models.preprocessing("efficientnet_lite0")
    out = inference.decode_and_preprocess({"bytes": _jpeg(500, 300), "path": "/d/n01440764/x/a.jpg"}, spec, "/d")
    assert out[inference.PIXELS].shape == (3, 224, 224) and out[inference.PIXELS].dtype == np.uint8
    assert (out["label"], out["error"]) == ("n01440764", "")


def test_decode_and_preprocess_keeps_an_unreadable_file_with_its_reason():
    spec = models.preprocessing("efficientnet_lite0")
    out = inference.decode_and_preprocess({"bytes": b"", "path": "/d/n01/a.jpg"}, spec, "/d")
    assert out["error"] == "empty file (0 bytes)" and out[inference.PIXELS].shape == (3, 224, 224)


def test_classifier_skips_unreadable_rows_and_keeps_them():
    classifier = inference.FastClassifier("efficientnet_lite0", device="cpu")
    batch = {
        inference.PIXELS: np.zeros((3, 3, 224, 224), np.uint8), "path": np.array(["a", "b", "c"]),
        "label": np.array(["n01", "n01", "n02"]), "error": np.array(["", "corrupt", ""]),
    }
    rows = classifier(batch).to_pylist()
    assert [r["top1_name"] is None for r in rows] == [False, True, False]
    assert rows[1]["error"] == "corrupt" and rows[1]["top5_wnid"] is None
    assert len(rows[0]["top5_score"]) == 5


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


def test_frozen_predictor_agrees_with_the_plain_model():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (5, 3, 224, 224), dtype=np.uint8)
    predictor = inference.Predictor("efficientnet_lite0", device="cpu")
    scores, indices = predictor.top_k(pixels)
    spec = models.preprocessing("efficientnet_lite0")
    with torch.inference_mode():
        expected = models.load_model("efficientnet_lite0")(spec.normalize(torch.from_numpy(pixels))).softmax(1)
    assert indices.shape == scores.shape == (5, 5)
    assert (indices[:, 0] == expected.argmax(1).numpy()).all()
    assert np.allclose(scores, expected.topk(5).values.numpy(), atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_describe_predictions_gives_plain_arrow_columns():
    scores = np.array([[0.5, 0.2, 0.1, 0.1, 0.1]], np.float32)
    indices = np.array([[281, 282, 285, 0, 1]])
    table = inference.describe_predictions(scores, indices, label=np.array(["n02123045"]))
    row = table.to_pylist()[0]
    assert row["label"] == "n02123045" and row["top1_wnid"] == "n02123045"
    assert row["top1_name"] == "tabby" and row["top5_name"][2] == "Egyptian cat"
    assert row["top5_index"] == [281, 282, 285, 0, 1]
    assert str(table.schema.field("top5_wnid").type) == "list<item: string>"


@pytest.fixture(scope="module")
def ray_here():
    from helpers import cluster

    yield cluster.start_or_join()
    cluster.stop()


@pytest.mark.parametrize("num_actors, fused", [(None, True), (1, False)])
def test_single_threaded_cpu_actors_decode_their_own_images(ray_here, sample_dir, tmp_path, capsys,
                                                            num_actors, fused):
    """Ray fuses the decoding map into the actors exactly when the plan says so."""
    from helpers import data, settings

    plan = inference.plan_actors(_cluster(2), num_actors)
    cfg = settings.resolve(output_dir=tmp_path, limit=64)
    inference.build_pipeline(data.list_files("sample"), cfg, plan).explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert ("Map(decode_and_preprocess)->MapBatches(FastClassifier)" in physical) == fused, physical
    assert "ReadThreadedBinary" in physical and "MapBatches(FastClassifier)" in physical


def test_measure_levers_times_each_speed_up_on_the_same_batch():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 224, 224), dtype=np.uint8)
    levers = inference.measure_levers("efficientnet_lite0", pixels)
    assert list(levers.index) == ["plain", "+ channels_last", "+ frozen graph"]
    assert (levers["images_per_second"] > 0).all() and levers["speed_up"].iloc[0] == 1.0
    assert levers["top1_agrees_with_plain"].between(0, 1).all()
    assert levers["top1_agrees_with_plain"].iloc[0] == 1.0
