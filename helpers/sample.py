"""The embedded sample set: real photographs that installed packages ship, in Imagenette layout.

Each source photo carries, chosen by hand from what it shows (never from a model's output),
a folder label, the set of ImageNet-1k classes that describe it correctly (as ImageNet-ReaL
does for the validation set: a tabby is also a fair *tiger cat*), what can mislead a
classifier in it, and a hand-drawn box around the labelled object. The set is made of crops
that always contain the box, at varied sizes, aspect ratios, mirrorings and JPEG qualities,
so the images differ the way a real folder's do, plus a few files that cannot be decoded,
as a real folder holds. It is built once, deterministically, into
``data/sample/<wnid>/<photo>_<k>.JPEG``.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import tempfile
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
    wnid: str  # the folder label: an ImageNet WordNet id chosen by hand from what the photo shows
    box: tuple[int, int, int, int]  # (left, top, right, bottom) around the labelled object
    acceptable: tuple[str, ...]  # every ImageNet class that describes the photo correctly, wnid first
    reason: str  # why those classes
    pitfall: str  # what in the photo can mislead a classifier
    margin: float = 0.5  # crops reach at most this fraction of the box's longer side beyond it

    @property
    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(
                f"The sample set needs the package {self.package!r}: run `make install`."
            )
        return Path(spec.origin).parent / self.relative_path

    @property
    def stem(self) -> str:
        return Path(self.relative_path).stem


SOURCE_PHOTOS: tuple[SourcePhoto, ...] = (
    SourcePhoto(
        "skimage", "data/chelsea.png", "n02123045", (60, 0, 420, 300),
        ("n02123045", "n02123159", "n02124075"),  # tabby, tiger cat, Egyptian cat
        "A striped brownish-grey domestic cat: ImageNet's three domestic-cat classes overlap.",
        "Only the face, close up: nothing tells a tabby from ImageNet's other striped cats.",
    ),
    SourcePhoto(
        "skimage", "data/coffee.png", "n07920052", (70, 0, 480, 400),
        ("n07920052", "n07930864"),  # espresso, cup
        "An espresso in a small cup with a handle, on a saucer (a mug has no saucer).",
        "Seen from above, the crema looks like a clear soup and the thick cup like a mug.",
    ),
    SourcePhoto(
        "skimage", "data/rocket.jpg", "n03773504", (290, 120, 360, 427),
        ("n03773504", "n04008634"),  # missile, projectile
        "A rocket on its launch pad: ImageNet files rockets under both missile and projectile.",
        "A thin rocket on a concrete pad between lattice towers, which look like a rig's or a minaret.",
    ),
    SourcePhoto(
        "skimage", "data/astronaut.png", "n04266014", (340, 0, 475, 285),
        ("n04266014",),  # space shuttle
        "A model of the space shuttle, with its tank and boosters; ImageNet has no astronaut class.",
        "A small model on a stand, next to the astronaut's face, orange spacesuit and helmet.",
        margin=0.15,  # the model is small beside her: crops stay close to it
    ),
    SourcePhoto(
        "skimage", "data/camera.png", "n04485082", (225, 130, 410, 512),
        ("n04485082",),  # tripod
        "A camcorder on a tripod; ImageNet has no camcorder class (its cameras are stills cameras).",
        "Black and white, with the cameraman's dark coat and the camcorder around the tripod.",
    ),
    SourcePhoto(
        "sklearn", "datasets/images/china.jpg", "n03877845", (60, 25, 370, 427),
        ("n03877845",),  # palace
        "The Tower of Buddhist Incense of Beijing's Summer Palace; ImageNet has no pagoda class.",
        "Close up, its tiered roofs look like a bell cote; a lake and trees around it.",
    ),
    SourcePhoto(
        "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "n03763968", (20, 300, 512, 600),
        ("n03763968", "n04350905", "n04591157"),  # military uniform, suit, Windsor tie
        "A naval officer's dress blues: a jacket and skirt of one dark cloth (a suit, in WordNet's "
        "words), a white shirt and a black necktie (ImageNet's only necktie class is Windsor tie).",
        "A portrait: her cap and dark jacket look like a mortarboard and an academic gown.",
        margin=0.35,  # the box holds the uniform below the collar: crops show little of the cap
    ),
)

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
    photo = _photo_of(path)
    return frozenset(photo.acceptable) if photo else None


def pitfall(path: str) -> str | None:
    """What can mislead a classifier in a sample crop's photo; None for any other file."""
    photo = _photo_of(path)
    return photo.pitfall if photo else None


