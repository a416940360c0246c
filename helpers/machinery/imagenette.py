"""``make data``: Imagenette for offline workshops, downloaded and md5-checked by torchvision."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from helpers import PROJECT_ROOT


def fetch_imagenette(size: str = "160", root: str | Path = PROJECT_ROOT / "data") -> Path:
    """Imagenette (``size`` 160, 320 or full) into ``root/imagenette2-<size>/{train,val}/<wnid>/``,
    unless that folder exists. (torchvision unpacks in place, so an interrupted unpack would pass
    for complete: here it unpacks in a staging folder, renamed into place whole; the archive goes
    with it.)"""
    from torchvision.datasets import Imagenette

    folder = Path(root) / ("imagenette2" if size == "full" else f"imagenette2-{size}")
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{folder.name}-", dir=folder.parent) as staging:
            Imagenette(staging, size=size if size == "full" else f"{size}px", download=True)
            os.replace(Path(staging) / folder.name, folder)
    return folder
