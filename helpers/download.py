"""Download fast.ai's Imagenette once, verify it and unpack it under ``data/``.

    python -m helpers.download --size 160        # or: make data SIZE=160

gives ``data/imagenette2-160/{train,val}/<wnid>/<image>.JPEG``; point the notebooks'
``data_uri`` at its ``val`` folder. A second run finds the completion marker and does
nothing. On a machine without a network, run this on a connected one and copy the folder.
"""
from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from helpers import PROJECT_ROOT

# Size of the images' short side -> the archive's name (without .tgz), also its top folder.
VARIANTS = {"160": "imagenette2-160", "320": "imagenette2-320", "full": "imagenette2"}
DEFAULT_SIZE = "160"
DEFAULT_BASE_URL = "https://s3.amazonaws.com/fast-ai-imageclas"
BASE_URL_ENV = "IMAGENETTE_BASE_URL"
DATA_DIR = PROJECT_ROOT / "data"
DOWNLOAD_TIMEOUT_S = 30  # for the connection and for each read
CHUNK_BYTES = 1 << 20
COMPLETE_MARKER = ".complete"


class DownloadError(RuntimeError):
    """The archive could not be downloaded or is not a valid one; the message says why."""


def archive_url(size: str = DEFAULT_SIZE, base_url: str | None = None) -> str:
    """The archive's URL: ``base_url``, else $IMAGENETTE_BASE_URL, else fast.ai's bucket."""
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{_variant(size)}.tgz"


def default_destination(size: str = DEFAULT_SIZE) -> Path:
    """``<project>/data/imagenette2-160`` and the like."""
    return DATA_DIR / _variant(size)


def ensure_imagenette(
    size: str = DEFAULT_SIZE,
    dest: str | Path | None = None,
    base_url: str | None = None,
    sha256: str | None = None,
) -> Path:
    """Download, verify and unpack Imagenette into ``dest`` unless it is there; return ``dest``.

    ``dest`` is the folder that holds ``train/`` and ``val/``. It only ever appears complete:
    the archive is fetched and unpacked in a temporary sibling folder, which is renamed into
    place with the completion marker inside. Leftovers of an interrupted run are removed.
    With ``sha256``, the archive must have that digest (and an existing download too).
    """
    dest = Path(dest) if dest is not None else default_destination(size)
    variant = _variant(size)
    if _is_complete(dest, variant, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.download.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs wait here, then find it done
        if _is_complete(dest, variant, sha256):
            return dest
        if _holds_other_files(dest):
            raise DownloadError(
                f"{dest} exists but is not a completed download (no {COMPLETE_MARKER} marker); "
                "move it away or choose another destination."
            )
        staging_prefix = f".{dest.name}.download-"
        for leftover in dest.parent.glob(f"{staging_prefix}*"):  # an interrupted run's
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix, dir=dest.parent))
        try:
            url = archive_url(size, base_url)
            archive = staging / f"{variant}.tgz"
            try:
                marker = _download(url, archive)
            except (OSError, http.client.HTTPException) as error:
                raise DownloadError(
                    f"Could not download {url} ({error}). If this machine is offline, run "
                    f"`make data SIZE={size}` on a connected one and copy the "
                    f"{_shown(default_destination(size))} folder it makes to {dest.absolute()}, "
                    f"or set {BASE_URL_ENV} to a mirror you can reach."
                ) from None
            if sha256 is not None and marker["sha256"] != sha256.lower():
                raise DownloadError(
                    f"{url} has sha256 {marker['sha256']}, expected {sha256.lower()}."
                )
            unpacked = _unpack(archive, staging / "unpacked", variant)
            archive.unlink()
            (unpacked / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            if dest.exists():  # an empty folder, or a download of another archive
                os.replace(dest, staging / "previous")
            os.replace(unpacked, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _variant(size: str) -> str:
    if size not in VARIANTS:
        raise ValueError(f"size must be one of {', '.join(VARIANTS)}, not {size!r}")
    return VARIANTS[size]


def _holds_other_files(dest: Path) -> bool:
    """Whether ``dest`` is something other than a download of ours or an empty folder."""
    if not dest.exists() or (dest / COMPLETE_MARKER).exists():
        return False
    return not dest.is_dir() or any(dest.iterdir())


def _is_complete(dest: Path, variant: str, sha256: str | None) -> bool:
    """Whether ``dest`` holds an unpacked ``variant`` (with that sha256, when one is given)."""
    try:
        marker = json.loads((dest / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("archive") == f"{variant}.tgz" and (
        sha256 is None or marker.get("sha256") == sha256.lower()
    )


def _download(url: str, archive: Path) -> dict[str, str | int]:
    """Stream ``url`` into ``archive`` with a progress bar; return its name, URL, size, sha256."""
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        expected = int(response.headers.get("Content-Length") or 0) or None
        with open(archive, "wb") as file, tqdm(
            total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=archive.name
        ) as progress:
            while chunk := response.read(CHUNK_BYTES):
                file.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                progress.update(len(chunk))
    if expected is not None and received != expected:
        raise DownloadError(
            f"The connection to {url} closed after {received} of {expected} bytes; run again."
        )
    return {"archive": archive.name, "url": url, "bytes": received, "sha256": digest.hexdigest()}


def _unpack(archive: Path, target: Path, variant: str) -> Path:
    """Check and extract the gzip tar ``archive`` into ``target``; return ``target/variant``.

    Every member must lie under ``variant/`` (no absolute paths, no ``..``); the ``data``
    extraction filter refuses links out of ``target`` and special files besides. The gzip
    stream is read to its end, so its checksum is verified too.
    """
    try:
        with gzip.open(archive) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _check_member_path(member.name, variant, archive)
                tar.extract(member, target, filter="data")
            while stream.read(CHUNK_BYTES):  # past the tar's end: padding, gzip checksum
                pass
    except tarfile.FilterError as error:
        raise DownloadError(f"{archive.name}: {error}; refusing to unpack it.") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DownloadError(f"{archive.name} is not a valid gzip tar archive ({error}).") from None
    unpacked = target / variant
    if not ((unpacked / "train").is_dir() and (unpacked / "val").is_dir()):
        raise DownloadError(f"{archive.name} does not hold {variant}/train and {variant}/val.")
    return unpacked


def _check_member_path(name: str, variant: str, archive: Path) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or path.parts[:1] != (variant,):
        raise DownloadError(
            f"{archive.name} holds {name!r}, outside {variant}/: refusing to unpack it."
        )


def _shown(path: Path) -> Path:
    """``path`` relative to the project folder when inside it (as ``data_uri`` takes it)."""
    path = path.absolute()
    return path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=VARIANTS, default=DEFAULT_SIZE,
                        help="short side of the images in pixels, or full (default %(default)s)")
    parser.add_argument("--dest", type=Path,
                        help="folder to hold train/ and val/ (default data/imagenette2-<size>)")
    parser.add_argument("--base-url", help=f"where the archives are (default ${BASE_URL_ENV} "
                                           f"or {DEFAULT_BASE_URL})")
    args = parser.parse_args(argv)
    try:
        dest = ensure_imagenette(args.size, args.dest, args.base_url)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Imagenette ({args.size}) is in {_shown(dest)}")
    print(f'Use it with data_uri = "{_shown(dest / "val")}" (or "{_shown(dest / "train")}"), '
          f'e.g. make run PARAMS="-p data_uri={_shown(dest / "val")}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
