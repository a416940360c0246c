"""The driver at millions of images: the seconds and peak memory of each step the notebooks'
kernel (the driver) takes alone, on synthetic runs of growing size.

    python bench/driver_scaling.py --images 100000,1000000 --output outputs/driver_scaling.json

Ray's workers scale with the cluster; the driver does not: it lists every file, checks a
resumed run's files, reads every row back to publish, and notebook 4 evaluates every row.
For each size this builds, in a temporary folder (deleted afterwards, unless ``--workdir``
names one to keep and reuse):

- a folder of that many images in 1,000 class folders named by ImageNet's WordNet ids, each
  a hard link to one of a few tiny JPEGs (a directory entry, no inode of its own), and one
  other file per 1,000 images that the listing sets aside (``notes_<k>.txt``);
- a run of notebook 03's Parquet files, ``--rows-per-file`` rows a file, written with pyarrow
  (no Ray) in its schema: ``labels.top_k_table`` (path, label, error, top1_* and top5_*)
  then levers, predicted_at and actor as its ``FastClassifier`` adds them; 0.5% of the rows
  are images that did not decode; ``predictions.json`` and ``skipped.csv`` as ``Run.publish``
  writes them.

Each step then runs in a fresh Python process that first holds what the kernel holds at that
point (the listing; for publish, the opened run), and reports the step's seconds and the
process's peak resident memory during the step (the kernel's peak RSS, reset before it):

    list      data.list_files and data.select_images (limit None, the notebooks' default)
    select    data.select_images with a limit of half the images (every class in turn)
    open_run  runs.open_run resuming a run whose first half of files is written
    publish   Run.publish once the other half is written
    evaluate  notebook 04's code cells as they stand, statement by statement (its figures
              included: they draw a dozen images)

A step whose process grows over ``--memory-cap-gib`` (lowered to what the machine has free)
is stopped and reported as over it. Between each two sizes, a step's cost per image is what
its seconds (and peak memory) grew by over the images added; its growth is how that cost
changed per tenfold between the last two pairs of sizes (three sizes or more): about 1 is
linear, more grows worse. At ``--estimate-at`` images, where not measured: the largest size
measured plus each further image at the last cost per image (linear: where the cost grew, a
lower bound). Seconds are the process's CPU seconds (user and system, every thread) beside
the wall-clock seconds: on a shared machine the CPU seconds vary less.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from helpers import PROJECT_ROOT

STEPS = ("list", "select", "open_run", "publish", "evaluate")
NOTEBOOK_04 = PROJECT_ROOT / "notebooks" / "04_evaluate_results.ipynb"
RUN_ID = "20270101-000000-driver"
LEVERS = "channels_last + frozen graph"
ACTORS = 4
BATCH = 32  # rows an actor classifies at once: the same predicted_at
UNREADABLE = "corrupt or truncated: image file is truncated"
NOT_AN_IMAGE = "not an image file (extension '.txt')"
LINKS_PER_SOURCE = 60_000  # ext4 allows 65,000 links to a file
PARQUET_BYTES_PER_ROW = 300  # an upper bound, for the disk check (about 150 measured)
ENTRY_BYTES_PER_FILE = 100  # a directory entry, with the folder's index
RESULT = "RESULT "  # the line a step's process prints its figures on


# -- the synthetic run ------------------------------------------------------------------------------------------


def image_path(root: Path, number: int, classes: tuple[str, ...]) -> str:
    """The path of image ``number``: class folders in turn, ImageNet's naming."""
    wnid = classes[number % len(classes)]
    return f"{root}/{wnid}/{wnid}_{number // len(classes):08d}.JPEG"


