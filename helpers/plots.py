"""Figures for the notebooks: image grids, top-5 bars, the confusion matrix."""
from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from helpers import sample
from helpers.data import decode_image, resolve_data_uri
from helpers.labels import label_to_name
from helpers.settings import SAMPLE_DATA
from helpers.storage import Location

WRONG = "wrong; the whole photo: "  # starts the caption of a wrong top-1, before what can mislead a model


def load_thumbnail(path: str, filesystem, size: int = 256) -> np.ndarray:
    """An image file as the model saw it (RGB, EXIF-rotated), no larger than ``size`` a side."""
    image = Image.fromarray(decode_image(Location(filesystem, path).read_bytes()).permute(1, 2, 0).numpy())
    image.thumbnail((size, size))
    return np.asarray(image)


def nothing_to_show(message: str) -> plt.Figure:
    """A small figure that says why there is nothing to draw (for example: nothing to score)."""
    figure, axis = plt.subplots(figsize=(6, 1))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center", fontsize=10)
    return figure


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 6) -> plt.Figure:
    """Images in a grid, each with its title (for example its label)."""
    rows = max(1, math.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image)
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def size_scatter(images: pd.DataFrame) -> plt.Figure:
    """Width against height of every image, one colour per class."""
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name, group in images.groupby("name"):
        axis.scatter(group["width"], group["height"], s=10, alpha=0.6, label=name)
    axis.set(xlabel="width (pixels)", ylabel="height (pixels)", title="Image sizes")
    if images["name"].nunique() <= 12:
        axis.legend(fontsize=8, markerscale=1.5)
    figure.tight_layout()
    return figure


def misclassified_figure(wrong: pd.DataFrame, data_uri: str) -> plt.Figure:
    """A grid of wrongly classified images with their true label and top-1 prediction."""
    if wrong.empty:
        return nothing_to_show("No mistakes to show: no image was scored wrong.")
    filesystem = Location.parse(resolve_data_uri(data_uri)).filesystem
    titles = [f"true: {label_to_name(label)}\npred: {name} ({score:.2f})"
              for label, name, score in zip(wrong["label"], wrong["top1_name"], wrong["top1_score"])]
    return image_grid([load_thumbnail(path, filesystem) for path in wrong["path"]], titles)


def _truth(path: str, label: str, data_uri: str) -> tuple[frozenset[str], str | None]:
    """The WordNet ids that count as right for an image, and what can mislead a model in it:
    the sample's hand-chosen sets (``sample.acceptable_labels``), else the folder label."""
    if data_uri == SAMPLE_DATA and sample.acceptable_labels(path):
        return sample.acceptable_labels(path), sample.pitfall(path)
    return frozenset({label}), None


def predictions_grid(batch: dict, filesystem, data_uri: str) -> plt.Figure:
    """A batch of predictions (``take_batch``) as images, titled with the top-1 guess and score and whether it is
    right; for a wrong one, what misled the model where known; for an undecodable file, its reason."""
    images, titles = [], []
    for path, label, wnid, name, score, error in zip(batch["path"], batch["label"], batch["top1_wnid"],
                                                     batch["top1_name"], batch["top1_score"], batch["error"]):
        if error:
            images.append(np.full((8, 8, 3), 255, np.uint8))
            titles.append(f"unreadable:\n{error[:40]}")
            continue
        right, pitfall = _truth(path, label, data_uri)
        images.append(load_thumbnail(path, filesystem))
        verdict = "right"
        if wnid not in right:
            verdict = WRONG + textwrap.shorten(pitfall or "", 60)
        titles.append(f"{name} ({score:.0%})\nfolder: {label_to_name(label)}\n" + textwrap.fill(verdict, 28))
    return image_grid(images, titles, columns=len(images))


def speed_ups_figure(levers: pd.DataFrame) -> plt.Figure:
    """Images/s of the model alone, lever by lever, as horizontal bars."""
    figure, axis = plt.subplots(figsize=(6, 0.6 + 0.5 * len(levers)))
    axis.barh(levers.index[::-1], levers["images_per_second"][::-1], color="tab:blue")
    for position, value in enumerate(levers["images_per_second"][::-1]):
        axis.text(value, position, f" {value:.0f}", va="center", fontsize=9)
    axis.set(xlabel="images / s, model alone, one batch", xlim=(0, levers["images_per_second"].max() * 1.2))
    figure.tight_layout()
    return figure


