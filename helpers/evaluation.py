"""Evaluating predictions: accuracy, per-class table, confusion. A prediction is right when it
is in the image's set of acceptable classes where one is given (``sample.acceptable_labels``),
else when it is the folder label; top-1 against the folder label is reported beside it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from helpers import labels
from helpers.settings import Settings
from helpers.storage import read_json

OTHER = "(other)"


class PredictionsError(RuntimeError):
    """The predictions folder is missing, partial or does not match its manifest."""


def check_run(settings: Settings) -> dict:
    """The manifest of the last complete run, once every file it names is there, else an error."""
    if not settings.predictions_manifest.exists():
        raise PredictionsError(f"No predictions in {settings.output_dir} (predictions.json is missing): run notebook "
                               "03_distributed_inference.ipynb first with the same output_dir.")
    manifest = read_json(settings.predictions_manifest)
    files = [settings.output_dir / name for name in [*manifest["files"], manifest["skipped_file"]]]
    if missing := [str(path) for path in files if not path.exists()]:
        raise PredictionsError(f"The predictions of run {manifest['run_id']} are incomplete: {len(missing)} file(s) "
                               f"missing, e.g. {missing[0]}. Re-run notebook 03_distributed_inference.ipynb.")
    return manifest


def check_counts(frame: pd.DataFrame, skipped: pd.DataFrame, manifest: dict) -> None:
    """Refuse predictions whose row counts differ from what the run recorded."""
    if len(frame) != manifest["num_rows"] or len(skipped) != manifest["num_skipped"]:
        raise PredictionsError(f"The predictions of run {manifest['run_id']} hold {len(frame)} rows and {len(skipped)} "
                               f"skipped files, but the run recorded {manifest['num_rows']} and "
                               f"{manifest['num_skipped']}. Re-run notebook 03_distributed_inference.ipynb.")


def add_correctness(frame: pd.DataFrame,
                    acceptable: Callable[[str], frozenset[str] | None] | None = None) -> pd.DataFrame:
    """Columns ``top1_correct``, ``top5_correct`` (in the set ``acceptable(path)``, else the folder
    label) and ``top1_folder_label`` (the top-1 is the folder label)."""
    top1_folder_label = frame["top1_wnid"] == frame["label"]
    top1 = np.array(top1_folder_label.to_numpy(dtype=bool, na_value=False))  # a copy: the sets below change it
    top5 = _label_in_top5(frame["label"], frame["top5_wnid"])
    if acceptable:
        for row, path in enumerate(frame["path"]):
            if right := acceptable(path):
                top1[row] = frame["top1_wnid"].iat[row] in right
                top5[row] = not right.isdisjoint(frame["top5_wnid"].iat[row])
    return frame.assign(top1_correct=pd.Series(top1, index=frame.index, dtype=bool),
                        top5_correct=pd.Series(top5, index=frame.index, dtype=bool),
                        top1_folder_label=top1_folder_label)


def _label_in_top5(label: pd.Series, top5: pd.Series) -> np.ndarray:
    """Whether each row's label is in its list of WordNet ids (no list: no), column by column in
    pyarrow rather than a set a row: millions of rows."""
    lists = pa.array(top5, type=pa.list_(pa.string()), from_pandas=True)
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    rows = pc.list_parent_indices(lists)
    labels_of_items = pc.take(pa.array(label, type=pa.string(), from_pandas=True), rows)
    hits = pc.fill_null(pc.equal(pc.list_flatten(lists), labels_of_items), False)
    found = np.zeros(len(label), dtype=bool)
    found[rows.to_numpy()[hits.to_numpy(zero_copy_only=False)]] = True
    return found


def summarize(classified: pd.DataFrame, scored: pd.DataFrame, manifest: dict) -> dict:
    """The headline numbers that ``metrics.json`` records: ``classified`` holds every classified
    image, ``scored`` those with a class folder, with correctness columns (``add_correctness``)."""
    rates = {}
    columns = {"top1": "top1_correct", "top5": "top5_correct", "top1_folder_label": "top1_folder_label"}
    for name, column in columns.items():
        rates[name] = round(float(scored[column].mean()), 4) if len(scored) else None
    return {
        "num_images": int(len(classified)),
        "num_skipped": manifest["num_skipped"],
        "num_scored": int(len(scored)),
        "num_classes": int(scored["label"].nunique()),
        **rates,
        "images_per_second": manifest["images_per_second"],
        "inference_seconds": manifest["seconds"],
        **{key: manifest[key] for key in ("model_name", "data_uri", "batch_size", "num_actors", "run_id", "levers")},
        "unscored_labels": sorted(set(classified["label"].unique()) - set(scored["label"].unique())),  # "": no folder
    }


def per_class_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per folder label: images, top-1, top-5, top-1 by folder label, most predicted."""
    if frame.empty:
        return pd.DataFrame(columns=["class", "images", "top1", "top5", "top1_folder_label", "most_predicted"])
    table = frame.groupby("label").agg(images=("path", "size"), top1=("top1_correct", "mean"),
                                       top5=("top5_correct", "mean"), top1_folder_label=("top1_folder_label", "mean"),
                                       most_predicted=("top1_name", lambda names: names.value_counts().index[0]))
    table.insert(0, "class", [labels.label_to_name(label) for label in table.index])
    return table.sort_values(["top1", "class"], ascending=[False, True])


def confusion(frame: pd.DataFrame, max_classes: int = 20, max_others: int = 8) -> pd.DataFrame:
    """Counts of true class (rows) x top-1 prediction (columns), by name: the true classes (of
    more than ``max_classes``, those with most errors), the ``max_others`` most frequent other
    predictions (*Egyptian cat* for tabbies), then ``(other)``: readable with 1000 classes."""
    if frame.empty:
        return pd.DataFrame()
    names = {label: labels.label_to_name(label) for label in frame["label"].unique()}
    truth = frame["label"].map(names)
    errors = (~frame["top1_correct"]).groupby(truth).sum()
    shown = errors.sort_values(ascending=False, kind="stable").index[:max_classes]
    keep = truth.isin(shown)
    truth, predicted = truth[keep], frame.loc[keep, "top1_name"]
    classes = sorted(shown)
    outside = predicted[~predicted.isin(classes)].value_counts().sort_index().sort_values(
        ascending=False, kind="stable")  # ties by name
    others = sorted(outside.index[:max_others])
    predicted = predicted.where(predicted.isin([*classes, *others]), OTHER)
    matrix = pd.crosstab(truth, predicted, rownames=["true"], colnames=["predicted"])
    return matrix.reindex(index=classes, columns=[*classes, *others, OTHER], fill_value=0)


def misclassified(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """Up to ``count`` wrong top-1 predictions, the most confident first."""
    return frame[~frame["top1_correct"]].nlargest(count, "top1_score")

