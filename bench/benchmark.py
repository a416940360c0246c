"""Throughput benchmark: the model alone, a bare PyTorch loop, a PyTorch DataLoader loop, and
the Ray Data pipeline.

All use the same images, the same model and the same decode/preprocess functions
as notebook 03, in one invocation, so the ratios say what the pipeline's parallelism
(actors on every core, reading and writing beside them) is worth on this machine:

    python bench/benchmark.py --output outputs/benchmark.json   # or: make bench

Prints a table and writes JSON: images/s for each (the loops and the pipeline at the
chosen batch size as the median of ``--repeats`` runs, all runs listed), the ratios
pipeline/bare and pipeline/DataLoader, peak memory (this process and every process it started, Ray's workers
included), the pipeline's images/s across batch sizes, and the pipeline's images/s from a
bucket on moto's S3 server on 127.0.0.1, without and with a delay per request
(``--s3-delay-ms``, 30 by default: a bucket in another region).

The loops and the pipeline take turns (bare, pipeline, DataLoader, bare, ...) and each
ratio is the median of the ratios of runs taken side by side: a shared machine whose
speed drifts during the benchmark then slows both sides of a pair alike instead of
favouring whichever ran in the fast minutes. Every timed run starts once the machine is
quiet; Ray is up, idle, during the loops.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import posixpath
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import psutil
import torch

from helpers import cluster, data, inference, local_s3, settings
from helpers.cluster import environment
from helpers.storage import Location


def _sample_peak(root_pid: int, interval_s: float, peak, stop) -> None:
    """Keep in ``peak`` the largest total PSS seen of ``root_pid`` and its descendants."""
    root, me = psutil.Process(root_pid), os.getpid()
    while not stop.is_set():
        total = 0
        for process in [root, *root.children(recursive=True)]:
            if process.pid == me:
                continue
            try:
                total += process.memory_full_info().pss
            except psutil.Error:
                pass
        peak.value = max(peak.value, total)
        stop.wait(interval_s)


class PeakMemory:
    """Samples the memory of this process and all its descendants, keeps the peak.

    Counts each process's proportional set size (PSS), so that pages shared between Ray's
    workers (the object store, PyTorch's libraries) are counted once, not once per process.
    Samples from a separate process: reading every process's memory map takes CPU and,
    in a thread here, the GIL that Ray Data's scheduler (which runs in this process) needs.
    """

    def __init__(self, interval_s: float = 0.5):
        context = multiprocessing.get_context("fork")
        self._peak = context.Value("q", 0)
        self._stop = context.Event()
        self._process = context.Process(target=_sample_peak, daemon=True,
                                        args=(os.getpid(), interval_s, self._peak, self._stop))

    @property
    def peak_bytes(self) -> int:
        return self._peak.value

    def __enter__(self) -> "PeakMemory":
        self._process.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._process.join()


def settle(busy_percent: float = 15, timeout_s: float = 20) -> None:
    """Wait until the machine is quiet (or ``timeout_s`` passed) before a timed run.

    A pipeline's actors and workers go on exiting, and freeing their memory, after the run
    returns: without this the bare loop right after a pipeline run shared the cores with
    them and measured up to a quarter slower.
    """
    deadline = time.monotonic() + timeout_s
    while psutil.cpu_percent(interval=0.5) > busy_percent and time.monotonic() < deadline:
        pass


def read_bytes(listing: data.Listing, path: str) -> bytes:
    return Location(listing.filesystem, path).read_bytes()


def model_only(predictor: inference.Predictor, pixels: np.ndarray, batch_size: int) -> float:
    """Images/s of the model on ready uint8 tensors (normalisation included), after a warm-up."""
    predictor.top_k(pixels[:batch_size])
    started = time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        predictor.top_k(pixels[start:start + batch_size])
    return len(pixels) / (time.perf_counter() - started)


def bare_loop(predictor: inference.Predictor, listing: data.Listing, paths: list[str], batch_size: int) -> float:
    """Images/s of one process doing read, decode, preprocess, infer and top-5, in turn."""
    spec = predictor.preprocessing
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            image = data.decode_image(read_bytes(listing, path), at_least=spec.resize_size)
            batch.append(spec.resize_and_crop(image))
        predictor.top_k(np.stack(batch))
    return len(paths) / (time.perf_counter() - started)


class PreprocessedImages(torch.utils.data.Dataset):
    """The images of ``paths``, read, decoded and preprocessed as notebook 03 does (uint8)."""

    def __init__(self, listing: data.Listing, paths: list[str], spec):
        self.listing, self.paths, self.spec = listing, paths, spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = data.decode_image(read_bytes(self.listing, self.paths[index]), at_least=self.spec.resize_size)
        return torch.from_numpy(np.ascontiguousarray(self.spec.resize_and_crop(image)))


def dataloader_loop(predictor: inference.Predictor, listing: data.Listing, paths: list[str], batch_size: int,
                    workers: int) -> float:
    """Steady images/s of the single-machine loop an expert would write: a ``DataLoader``
    whose ``workers`` processes read, decode and preprocess while this process runs the
    model (the same ``Predictor``: frozen graph, channels_last, all cores' threads). Timed
    from the first batch, as the pipeline's steady state is (worker start-up left out)."""
    loader = torch.utils.data.DataLoader(PreprocessedImages(listing, paths, predictor.preprocessing),
                                         batch_size=batch_size, num_workers=workers,
                                         multiprocessing_context="spawn", prefetch_factor=4)
    batches = iter(loader)
    predictor.top_k(next(batches).numpy())
    started = time.perf_counter()
    for batch in batches:
        predictor.top_k(batch.numpy())
    return (len(paths) - batch_size) / (time.perf_counter() - started)


def from_a_bucket(listing: data.Listing, paths: list[str], args: argparse.Namespace) -> dict:
    """Steady images/s of the pipeline reading ``paths`` from a bucket on moto's S3 server on
    127.0.0.1 through a proxy, without delay and with ``--s3-delay-ms`` per request, on a
    Ray started for it (its workers get the server's test credentials)."""
    import boto3

    with tempfile.TemporaryDirectory() as output_dir, \
            local_s3.moto_server(Path(output_dir) / "moto.log") as variables, environment(**variables):
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        for path in paths:
            client.put_object(Bucket="bench", Key=f"images/{posixpath.relpath(path, listing.root)}",
                              Body=read_bytes(listing, path))
        plan = inference.plan_actors(cluster.start_or_join(), None)
        moto = urlparse(variables["AWS_ENDPOINT_URL"])
        rates = {}
        try:
            for delay_ms in (0, args.s3_delay_ms):
                with local_s3.LatencyProxy(moto.hostname, moto.port, delay_ms / 1000) as proxy, \
                        environment(AWS_ENDPOINT_URL=proxy.url):
                    bucket = data.list_files("s3://bench/images")
                    cfg = settings.resolve("s3://bench/images", args.model_name, output_dir, None, args.batch_size, None)
                    settle()
                    sweep = inference.batch_size_sweep(bucket, cfg, plan, (args.batch_size,), images=len(paths))
                    rates[delay_ms] = float(sweep["images_per_second"].iloc[0])
        finally:
            cluster.stop()
    return {"delay_ms": args.s3_delay_ms, "no_delay_images_per_second": round(rates[0], 2),
            "delayed_images_per_second": round(rates[args.s3_delay_ms], 2),
            "delayed_over_no_delay": round(rates[args.s3_delay_ms] / rates[0], 3)}


def run(args: argparse.Namespace) -> dict:
    listing = data.list_files(args.data_uri)
    paths = data.select_images(listing.images, listing.root, args.limit)
    listing.images = paths
    if len(paths) < 2 * args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} needs at least {2 * args.batch_size} images "
                         f"for a steady-state measure, not {len(paths)}: raise --limit or lower --batch-size.")
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "model_name": args.model_name, "images": len(paths), "batch_size": args.batch_size,
    }
    with PeakMemory() as memory:
        predictor = inference.Predictor(args.model_name)
        spec = predictor.preprocessing
        pixels = np.stack([
            spec.resize_and_crop(data.decode_image(read_bytes(listing, path), spec.resize_size))
            for path in paths
        ])
        results["model_only_images_per_second"] = round(model_only(predictor, pixels, args.batch_size), 2)
        del pixels

        started = time.perf_counter()
        ray_cluster = cluster.start_or_join()
        results["ray_start_seconds"] = round(time.perf_counter() - started, 2)
        plan = inference.plan_actors(ray_cluster, None)
        with tempfile.TemporaryDirectory() as output_dir:
            cfg = settings.resolve(args.data_uri, args.model_name, output_dir, args.limit, args.batch_size, None)

            def pipeline(batch_sizes) -> pd.DataFrame:
                settle()
                return inference.batch_size_sweep(listing, cfg, plan, batch_sizes, images=len(paths))

            bare, turns, loader = [], [], []
            for _ in range(args.repeats):
                settle()
                bare.append(round(bare_loop(predictor, listing, paths, args.batch_size), 2))
                turns.append(pipeline((args.batch_size,)))
                settle()
                loader.append(round(dataloader_loop(predictor, listing, paths, args.batch_size,
                                                    args.loader_workers), 2))
            others = pipeline(tuple(sorted(set(args.sweep) - {args.batch_size})))
        cluster.stop()
        if args.s3_delay_ms:
            results["s3"] = from_a_bucket(listing, paths, args)
    chosen = pd.concat(turns, ignore_index=True)
    results["plan"] = {"actors": plan.num_actors, "threads_per_actor": plan.threads,
                       "cpus_per_actor": plan.num_cpus, "decodes_in_actors": plan.decodes_in_actors}
    results["bare_loop_images_per_second"] = float(np.median(bare))
    results["bare_loop_runs"] = bare
    results["pipeline_images_per_second"] = float(chosen["images_per_second"].median())
    results["pipeline_runs"] = chosen["images_per_second"].tolist()
    results["pipeline_stage_seconds"] = float(chosen["seconds"].median())
    results["pipeline_over_bare_runs"] = [round(p / b, 3) for p, b in zip(results["pipeline_runs"], bare)]
    results["pipeline_over_bare"] = float(np.median(results["pipeline_over_bare_runs"]))
    results["dataloader_workers"] = args.loader_workers
    results["dataloader_images_per_second"] = float(np.median(loader))
    results["dataloader_runs"] = loader
    results["pipeline_over_dataloader_runs"] = [round(p / d, 3) for p, d in zip(results["pipeline_runs"], loader)]
    results["pipeline_over_dataloader"] = float(np.median(results["pipeline_over_dataloader_runs"]))
    sweep = pd.concat([chosen, others], ignore_index=True)
    medians = sweep.groupby("batch_size")["images_per_second"].median()
    results["pipeline_batch_size_sweep"] = {str(size): float(rate) for size, rate in medians.items()}
    results["peak_memory_gib"] = round(memory.peak_bytes / 2**30, 2)
    return results


