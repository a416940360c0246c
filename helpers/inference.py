"""Batch inference, as notebook 03 teaches it: the per-row preprocessing, the fast
classifier, the actor plan, what each speed-up is worth, and runs that replace the last
complete one only once they are complete, and resume where a killed run stopped. Scripts,
tests and the benchmark use the same.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs
import torch

from helpers import labels, models
from helpers.cluster import ClusterInfo, native_stderr_to, releasing_actors
from helpers.data import Listing, UnreadableImage, class_folder, decode_image, read_image_files, select_images
from helpers.settings import Settings, SettingsError
from helpers.storage import Location, read_json, read_parquet, write_csv, write_json

PIXELS = "pixels"
TOP_K = 5
TASK_CPUS = 0.5  # reserved by each decode task, and by reads and writes beside GPU actors
LARGE_NODE_THREADS = 4  # threads per CPU actor where some node has more CPUs than this
RESOURCE_UNITS_PER_CPU = 10_000  # Ray's resolution: shares are rounded down to it
FILES_PER_READ = 64  # at least; a whole number of batches, so that no batch is a runt
RUN_RECORD = "run.json"  # in each run's folder: the settings it classifies with
_left_out_by_read: dict[str, frozenset[str]] = {}  # predictions folder -> what its last read left out


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


class FastClassifier(Predictor):
    """Notebook 03's ``Classifier`` with every speed-up: pixels in, predictions out.

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
        reserve the same); otherwise a small share, so that several decode tasks run at once
        (never more than the read and write tasks', which always find room)."""
        return self.num_cpus if self.decodes_in_actors else min(TASK_CPUS, self.task_cpus)

    def remote_args(self) -> dict[str, float]:
        """Resources for ``map_batches``; ``num_gpus`` only where there are GPUs."""
        return {"num_cpus": self.num_cpus, **({"num_gpus": self.num_gpus} if self.num_gpus else {})}


def plan_actors(cluster: ClusterInfo, num_actors: int | None) -> ActorPlan:
    """One actor per GPU; on CPUs, about one actor per core, planned node by node.

    Ray may place the actors on any nodes, so the plan holds for every placement: all the
    actors find room, and the read, decode and write tasks then still find ``task_cpus``
    free on some node. On CPUs each node of ``c`` CPUs keeps ``r = max(task_cpus, c // 4)``
    for the tasks and is meant to host ``k`` actors: one per core where no node has more
    than 4, else one per 4 cores (several single-threaded copies of the model classify 10 to
    15% more images/s than one at 2 threads on 2 cores; above, actors of 4 threads keep the
    copies, and memory, in bounds). Each actor reserves the least ``(c - r) / k`` of any
    node, so the actors hold at most ``C - sum(r)`` of the cluster's ``C`` CPUs: were every
    node left with less than ``task_cpus``, they would hold more (pigeonhole). Together
    the actors' threads use every core.

    Tasks reserve a whole CPU (half the smallest node where that is less), so on a small
    node one task runs at a time and one worker process serves every read and write in
    turn. Two at once need two workers, and Ray ends surplus idle workers after a second
    (on 2 CPUs it kept one of two), so it started a new one whenever two tasks met again; on
    2 cores that start-up (~2.5 s of CPU: a fresh process importing Ray Data) stalled the
    actors in the middle of one series run in two, costing 20 to 30% of its images/s.

    A given ``num_actors`` share what the tasks leave, each actor small enough that all of
    them find room. GPU actors take one GPU each and at most one CPU, leaving ``task_cpus``
    on every GPU node. More actors than CPUs (or GPUs) fail at once, naming ``num_actors``
    and the node sizes, instead of leaving the dataset waiting for resources that never come.
    """
    cpu_nodes = [cpus for cpus, _ in cluster.sizes if cpus > 0]
    if not cpu_nodes:
        raise SettingsError("Ray reports no CPUs: check the cluster (`ray status`).")
    task_cpus = min(1.0, min(cpu_nodes) / 2)
    gpu_nodes = [(cpus, int(gpus)) for cpus, gpus in cluster.sizes if gpus >= 1]
    if gpu_nodes:
        most = sum(gpus for _, gpus in gpu_nodes)
        if num_actors and num_actors > most:
            raise SettingsError(
                f"num_actors={num_actors} is more than this cluster can host (nodes of "
                f"{cluster.describe_nodes()}; one actor per GPU): use at most {most}, or None for one per GPU."
            )
        actors, task_cpus = num_actors or most, min(TASK_CPUS, task_cpus)
        share = min(1.0, *(max(0.0, cpus - task_cpus) / gpus for cpus, gpus in gpu_nodes))
        return ActorPlan(actors, num_cpus=_in_resource_units(share), num_gpus=1,
                         threads=max(1, int(sum(cpus for cpus, _ in gpu_nodes)) // actors), task_cpus=task_cpus)
    for_tasks = [max(task_cpus, cpus // 4) for cpus in cpu_nodes]
    if num_actors:
        most = sum(int(cpus) for cpus in cpu_nodes)
        if num_actors > most:
            raise SettingsError(
                f"num_actors={num_actors} is more than this cluster can host (nodes of "
                f"{cluster.describe_nodes()}; at most one actor per CPU): use at most {most}, or None for automatic."
            )
        actors = num_actors
        share = min((sum(cpu_nodes) - sum(for_tasks)) / actors, _largest_share(cpu_nodes, actors))
    else:
        per_actor = 1 if max(cpu_nodes) <= LARGE_NODE_THREADS else LARGE_NODE_THREADS
        intended = [max(1, int(cpus // per_actor)) for cpus in cpu_nodes]
        actors = sum(intended)
        share = min((cpus - kept) / k for cpus, kept, k in zip(cpu_nodes, for_tasks, intended))
    threads = max(1, min(int(sum(cpu_nodes)) // actors, int(max(cpu_nodes))))  # no more than a node has
    return ActorPlan(actors, num_cpus=_in_resource_units(share), num_gpus=0, threads=threads, task_cpus=task_cpus)


def _largest_share(cpu_nodes: list[float], actors: int) -> float:
    """The most CPUs each of ``actors`` actors can reserve and still all find room, however
    Ray places them: a node of ``c`` CPUs is full at ``c // share`` actors."""
    candidates = sorted({cpus / count for cpus in cpu_nodes for count in range(1, actors + 1)}, reverse=True)
    return next(share for share in candidates
                if sum(math.floor(cpus / share + 1e-9) for cpus in cpu_nodes) >= actors)


def _in_resource_units(cpus: float) -> float:
    """``cpus`` rounded down to Ray's resolution, so that Ray's sums agree with the plan's."""
    return math.floor(cpus * RESOURCE_UNITS_PER_CPU + 1e-6) / RESOURCE_UNITS_PER_CPU


def read_for_plan(listing: Listing, settings: Settings, plan: ActorPlan):
    """Notebook 01's read of the images' bytes, in read tasks sized for the actor plan:
    each holds a whole number of batches (no runt batches), at least one task per actor.

    Where a run with the same settings was killed, only the images it had not classified
    are read (``new_run`` then writes into its folder); it says so.
    """
    killed = killed_run(settings)
    if killed and not set(select_images(listing.images, listing.root, settings.limit)) - killed.classified:
        print(f"The killed run {killed.location.name} had classified every image but never "
              "completed: starting over.")
        killed.location.delete()
        killed = None
    if killed:
        print(f"Resuming the killed run {killed.location.name}: {len(killed.classified)} images "
              "are classified already; reading the others.")
    left_out = killed.classified if killed else frozenset()
    _left_out_by_read[str(settings.predictions_dir)] = left_out
    batches_per_read = math.ceil(FILES_PER_READ / settings.batch_size)
    return read_image_files(listing, settings.limit, num_cpus=plan.task_cpus,
                            files_per_read=batches_per_read * settings.batch_size, min_reads=plan.num_actors,
                            leave_out=left_out)


def build_pipeline(listing: Listing, settings: Settings, plan: ActorPlan):
    """Notebook 03's pipeline with ``FastClassifier``: read bytes -> map(decode, preprocess)
    -> map_batches; lazy."""
    import ray.data

    ds = read_for_plan(listing, settings, plan)
    ds = ds.map(
        decode_and_preprocess,
        fn_kwargs={"preprocessing": models.preprocessing(settings.model_name), "root": listing.root},
        num_cpus=plan.decode_cpus,  # the actors' own share: Ray fuses decoding into them
    )
    return ds.map_batches(
        FastClassifier,
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
    resumed_rows: int  # rows a killed run had written before this run resumed it (0: a fresh run)
    seconds: float  # the whole stage: start-up, model loading, reading, inference, writing
    images_per_second: float | None  # steady state: once every actor has finished a batch, to
    # the last (None where the classifier records no ``predicted_at`` and ``actor``)
    overall_images_per_second: float  # images this run classified / seconds of the whole stage
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


@dataclass
class Run:
    """One run's folder, where ``write_parquet`` puts its files (fresh, or a killed run's with
    the ``resumed`` paths it had classified); ``summary`` once the run is complete and
    ``predictions.json`` names it."""

    location: Location
    resumed: frozenset[str] = frozenset()
    summary: RunSummary | None = None

    @property
    def path(self) -> str:
        """The folder inside its filesystem, as ``write_parquet`` takes it."""
        return self.location.path

    @property
    def filesystem(self) -> pyarrow.fs.FileSystem:
        return self.location.filesystem


@dataclass(frozen=True)
class KilledRun:
    """A run that never completed and was never cleaned up (its driver was killed)."""

    location: Location
    classified: frozenset[str]  # the paths in its complete Parquet files


def _run_record(settings: Settings) -> dict:
    """What a run classifies: a killed run is resumed only with the same."""
    return {"data_uri": settings.data_uri, "model_name": settings.model_name, "limit": settings.limit}


def killed_run(settings: Settings) -> KilledRun | None:
    """The newest run folder with these settings that ``predictions.json`` does not name.

    Only a killed run leaves one: a complete run replaces the others, a failed run deletes
    its own. Its Parquet files are the checkpoint: each holds whole rows once it is
    complete; a file cut off mid-write (no Parquet footer) is deleted, and its images are
    classified again.
    """
    manifest = settings.predictions_manifest
    current = read_json(manifest)["run_id"] if manifest.exists() else None
    folders = [folder for folder in settings.predictions_dir.children()
               if folder.name != current and (folder / RUN_RECORD).exists()]
    for folder in sorted(folders, key=lambda folder: folder.name, reverse=True):
        if read_json(folder / RUN_RECORD) != _run_record(settings):
            continue
        classified = set()
        for file in (child for child in folder.children() if child.name.endswith(".parquet")):
            try:
                classified.update(read_parquet(file, columns=["path"])["path"])
            except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
                file.delete()
        return KilledRun(folder, frozenset(classified))
    return None


@contextlib.contextmanager
def new_run(settings: Settings, listing: Listing, plan: ActorPlan) -> Iterator[Run]:
    """Around the ``write_parquet`` of notebook 03: write into a fresh folder (or the folder of
    a killed run with the same settings, whose images ``read_for_plan`` left out), and
    replace the last complete run only once this one is complete.

    The folder's ``run.json`` records the settings first. On success ``skipped.csv`` is
    written beside the Parquet files, then ``predictions.json`` (replaced in one step) names
    the run, and older runs are deleted; so an interrupted run leaves the previous
    predictions readable, locally and in a bucket (an S3 object appears only once
    completely uploaded). On failure the half-written folder is deleted, the failed run's
    actors are ended before the error reaches you (a retry then finds its CPUs free), and
    the error propagates as it was raised, with a note added. A killed run cleans up
    nothing: the next run with its settings resumes it. A dataset read before the outputs
    changed (a resumed run completed, say) is refused: it would lose or repeat images.
    """
    models.fetch_weights(settings.model_name)  # fail fast on the driver, not in every actor
    killed = killed_run(settings)
    resumed = killed.classified if killed else frozenset()
    left_out = _left_out_by_read.get(str(settings.predictions_dir), resumed)
    if left_out != resumed:  # the dataset was read for another state of the outputs
        raise RuntimeError(
            f"This dataset was read when a killed run had classified {len(left_out)} of its images; "
            f"now {len(resumed)} are (a run completed, failed or was killed since), so writing it would "
            "lose or repeat images. Run the cells again from the one that reads the files "
            "(`inference.read_for_plan`).")
    if killed:
        run = Run(killed.location, resumed=killed.classified)
    else:
        run = Run(settings.predictions_dir / (time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]))
        write_json(run.location / RUN_RECORD, _run_record(settings))
    started = time.perf_counter()
    try:
        with releasing_actors(), native_stderr_to(settings.logs_dir / "ray-core.log"):
            yield run
    except BaseException as error:
        with contextlib.suppress(OSError):  # keep the pipeline's error, not the clean-up's
            run.location.delete()
        error.add_note(f"The previous predictions in {settings.output_dir} are unchanged.")
        raise
    run.summary = _complete(run, listing, settings, plan, seconds=time.perf_counter() - started)


def _complete(run: Run, listing: Listing, settings: Settings, plan: ActorPlan, seconds: float) -> RunSummary:
    """Record a finished run: ``skipped.csv``, then ``predictions.json``; delete older runs."""
    files = [child for child in run.location.children() if child.name.endswith(".parquet")]
    written = read_parquet(files)
    skipped = skipped_files(listing, written)
    write_csv(run.location / "skipped.csv", skipped, index=False)
    timed = {"predicted_at", "actor"} <= set(written.columns)
    this_run = written[~written["path"].isin(run.resumed)]
    num_images = int((written["error"] == "").sum())
    summary = RunSummary(
        run_id=run.location.name, files=[file.relative_to(settings.output_dir) for file in files],
        skipped_file=(run.location / "skipped.csv").relative_to(settings.output_dir),
        num_rows=len(written), num_images=num_images, num_skipped=len(skipped),
        resumed_rows=len(written) - len(this_run), seconds=round(seconds, 3),
        images_per_second=round(steady_images_per_second(this_run), 2) if timed else None,
        overall_images_per_second=round(int((this_run["error"] == "").sum()) / seconds, 2),
        model_name=settings.model_name, data_uri=settings.data_uri, limit=settings.limit,
        batch_size=settings.batch_size, num_actors=plan.num_actors, threads_per_actor=plan.threads,
    )
    write_json(settings.predictions_manifest, asdict(summary))
    for old in settings.predictions_dir.children():
        if old.name != summary.run_id:
            old.delete()
    return summary


def _timed(model, batch: torch.Tensor, repeats: int = 2) -> tuple[float, torch.Tensor]:
    """Images/s of ``model`` on ``batch``, best of ``repeats`` timed passes after one warm-up
    pass, and the warm-up pass's top-1 class per image."""
    best = math.inf
    with torch.inference_mode():
        top1 = model(batch).float().argmax(1)
        for _ in range(repeats):
            started = time.perf_counter()
            model(batch)
            if batch.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
    return len(batch) / best, top1


def measure_levers(model_name: str, pixels: np.ndarray) -> pd.DataFrame:
    """Images/s of the model alone on one batch, lever by lever: plain, then channels_last,
    then a frozen graph (CPU) or bf16 autocast (GPU); and the share of top-1 predictions
    that agree with the plain model's."""
    predictor = Predictor(model_name)
    device, spec = predictor.device, predictor.preprocessing
    batch = spec.normalize(torch.from_numpy(np.array(pixels)).to(device))
    last = batch.contiguous(memory_format=torch.channels_last)
    plain = models.load_model(model_name).to(device)
    in_channels_last = models.load_model(model_name).to(device, memory_format=torch.channels_last)
    rows = [("plain", plain, batch), ("+ channels_last", in_channels_last, last)]
    if device.type == "cpu":
        rows.append(("+ frozen graph", predictor.model, last))
    else:
        def bf16(images):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return predictor.model(images)
        rows.append(("+ bf16 autocast", bf16, last))
    table, plain_top1 = [], None
    for lever, model, images in rows:
        rate, top1 = _timed(model, images)
        plain_top1 = top1 if plain_top1 is None else plain_top1
        table.append({"lever": lever, "images_per_second": rate,
                      "top1_agrees_with_plain": float((top1 == plain_top1).float().mean())})
    frame = pd.DataFrame(table).set_index("lever")
    frame["speed_up"] = frame["images_per_second"] / frame["images_per_second"].iloc[0]
    return frame


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


def run_batch_inference(predictions, listing: Listing, settings: Settings, plan: ActorPlan) -> RunSummary:
    """Notebook 03's write, for scripts and tests: ``predictions`` into Parquet, as a
    ``new_run`` that replaces the last complete run only once it is complete."""
    with new_run(settings, listing, plan) as run:
        predictions.write_parquet(run.path, filesystem=run.filesystem, ray_remote_args={"num_cpus": plan.task_cpus})
    return run.summary
