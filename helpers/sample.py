"""The offline sample: crops of real photographs that installed packages ship, in Imagenette
layout (``data/sample/<wnid>/<photo>_<k>.JPEG``), built once, deterministically. Each photo
(``sample_photos.toml``) has hand-chosen labels: its folder label and every ImageNet class that
describes it (as ImageNet-ReaL does: a tabby is also a fair *tiger cat*). Crops vary in size,
aspect ratio, mirroring and JPEG quality; three files cannot be decoded, as in a real folder.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from helpers import PROJECT_ROOT

SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"
IMAGES_PER_PHOTO = 72
SEED = 20261125


@dataclass(frozen=True)
class SourcePhoto:
    """A package-shipped photograph, what it shows and where."""

    package: str  # importable package that ships the file
    relative_path: str  # path inside that package
    wnid: str  # the folder label
    box: tuple[int, int, int, int]  # (left, top, right, bottom) around the labelled object
    acceptable: tuple[str, ...]  # every ImageNet class that describes the photo correctly, wnid first
    reason: str  # why those classes
    pitfall: str  # what in the photo can mislead a classifier
    margin: float = 0.5  # crops reach at most this fraction of the box's longer side beyond it

    @property
    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"The sample set needs the package {self.package!r}: run `make install`.")
        return Path(spec.origin).parent / self.relative_path

    @property
    def stem(self) -> str:
        return Path(self.relative_path).stem


PHOTOS_FILE = Path(__file__).with_name("sample_photos.toml")  # each photo and its hand-chosen labels
SOURCE_PHOTOS = tuple(SourcePhoto(**{**photo, "box": tuple(photo["box"]), "acceptable": tuple(photo["acceptable"])})
                      for photo in tomllib.loads(PHOTOS_FILE.read_text())["photo"])

# Files of the kinds a real folder holds that cannot be decoded, in class folders, each named
# to sort after the crops of its folder so that runs with a small ``limit`` stay clean.
TRUNCATED = "n07920052/coffee_truncated.JPEG"  # the first half of coffee_000.JPEG
NOT_AN_IMAGE = "n04485082/camera_notes.jpg"  # a text note saved with an image extension
EMPTY = "n03773504/rocket_empty.JPEG"  # 0 bytes, as an interrupted copy leaves
BROKEN_FILES = (TRUNCATED, NOT_AN_IMAGE, EMPTY)
NOTE = b"Camera notes: tripod at 1.4 m, lens cap in the left pocket.\n"

_CROP_NAME = re.compile(r"(?P<stem>.+)_\d+\.JPEG")


def _photo_of(path: str) -> SourcePhoto | None:
    """The source photo of a sample crop, by its class folder and name ``<stem>_<k>.JPEG``."""
    path = PurePosixPath(path)
    match = _CROP_NAME.fullmatch(path.name)
    photos = {(photo.wnid, photo.stem): photo for photo in SOURCE_PHOTOS}
    return photos.get((path.parent.name, match["stem"])) if match else None


def acceptable_labels(path: str) -> frozenset[str] | None:
    """The WordNet ids that describe a sample crop correctly; None for any other file."""
    return frozenset(photo.acceptable) if (photo := _photo_of(path)) else None


def pitfall(path: str) -> str | None:
    """What can mislead a classifier in a sample crop's photo; None for any other file."""
    return photo.pitfall if (photo := _photo_of(path)) else None


def _random_crop(rng: np.random.Generator, size: tuple[int, int], box: tuple[int, int, int, int],
                 margin: float):
    """A crop of an image of ``size`` that contains ``box``, with random margins under ``margin``
    times the box's longer side, so that the labelled object dominates the crop."""
    (width, height), (left, top, right, bottom) = size, box
    reach = int(max(right - left, bottom - top) * margin)
    return (int(rng.integers(max(0, left - reach), left + 1)), int(rng.integers(max(0, top - reach), top + 1)),
            int(rng.integers(right, min(width, right + reach) + 1)),
            int(rng.integers(bottom, min(height, bottom + reach) + 1)))


def _write_sample(target: Path, images_per_photo: int) -> None:
    """Each photo's variants (crop, size, mirror, JPEG quality), then the broken files."""
    rng = np.random.default_rng(SEED)
    for photo in SOURCE_PHOTOS:
        (target / photo.wnid).mkdir(parents=True, exist_ok=True)
        with Image.open(photo.path) as source:
            image = source.convert("RGB")
        for k in range(images_per_photo):
            crop = image.crop(_random_crop(rng, image.size, photo.box, photo.margin))
            scale = int(rng.integers(96, 520)) / min(crop.size)  # a short side of 96 to 519 pixels
            crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                               Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(target / photo.wnid / f"{photo.stem}_{k:03d}.JPEG", quality=int(rng.integers(70, 96)))
    whole = (target / TRUNCATED).with_name("coffee_000.JPEG").read_bytes()
    (target / TRUNCATED).write_bytes(whole[: len(whole) // 2])
    (target / NOT_AN_IMAGE).write_bytes(NOTE)
    (target / EMPTY).write_bytes(b"")


def _recipe(images_per_photo: int) -> str:
    """What determines the set's bytes: a set built from another recipe is rebuilt."""
    photos = [(photo.package, photo.relative_path, photo.wnid, photo.box, photo.margin) for photo in SOURCE_PHOTOS]
    return repr((photos, BROKEN_FILES, NOTE, images_per_photo, SEED, Image.__version__)) + "\n"


def ensure_sample(directory: Path = SAMPLE_DIR, images_per_photo: int = IMAGES_PER_PHOTO) -> Path:
    """Build the sample set into ``directory`` unless it is complete; return it. Processes that
    call it at once wait on a lock; the set is built aside and renamed into place."""
    directory, recipe = Path(directory), _recipe(images_per_photo)
    marker = directory.parent / f".{directory.name}.complete"  # beside the set: it holds only class folders
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory.is_dir() and marker.exists() and marker.read_text() == recipe):
            with tempfile.TemporaryDirectory(prefix=f".{directory.name}-", dir=directory.parent) as staging:
                _write_sample(Path(staging), images_per_photo)
                shutil.rmtree(directory, ignore_errors=True)  # an older recipe's set
                os.replace(staging, directory)
                os.mkdir(staging)  # for TemporaryDirectory to remove
            marker.write_text(recipe)
    return directory