def top5_figure(images: Sequence[np.ndarray], predictions: pd.DataFrame, data_uri: str) -> plt.Figure:
    """Each image beside a bar chart of its five most likely classes and their scores; a green
    bar is a class that counts as right, and a wrong top-1 is captioned with what in the whole
    photo can mislead a model."""
    figure, axes = plt.subplots(len(images), 2, figsize=(9, 2.5 * len(images)), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 1.6]})
    for (image_axis, bar_axis), image, (_, row) in zip(axes, images, predictions.iterrows()):
        right, pitfall = _truth(row["path"], row["label"], data_uri)
        image_axis.imshow(image)
        image_axis.axis("off")
        caption = ""
        if row["top1_wnid"] not in right:
            caption = "\n" + textwrap.fill(WRONG + (pitfall or ""), 40)
        image_axis.set_title(f"folder label: {label_to_name(row['label'])}{caption}", fontsize=8)
        bar_axis.barh(list(row["top5_name"])[::-1], list(row["top5_score"])[::-1],
                      color=["tab:green" if wnid in right else "tab:gray" for wnid in list(row["top5_wnid"])[::-1]])
        bar_axis.set(xlim=(0, 1), xlabel="softmax score")
    figure.tight_layout()
    return figure


def found_classes_figure(classified: pd.DataFrame, data_uri: str, classes: int = 10, images: int = 12) -> plt.Figure:
    """The ``classes`` top-1 classes predicted most often, as bars, above ``images`` images (the most
    confident first) titled with their top-1 class and score."""
    counts = classified["top1_name"].value_counts().head(classes)[::-1]
    shown = classified.sort_values("top1_score", ascending=False).head(images)
    columns = 6
    rows = max(1, math.ceil(len(shown) / columns))
    figure = plt.figure(figsize=(2.4 * columns, 0.3 * len(counts) + 1.5 + 2.6 * rows))
    grid = figure.add_gridspec(1 + rows, columns, height_ratios=[0.12 * len(counts) + 0.6] + [1] * rows)
    bars = figure.add_subplot(grid[0, 1:columns - 1])
    bars.barh(counts.index, counts.to_numpy(), color="tab:blue")
    bars.set(xlabel="images with this top-1 class", title=f"The {len(counts)} classes predicted most often")
    filesystem = Location.parse(resolve_data_uri(data_uri)).filesystem
    for position, (_, row) in enumerate(shown.iterrows()):
        axis = figure.add_subplot(grid[1 + position // columns, position % columns])
        axis.imshow(load_thumbnail(row["path"], filesystem))
        axis.set_title(f"{row['top1_name']} ({row['top1_score']:.0%})", fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    return figure


def confusion_figure(matrix: pd.DataFrame) -> plt.Figure:
    """The confusion matrix as a heat map, with each cell's count written in it."""
    if matrix.empty:
        return nothing_to_show("No confusion matrix: no image is in a folder named by an ImageNet class.")
    size = 1.2 + 0.6 * max(matrix.shape)
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    shown = axis.imshow(matrix.to_numpy(), cmap="Blues")
    axis.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=45, ha="right")
    axis.set_yticks(range(matrix.shape[0]), matrix.index)
    axis.set(xlabel="predicted (top-1)", ylabel="true (folder label)")
    threshold = matrix.to_numpy().max() / 2
    for (row, column), count in np.ndenumerate(matrix.to_numpy()):
        if count:
            axis.text(column, row, count, ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure


def save(figure: plt.Figure, folder: Location, name: str) -> Location:
    """Save a figure as PNG under ``folder`` (local or in a bucket) and return where."""
    image, location = io.BytesIO(), folder / f"{name}.png"
    figure.savefig(image, format="png", dpi=110, bbox_inches="tight")
    location.write_bytes(image.getvalue())
    return location