def _random_crop(rng: np.random.Generator, size: tuple[int, int], box: tuple[int, int, int, int],
                 margin: float):
    """A crop of an image of ``size`` that contains ``box``, with random margins on each side.

    Margins stay under ``margin`` times the box's longer side, so the labelled object
    dominates the crop.
    """
    width, height = size
    left, top, right, bottom = box
    reach = int(max(right - left, bottom - top) * margin)
    return (
        int(rng.integers(max(0, left - reach), left + 1)),
        int(rng.integers(max(0, top - reach), top + 1)),
        int(rng.integers(right, min(width, right + reach) + 1)),
        int(rng.integers(bottom, min(height, bottom + reach) + 1)),
    )


def _variants(photo: SourcePhoto, count: int, rng: np.random.Generator):
    """Yield ``count`` JPEG-ready variants of one photo: crop, resize, mirror, quality."""
    with Image.open(photo.path) as source:
        image = source.convert("RGB")
    for _ in range(count):
        crop = image.crop(_random_crop(rng, image.size, photo.box, photo.margin))
        short_side = int(rng.integers(96, 520))
        scale = short_side / min(crop.size)
        crop = crop.resize(
            (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
            Image.Resampling.BICUBIC,
        )
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop, int(rng.integers(70, 96))


def _write_sample(target: Path, images_per_photo: int) -> None:
    rng = np.random.default_rng(SEED)
    for photo in SOURCE_PHOTOS:
        folder = target / photo.wnid
        folder.mkdir(parents=True, exist_ok=True)
        for k, (image, quality) in enumerate(_variants(photo, images_per_photo, rng)):
            image.save(folder / f"{photo.stem}_{k:03d}.JPEG", quality=quality)
    whole = (target / TRUNCATED).with_name("coffee_000.JPEG").read_bytes()
    (target / TRUNCATED).write_bytes(whole[: len(whole) // 2])
    (target / NOT_AN_IMAGE).write_bytes(NOTE)
    (target / EMPTY).write_bytes(b"")


def _recipe(images_per_photo: int) -> str:
    """What determines the set's bytes: a set built from another recipe is rebuilt."""
    photos = [(photo.package, photo.relative_path, photo.wnid, photo.box, photo.margin)
              for photo in SOURCE_PHOTOS]
    return repr((photos, BROKEN_FILES, NOTE, images_per_photo, SEED, Image.__version__)) + "\n"


def _marker(directory: Path) -> Path:
    """Beside the set, not in it: the set holds nothing but class folders of images."""
    return directory.parent / f".{directory.name}.complete"


def _is_complete(directory: Path, images_per_photo: int) -> bool:
    marker = _marker(directory)
    return directory.is_dir() and marker.exists() and marker.read_text() == _recipe(images_per_photo)


def ensure_sample(directory: Path = SAMPLE_DIR, images_per_photo: int = IMAGES_PER_PHOTO) -> Path:
    """Build the sample set into ``directory`` unless it is already complete; return it.

    Safe when several processes call it at once: one builds into a temporary folder under
    a lock and renames it into place, so a half-written set is never visible.
    """
    directory = Path(directory)
    if _is_complete(directory, images_per_photo):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(directory, images_per_photo):
            return directory
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        try:
            _write_sample(staging, images_per_photo)
            if directory.exists():  # an older recipe's set
                shutil.rmtree(directory)
            os.replace(staging, directory)
            _marker(directory).write_text(_recipe(images_per_photo))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return directory
