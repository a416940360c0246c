"""Memory that does not grow with the folder: notebook 03's peak memory on a small and on a
ten times larger folder.

    python bench/memory.py --images 500,5000 --output outputs/memory.json   # or: make bench-memory

Each size runs notebook 03 with papermill on a folder of the sample's images repeated (hard
links under new names), with a Ray of its own; the peak is the largest total PSS (each
process's share of the pages it uses) of this process and every process it started: the
kernel, Ray's head and every worker. Ray Data streams blocks through the pipeline, so the
peak should stay about the same however many images the folder holds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from helpers import sample
from helpers.machinery import series
from support.folders import replicate
from support.machine import PeakMemory, settle
from support.notebook_03 import NOTEBOOK_03


def peak_of_notebook_03(images: int, workdir: Path) -> dict:
    """Notebook 03 on ``images`` images: its peak memory, seconds and steady images/s."""
    source = sample.ensure_sample()
    copies = math.ceil(images / len(list(source.glob("*/*"))))
    folder = replicate(source, workdir / f"images-{images}", copies)
    output_dir = workdir / f"outputs-{images}"
    settle()
    started = time.perf_counter()
    with PeakMemory() as memory:
        series.execute_series(output_dir, {"data_uri": str(folder), "limit": images},
                              notebooks=(NOTEBOOK_03,), progress=False)
    manifest = json.loads((output_dir / "predictions.json").read_text())
    return {"images": manifest["num_images"], "peak_memory_gib": round(memory.peak_bytes / 2**30, 2),
            "seconds": round(time.perf_counter() - started, 1), "images_per_second": manifest["images_per_second"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=lambda text: [int(v) for v in text.split(",")], default=[500, 5000],
                        help="folder sizes, smallest first")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)  # a Ray of its own, all of it under this process
    with tempfile.TemporaryDirectory(prefix="memory-") as workdir:
        runs = [peak_of_notebook_03(images, Path(workdir)) for images in args.images]
    results = {"runs": runs, "largest_over_smallest": round(runs[-1]["peak_memory_gib"] / runs[0]["peak_memory_gib"], 3)}
    for run in runs:
        print(f"{run['images']:>6} images: peak {run['peak_memory_gib']:.2f} GiB, {run['seconds']:.1f} s, "
              f"{run['images_per_second']} images/s")
    print(f"peak at {runs[-1]['images']} over peak at {runs[0]['images']}: {results['largest_over_smallest']:.3f}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
