"""Notebook 03 for the tests and benchmarks that run it for its write (resume after a kill and a
Stop, clusters, a slow bucket, `make bench`'s timings): a copy without the two sections that
start pipelines of their own besides the write, *The whole pipeline, in one cell* (before it) and
*What Ray bought* (after it), 10 to 45 s a run on 2 cores. The series' own runs (the sample, the
messy bucket, a flat folder of photos, `make submit`) execute every cell."""
from __future__ import annotations

from pathlib import Path

import nbformat

from helpers.machinery import series

NOTEBOOK_03 = next(nb for nb in series.NOTEBOOKS if nb.name.startswith("03"))
LEFT_OUT = ("## The whole pipeline, in one cell", "## What Ray bought")  # headings that open the sections


def without_extra_pipelines(folder: Path) -> Path:
    """Write notebook 03 less the ``LEFT_OUT`` sections (each from its heading to the next
    heading) into ``folder``, under its own name; return the copy's path."""
    notebook = nbformat.read(NOTEBOOK_03, as_version=4)
    kept, left_out, leaving = [], set(), False
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            opening = [heading for heading in LEFT_OUT if cell.source.startswith(heading)]
            left_out.update(opening)
            leaving = bool(opening)
        if not leaving:
            kept.append(cell)
    missing = set(LEFT_OUT) - left_out
    assert not missing, f"{NOTEBOOK_03.name} has no section {sorted(missing)}: update LEFT_OUT"
    notebook.cells = kept
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / NOTEBOOK_03.name
    nbformat.write(notebook, copy)
    return copy
