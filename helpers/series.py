"""Execute the four notebooks in order with papermill: ``make run`` and the tests use this.

    python -m helpers.series --output-dir outputs -p limit=50 -p model_name=resnet152
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

from helpers import PROJECT_ROOT

NOTEBOOKS = tuple(sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
CELL_TIMEOUT_S = 1800


def execute_series(
    output_dir: str | Path,
    parameters: dict | None = None,
    notebooks: tuple[Path, ...] = NOTEBOOKS,
    progress: bool = True,
) -> dict[str, float]:
    """Run ``notebooks`` in order into ``<output_dir>/notebooks``; return seconds per notebook.

    Ray Data's progress bars are turned off in the kernels: executed notebooks stay readable.
    """
    import papermill

    output_dir = Path(output_dir).resolve()
    executed_dir = output_dir / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    seconds = {}
    for notebook in notebooks:
        started = time.perf_counter()
        papermill.execute_notebook(
            str(notebook),
            str(executed_dir / notebook.name),
            parameters={**(parameters or {}), "output_dir": str(output_dir)},
            kernel_name="python3",
            cwd=str(notebook.parent),
            progress_bar=progress,
            execution_timeout=CELL_TIMEOUT_S,
        )
        seconds[notebook.stem] = round(time.perf_counter() - started, 1)
        if progress:
            print(f"{notebook.stem}: {seconds[notebook.stem]:.1f} s", flush=True)
    return seconds


def _parameter(text: str) -> tuple[str, object]:
    """``name=value``, the value read as a Python literal where it is one (None, 50, ...)."""
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(PROJECT_ROOT / "outputs"))
    parser.add_argument("-p", "--parameter", action="append", default=[], type=_parameter,
                        metavar="NAME=VALUE", help="a notebook parameter; repeat for more")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    execute_series(args.output_dir, dict(args.parameter))
    print(f"series: {time.perf_counter() - started:.1f} s; outputs in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
