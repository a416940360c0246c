"""`bench/driver_scaling.py` keeps working: its synthetic runs are what the notebooks' steps
expect, its growth and estimates follow the costs per image, and a small run writes every
figure (the whole benchmark, in processes of its own, is slow)."""
import json
import os
import subprocess
import sys

import pytest

from helpers import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import driver_scaling  # noqa: E402

FIGURES = ("seconds", "cpu_seconds", "peak_mib", "held_mib", "base_mib")
TIMED = ("list", "publish", "evaluate")  # in processes of their own here (the others: the test above)


def test_growth_and_estimates_follow_the_cost_per_image():
    sizes = [1_000, 10_000, 100_000]
    linear = [1.0 + size * 2e-6 for size in sizes]  # a fixed cost and 2 us an image
    assert driver_scaling.growth(sizes, linear) == 1.0
    assert driver_scaling.estimate(sizes, linear, 1_000_000) == pytest.approx(1.0 + 2.0)
    quadratic = [size ** 2 * 1e-9 for size in sizes]  # each image costs ten times more per tenfold
    assert driver_scaling.growth(sizes, quadratic) == pytest.approx(10, rel=0.01)
    assert driver_scaling.growth(sizes[:2], linear[:2]) is None  # two sizes: one cost, no growth


def test_a_small_synthetic_run_is_what_each_step_expects(tmp_path):
    """The steps but notebook 04's, here rather than in processes of their own: each one's
    asserts (every image listed, half of them resumed, all of them published) hold."""
    folder = tmp_path / "images-400"
    layout = driver_scaling.build(folder, 400, rows_per_file=10_000)
    assert len(layout["files"]) == 4 and layout["half_rows"] == 200 and len(layout["others"]) == 1
    for step in ("list", "select", "open_run", "publish"):
        driver_scaling.prepare_outputs(folder, layout, step)
        figures = driver_scaling.run_step(step, folder, driver_scaling.NOTEBOOK_04)
        assert set(FIGURES) <= set(figures) and figures["peak_mib"] >= figures["base_mib"] > 0, step
    driver_scaling.prepare_outputs(folder, layout, "")
    assert not list(folder.glob("outputs-*"))


@pytest.mark.slow  # nine processes that import torch and pandas, notebook 04 in three: about a minute
@pytest.mark.timeout(900)
def test_the_benchmark_writes_every_figure(tmp_path):
    output = tmp_path / "driver_scaling.json"
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "driver_scaling.py"), "--images", "500,1000,2000",
         "--steps", ",".join(TIMED), "--output", str(output)],
        capture_output=True, text=True, timeout=840, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "at 10,000,000" in lines[0] and [line.split()[0] for line in lines[2:7]] == list(driver_scaling.STEPS)
    results = json.loads(output.read_text())
    assert set(results["runs"]) == {"500", "1000", "2000"}
    for images, run in results["runs"].items():
        assert set(run) == set(TIMED), images
        for step, figures in run.items():
            assert set(FIGURES) <= set(figures) and figures["seconds"] > 0 and figures["peak_mib"] > 0, (images, step)
        statements = run["evaluate"]["statements"]
        assert any("evaluation.add_correctness(" in s["statement"] for s in statements)
        assert any("pd.read_parquet(" in s["statement"] for s in statements)
        assert all(s["seconds"] >= 0 and s["peak_mib"] > 0 for s in statements)
    for step in TIMED:
        entry = results["growth"][step]
        assert len(entry["cpu_microseconds_per_image"]) == len(entry["bytes_per_image"]) == 2, step
        assert entry["at_10000000"]["measured"] is False and entry["at_10000000"]["peak_mib"] > 0, step
    assert not list(tmp_path.glob("driver-scaling-*"))  # its synthetic runs are deleted
