"""Where outputs go: a local folder or an ``s3://`` prefix, written so that a reader never
sees half of a file. ``Location`` names a file or folder as ``pathlib.Path`` does
(``output_dir / "figures"``), on the pyarrow filesystem that Ray Data reads and writes with.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.fs


def s3_hint() -> str:
    """What to check when an ``s3://`` URI fails, with the endpoint in use."""
    return ("Check the bucket and path, the endpoint (AWS_ENDPOINT_URL: "
            f"{os.environ.get('AWS_ENDPOINT_URL', 'not set')}) and the credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or s3://anonymous@bucket/... for public data).")


@dataclass(frozen=True, repr=False)
class Location:
    """A file or folder on a pyarrow filesystem (local, or S3 with ``scheme="s3"``)."""

    filesystem: pyarrow.fs.FileSystem
    path: str  # inside the filesystem: an absolute local path, or "bucket/key" on S3
    scheme: str = ""

    @classmethod
    def parse(cls, uri: str | Path) -> Location:
        """A location from a local path or an ``s3://`` URI (``AWS_ENDPOINT_URL`` honoured)."""
        if "://" in str(uri):
            filesystem, path = pyarrow.fs.FileSystem.from_uri(str(uri))
            return cls(filesystem, path.rstrip("/"), str(uri).split("://", 1)[0])
        return cls(pyarrow.fs.LocalFileSystem(), str(Path(uri)))

    def __str__(self) -> str:
        """The path as a user would type it; credentials in the URI are never shown."""
        return f"{self.scheme}://{self.path}" if self.scheme else self.path

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __truediv__(self, name: str) -> Location:
        return Location(self.filesystem, posixpath.join(self.path, str(name)), self.scheme)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pyarrow.fs.LocalFileSystem)

    def relative_to(self, other: Location) -> str:
        return posixpath.relpath(self.path, other.path)

    def exists(self) -> bool:
        return self.filesystem.get_file_info(self.path).type != pyarrow.fs.FileType.NotFound

    def children(self) -> list[Location]:
        """The files and folders directly inside, sorted by name; none if it does not exist."""
        infos = self.filesystem.get_file_info(pyarrow.fs.FileSelector(self.path, allow_not_found=True))
        return sorted((Location(self.filesystem, info.path, self.scheme) for info in infos), key=lambda c: c.path)

    def mkdir(self) -> None:
        self.filesystem.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        """Replace the file in one step: a local file is renamed into place, an S3 object appears once uploaded."""
        target = self.path
        if self.is_local:
            self.filesystem.create_dir(posixpath.dirname(self.path), recursive=True)
            target = f"{posixpath.dirname(self.path)}/.{self.name}.{uuid.uuid4().hex[:8]}.tmp"
        with self.filesystem.open_output_stream(target) as stream:
            stream.write(data)
        if target != self.path:
            self.filesystem.move(target, self.path)

    def delete(self) -> None:
        """Remove this file or folder with everything in it; nothing if it does not exist."""
        kind = self.filesystem.get_file_info(self.path).type
        if kind == pyarrow.fs.FileType.Directory:
            self.filesystem.delete_dir(self.path)
        elif kind == pyarrow.fs.FileType.File:
            self.filesystem.delete_file(self.path)


def write_json(location: Location, payload: dict) -> None:
    """Replace ``location`` with ``payload`` as indented JSON, in one step."""
    location.write_bytes((json.dumps(payload, indent=2) + "\n").encode())


def read_json(location: Location) -> dict:
    return json.loads(location.read_bytes())


def read_parquet(locations: list[Location], columns: list[str] | None = None) -> pd.DataFrame:
    """One table from a list of Parquet files."""
    return pd.concat([pd.read_parquet(location.path, columns=columns, filesystem=location.filesystem)
                      for location in locations], ignore_index=True)


def read_csv(location: Location, **options) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(location.read_bytes()), **options)


def write_csv(location: Location, frame: pd.DataFrame, **options) -> None:
    location.write_bytes(frame.to_csv(**options).encode())
