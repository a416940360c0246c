"""The four notebooks end to end: papermill on a small limit, then nbval on the results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pyarrow.parquet as pq
import pytest

from helpers import series

LIMIT = 42
NOISE = ("Traceback", "Warning", "WARNING", "DeprecationWarning", "FutureWarning", " E ", "ERROR")


@pytest.fixture(scope="module")
def executed(tmp_path_factory, sample_dir):
    """The series run once; ``TEST_OUTPUT_DIR`` keeps its outputs (CI uploads them)."""
    kept = os.environ.get("TEST_OUTPUT_DIR")
    output_dir = Path(kept).resolve() if kept else tmp_path_factory.mktemp("series")
    seconds = series.execute_series(output_dir, {"limit": LIMIT}, progress=False)
    return output_dir, seconds


def test_committed_notebooks_carry_no_outputs():
    assert len(series.NOTEBOOKS) == 4
    for path in series.NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def test_every_notebook_has_a_parameters_cell_with_the_same_names():
    names = None
    for path in series.NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, path.name
        found = [line.split("=")[0].strip() for line in cells[0].source.splitlines() if "=" in line and not line.startswith("#")]
        assert names in (None, found), path.name
        names = found
    assert names == ["data_uri", "model_name", "output_dir", "limit", "batch_size", "num_actors"]


def test_series_writes_predictions_and_metrics(executed):
    output_dir, _ = executed
    manifest = json.loads((output_dir / "predictions.json").read_text())
    table = pq.ParquetDataset([output_dir / f for f in manifest["files"]]).read()
    assert table.num_rows == LIMIT == manifest["num_images"] == manifest["num_rows"]
    assert manifest["num_skipped"] == 0 and manifest["images_per_second"] > 0
    assert set(table.column_names) == {
        "path", "label", "error", "top1_index", "top1_wnid", "top1_name", "top1_score",
        "top5_index", "top5_wnid", "top5_name", "top5_score", "predicted_at", "actor",
    }
    assert "image" not in table.column_names and "pixels" not in table.column_names
    assert len(set(table.column("label").to_pylist())) == 7  # every class, thanks to the limit logic
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["num_images"] == LIMIT and metrics["model_name"] == "efficientnet_lite0"
    assert 0.3 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert metrics["images_per_second"] > 0
    for figure in ("01_sample_images", "01_image_sizes", "02_top5", "03_batch_size_throughput",
                   "04_confusion_matrix", "04_misclassified"):
        assert (output_dir / "figures" / f"{figure}.png").stat().st_size > 10_000


def test_executed_notebooks_read_cleanly(executed):
    output_dir, _ = executed
    for path in series.NOTEBOOKS:
        notebook = nbformat.read(output_dir / "notebooks" / path.name, as_version=4)
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                assert output.output_type != "error", (path.name, output.get("evalue"))
                text = output.get("text", "") if output.output_type == "stream" else ""
                assert not any(word in text for word in NOISE), (path.name, text[:500])


def test_nbval_reproduces_the_deterministic_cells(executed):
    """nbval re-runs each executed notebook and compares the cells tagged nbval-check-output."""
    output_dir, _ = executed
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         *(str(output_dir / "notebooks" / path.name) for path in series.NOTEBOOKS)],
        capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout
