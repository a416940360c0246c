"""Batch inference: per-row preprocessing, the predictor, the actor class and the run.

The same ``Predictor`` serves notebook 02 (one batch on the driver) and every actor of
notebook 03's ``map_batches``, so the two can never disagree.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import platform
import time
import uuid
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from helpers import labels, models
from helpers.cluster import ClusterInfo, native_stderr_to
from helpers.data import Listing, UnreadableImage, class_folder, decode_image, read_image_files
from helpers.settings import Settings, SettingsError
from helpers.storage import Location, read_parquet, write_csv, write_json

PIXELS = "pixels"
TOP_K = 5
TASK_CPUS = 0.5  # reserved by each decode task, and by reads and writes beside GPU actors
FILES_PER_READ = 64  # at least; a whole number of batches, so that no batch is a runt


def decode_and_preprocess(row: dict, preprocessing: models.Preprocessing, root: str) -> dict:
    """``ds.map`` step: raw bytes of any size -> fixed-size uint8 ``pixels``, or an ``error``.

    Decoding here rather than in the read keeps one bad file from failing the job, and
    keeps full-size images out of Ray's object store: only 3 x 224 x 224 bytes travel.
    """
    out = {"path": row["path"], "label": class_folder(row["path"], root), "error": ""}
    try:
        out[PIXELS] = preprocessing.resize_and_crop(decode_image(row["bytes"], at_least=preprocessing.resize_size))
    except UnreadableImage as unreadable:
        out[PIXELS] = np.zeros((3, preprocessing.crop_size, preprocessing.crop_size), np.uint8)
        out["error"] = str(unreadable)
    return out


def preprocess_images(images, preprocessing: models.Preprocessing) -> np.ndarray:
    """A batch of decoded H x W x 3 images of any sizes -> one N x 3 x H x W uint8 array."""
    return np.stack([
        preprocessing.resize_and_crop(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        for image in images
    ])


def _frozen(model: torch.nn.Module, size: int) -> torch.jit.ScriptModule:
    """A traced, frozen graph of ``model`` (batch norm folded into convolutions).

    torch.jit is deprecated in favour of torch.compile, but measured here on 2 CPU cores it
    is still the better choice: EfficientNet-Lite0 at batch 32 runs at 86 images/s frozen
    (0.9 s to build) against 81 images/s compiled (32 s to build) and 54 images/s eager.
    """
    example = torch.zeros(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        return torch.jit.freeze(torch.jit.trace(model, example))


class Predictor:
    """A model ready for inference, with its normalisation, on the best device.

    On the CPU the graph is traced and frozen in channels_last layout; on a GPU it runs in
    channels_last under bf16 autocast, fed by pinned, non-blocking copies.
    """

    def __init__(self, model_name: str, device: str | None = None, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.model_name = model_name
        self.device = torch.device(device) if device else models.best_device()
        self.preprocessing = models.preprocessing(model_name)
        model = models.load_model(model_name).to(self.device, memory_format=torch.channels_last)
        self.model = _frozen(model, self.preprocessing.crop_size) if self.device.type == "cpu" else model

    def top_k(self, pixels: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
        """N x 3 x H x W uint8 -> (N x k softmax scores, N x k class indices), best first."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        batch = self.preprocessing.normalize(batch).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            logits = self.model(batch)
        scores, indices = logits.float().softmax(dim=1).topk(k, dim=1)
        return scores.cpu().numpy(), indices.cpu().numpy()


def _with_gaps(values: list, valid: np.ndarray) -> list:
    """Spread ``values`` over the rows where ``valid`` is True; None elsewhere."""
    filled = iter(values)
    return [next(filled) if ok else None for ok in valid]


def describe_predictions(
    scores: np.ndarray, indices: np.ndarray, valid: np.ndarray | None = None, **leading_columns
) -> pa.Table:
    """A table of top-1 and top-k (index, WordNet id, name, score) per image, as in the Parquet.

    ``scores`` and ``indices`` hold the rows where ``valid`` is True; the other rows get
    nulls. Top-k columns are Arrow lists, so the Parquet reads back as plain lists.
    """
    valid = np.ones(len(indices), bool) if valid is None else np.asarray(valid, bool)
    wnids = [[labels.index_to_wnid(i) for i in row] for row in indices.tolist()]
    names = [[labels.index_to_name(i) for i in row] for row in indices.tolist()]
    columns = {name: pa.array(values) for name, values in leading_columns.items()}
    for name, values, kind in (
        ("top1_index", indices[:, 0].tolist(), pa.int64()),
        ("top1_wnid", [row[0] for row in wnids], pa.string()),
        ("top1_name", [row[0] for row in names], pa.string()),
        ("top1_score", scores[:, 0].tolist(), pa.float32()),
        ("top5_index", indices.tolist(), pa.list_(pa.int64())),
        ("top5_wnid", wnids, pa.list_(pa.string())),
        ("top5_name", names, pa.list_(pa.string())),
        ("top5_score", scores.tolist(), pa.list_(pa.float32())),
    ):
        columns[name] = pa.array(_with_gaps(values, valid), kind)
    return pa.table(columns)


class Classifier(Predictor):
    """The callable class ``map_batches`` runs on each actor: pixels in, predictions out.

    Rows whose file could not be decoded pass through with their ``error`` and no
    prediction. ``predicted_at`` records when each batch finished, and ``actor`` which
    actor (host:process) classified it: for throughput, and to see the work spread.
    """

    def __init__(self, model_name: str, **options):
        super().__init__(model_name, **options)
        self.actor = f"{platform.node()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        valid = batch["error"] == ""
        if valid.any():
            scores, indices = self.top_k(batch[PIXELS][valid])
        else:
            scores, indices = np.zeros((0, TOP_K), np.float32), np.zeros((0, TOP_K), np.int64)
        return describe_predictions(
            scores, indices, valid,
            path=batch["path"], label=batch["label"], error=batch["error"],
            predicted_at=np.full(len(valid), time.time()), actor=np.full(len(valid), self.actor),
        )


@dataclass(frozen=True)
class ActorPlan:
    """How many inference actors, what each one reserves and uses, and the tasks' share."""

    num_actors: int
    num_cpus: float
    num_gpus: int
    threads: int
    task_cpus: float  # per read and write task

    @property
    def decodes_in_actors(self) -> bool:
        """Single-threaded CPU actors decode their own images.

        Such an actor is a small bare loop with nothing to overlap, and one per core keeps
        every core busy; Ray fuses the decoding ``map`` into the actor when both reserve the
        same CPUs. Actors with a GPU or several threads get their pixels from separate
        decode tasks instead, which run while they infer.
        """
        return not self.num_gpus and self.threads == 1

    @property
    def decode_cpus(self) -> float:
        """The actors' own share where they decode (Ray fuses the two steps only when both
        reserve the same); otherwise a small share, so that several decode tasks run at once."""
        return self.num_cpus if self.decodes_in_actors else TASK_CPUS

    def remote_args(self) -> dict[str, float]:
        """Resources for ``map_batches``; ``num_gpus`` only where there are GPUs."""
        return {"num_cpus": self.num_cpus, **({"num_gpus": self.num_gpus} if self.num_gpus else {})}


def plan_actors(cluster: ClusterInfo, num_actors: int | None) -> ActorPlan:
    """One actor per GPU; on CPUs, as many actors as cores, each with a share of the threads.

    On CPUs the actors reserve three quarters of the cores (all but one on small nodes) and
    the read, decode and write tasks the rest, so that neither waits for the other forever;
    between them the actors' threads use every core. Up to 4 cores, each actor runs one
    thread: several single-threaded copies of the model (measured: two at 1 thread each
    classify 10 to 15% more images/s than one at 2 threads on 2 cores). Above, actors of 4
    threads keep the number of model copies, and memory, in bounds.

    CPU tasks reserve a whole CPU (less only where fewer are left), so on a small node one
    task runs at a time and one worker process serves every read and write in turn. Two at
    once need two workers, and Ray ends surplus idle workers after a second (on 2 CPUs it
    kept one of two), so it started a new one whenever two tasks met again; on 2 cores that
    start-up (~2.5 s of CPU: a fresh process importing Ray Data) stalled the actors in the
    middle of one series run in two, costing 20 to 30% of its images/s.

    Fails at once, naming ``num_actors``, when the cluster cannot host that many actors,
    instead of leaving the dataset waiting for resources that never come.
    """
    gpus, cpus = int(cluster.gpus), int(cluster.cpus)
    if gpus:
        actors = num_actors or gpus
        if actors > gpus:
            raise SettingsError(
                f"num_actors={num_actors} is more than this cluster's {gpus} GPU(s) can host: "
                f"use at most {gpus}, or None for one actor per GPU."
            )
        return ActorPlan(actors, num_cpus=1, num_gpus=1, threads=max(1, cpus // actors), task_cpus=TASK_CPUS)
    if cpus < 1:
        raise SettingsError("Ray reports no CPUs: check the cluster (`ray status`).")
    if num_actors and num_actors > cpus:
        raise SettingsError(
            f"num_actors={num_actors} is more than this cluster can host ({cpus} CPUs, at least "
            f"one per actor): use at most {cpus}, or None for automatic."
        )
    actors = num_actors or max(1, cpus // (1 if cpus <= 4 else 4))
    spare = max(cpus / 2, cpus - max(1, cpus // 4))  # the actors' share; the rest is for the tasks
    return ActorPlan(actors, num_cpus=spare / actors, num_gpus=0, threads=max(1, cpus // actors),
                     task_cpus=min(1.0, cpus - spare))


def build_pipeline(listing: Listing, settings: Settings, plan: ActorPlan):
    """The lazy Dataset of predictions: read bytes -> map(decode, preprocess) -> map_batches."""
    import ray.data

    batches_per_read = math.ceil(FILES_PER_READ / settings.batch_size)
    ds = read_image_files(listing, settings.limit, num_cpus=plan.task_cpus,
                          files_per_read=batches_per_read * settings.batch_size, min_reads=plan.num_actors)
    ds = ds.map(
        decode_and_preprocess,
        fn_kwargs={"preprocessing": models.preprocessing(settings.model_name), "root": listing.root},
        num_cpus=plan.decode_cpus,  # the actors' own share: Ray fuses decoding into them
    )
    return ds.map_batches(
        Classifier,
        fn_constructor_kwargs={"model_name": settings.model_name, "threads": plan.threads},
        batch_size=settings.batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        **plan.remote_args(),
    )


@dataclass(frozen=True)
class RunSummary:
    """What notebook 03 records for notebook 04 in ``predictions.json``."""

    run_id: str
    files: list[str]  # the Parquet files, relative to the output folder
    skipped_file: str  # CSV of every file not classified, with the reason
    num_rows: int  # image files read: classified plus unreadable
    num_images: int  # images classified
    num_skipped: int  # unreadable images plus files that were never images
    seconds: float  # the whole stage: start-up, model loading, reading, inference, writing
    images_per_second: float  # steady state: once every actor has finished a batch, to the last
    model_name: str
    data_uri: str
    limit: int | None
    batch_size: int
    num_actors: int
    threads_per_actor: int


def steady_images_per_second(finished: pd.DataFrame) -> float:
    """Images per second once every actor is up: from the moment the last actor to start
    finished its first batch, to the last batch.

    ``finished`` has a row per image with ``predicted_at`` (when its batch finished) and
    ``actor``. Excludes the start-up that every run pays once (actors importing PyTorch and
    loading the model, one after another where they share cores), so that runs of
    different sizes compare; NaN when no batch finishes after that moment.
    """
    all_up = finished.groupby("actor")["predicted_at"].min().max()
    later = finished["predicted_at"][finished["predicted_at"] > all_up]
    span = later.max() - all_up if len(later) else 0.0
    return float(len(later) / span) if span > 0 else math.nan


def skipped_files(listing: Listing, predictions: pd.DataFrame) -> pd.DataFrame:
    """Every file that was not classified, with the reason."""
    unreadable = predictions.loc[predictions["error"] != "", ["path", "error"]]
    return pd.concat(
        [pd.DataFrame(listing.skipped, columns=["path", "reason"]),
         unreadable.rename(columns={"error": "reason"})],
        ignore_index=True,
    ).sort_values("path", ignore_index=True)


def batch_size_sweep(listing: Listing, settings: Settings, plan: ActorPlan,
                     batch_sizes: tuple[int, ...] = (8, 16, 32, 64), images: int = 128) -> pd.DataFrame:
    """Steady images/s (and the whole stage's seconds) of the pipeline at each batch size,
    on the same ``images`` images.

    Batch sizes that give fewer than two batches (no steady state to measure) are left out.
    Each run writes into a scratch folder beside the outputs, deleted at the end, so the
    series' own predictions stay as they are.
    """
    images = min(settings.limit or images, images, len(listing.images))
    scratch = settings.output_dir / f".sweep-{uuid.uuid4().hex[:8]}"
    rows = []
    try:
        for batch_size in (size for size in batch_sizes if 2 * size <= images):
            trial = dataclasses.replace(settings, batch_size=batch_size, output_dir=scratch, limit=images)
            summary = run_batch_inference(build_pipeline(listing, trial, plan), listing, trial, plan)
            rows.append({"batch_size": batch_size, "images_per_second": summary.images_per_second,
                         "seconds": summary.seconds})
    finally:
        scratch.delete()
    return pd.DataFrame(rows)


class PipelineFailed(RuntimeError):
    """The pipeline stopped with an error; the last complete run's outputs are untouched."""


def _execute(predictions, run_dir: Location, plan: ActorPlan) -> str | None:
    """Write the predictions; on failure return the error as text, with every reference to
    the failed execution dropped and collected, so Ray releases its actors and their CPUs.

    A traceback kept alive (by the caller, or by Jupyter's ``sys.last_traceback``) would
    otherwise keep the actors alive, and the next run would wait forever for their CPUs.
    """
    try:
        # Write tasks reserve the tasks' share: with Ray's default of one CPU they could not
        # start beside the actors on a small node, and would all wait for the pool to end.
        predictions.write_parquet(run_dir.path, filesystem=run_dir.filesystem,
                                  ray_remote_args={"num_cpus": plan.task_cpus})
        return None
    except Exception as error:  # noqa: BLE001 - reported to the caller below
        failure = f"The pipeline failed: {_first_error_line(error)}"
    gc.collect()
    return failure


def _first_error_line(error: BaseException) -> str:
    """The user's own error inside Ray's wrappers, whose text carries the remote traceback.

    ``ValueError: boom`` rather than ``UserCodeException: UDF failed to process a block``.
    """
    for line in str(error).splitlines():
        name, colon, _ = line.strip().partition(":")
        if colon and name.isidentifier() and name.endswith(("Error", "Exception")) and not name.startswith("Ray"):
            return line.strip()
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def run_batch_inference(predictions, listing: Listing, settings: Settings, plan: ActorPlan) -> RunSummary:
    """Execute the ``predictions`` pipeline into Parquet, replacing the last run atomically.

    Each run writes into a fresh folder, with ``skipped.csv`` beside it; only when both are
    complete does ``predictions.json`` (replaced in one step) point at them, so an
    interrupted run leaves the previous predictions readable. Older runs are then deleted.
    The same holds in a bucket: an S3 object appears only once it is completely uploaded.
    """
    models.fetch_weights(settings.model_name)  # fail fast on the driver, not in every actor
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = settings.predictions_dir / run_id
    with native_stderr_to(settings.logs_dir / "ray-core.log"):
        started = time.perf_counter()
        failure = _execute(predictions, run_dir, plan)
        seconds = time.perf_counter() - started
    if failure:
        with contextlib.suppress(OSError):  # keep the pipeline's error, not the clean-up's
            run_dir.delete()
        raise PipelineFailed(f"{failure}\nThe previous predictions in {settings.output_dir} are unchanged.")
    files = [child for child in run_dir.children() if child.name.endswith(".parquet")]
    written = read_parquet(files, columns=["path", "error", "predicted_at", "actor"])
    skipped = skipped_files(listing, written)
    write_csv(run_dir / "skipped.csv", skipped, index=False)
    summary = RunSummary(
        run_id=run_id, files=[file.relative_to(settings.output_dir) for file in files],
        skipped_file=(run_dir / "skipped.csv").relative_to(settings.output_dir),
        num_rows=len(written), num_images=int((written["error"] == "").sum()),
        num_skipped=len(skipped), seconds=round(seconds, 3),
        images_per_second=round(steady_images_per_second(written), 2),
        model_name=settings.model_name, data_uri=settings.data_uri, limit=settings.limit,
        batch_size=settings.batch_size, num_actors=plan.num_actors, threads_per_actor=plan.threads,
    )
    write_json(settings.predictions_manifest, asdict(summary))
    for old in settings.predictions_dir.children():
        if old.name != run_id:
            old.delete()
    return summary
