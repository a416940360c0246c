"""`make bench` keeps working: a small run prints the table and writes the JSON CI keeps."""
import json
import subprocess
import sys

import pytest

from helpers import PROJECT_ROOT


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_small_benchmark_writes_every_number(tmp_path):
    output = tmp_path / "benchmark.json"
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "benchmark.py"), "--limit", "48", "--batch-size", "4",
         "--sweep", "4", "--repeats", "2", "--bucket-folders", "40", "--output", str(output)],
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]  # e.g. kernels' "running over TCP"
    assert "pipeline / bare loop" in result.stdout
    results = json.loads(output.read_text())
    assert results["images"] == 48 and results["batch_size"] == 4
    assert len(results["bare_loop_runs"]) == len(results["pipeline_runs"]) == 2
    for name in ("model_only_images_per_second", "bare_loop_images_per_second", "pipeline_images_per_second",
                 "peak_memory_gib", "ray_start_seconds"):
        assert results[name] > 0, name
    # the ratio pairs each pipeline run with the bare loop run just before it
    pairs = [round(p / b, 3) for p, b in zip(results["pipeline_runs"], results["bare_loop_runs"])]
    assert results["pipeline_over_bare_runs"] == pairs
    assert results["pipeline_over_bare"] == pytest.approx(sum(pairs) / 2)
    assert set(results["pipeline_batch_size_sweep"]) == {"4"}
    assert len(results["dataloader_runs"]) == 2 and results["dataloader_images_per_second"] > 0
    pairs = [round(p / d, 3) for p, d in zip(results["pipeline_runs"], results["dataloader_runs"])]
    assert results["pipeline_over_dataloader_runs"] == pairs and "pipeline / DataLoader" in result.stdout
    s3 = results["s3"]
    assert s3["delay_ms"] == 30 and s3["folders"] == 40
    assert s3["no_delay_images_per_second"] > 0 and s3["delayed_images_per_second"] > 0
    assert s3["delayed_over_no_delay"] == pytest.approx(s3["delayed_images_per_second"] / s3["no_delay_images_per_second"], abs=0.01)
    assert "with 30 ms per request" in result.stdout
