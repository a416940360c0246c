"""Batch inference: per-row preprocessing, the predictor, the actor class and the run.

The same ``Predictor`` serves notebook 02 (one batch on the driver) and every actor of
notebook 03's ``map_batches``, so the two can never disagree.
"""
from __future__ import annotations

import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from helpers import labels, models
from helpers.cluster import ClusterInfo, native_stderr_to
from helpers.settings import Settings, SettingsError
from helpers.storage import write_json_atomically

PIXELS = "pixels"
TOP_K = 5


def preprocess_row(row: dict[str, Any], preprocessing: models.Preprocessing) -> dict[str, Any]:
    """``ds.map`` step: one decoded image of any size -> fixed-size uint8 ``pixels``."""
    image = row.pop("image")
    row["height"], row["width"] = image.shape[:2]
    row[PIXELS] = preprocessing.resize_and_crop(image)
    return row


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


def preprocess_images(images, preprocessing: models.Preprocessing) -> np.ndarray:
    """A batch of decoded images of any sizes -> one N x 3 x H x W uint8 array."""
    return np.stack([preprocessing.resize_and_crop(image) for image in images])


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


def describe_predictions(
    scores: np.ndarray, indices: np.ndarray, **leading_columns: np.ndarray
) -> pa.Table:
    """A table of top-1 and top-k (index, WordNet id, name, score) per image, as in the Parquet.

    Top-k columns are Arrow lists, so the Parquet reads back as plain lists everywhere.
    """
    wnids = [[labels.index_to_wnid(i) for i in row] for row in indices.tolist()]
    names = [[labels.index_to_name(i) for i in row] for row in indices.tolist()]
    columns = {name: pa.array(values) for name, values in leading_columns.items()}
    columns |= {
        "top1_index": pa.array(indices[:, 0], pa.int64()),
        "top1_wnid": pa.array([row[0] for row in wnids]),
        "top1_name": pa.array([row[0] for row in names]),
        "top1_score": pa.array(scores[:, 0], pa.float32()),
        "top5_index": pa.array(indices.tolist(), pa.list_(pa.int64())),
        "top5_wnid": pa.array(wnids, pa.list_(pa.string())),
        "top5_name": pa.array(names, pa.list_(pa.string())),
        "top5_score": pa.array(scores.tolist(), pa.list_(pa.float32())),
    }
    return pa.table(columns)


class Classifier(Predictor):
    """The callable class ``map_batches`` runs on each actor: pixels in, predictions out."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        scores, indices = self.top_k(batch[PIXELS])
        return describe_predictions(scores, indices, path=batch["path"], label=batch["label"])


@dataclass(frozen=True)
class ActorPlan:
    """How many inference actors, and what each one reserves and uses."""

    num_actors: int
    num_cpus: float
    num_gpus: int
    threads: int

    def remote_args(self) -> dict[str, float]:
        """Resources for ``map_batches``; ``num_gpus`` only where there are GPUs."""
        return {"num_cpus": self.num_cpus, **({"num_gpus": self.num_gpus} if self.num_gpus else {})}


def plan_actors(cluster: ClusterInfo, num_actors: int | None) -> ActorPlan:
    """One actor per GPU; on CPUs, leave a core for reading and decoding, and share the rest.

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
        return ActorPlan(actors, num_cpus=1, num_gpus=1, threads=max(1, cpus // actors))
    if cpus < 1:
        raise SettingsError("Ray reports no CPUs: check the cluster (`ray status`).")
    spare = max(1, cpus - max(1, cpus // 4))  # cores left after reading and decoding
    cpus_per_actor = 1 if cpus <= 4 else 4
    actors = num_actors or max(1, spare // cpus_per_actor)
    if actors > spare:
        raise SettingsError(
            f"num_actors={num_actors} is more than this cluster can host beside its readers "
            f"({cpus:g} CPUs, {spare} for inference): use at most {spare}, or None for automatic."
        )
    return ActorPlan(
        actors,
        num_cpus=min(cpus_per_actor, spare / actors),
        num_gpus=0,
        threads=max(1, cpus // actors),
    )


def build_pipeline(settings: Settings, plan: ActorPlan):
    """The lazy Dataset of predictions: read -> map(preprocess) -> map_batches(Classifier)."""
    import ray.data

    from helpers.data import read_images

    ds = read_images(settings.data_uri, settings.limit)
    ds = ds.map(preprocess_row, fn_kwargs={"preprocessing": models.preprocessing(settings.model_name)})
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
    files: list[str]
    num_images: int
    seconds: float
    images_per_second: float
    model_name: str
    data_uri: str
    limit: int | None
    batch_size: int
    num_actors: int
    threads_per_actor: int


def _count_rows(files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in files)


def run_batch_inference(predictions, settings: Settings, plan: ActorPlan) -> RunSummary:
    """Execute the ``predictions`` pipeline into Parquet, replacing the last run atomically.

    Each run writes into a fresh folder; only when it is complete does ``predictions.json``
    (replaced in one rename) point at it, so an interrupted run leaves the previous
    predictions readable. Older runs are then deleted.
    """
    models.fetch_weights(settings.model_name)  # fail fast on the driver, not in every actor
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = settings.predictions_dir / run_id
    with native_stderr_to(settings.output_dir / "logs" / "ray-core.log"):
        started = time.perf_counter()
        predictions.write_parquet(str(run_dir))
        seconds = time.perf_counter() - started
    files = sorted(str(path) for path in run_dir.glob("*.parquet"))
    num_images = _count_rows(files)
    summary = RunSummary(
        run_id=run_id, files=[os.path.relpath(f, settings.output_dir) for f in files],
        num_images=num_images, seconds=round(seconds, 3),
        images_per_second=round(num_images / seconds, 2) if seconds > 0 else math.nan,
        model_name=settings.model_name, data_uri=settings.data_uri, limit=settings.limit,
        batch_size=settings.batch_size, num_actors=plan.num_actors, threads_per_actor=plan.threads,
    )
    write_json_atomically(settings.predictions_manifest, asdict(summary))
    for old in settings.predictions_dir.iterdir():
        if old.name != run_id:
            shutil.rmtree(old, ignore_errors=True)
    return summary