def table(results: dict) -> str:
    rows = [
        ("model only (ready tensors)", results["model_only_images_per_second"]),
        ("bare PyTorch loop", results["bare_loop_images_per_second"]),
        (f"DataLoader, {results['dataloader_workers']} worker(s)", results["dataloader_images_per_second"]),
        ("Ray Data pipeline (steady)", results["pipeline_images_per_second"]),
    ]
    lines = [f"{results['model_name']}, {results['images']} images, batch size {results['batch_size']}",
             f"{'':<28} {'images/s':>9}"]
    lines += [f"{name:<28} {value:>9.1f}" for name, value in rows]
    lines.append(f"medians of {len(results['pipeline_runs'])} runs taking turns: bare {results['bare_loop_runs']}, "
                 f"pipeline {results['pipeline_runs']}; pipeline plan {results['plan']}")
    lines.append(f"pipeline / DataLoader: {results['pipeline_over_dataloader']:.2f} "
                 f"(median of {results['pipeline_over_dataloader_runs']}; DataLoader {results['dataloader_runs']})")
    lines.append(f"pipeline / bare loop: {results['pipeline_over_bare']:.2f} (median of {results['pipeline_over_bare_runs']}); "
                 f"peak memory {results['peak_memory_gib']:.2f} GiB; Ray start {results['ray_start_seconds']:.1f} s")
    lines.append("batch size sweep (pipeline images/s): " + ", ".join(
        f"{size}: {value:.1f}" for size, value in results["pipeline_batch_size_sweep"].items()))
    if "s3" in results:
        s3 = results["s3"]
        lines.append(f"from a bucket (moto on 127.0.0.1): {s3['no_delay_images_per_second']:.1f} images/s, "
                     f"{s3['delayed_images_per_second']:.1f} with {s3['delay_ms']} ms per request: "
                     f"{s3['delayed_over_no_delay']:.2f} of it")
    return "\n".join(lines)


def write_results(results: dict, output: Path | None) -> None:
    """``results`` as indented JSON into ``output``, where one is given."""
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-uri", default=settings.SAMPLE_DATA)
    parser.add_argument("--model-name", default=settings.OFFLINE_MODEL)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sweep", type=lambda text: [int(v) for v in text.split(",")], default=[8, 16, 64])
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the bare loop and of the pipeline at --batch-size, taking turns; medians are reported")
    parser.add_argument("--loader-workers", type=int, default=1,
                        help="DataLoader worker processes beside the model (which uses every core's threads)")
    parser.add_argument("--s3-delay-ms", type=int, default=30,
                        help="also run the pipeline from a bucket on 127.0.0.1, with and without this delay "
                             "per request (0: skip)")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    results = run(args)
    print(table(results))
    print(json.dumps(results, indent=2))
    write_results(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
