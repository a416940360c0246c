"""`make bench` keeps working: a small run prints the table and writes the JSON CI keeps; the
bucket it measures notebook 03 on is built and delayed as it says (its notebook runs are the
same notebook 03 runs, from a bucket: `make bench` itself measures those)."""
import json
import os
import subprocess
import sys
import time
from argparse import Namespace

import pytest

from helpers import PROJECT_ROOT, data


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_small_benchmark_writes_every_number(tmp_path):
    output = tmp_path / "benchmark.json"
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "benchmark.py"), "--limit", "48", "--copies", "1", "--batch-size", "4",
         "--sweep", "4", "--repeats", "1", "--s3-delay-ms", "0", "--output", str(output)],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]  # e.g. kernels' "running over TCP"
    assert "pipeline / bare loop" in result.stdout
    results = json.loads(output.read_text())
    assert results["images"] == 48 and results["batch_size"] == 4
    assert len(results["bare_loop_runs"]) == len(results["pipeline_runs"]) == len(results["dataloader_runs"]) == 1
    for name in ("model_only_images_per_second", "model_only_one_thread_images_per_second", "ceiling_images_per_second",
                 "plain_loop_images_per_second", "bare_loop_images_per_second", "pipeline_images_per_second",
                 "dataloader_images_per_second", "peak_memory_gib", "ray_start_seconds"):
        assert results[name] > 0, name
    assert results["ceiling_images_per_second"] == round(results["model_only_one_thread_images_per_second"]
                                                         * results["actors"], 2)
    assert results["levers"] in ("plain", "channels_last") or "frozen graph" in results["levers"] \
        or results["levers"].startswith("bf16")
    assert "pipeline / the ceiling" in result.stdout and "pipeline / plain fp32 loop" in result.stdout
    # each ratio pairs a pipeline run with the loop run beside it
    (pipeline,), (bare,), (loader,) = results["pipeline_runs"], results["bare_loop_runs"], results["dataloader_runs"]
    assert results["pipeline_over_bare_runs"] == [round(pipeline / bare, 3)] and "pipeline / DataLoader" in result.stdout
    assert results["pipeline_over_dataloader_runs"] == [round(pipeline / loader, 3)]
    assert set(results["pipeline_batch_size_sweep"]) == {"4"} and "s3" not in results


def test_the_benchmark_bucket_holds_a_folder_per_image_behind_a_proxy_that_delays_it():
    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    import benchmark

    with benchmark.bucket_behind_a_proxy(Namespace(s3_delay_ms=30, bucket_folders=6)) as proxy:
        assert os.environ["AWS_ENDPOINT_URL"] == proxy.url
        seconds = {}
        for delay_s in (0.0, 0.2):
            proxy.delay_s = delay_s
            started = time.monotonic()
            listing = data.list_files("s3://bench/images")
            seconds[delay_s] = time.monotonic() - started
        assert len(listing.images) == len({data.class_folder(path, listing.root) for path in listing.images}) == 6
        assert seconds[0.2] >= 0.2 > seconds[0.0]  # one request at least, delayed
    with benchmark.bucket_behind_a_proxy(Namespace(s3_delay_ms=0, bucket_folders=6)) as proxy:
        assert proxy is None


@pytest.mark.parametrize("script", sorted((PROJECT_ROOT / "bench").glob("*.py")), ids=lambda path: path.name)
def test_every_benchmark_script_imports_and_explains_itself(script):
    """``make bench-memory`` broke once on an import nobody ran: every script imports, and ``--help`` works."""
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout
