"""ImageNet-1k classes: WordNet id <-> class index <-> readable name; a model's top-k class
indices as a table of names, as notebook 03 writes them to Parquet."""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa


@functools.cache
def wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids in class-index order (index 0 is n01440764, tench)."""
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    return tuple(info.index_to_label_name(i) for i in range(info.num_classes()))


@functools.cache
def class_names() -> tuple[str, ...]:
    """Short readable names in class-index order, as torchvision's weights publish them."""
    from torchvision.models import ResNet152_Weights
    return tuple(ResNet152_Weights.IMAGENET1K_V1.meta["categories"])


@functools.cache
def _index_by_wnid() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(wnids())}


def is_imagenet_wnid(label: str) -> bool:
    return label in _index_by_wnid()


def wnid_to_index(wnid: str) -> int:
    """Class index of an ImageNet-1k WordNet id; -1 for any other label."""
    return _index_by_wnid().get(wnid, -1)


NO_FOLDER = "(no folder)"  # the name of the label "" of an image directly in the data folder


def label_to_name(label: str) -> str:
    """Readable name for a folder label; labels that are not ImageNet ids stay as they are."""
    if not label:
        return NO_FOLDER
    index = wnid_to_index(label)
    return class_names()[index] if index >= 0 else label


def top_k_table(scores: np.ndarray, indices: np.ndarray, valid: np.ndarray | None = None,
                **leading_columns) -> pa.Table:
    """A table of the top-1 and top-k class (index, WordNet id, name, score) of each image, after
    ``leading_columns`` (path, label, ...). ``scores`` and ``indices`` (images x k) hold the rows
    where ``valid`` is True; the others (images that did not decode) get nulls."""
    valid = np.ones(len(indices), bool) if valid is None else np.asarray(valid, bool)
    index = np.zeros((len(valid), indices.shape[1]), np.int64)
    score = np.zeros((len(valid), scores.shape[1]), np.float32)
    index[valid], score[valid] = indices, scores
    top = {
        "index": (index, pa.int64()),
        "wnid": (np.array(wnids())[index], pa.string()),
        "name": (np.array(class_names())[index], pa.string()),
        "score": (score, pa.float32()),
    }
    columns = {name: pa.array(values) for name, values in leading_columns.items()}
    for key, (values, kind) in top.items():
        columns[f"top1_{key}"] = pa.array(values[:, 0], kind, mask=~valid)
    for key, (values, kind) in top.items():
        columns[f"top5_{key}"] = pa.array(list(values), pa.list_(kind), mask=~valid)
    return pa.table(columns)
