"""ImageNet-1k classes: WordNet id <-> class index <-> readable name."""
from __future__ import annotations

import functools


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


def label_to_name(label: str) -> str:
    """Readable name for a folder label; labels that are not ImageNet ids stay as they are."""
    return class_names()[index] if (index := wnid_to_index(label)) >= 0 else label
