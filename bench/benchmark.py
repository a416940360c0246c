"""Throughput benchmark: the model alone, notebook 2's plain loop, a bare optimised loop, a PyTorch
DataLoader loop, and notebook 03 itself (run with papermill, as ``make run`` runs it), on the
sample six times over (3,024 images, ``--copies``), and from a bucket.

    python bench/benchmark.py --output outputs/benchmark.json   # or: make bench

The first notebook 03 run's actors choose their levers by measurement (channels_last, a frozen
graph, bf16); the model-only rates, the bare loop and the DataLoader loop then use the same
levers, so that the ratios say what the pipeline's parallelism (single-threaded actors on every
core, reading and writing beside them) is worth on this machine. The model alone on one thread,
times the actors, is the pipeline's ceiling (the same cores also decode, read and write);
notebook 2's loop (the plain fp32 model on every core, a batch at a time) is where a learner
starts.

Prints a table and writes JSON: images/s for each (the loops and the notebook at the chosen
batch size as the median of ``--repeats`` runs, all runs listed), the ratios of the notebook to
the ceiling and to each loop, peak memory (this process and every process it started, Ray's
workers included), the notebook's images/s across batch sizes, and its images/s from a bucket on
moto's S3 server on 127.0.0.1 holding ``--bucket-folders`` class folders of one image each, without
and with a delay per request (``--s3-delay-ms``, 30 by default: a bucket in another region).
Every notebook run joins one Ray head, whose workers reach the bucket through the proxy that
adds the delay.

The notebook and the loops take turns, and each ratio is the median of the ratios of runs taken
side by side: a shared machine whose speed drifts then slows both sides of a pair alike. Every
timed run starts once the machine is quiet. The notebook's images/s is its steady state
(``predictions.json``): from the moment every actor has finished a batch to the last batch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import papermill
import torch

from helpers import data, models, sample, settings
from helpers.machinery import ray_start, series
from support.folders import one_per_folder, replicate
from support.machine import PeakMemory, settle
from support.model_loading import load_model, prepared
from support.notebook_03 import NOTEBOOK_03, without_extra_pipelines
from support.s3_server import Proxy, moto_s3


class Predictor:
    """The model as notebook 03's ``FastClassifier`` runs it with the levers its actors chose (the
    run's ``levers``), in ``inference_mode``; uint8 pixels in, top-5 class indices out."""

    def __init__(self, model_name: str, levers: str):
        self.preprocessing = models.preprocessing(model_name)
        size = self.preprocessing.crop_size
        self.run = prepared(load_model(model_name), levers, torch.zeros(2, 3, size, size))

    def top_k(self, pixels: np.ndarray, k: int = 5) -> np.ndarray:
        batch = self.preprocessing.normalize(torch.from_numpy(np.ascontiguousarray(pixels)))
        return self.run(batch).topk(k, dim=1).indices.numpy()


def preprocessed(listing: data.Listing, path: str, spec: models.Preprocessing) -> np.ndarray:
    """One image file as notebook 03's ``preprocess`` makes it: decoded (at reduced scale where
    it is large), resized and cropped, uint8."""
    return spec.resize_and_crop(data.decode_image(listing.read_bytes(path), at_least=spec.resize_size))


def model_only(predictor: Predictor, pixels: np.ndarray, batch_size: int, threads: int) -> float:
    """Images/s of the model on ready uint8 tensors (normalisation included), on ``threads`` threads,
    after warm-up calls (a frozen graph optimises itself in its first calls)."""
    torch.set_num_threads(threads)
    predictor.top_k(pixels[:batch_size])
    predictor.top_k(pixels[:batch_size])
    started = time.perf_counter()
    for start in range(0, len(pixels), batch_size):
        predictor.top_k(pixels[start:start + batch_size])
    return len(pixels) / (time.perf_counter() - started)


def plain_loop(model_name: str, listing: data.Listing, paths: list[str], batch_size: int) -> float:
    """Images/s of notebook 2's loop in one process on every core: read, decode (whole), the
    weights' own transforms, the plain fp32 model, top-5, a batch at a time (as notebook 03's
    *What Ray bought* runs it)."""
    torch.set_num_threads(os.cpu_count())
    model, transform = load_model(model_name), models.get_weights(model_name).transforms()
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        images = [transform(data.decode_image(listing.read_bytes(path))) for path in paths[start:start + batch_size]]
        with torch.inference_mode():
            model(torch.stack(images)).softmax(dim=1).topk(5, dim=1)
    return len(paths) / (time.perf_counter() - started)


def bare_loop(predictor: Predictor, listing: data.Listing, paths: list[str], batch_size: int) -> float:
    """Images/s of one process doing read, decode, preprocess, infer and top-5, in turn."""
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        predictor.top_k(np.stack([preprocessed(listing, path, predictor.preprocessing)
                                  for path in paths[start:start + batch_size]]))
    return len(paths) / (time.perf_counter() - started)


class PreprocessedImages(torch.utils.data.Dataset):
    """The images of ``paths``, read, decoded and preprocessed as notebook 03 does (uint8)."""

    def __init__(self, listing: data.Listing, paths: list[str], spec: models.Preprocessing):
        self.listing, self.paths, self.spec = listing, paths, spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(preprocessed(self.listing, self.paths[index], self.spec)))


def dataloader_loop(predictor: Predictor, listing: data.Listing, paths: list[str], batch_size: int,
                    workers: int) -> float:
    """Steady images/s of the single-machine loop an expert would write: a ``DataLoader``
    whose ``workers`` processes read, decode and preprocess while this process runs the
    model (the same ``Predictor``, on all cores' threads). Timed from the first batch, as the
    notebook's steady state is (worker start-up left out)."""
    loader = torch.utils.data.DataLoader(PreprocessedImages(listing, paths, predictor.preprocessing),
                                         batch_size=batch_size, num_workers=workers,
                                         multiprocessing_context="spawn", prefetch_factor=4)
    batches = iter(loader)
    predictor.top_k(next(batches).numpy())
    started = time.perf_counter()
    for batch in batches:
        predictor.top_k(batch.numpy())
    return (len(paths) - batch_size) / (time.perf_counter() - started)


def notebook_03(parameters: dict) -> dict:
    """Notebook 03 (without its extra pipelines, which follow the write) run with papermill on
    ``parameters`` into a scratch folder: its manifest, which must hold a steady images/s."""
    with tempfile.TemporaryDirectory() as output_dir:
        notebook = without_extra_pipelines(Path(output_dir) / "notebook-03")
        settle()
        series.execute_series(output_dir, parameters, notebooks=(notebook,), progress=False)
        manifest = json.loads((Path(output_dir) / "predictions.json").read_text())
    if manifest["images_per_second"] is None:
        raise SystemExit(f"notebook 03 on {manifest['num_images']} images in batches of {parameters['batch_size']} "
                         "had no steady rate (no batch ended after the last actor's first): raise --limit "
                         "or --bucket-folders, or lower --batch-size")
    return manifest


@contextlib.contextmanager
def bucket_behind_a_proxy(args: argparse.Namespace) -> Iterator[Proxy | None]:
    """With ``--s3-delay-ms``: ``--bucket-folders`` class folders of one image each in a bucket
    of moto's S3 server on 127.0.0.1, and a proxy to it (no delay yet) that ``AWS_ENDPOINT_URL``
    names for the duration, for Ray's workers to inherit. Without: nothing."""
    if not args.s3_delay_ms:
        yield None
        return
    import boto3

    with tempfile.TemporaryDirectory() as folder, moto_s3() as variables, mock.patch.dict(os.environ, variables):
        images = one_per_folder(sample.ensure_sample(), Path(folder), args.bucket_folders)
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        for path in sorted(images.glob("*/*")):
            client.upload_file(str(path), "bench", f"images/{path.relative_to(images).as_posix()}")
        with Proxy(variables["AWS_ENDPOINT_URL"]) as proxy, mock.patch.dict(os.environ, AWS_ENDPOINT_URL=proxy.url):
            yield proxy


def from_a_bucket(args: argparse.Namespace, proxy: Proxy) -> dict:
    """Notebook 03's steady images/s on the bucket, without delay, then with ``--s3-delay-ms``
    per request."""
    rates = {}
    for delay_ms in (0, args.s3_delay_ms):
        proxy.delay_s = delay_ms / 1000
        rates[delay_ms] = notebook_03({"data_uri": "s3://bench/images", "batch_size": args.batch_size,
                                       "model_name": args.model_name})["images_per_second"]
    return {"folders": args.bucket_folders, "delay_ms": args.s3_delay_ms, "no_delay_images_per_second": rates[0],
            "delayed_images_per_second": rates[args.s3_delay_ms],
            "delayed_over_no_delay": round(rates[args.s3_delay_ms] / rates[0], 3)}


def replicated(data_uri: str, copies: int, folder: Path) -> str:
    """``data_uri`` itself for one copy; else a local folder of its files ``copies`` times over
    (the sample's 504 images are over before two actors reach a steady rate)."""
    if copies == 1:
        return data_uri
    source = data.resolve_data_uri(data_uri)
    if "://" in source:
        raise SystemExit(f"--copies {copies} copies a local folder, not {data_uri}: use --copies 1")
    return str(replicate(Path(source), folder / "images", copies))


def run(args: argparse.Namespace) -> dict:
    listing = data.list_files(args.data_uri)
    paths = data.decodable_images(listing, args.limit or len(listing.images))  # the loops skip no bad file
    if len(paths) < 2 * args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} needs at least {2 * args.batch_size} images "
                         f"for a steady-state measure, not {len(paths)}: raise --limit or lower --batch-size.")
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "model_name": args.model_name, "images": len(paths), "copies": args.copies, "batch_size": args.batch_size,
    }
    notebook = {"data_uri": args.data_uri, "model_name": args.model_name, "limit": args.limit}
    with PeakMemory() as memory:
        with bucket_behind_a_proxy(args) as proxy:
            started = time.perf_counter()
            with ray_start.head(Path(tempfile.mkdtemp()) / "ray-head.log") as variables, \
                    mock.patch.dict(os.environ, variables):
                results["ray_start_seconds"] = round(time.perf_counter() - started, 2)
                turns = [notebook_03({**notebook, "batch_size": args.batch_size})]  # its actors choose the levers
                levers = max(turns[0]["levers"], key=turns[0]["levers"].get)
                predictor = Predictor(args.model_name, levers)
                pixels = np.stack([preprocessed(listing, path, predictor.preprocessing) for path in paths])
                settle()
                one_thread = model_only(predictor, pixels, args.batch_size, threads=1)
                results["levers"] = levers
                results["model_only_one_thread_images_per_second"] = round(one_thread, 2)
                results["model_only_images_per_second"] = round(
                    model_only(predictor, pixels, args.batch_size, threads=os.cpu_count()), 2)
                del pixels
                bare, plain, loader = [], [], []
                for repeat in range(args.repeats):
                    if repeat:
                        turns.append(notebook_03({**notebook, "batch_size": args.batch_size}))
                    settle()
                    bare.append(round(bare_loop(predictor, listing, paths, args.batch_size), 2))
                    settle()
                    plain.append(round(plain_loop(args.model_name, listing, paths, args.batch_size), 2))
                    settle()
                    loader.append(round(dataloader_loop(predictor, listing, paths, args.batch_size,
                                                        args.loader_workers), 2))
                others = {size: notebook_03({**notebook, "batch_size": size})["images_per_second"]
                          for size in sorted(set(args.sweep) - {args.batch_size})}
                if proxy:
                    results["s3"] = from_a_bucket(args, proxy)
    rates = [manifest["images_per_second"] for manifest in turns]
    results["actors"] = turns[0]["num_actors"]
    results["ceiling_images_per_second"] = round(results["model_only_one_thread_images_per_second"] * results["actors"], 2)
    results["pipeline_over_ceiling_runs"] = [round(rate / results["ceiling_images_per_second"], 3) for rate in rates]
    results["pipeline_over_ceiling"] = float(np.median(results["pipeline_over_ceiling_runs"]))
    results["plain_loop_images_per_second"] = float(np.median(plain))
    results["plain_loop_runs"] = plain
    results["pipeline_over_plain_loop_runs"] = [round(p / b, 3) for p, b in zip(rates, plain)]
    results["pipeline_over_plain_loop"] = float(np.median(results["pipeline_over_plain_loop_runs"]))
    results["bare_loop_images_per_second"] = float(np.median(bare))
    results["bare_loop_runs"] = bare
    results["pipeline_images_per_second"] = float(np.median(rates))
    results["pipeline_runs"] = rates
    results["pipeline_stage_seconds"] = float(np.median([manifest["seconds"] for manifest in turns]))
    results["pipeline_over_bare_runs"] = [round(p / b, 3) for p, b in zip(rates, bare)]
    results["pipeline_over_bare"] = float(np.median(results["pipeline_over_bare_runs"]))
    results["dataloader_workers"] = args.loader_workers
    results["dataloader_images_per_second"] = float(np.median(loader))
    results["dataloader_runs"] = loader
    results["pipeline_over_dataloader_runs"] = [round(p / d, 3) for p, d in zip(rates, loader)]
    results["pipeline_over_dataloader"] = float(np.median(results["pipeline_over_dataloader_runs"]))
    results["pipeline_batch_size_sweep"] = {str(args.batch_size): results["pipeline_images_per_second"],
                                            **{str(size): rate for size, rate in others.items()}}
    results["peak_memory_gib"] = round(memory.peak_bytes / 2**30, 2)
    return results