def build_images(root: Path, images: int, classes: tuple[str, ...]) -> list[str]:
    """``images`` hard links to tiny JPEGs in class folders, and one ``.txt`` per 1,000 images;
    returns the paths of the ``.txt`` files (what the listing sets aside)."""
    from PIL import Image

    sources = root.parent / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    jpegs = []
    for number in range(math.ceil(images / LINKS_PER_SOURCE)):
        jpeg = sources / f"image-{number}.jpg"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(jpeg, quality=80)
        jpegs.append(jpeg)
    empty = sources / "empty"
    empty.write_bytes(b"")
    for wnid in classes:
        (root / wnid).mkdir(parents=True, exist_ok=True)
    for number in range(images):
        os.link(jpegs[number // LINKS_PER_SOURCE], image_path(root, number, classes))
    others = []
    for number in range(max(1, images // 1000)):
        other = f"{root}/{classes[number % len(classes)]}/notes_{number}.txt"
        os.link(empty, other)
        others.append(other)
    return others


def predictions_table(paths: list[str], numbers: np.ndarray, classes: tuple[str, ...], first_row: int,
                      rng: np.random.Generator) -> pa.Table:
    """Notebook 03's rows for these images: about 75% right at top-1, 90% at top-5."""
    import pyarrow as pa

    from helpers import labels

    truth = np.array([labels.wnid_to_index(classes[number % len(classes)]) for number in numbers])
    valid = rng.random(len(paths)) >= 0.005
    indices = rng.integers(0, 1000, (len(paths), 5))
    right_at_top1 = rng.random(len(paths)) < 0.75
    indices[right_at_top1, 0] = truth[right_at_top1]
    in_top5 = ~right_at_top1 & (rng.random(len(paths)) < 0.6)
    indices[in_top5, rng.integers(1, 5, int(in_top5.sum()))] = truth[in_top5]
    scores = -np.sort(-rng.random((len(paths), 5)).astype(np.float32), axis=1)
    table = labels.top_k_table(scores[valid], indices[valid], valid, path=paths,
                               label=[classes[number % len(classes)] for number in numbers],
                               error=np.where(valid, "", UNREADABLE))
    rows = np.arange(first_row, first_row + len(paths))
    batches = rows // BATCH
    table = table.append_column("levers", pa.array([LEVERS] * len(paths)))
    table = table.append_column("predicted_at", pa.array(1.8e9 + batches * BATCH / 500.0))
    return table.append_column("actor", pa.array([f"node-{batch % ACTORS}:{1000 + batch % ACTORS}"
                                                  for batch in batches]))


def build_run(folder: Path, images_root: Path, images: int, rows_per_file: int,
              classes: tuple[str, ...]) -> dict:
    """The Parquet files of a complete run, the images in a random order; what they hold."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    order = rng.permutation(images)
    files, unreadable = [], []
    for start in range(0, images, rows_per_file):
        numbers = order[start:start + rows_per_file]
        paths = [image_path(images_root, int(number), classes) for number in numbers]
        table = predictions_table(paths, numbers, classes, start, rng)
        name = f"part-{len(files):06d}.parquet"
        pq.write_table(table, folder / name)
        files.append(name)
        unreadable.extend(table.filter(pc.not_equal(table["error"], "")).column("path").to_pylist())
    return {"files": files, "unreadable": unreadable}


def write_settings(run: Path, data_uri: str) -> None:
    """``run.json`` as notebook 03 leaves it: the settings, and what made the rows."""
    record = {"data_uri": data_uri, "model_name": "efficientnet_lite0", "limit": None,
              "made_by": {"model_name": "efficientnet_lite0", "code": "0123456789abcdef"}}
    (run / "run.json").write_text(json.dumps(record, indent=2) + "\n")


def link_files(source: Path, target: Path, names: list[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.link(source / name, target / name)


def build(folder: Path, images: int, rows_per_file: int) -> dict:
    """The images and the complete run's Parquet files under ``folder``, and what they hold
    (``layout.json``: kept there, for ``--workdir`` to reuse)."""
    from helpers import labels

    layout_file = folder / "layout.json"
    if layout_file.exists():
        return json.loads(layout_file.read_text())
    started = time.perf_counter()
    classes = labels.wnids()[:min(1000, max(1, images // 10))]
    images_root = folder / "images"
    others = build_images(images_root, images, classes)
    print(f"  {images} images and {len(others)} other files linked, {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)
    rows_per_file = min(rows_per_file, math.ceil(images / 4))  # a half-done run has files
    written = build_run(folder / "run", images_root, images, rows_per_file, classes)
    half = written["files"][:len(written["files"]) // 2]
    layout = {"images": images, "files": written["files"], "half_files": half,
              "half_rows": min(images, len(half) * rows_per_file), "others": others,
              "unreadable": written["unreadable"],
              "parquet_bytes": sum((folder / "run" / name).stat().st_size for name in written["files"]),
              "build_seconds": round(time.perf_counter() - started, 1)}
    layout_file.write_text(json.dumps(layout) + "\n")
    print(f"  {len(written['files'])} Parquet files of {rows_per_file} rows ({layout['parquet_bytes'] / 2**20:.0f} "
          f"MiB), {layout['build_seconds']:.0f} s in all", file=sys.stderr, flush=True)
    return layout


def prepare_outputs(folder: Path, layout: dict, step: str) -> None:
    """A fresh output folder for ``step``: a run with its first half of files (open_run,
    publish), or a published run (evaluate), hard links to the run's Parquet files."""
    import pandas as pd

    from helpers import storage
    from helpers.machinery import runs

    for earlier in folder.glob("outputs-*"):
        shutil.rmtree(earlier)
    if step not in ("open_run", "publish", "evaluate"):
        return
    outputs = folder / f"outputs-{step}"
    run = outputs / "predictions" / RUN_ID
    images_root = str(folder / "images")
    link_files(folder / "run", run, layout["files"] if step == "evaluate" else layout["half_files"])
    write_settings(run, images_root)
    if step != "evaluate":
        return
    output_dir = storage.Location.parse(outputs)
    others, unreadable = layout["others"], layout["unreadable"]
    skipped = pd.DataFrame({"path": [*others, *unreadable],
                            "reason": [NOT_AN_IMAGE] * len(others) + [UNREADABLE] * len(unreadable)})
    storage.write_csv(output_dir / "predictions" / RUN_ID / "skipped.csv", skipped.sort_values("path"), index=False)
    summary = runs.RunSummary(
        run_id=RUN_ID,
        files=[f"predictions/{RUN_ID}/{name}" for name in layout["files"]],
        skipped_file=f"predictions/{RUN_ID}/skipped.csv",
        num_rows=layout["images"],
        num_images=layout["images"] - len(unreadable),
        num_skipped=len(skipped),
        resumed_rows=layout["half_rows"],
        seconds=round(layout["images"] / 500.0, 3),
        images_per_second=500.0,
        made_by={"model_name": "efficientnet_lite0", "code": "0123456789abcdef"},
        levers={LEVERS: layout["images"]},
        model_name="efficientnet_lite0",
        data_uri=images_root,
        limit=None,
        batch_size=BATCH,
        num_actors=ACTORS,
    )
    storage.write_json(output_dir / "predictions.json", asdict(summary))


# -- one step, in a process of its own --------------------------------------------------------------------------


def resident_mib() -> tuple[float, float]:
    """This process's resident memory now and its peak since the last reset (``VmRSS``, ``VmHWM``)."""
    status = Path("/proc/self/status").read_text()
    now, peak = (int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM"))
    return now, peak


def reset_peak() -> None:
    """Start the peak resident memory (``VmHWM``) again from now (Linux's ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def measured(action: Callable[[], object]) -> dict:
    """The seconds of ``action`` and this process's peak memory during it."""
    held, _ = resident_mib()
    reset_peak()
    started, cpu_started = time.perf_counter(), time.process_time()
    action()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    _, peak = resident_mib()
    return {"seconds": round(seconds, 6), "cpu_seconds": round(cpu_seconds, 6), "peak_mib": round(peak),
            "held_mib": round(held)}


def notebook_statements(notebook: Path) -> list[tuple[str, str]]:
    """Notebook 04's code cells after its parameters cell, statement by statement: (label, code)."""
    cells = json.loads(notebook.read_text())["cells"]
    statements = []
    after_parameters = False
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        if "parameters" in cell["metadata"].get("tags", []):
            after_parameters = True
            continue
        if not after_parameters:
            continue
        source = "".join(cell["source"])
        for node in ast.parse(source).body:
            code = ast.get_source_segment(source, node)
            statements.append((" ".join(code.split())[:70], code))
    return statements


def run_step(step: str, folder: Path, notebook: Path) -> dict:
    """Hold what the kernel holds before ``step``, then measure the step."""
    from helpers import data, settings
    from helpers.machinery import runs

    layout = json.loads((folder / "layout.json").read_text())
    images = str(folder / "images")
    base_mib, _ = resident_mib()
    if step == "evaluate":
        parameters = {"data_uri": images, "model_name": "efficientnet_lite0",
                      "output_dir": str(folder / "outputs-evaluate"), "limit": None, "batch_size": BATCH,
                      "num_actors": None}
        namespace: dict = dict(parameters)
        statements = []
        for label, code in notebook_statements(notebook):
            figures = measured(lambda: exec(compile(code, "<notebook 04>", "exec"), namespace))
            statements.append({"statement": label, **figures})
        total = {"seconds": round(sum(s["seconds"] for s in statements), 3),
                 "cpu_seconds": round(sum(s["cpu_seconds"] for s in statements), 3),
                 "peak_mib": max(s["peak_mib"] for s in statements), "held_mib": statements[0]["held_mib"]}
        return {**total, "base_mib": round(base_mib), "statements": statements}
    if step in ("list", "select"):
        found = {}

        def listing_and_selection() -> None:
            found["listing"] = data.list_files(images)
            found["selected"] = data.select_images(found["listing"].images, found["listing"].root, None)

        figures = measured(listing_and_selection)
        listing = found["listing"]
        assert len(found["selected"]) == layout["images"] and len(listing.skipped) == len(layout["others"])
        if step == "list":
            return {**figures, "base_mib": round(base_mib)}
        half = layout["images"] // 2
        figures = measured(lambda: found.update(selected=data.select_images(listing.images, listing.root, half)))
        assert len(found["selected"]) == half
        return {**figures, "base_mib": round(base_mib)}
    listing = data.list_files(images)
    cfg = settings.resolve(images, output_dir=str(folder / f"outputs-{step}"))
    if step == "open_run":
        opened = {}
        figures = measured(lambda: opened.update(run=runs.open_run(cfg, listing)))
        assert len(opened["run"].to_read) == layout["images"] - layout["half_rows"]
        return {**figures, "base_mib": round(base_mib)}
    run = runs.open_run(cfg, listing)
    other_half = [name for name in layout["files"] if name not in set(layout["half_files"])]
    link_files(folder / "run", Path(run.path), other_half)
    published = {}
    figures = measured(lambda: published.update(summary=run.publish(seconds=1.0, actors=ACTORS)))
    assert published["summary"].num_rows == layout["images"]
    assert published["summary"].resumed_rows == layout["half_rows"]
    return {**figures, "base_mib": round(base_mib)}


# -- the driver of the benchmark --------------------------------------------------------------------------------


def in_a_process(step: str, folder: Path, notebook: Path, cap_mib: float, timeout_s: float) -> dict:
    """``run_step`` in a fresh Python process, stopped if its memory grows over ``cap_mib``."""
    import psutil

    command = [sys.executable, __file__, "--step", step, "--workdir", str(folder), "--notebook", str(notebook)]
    environment = {**os.environ, "MPLBACKEND": "Agg"}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=environment)
        watched, largest, started = psutil.Process(process.pid), 0.0, time.monotonic()
        stopped = None
        while process.poll() is None:
            try:
                largest = max(largest, watched.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            if largest > cap_mib:
                stopped = f"stopped over {cap_mib / 1024:.1f} GiB"
            elif time.monotonic() - started > timeout_s:
                stopped = f"stopped after {timeout_s:.0f} s"
            if stopped:
                process.kill()
                process.wait()
                return {"stopped": stopped, "seconds": round(time.monotonic() - started, 1),
                        "peak_mib": round(largest)}
            time.sleep(0.2)
        log.seek(0)
        output = log.read()
    results = [line for line in output.splitlines() if line.startswith(RESULT)]
    if process.returncode or not results:
        raise RuntimeError(f"step {step} failed (exit {process.returncode}):\n{output[-3000:]}")
    return json.loads(results[-1][len(RESULT):])


def room_for(images: int, folder: Path) -> str | None:
    """Why ``images`` would not fit on the disk under ``folder`` (None: they fit)."""
    need = images * (PARQUET_BYTES_PER_ROW + 3 * ENTRY_BYTES_PER_FILE)
    free = shutil.disk_usage(folder).free
    if need + 5 * 2**30 > free:
        return f"needs about {need / 2**30:.1f} GiB of disk and 5 GiB to spare; {free / 2**30:.1f} GiB free"
    return None


def marginals(sizes: list[int], values: list[float]) -> list[float]:
    """What each image costs between consecutive sizes: (value change) / (images added)."""
    return [(values[k + 1] - values[k]) / (sizes[k + 1] - sizes[k]) for k in range(len(sizes) - 1)]


def growth(sizes: list[int], values: list[float]) -> float | None:
    """How the cost of an image changed between the last two pairs of sizes, per tenfold:
    about 1 is linear, more is worse (None: fewer than three sizes)."""
    costs = marginals(sizes, values)
    if len(costs) < 2 or costs[-2] <= 0 or costs[-1] <= 0:
        return None
    decades = math.log10((sizes[-1] + sizes[-2]) / (sizes[-2] + sizes[-3]))
    return round((costs[-1] / costs[-2]) ** (1 / decades), 2)


def estimate(sizes: list[int], values: list[float], images: int) -> float:
    """``values`` at ``images``: the largest size measured plus each further image at the last
    pair's cost per image (linear; where the cost grew, a lower bound)."""
    return values[-1] + max(marginals(sizes, values)[-1], 0.0) * (images - sizes[-1])


def summarize(runs: dict[int, dict], estimate_at: int) -> dict:
    """Each step's cost per image (seconds, peak memory) between the sizes measured, how it
    grew, and its figures at ``estimate_at`` images (measured, else estimated)."""
    summary = {}
    for step in STEPS:
        measured_at = [images for images, run in runs.items() if step in run and "stopped" not in run[step]]
        seconds = [runs[images][step]["cpu_seconds"] for images in measured_at]
        peaks = [runs[images][step]["peak_mib"] for images in measured_at]
        entry = {
            "cpu_microseconds_per_image": [round(cost * 1e6, 2) for cost in marginals(measured_at, seconds)],
            "bytes_per_image": [round(cost * 2**20) for cost in marginals(measured_at, peaks)],
            "seconds_growth_per_tenfold": growth(measured_at, seconds),
            "memory_growth_per_tenfold": growth(measured_at, peaks),
        }
        if estimate_at in measured_at:
            entry[f"at_{estimate_at}"] = {"measured": True, **{key: runs[estimate_at][step][key]
                                                               for key in ("cpu_seconds", "peak_mib")}}
        elif len(measured_at) >= 2 and estimate_at > measured_at[-1]:
            entry[f"at_{estimate_at}"] = {"measured": False,
                                          "cpu_seconds": round(estimate(measured_at, seconds, estimate_at), 1),
                                          "peak_mib": round(estimate(measured_at, peaks, estimate_at))}
        summary[step] = entry
    return summary


WIDTH = 50  # of the first column


def figure_cells(figures: dict | None) -> str:
    """One size's columns: wall seconds, CPU seconds, peak MiB (or why there are none)."""
    if figures is None:
        return f"{'-':>26}"
    if "stopped" in figures:
        return f"{figures['stopped']:>26}"
    return f"{figures['seconds']:>8.2f}{figures['cpu_seconds']:>8.2f}{figures['peak_mib']:>10,}"


def print_table(runs: dict[int, dict], summary: dict, estimate_at: int) -> None:
    """A row a step (and one a notebook 04 statement that costs something): each size's
    figures, the growth per tenfold of CPU seconds and of peak memory, the estimate."""
    sizes = list(runs)
    print(f"{'images':<{WIDTH}}" + "".join(f"{images:>26,}" for images in sizes)
          + f"{'growth':>14}  at {estimate_at:,}")
    print(f"{'step':<{WIDTH}}" + "".join(f"{'s':>8}{'cpu s':>8}{'peak MiB':>10}" for _ in sizes)
          + f"{'cpu / MiB':>14}")
    for step in STEPS:
        entry = summary[step]
        grown = f"{entry['seconds_growth_per_tenfold'] or '-'} / {entry['memory_growth_per_tenfold'] or '-'}"
        at = entry.get(f"at_{estimate_at}")
        then = ""
        if at:
            then = f"{at['cpu_seconds']:.1f} cpu s, {at['peak_mib'] / 1024:.1f} GiB"
            then += "" if at["measured"] else " (estimated)"
        print(f"{step:<{WIDTH}}" + "".join(figure_cells(runs[images].get(step)) for images in sizes)
              + f"{grown:>14}  {then}")
        if step == "evaluate":
            print_statements(runs, sizes)


def print_statements(runs: dict[int, dict], sizes: list[int]) -> None:
    """Notebook 04's statements that take a tenth of a second or 50 MiB at the largest size measured."""
    largest = next((images for images in reversed(sizes) if "statements" in runs[images].get("evaluate", {})), None)
    if largest is None:
        return
    for number, statement in enumerate(runs[largest]["evaluate"]["statements"]):
        if statement["cpu_seconds"] < 0.1 and statement["peak_mib"] - statement["held_mib"] < 50:
            continue
        cells = []
        for images in sizes:
            statements = runs[images].get("evaluate", {}).get("statements")
            cells.append(figure_cells(statements[number] if statements else None))
        print(f"  {statement['statement'][:WIDTH - 3]:<{WIDTH - 2}}" + "".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=lambda text: [int(v) for v in text.split(",")], default=[100_000, 1_000_000],
                        help="run sizes, smallest first (10000000 where the disk, memory and time allow)")
    parser.add_argument("--rows-per-file", type=int, default=10_000, help="rows in each Parquet file")
    parser.add_argument("--steps", type=lambda text: text.split(","), default=list(STEPS),
                        help=f"which of {','.join(STEPS)}")
    parser.add_argument("--memory-cap-gib", type=float, default=14.0,
                        help="stop a step whose process grows over this (lowered to the memory free, less 2 GiB)")
    parser.add_argument("--step-timeout-s", type=float, default=1800.0)
    parser.add_argument("--estimate-at", type=int, default=10_000_000, help="estimate the steps at this many images")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK_04, help="the notebook 04 whose cells are timed")
    parser.add_argument("--workdir", type=Path,
                        help="keep the synthetic runs here and reuse them (default: a temporary folder, deleted)")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # in the process of one step
    args = parser.parse_args(argv)
    if args.step:
        print(RESULT + json.dumps(run_step(args.step, args.workdir, args.notebook)), flush=True)
        return 0
    import psutil

    with tempfile.TemporaryDirectory(prefix="driver-scaling-") as temporary:
        workdir = (args.workdir or Path(temporary)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        runs: dict[int, dict] = {}
        layouts = {}
        for images in args.images:
            folder = workdir / f"images-{images}"
            if not (folder / "layout.json").exists() and (why := room_for(images, workdir)):
                print(f"{images} images: not built ({why})", file=sys.stderr)
                continue
            print(f"{images} images: building the synthetic run in {folder}", file=sys.stderr, flush=True)
            layouts[images] = build(folder, images, args.rows_per_file)
            runs[images] = {}
            for step in args.steps:
                prepare_outputs(folder, layouts[images], step)
                cap_mib = min(args.memory_cap_gib * 1024, psutil.virtual_memory().available / 2**20 - 2048)
                runs[images][step] = in_a_process(step, folder, args.notebook, cap_mib, args.step_timeout_s)
                figures = runs[images][step]
                print(f"  {step}: {figures.get('stopped', '')} {figures['seconds']} s, peak {figures['peak_mib']} MiB",
                      file=sys.stderr, flush=True)
            prepare_outputs(folder, layouts[images], "")  # the last step's outputs deleted
            if not args.workdir:
                shutil.rmtree(folder)
    summary = summarize(runs, args.estimate_at)
    print_table(runs, summary, args.estimate_at)
    results = {
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version()},
        "listing": "real files on local disk: hard links in class folders, listed with pyarrow's LocalFileSystem",
        "rows_per_file": args.rows_per_file,
        "layouts": {str(images): {"images": images, "parquet_files": len(layout["files"]),
                                  "parquet_bytes": layout["parquet_bytes"], "other_files": len(layout["others"]),
                                  "unreadable": len(layout["unreadable"]), "build_seconds": layout["build_seconds"]}
                    for images, layout in layouts.items()},
        "runs": {str(images): run for images, run in runs.items()},
        "growth": summary,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
