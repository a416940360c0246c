"""Reading images, local or ``s3://``, with labels from the class folders and the file paths."""
from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import PurePosixPath

import pyarrow.fs

from helpers import sample
from helpers.settings import SAMPLE_DATA

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif")


def resolve_data_uri(data_uri: str) -> str:
    """The folder or URI to read: the embedded sample is built on first use."""
    return str(sample.ensure_sample()) if data_uri == SAMPLE_DATA else data_uri


def filesystem_and_root(data_uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem for a local folder or an ``s3://`` URI, and the path inside it."""
    if "://" in data_uri:
        return pyarrow.fs.FileSystem.from_uri(data_uri)
    return pyarrow.fs.LocalFileSystem(), data_uri


def class_folder(path: str, root: str) -> str:
    """The label of an image: the first folder below the data root."""
    return PurePosixPath(path).relative_to(PurePosixPath(root)).parts[0]


def list_images(filesystem: pyarrow.fs.FileSystem, root: str) -> list[str]:
    """Every image file under ``root`` inside a class folder, by extension, sorted."""
    selector = pyarrow.fs.FileSelector(root, recursive=True)
    return sorted(
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pyarrow.fs.FileType.File
        and info.extension.lower() in IMAGE_EXTENSIONS
        and len(PurePosixPath(info.path).relative_to(PurePosixPath(root)).parts) > 1
    )


def select_images(paths: list[str], root: str, limit: int | None) -> list[str]:
    """At most ``limit`` paths, taken in turn from each class so that every class is seen."""
    if limit is None or limit >= len(paths):
        return paths
    by_class: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        by_class[class_folder(path, root)].append(path)
    interleaved = itertools.chain.from_iterable(
        itertools.zip_longest(*(by_class[label] for label in sorted(by_class)))
    )
    return sorted(p for p in itertools.islice((p for p in interleaved if p), limit))


def read_images(data_uri: str, limit: int | None = None):
    """A lazy Ray Dataset of ``image`` (HxWx3 uint8 RGB), ``label`` (class folder) and ``path``."""
    import ray.data
    from ray.data.datasource.partitioning import Partitioning

    filesystem, root = filesystem_and_root(resolve_data_uri(data_uri))
    paths = select_images(list_images(filesystem, root), root, limit)
    if not paths:
        raise FileNotFoundError(
            f"data_uri={data_uri!r} holds no images in class folders (<label>/<image>, with "
            f"extensions {', '.join(IMAGE_EXTENSIONS)}): check the path."
        )
    return ray.data.read_images(
        paths,
        filesystem=filesystem,
        mode="RGB",
        include_paths=True,
        partitioning=Partitioning("dir", base_dir=root, field_names=["label"], filesystem=filesystem),
    )


def _image_size(row: dict) -> dict:
    height, width = row["image"].shape[:2]
    return {"label": row["label"], "path": row["path"], "height": height, "width": width}


def describe_images(ds):
    """A pandas table of every image's label, path, height and width (pixels dropped)."""
    return ds.map(_image_size).to_pandas()