def table(results: dict) -> str:
    rows = [
        (f"model only, 1 thread ({results['levers']})", results["model_only_one_thread_images_per_second"]),
        (f"model only, {results['machine']['cpus']} threads", results["model_only_images_per_second"]),
        (f"ceiling: 1 thread x {results['actors']} actors", results["ceiling_images_per_second"]),
        ("notebook 2's plain fp32 loop", results["plain_loop_images_per_second"]),
        ("bare optimised loop", results["bare_loop_images_per_second"]),
        (f"DataLoader, {results['dataloader_workers']} worker(s)", results["dataloader_images_per_second"]),
        ("notebook 03 (steady)", results["pipeline_images_per_second"]),
    ]
    lines = [f"{results['model_name']}, {results['images']} images ({results['copies']} copies), "
             f"batch size {results['batch_size']}",
             f"{'':<44} {'images/s':>9}"]
    lines += [f"{name:<44} {value:>9.1f}" for name, value in rows]
    lines.append(f"medians of {len(results['pipeline_runs'])} runs taking turns: notebook {results['pipeline_runs']}, "
                 f"plain loop {results['plain_loop_runs']}, bare {results['bare_loop_runs']}, "
                 f"DataLoader {results['dataloader_runs']}")
    for name, key in (("the ceiling", "ceiling"), ("plain fp32 loop", "plain_loop"), ("bare loop", "bare"),
                      ("DataLoader", "dataloader")):
        lines.append(f"pipeline / {name}: {results[f'pipeline_over_{key}']:.2f} "
                     f"(median of {results[f'pipeline_over_{key}_runs']})")
    lines.append(f"peak memory {results['peak_memory_gib']:.2f} GiB; Ray start {results['ray_start_seconds']:.1f} s")
    lines.append("batch size sweep (notebook images/s): " + ", ".join(
        f"{size}: {value:.1f}" for size, value in results["pipeline_batch_size_sweep"].items()))
    if "s3" in results:
        s3 = results["s3"]
        lines.append(f"from a bucket of {s3['folders']} class folders (moto on 127.0.0.1): "
                     f"{s3['no_delay_images_per_second']:.1f} images/s, {s3['delayed_images_per_second']:.1f} with "
                     f"{s3['delay_ms']} ms per request: {s3['delayed_over_no_delay']:.2f} of it")
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
    notebook_batch_size = int(papermill.inspect_notebook(str(NOTEBOOK_03))["batch_size"]["default"])
    parser.add_argument("--batch-size", type=int, default=notebook_batch_size, help="default: notebook 03's")
    parser.add_argument("--sweep", type=lambda text: [int(v) for v in text.split(",") if v], default=[4, 16, 32])
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the loops and of notebook 03 at --batch-size, taking turns; medians are reported")
    parser.add_argument("--loader-workers", type=int, default=1,
                        help="DataLoader worker processes beside the model (which uses every core's threads)")
    parser.add_argument("--s3-delay-ms", type=int, default=30,
                        help="also run notebook 03 from a bucket on 127.0.0.1, with and without this delay "
                             "per request (0: skip)")
    parser.add_argument("--bucket-folders", type=int, default=1000, help="class folders of one image in the bucket")
    parser.add_argument("--copies", type=int, default=6,
                        help="the loops and notebook 03 on --data-uri's files this many times over (3,024 images "
                             "from the sample: long enough for a steady rate)")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        args.data_uri = replicated(args.data_uri, args.copies, Path(folder))
        results = run(args)
    print(table(results))
    print(json.dumps(results, indent=2))
    write_results(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
