"""Images in a folder, local or ``s3://``: listing a messy folder (what is not an image is set
aside with the reason), the label of each image (its class folder, where it has one), and
decoding an image file or saying why not. A flat folder of photos works as well as ImageNet's
layout of class folders (``<wnid>/<image>``).
"""
from __future__ import annotations

import contextlib
import io
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pyarrow.fs
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from helpers import sample
from helpers.settings import SAMPLE_DATA
from helpers.storage import Location, s3_hint

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp")
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit (~89 MP)


class DataUnavailableError(OSError):
    """``data_uri`` cannot be listed (missing bucket, unreachable endpoint, credentials)."""


class UnreadableImage(ValueError):
    """A file that cannot be classified; the message is the reason reported for it."""


@dataclass
class Listing:
    """The files under a data root: the images, and what was set aside."""

    filesystem: pyarrow.fs.FileSystem
    root: str
    images: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def in_a_bucket(self) -> bool:
        return not isinstance(self.filesystem, pyarrow.fs.LocalFileSystem)

    def read_bytes(self, path: str) -> bytes:
        """One file's bytes, as ``read_binary_files`` reads them."""
        return Location(self.filesystem, path).read_bytes()


def resolve_data_uri(data_uri: str) -> str:
    """The folder or URI to read: the embedded sample is built on first use."""
    return str(sample.ensure_sample()) if data_uri == SAMPLE_DATA else data_uri


def class_folder(path: str, root: str) -> str:
    """The label of an image: the first folder below the data root (deeper folders allowed), or
    ``""`` for an image directly in the root (a flat folder of photos has no labels)."""
    folder, slash, _ = _relative(path, root).partition("/")
    return folder if slash else ""


def _skip_reason(relative: str) -> str | None:
    """Why a file is not read, from its path below the data root (``a/b.jpg``); None for an image.
    Plain string operations, as ``PurePosixPath`` would split it: millions of paths are listed."""
    if relative.startswith(".") or "/." in relative:
        return "hidden file"
    name = relative.rpartition("/")[2]
    dot = name.rfind(".")
    suffix = name[dot:] if 0 < dot < len(name) - 1 else ""  # PurePosixPath(name).suffix
    if suffix.lower().lstrip(".") not in IMAGE_EXTENSIONS:
        return f"not an image file (extension {suffix or 'none'!r})"
    return None


def _relative(path: str, root: str) -> str:
    """``path`` below ``root`` (``a/b.jpg``), as ``PurePosixPath.relative_to`` gives it: by string
    operations where the path is normalised (a listed path), as millions of paths are."""
    below = root.rstrip("/") + "/"
    if path.startswith(below) and "//" not in path and "/./" not in path and not path.endswith(("/", "/.")):
        return path[len(below):]
    return "/".join(PurePosixPath(path).relative_to(PurePosixPath(root)).parts)


def list_files(data_uri: str) -> Listing:
    """Every file under ``data_uri``, sorted: images to read, and the others with a reason."""
    where = Location.parse(resolve_data_uri(data_uri))
    listing = Listing(where.filesystem, where.path)
    try:
        infos = listing.filesystem.get_file_info(pyarrow.fs.FileSelector(listing.root, recursive=True))
    except OSError as error:
        hint = "Check the path." if "://" not in data_uri else s3_hint()
        raise DataUnavailableError(f"data_uri={data_uri!r} cannot be listed: {str(error).splitlines()[0]}. {hint}") \
            from None
    paths = sorted(info.path for info in infos if info.type == pyarrow.fs.FileType.File)
    del infos  # about 300 bytes a file: gone before the lists below grow
    for path in paths:
        if reason := _skip_reason(_relative(path, listing.root)):
            listing.skipped.append((path, reason))
        else:
            listing.images.append(path)
    if not listing.images:
        raise FileNotFoundError(f"data_uri={data_uri!r} holds no images (files with the extensions "
                                f"{', '.join(IMAGE_EXTENSIONS)}, in it or in folders below it): check the path.")
    return listing


def select_images(paths: list[str], root: str, limit: int | None) -> list[str]:
    """At most ``limit`` paths, taken in turn from each class so that every class is seen."""
    if limit is None or limit >= len(paths):
        return paths
    by_class: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        by_class[class_folder(path, root)].append(path)
    interleaved = itertools.chain.from_iterable(itertools.zip_longest(*(by_class[label] for label in sorted(by_class))))
    return sorted(p for p in itertools.islice((p for p in interleaved if p), limit))


def decodable_images(listing: Listing, count: int) -> list[str]:
    """Up to ``count`` image paths, from every class in turn, that decode: for ``read_images``."""
    clean = []
    for path in select_images(listing.images, listing.root, min(len(listing.images), 2 * count)):
        with contextlib.suppress(UnreadableImage, OSError):
            decode_image(listing.read_bytes(path))
            clean.append(path)
    return select_images(clean, listing.root, count)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: transparency over white, 16-bit scaled down, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image.convert("I"), dtype=np.int64)
        image = Image.fromarray(np.clip(wide // 257 if wide.max() > 255 else wide, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, at_least: int | None = None) -> torch.Tensor:
    """Encoded bytes -> 3 x H x W uint8 RGB, EXIF-rotated, or ``UnreadableImage`` with the reason.
    With ``at_least``, a large JPEG is decoded at a reduced scale (libjpeg's), its short side at
    least that. (Pillow: torchvision.io's decoders are deprecated since 0.29.)"""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise UnreadableImage(f"too large: {width}x{height} pixels is over Pillow's decompression-bomb "
                                      f"limit of {MAX_IMAGE_PIXELS} pixels")
            if at_least and image.format == "JPEG":
                scale = at_least / min(width, height)
                image.draft(image.mode, (max(1, round(width * scale)), max(1, round(height * scale))))
            image.load()
            return torch.from_numpy(np.array(_to_rgb(ImageOps.exif_transpose(image)))).permute(2, 0, 1)
    except UnidentifiedImageError:
        raise UnreadableImage("not a readable image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as error:  # over twice the limit: Image.open refuses it
        raise UnreadableImage(f"too large: {error}") from None
    except (OSError, RuntimeError, SyntaxError, ValueError) as error:
        if isinstance(error, UnreadableImage):
            raise
        raise UnreadableImage(f"corrupt or truncated: {str(error).splitlines()[0][:200]}") from None
