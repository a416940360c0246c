import numpy as np
import pytest
import torch

from helpers import inference, models
from helpers.cluster import ClusterInfo
from helpers.settings import SettingsError


def _cluster(cpus, gpus=0, nodes=1):
    return ClusterInfo(nodes=nodes, cpus=cpus, gpus=gpus, object_store_bytes=2**30)


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
    plan = inference.plan_actors(_cluster(16, nodes=2), None)
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
    classifier = inference.Classifier("efficientnet_lite0", device="cpu")
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
    assert ("Map(decode_and_preprocess)->MapBatches(Classifier)" in physical) == fused, physical
    assert "ReadBinary" in physical and "MapBatches(Classifier)" in physical
