"""Evaluating predictions against the folder labels: accuracy, per-class table, confusion."""
from __future__ import annotations

import json

import pandas as pd

from helpers import labels
from helpers.settings import Settings

OTHER = "(other)"


class PredictionsError(RuntimeError):
    """The predictions folder is missing, partial or does not match its manifest."""


def load_predictions(settings: Settings) -> tuple[pd.DataFrame, dict]:
    """The current run's predictions and its manifest, checked for completeness.

    Refuses a missing manifest, a missing file, or a row count that differs from what the
    run recorded, naming the problem and what to run.
    """
    manifest_path = settings.predictions_manifest
    if not manifest_path.exists():
        raise PredictionsError(
            f"No predictions in {settings.output_dir} ({manifest_path.name} is missing): run "
            "notebook 03_distributed_inference.ipynb first with the same output_dir."
        )
    manifest = json.loads(manifest_path.read_text())
    files = [settings.output_dir / name for name in manifest["files"]]
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        raise PredictionsError(
            f"The predictions of run {manifest['run_id']} are incomplete: {len(missing)} file(s) "
            f"missing, e.g. {missing[0]}. Re-run notebook 03_distributed_inference.ipynb."
        )
    frame = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    if len(frame) != manifest["num_images"]:
        raise PredictionsError(
            f"The predictions of run {manifest['run_id']} hold {len(frame)} rows but the run "
            f"recorded {manifest['num_images']}. Re-run notebook 03_distributed_inference.ipynb."
        )
    return frame.sort_values("path", ignore_index=True), manifest


def add_correctness(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns ``top1_correct`` and ``top5_correct``: does the folder label match?"""
    frame = frame.copy()
    frame["top1_correct"] = frame["top1_wnid"] == frame["label"]
    frame["top5_correct"] = [label in list(top5) for label, top5 in zip(frame["label"], frame["top5_wnid"])]
    return frame


def summarize(frame: pd.DataFrame, manifest: dict) -> dict:
    """The headline numbers that ``metrics.json`` records."""
    scored = frame[frame["label"].map(labels.is_imagenet_wnid)]
    return {
        "num_images": int(len(frame)),
        "num_scored": int(len(scored)),
        "num_classes": int(scored["label"].nunique()),
        "top1": round(float(scored["top1_correct"].mean()), 4) if len(scored) else None,
        "top5": round(float(scored["top5_correct"].mean()), 4) if len(scored) else None,
        "images_per_second": manifest["images_per_second"],
        "inference_seconds": manifest["seconds"],
        "model_name": manifest["model_name"],
        "data_uri": manifest["data_uri"],
        "batch_size": manifest["batch_size"],
        "num_actors": manifest["num_actors"],
        "run_id": manifest["run_id"],
        "unscored_labels": sorted(set(frame["label"]) - set(scored["label"])),
    }


def per_class_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per folder label: images, top-1/top-5 accuracy, the most frequent prediction."""
    table = frame.groupby("label").agg(
        images=("path", "size"),
        top1=("top1_correct", "mean"),
        top5=("top5_correct", "mean"),
        most_predicted=("top1_name", lambda names: names.value_counts().index[0]),
    )
    table.insert(0, "class", [labels.label_to_name(label) for label in table.index])
    return table.sort_values(["top1", "class"], ascending=[False, True])


def confusion(frame: pd.DataFrame, max_classes: int = 20) -> pd.DataFrame:
    """Counts of true class (rows) x predicted class (columns), by readable name.

    Columns are the true classes plus ``(other)`` for any prediction outside them, so the
    matrix stays readable even though the model knows 1000 classes. With more than
    ``max_classes`` true classes, only the ones with the most top-1 errors are shown.
    """
    truth = frame["label"].map(labels.label_to_name)
    errors = (~frame["top1_correct"]).groupby(truth).sum()
    shown = set(errors.sort_values(ascending=False, kind="stable").index[:max_classes])
    frame, truth = frame[truth.isin(shown)], truth[truth.isin(shown)]
    classes = sorted(shown)
    predicted = frame["top1_name"].where(frame["top1_name"].isin(classes), OTHER)
    matrix = pd.crosstab(truth, predicted).reindex(index=classes, columns=[*classes, OTHER], fill_value=0)
    matrix.index.name, matrix.columns.name = "true", "predicted"
    return matrix


def misclassified(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """Up to ``count`` wrong top-1 predictions, the most confident first."""
    wrong = frame[~frame["top1_correct"]]
    return wrong.sort_values("top1_score", ascending=False).head(count)

