"""The four notebooks end to end: papermill on a small limit, then nbval on the results."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from unittest import mock

import nbformat
import pyarrow.parquet as pq
import pytest

from helpers.machinery import series
from conftest import SERIES_LIMIT as LIMIT

NOISE = ("Traceback", "Warning", "WARNING", "DeprecationWarning", "FutureWarning", " E ", "ERROR")


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


# What each notebook's code cells (not its prose) must call: the code the series teaches.
TAUGHT = {
    "01": ("ray.init(", "read_images(", ".schema()", ".count()", "take_batch(", "read_binary_files(", ".map("),
    "02": ("inference_mode", "weights.transforms()", ".eval()", "softmax(", "topk("),
    "03": (".map(", "map_batches(", "ActorPoolStrategy(", "take_batch(", "write_parquet(", "def __call__("),
    "04": ("read_parquet(",),
}


def _code(path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("notebook", series.NOTEBOOKS, ids=lambda path: path.stem)
def test_each_notebook_types_the_code_it_teaches(notebook):
    code = _code(notebook)
    missing = [call for call in TAUGHT[notebook.name[:2]] if call not in code]
    assert not missing, f"{notebook.name} code cells lack {missing}"


def test_notebook_03_defines_a_callable_class():
    assert re.search(r"^class \w+:(\n    .*|\n)*?\n    def __call__\(self, batch", _code(series.NOTEBOOKS[2]), re.M)


READS = {"read_binary_files", "read_images"}


def _chain(expression: ast.expr, assigned: dict[str, ast.expr]) -> list[ast.Call]:
    """The calls that build ``expression``, last first, following names the notebook assigns."""
    calls = []
    while True:
        if isinstance(expression, ast.Name) and expression.id in assigned:
            expression = assigned.pop(expression.id)  # each name once: no cycles
        elif isinstance(expression, ast.Call):
            calls.append(expression)
            expression = expression.func.value if isinstance(expression.func, ast.Attribute) else expression.func
        else:
            return calls


def _name(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def test_notebook_03_writes_the_pipeline_its_cells_type():
    """Every dataset that ``write_parquet`` writes comes, through names the notebook assigns,
    from a read typed in a cell and a ``map_batches`` of a class defined in a cell, whose
    ``__call__`` is typed in a cell and whose bases are notebook classes only."""
    tree = ast.parse(_code(series.NOTEBOOKS[2]))
    assigned = {node.targets[0].id: node.value for node in ast.walk(tree)
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    writes = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and _name(node) == "write_parquet"]
    assert writes, "notebook 03 writes nothing"
    for write in writes:
        chain = _chain(write.func.value, dict(assigned))
        names = [_name(call) for call in chain]
        assert READS & set(names) or {"from_items", "with_column"} <= set(names), \
            f"{ast.unparse(write)}: no ray.data read in {names}"
        read = next(call for call in chain if _name(call) in READS | {"from_items"})
        assert ast.unparse(read.func).startswith("ray.data."), ast.unparse(read.func)
        mapped = next(call for call in chain if _name(call) == "map_batches")
        name = mapped.args[0].id
        while name not in classes:  # a name bound to a class: classifier = FastClassifier
            name = assigned[name].id
        lineage = [classes[name]]
        while lineage[-1].bases:
            (base,) = lineage[-1].bases
            assert isinstance(base, ast.Name) and base.id in classes, \
                f"{lineage[0].name} derives from {ast.unparse(base)}"
            lineage.append(classes[base.id])
        assert any(isinstance(item, ast.FunctionDef) and item.name == "__call__" for c in lineage for item in c.body)
        assert {"map", "flat_map"} & set(names[names.index("map_batches"):]), \
            f"{ast.unparse(write)}: no ds.map(...) or flat_map(...) before map_batches"


SKIPPED_SECTIONS = re.compile(r"^#+\s*(exercise|troubleshoot|under the hood|appendix|what we learned|going further"
                              r"|.*\(optional\))", re.I)


def _main_path(path) -> tuple[list[str], list[str]]:
    """The markdown sections and the code cells of a notebook's main path: from a level 1-3 heading
    to the next, leaving out the exercises, troubleshooting, appendices and optional sections."""
    sections, code, main_path = [], [], True
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown":
            for section in re.split(r"(?m)^(?=#{1,3}\s)", cell.source):
                if re.match(r"#{1,3}\s", section):
                    main_path = not SKIPPED_SECTIONS.match(section)
                if main_path:
                    sections.append(section)
        elif main_path:
            code.append(cell.source)
    return sections, code


def test_the_main_path_reads_in_about_fifteen_minutes():
    """At most 1,800 words of markdown in the four notebooks' main paths (the reference tutorial
    has about 1,660)."""
    words = sum(len(section.split()) for path in series.NOTEBOOKS for section in _main_path(path)[0])
    assert 1000 < words <= 1800, words


def test_notebook_03s_main_path_is_the_reference_pipeline_in_about_110_lines():
    """Typed plainly: a sizing rule on Ray's resources, a visible model load, the read, map, class,
    map_batches, take_batch, write and read-back; no planner; at most 110 lines of code."""
    code = "\n".join(_main_path(series.NOTEBOOKS[2])[1])
    lines = [line for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(lines) <= 110, len(lines)
    for call in ("ray.cluster_resources()", "torchvision.models.get_model(", "read_binary_files(", ".map(preprocess",
                 "def __call__(", "map_batches(", "ActorPoolStrategy(size=", "take_batch(", "write_parquet(",
                 "read_parquet("):
        assert call in code, call
    assert "plan" not in code.replace("explain", "")


def test_the_copy_for_runs_of_the_write_leaves_out_only_the_extra_pipelines(tmp_path):
    """support.notebook_03's copy, which the resume, cluster, bucket and benchmark runs execute."""
    from support.notebook_03 import NOTEBOOK_03, without_extra_pipelines

    whole = nbformat.read(NOTEBOOK_03, as_version=4).cells
    copy = nbformat.read(without_extra_pipelines(tmp_path), as_version=4).cells
    left_out = [cell.source for cell in whole if cell.source not in {kept.source for kept in copy}]
    assert [cell.source for cell in copy] == [cell.source for cell in whole if cell.source not in left_out]
    assert [source.splitlines()[0] for source in left_out if source.startswith("## ")] == [
        "## The whole pipeline, in one cell", "## What Ray bought (optional)"]
    code = "\n".join(source for source in left_out if not source.startswith("## "))
    assert "def loop_rate(" in code and "pipeline = (" in code and "write_parquet(run.path" not in code


