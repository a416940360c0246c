"""Folders built from the sample for the tests and ``make bench``: larger ones, and fingerprints."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def replicate(directory: Path, target: Path, copies: int) -> Path:
    """A larger folder: the files of ``directory`` ``copies`` times over, in the same class
    folders under new names (``<copy>_<name>``), hard-linked where the filesystem allows."""
    for image in sorted(Path(directory).glob("*/*")):
        for copy in range(copies):
            _link(image, Path(target) / image.parent.name / f"{copy}_{image.name}")
    return Path(target)


def one_per_folder(directory: Path, target: Path, folders: int) -> Path:
    """``folders`` class folders (``n00000000``, ...) of one image each, the sample's images in
    turn: the shape that costs most requests per image on a bucket (one listing per folder)."""
    images = sorted(Path(directory).glob("*/*.JPEG"))
    for number in range(folders):
        image = images[number % len(images)]
        _link(image, Path(target) / f"n{number:08d}" / image.name)
    return Path(target)


def _link(source: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, link)
    except OSError:
        shutil.copyfile(source, link)


def fingerprint(directory: Path) -> str:
    """SHA-256 over every file's relative path and bytes: equal sets have equal prints."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