def test_every_notebook_has_worked_solutions():
    assert [path.name[:2] for path in series.SOLUTIONS] == [path.name[:2] for path in series.NOTEBOOKS]
    for notebook in series.NOTEBOOKS:
        assert f"solutions/{notebook.name[:2]}_solutions.ipynb" in notebook.read_text()


def test_series_writes_predictions_and_metrics(executed):
    output_dir, _ = executed
    manifest = json.loads((output_dir / "predictions.json").read_text())
    table = pq.ParquetDataset([output_dir / f for f in manifest["files"]]).read()
    assert table.num_rows == LIMIT == manifest["num_images"] == manifest["num_rows"]
    assert manifest["num_skipped"] == 0 and manifest["images_per_second"] > 0
    assert set(table.column_names) == {
        "path", "label", "error", "top1_index", "top1_wnid", "top1_name", "top1_score",
        "top5_index", "top5_wnid", "top5_name", "top5_score", "levers", "predicted_at", "actor",
    }
    assert "image" not in table.column_names and "pixels" not in table.column_names
    assert len(set(table.column("label").to_pylist())) == 7  # every class, thanks to the limit logic
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["num_images"] == LIMIT and metrics["model_name"] == "efficientnet_lite0"
    assert 0.3 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert metrics["images_per_second"] > 0
    for figure in ("01_sample_images", "01_image_sizes", "02_top5", "03_checked_predictions",
                   "03_speed_ups", "04_found_classes", "04_confusion_matrix", "04_misclassified"):
        assert (output_dir / "figures" / f"{figure}.png").stat().st_size > 10_000


def test_notebook_03_says_where_the_time_went_from_ray_datas_own_numbers(executed):
    """The table holds every step that ran, with its workers busy at once, and the verdict reads the
    fused decode-and-classify actors against the pool's size."""
    output_dir, _ = executed
    executed_03 = output_dir / "notebooks" / series.NOTEBOOKS[2].name
    cells = nbformat.read(executed_03, as_version=4).cells
    table = next(cell for cell in cells if "time_report.steps(" in cell.source and cell.outputs)
    text = table.outputs[0]["data"]["text/plain"]
    assert all(step in text for step in ("ReadBinary", "Map(preprocess)->MapBatches(FastClassifier)", "Write"))
    assert "busy_at_once" in text
    [verdict] = series.reports(executed_03)
    assert re.match(r"Map\(preprocess\)->MapBatches\(FastClassifier\): .*\d\.\d of its 2 actors busy at once", verdict), \
        verdict


def test_executed_notebooks_read_cleanly(executed):
    output_dir, _ = executed
    for path in series.NOTEBOOKS:
        notebook = nbformat.read(output_dir / "notebooks" / path.name, as_version=4)
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                assert output.output_type != "error", (path.name, output.get("evalue"))
                text = output.get("text", "") if output.output_type == "stream" else ""
                assert not any(word in text for word in NOISE), (path.name, text[:500])


def test_nbval_reproduces_the_deterministic_cells(executed, series_ray):
    """nbval re-runs each executed notebook and compares the cells tagged nbval-check-output."""
    output_dir, _ = executed
    checked = [path for path in series.NOTEBOOKS if "nbval-check-output" in path.read_text()]
    assert len(checked) >= 3  # notebook 03 has none: its outputs are timings and actors
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         *(str(output_dir / "notebooks" / path.name) for path in checked)],
        capture_output=True, text=True, timeout=1800, env={**os.environ, **series_ray},
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout


@pytest.mark.slow  # the solutions of all four notebooks: minutes
def test_the_worked_solutions_run(executed, series_ray, tmp_path):
    """The exercise solutions, on a copy of the series' outputs (04's needs 03's predictions)."""
    output_dir, _ = executed
    copy = tmp_path / "outputs"
    shutil.copytree(output_dir, copy, ignore=shutil.ignore_patterns("notebooks", "logs"))
    with mock.patch.dict(os.environ, series_ray):
        series.execute_series(copy, {"limit": 24, "batch_size": 8}, notebooks=series.SOLUTIONS, progress=False)
    for path in series.SOLUTIONS:
        notebook = nbformat.read(copy / "notebooks" / path.name, as_version=4)
        outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
        assert outputs and not [output for output in outputs if output.output_type == "error"], path.name
    text = (copy / "notebooks" / "03_solutions.ipynb").read_text()
    assert "reading " in text and "ValueError: cannot handle" in text
    assert "the last complete run is unchanged: True" in text
