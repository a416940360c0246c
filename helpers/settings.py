"""The six parameters every notebook's papermill ``parameters`` cell sets: ``resolve`` checks
them all before any heavy work, failing with one message that names the bad value and the fix.
"""
from __future__ import annotations

import functools
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from helpers import PROJECT_ROOT
from helpers.storage import Location, s3_hint

OFFLINE_MODEL = "efficientnet_lite0"
SAMPLE_DATA = "sample"


class SettingsError(ValueError):
    """A parameter is unusable; the message names it and says how to fix it."""


@functools.cache
def available_models() -> tuple[str, ...]:
    """Every ``model_name`` accepted: the offline model and torchvision's classifiers."""
    import torchvision.models
    return tuple(sorted({OFFLINE_MODEL, *torchvision.models.list_models(module=torchvision.models)}))


def check_model_name(model_name: str) -> None:
    if model_name not in available_models():
        raise SettingsError(f"model_name={model_name!r} is unknown: use {OFFLINE_MODEL!r} (offline), 'resnet152', or "
                            "another torchvision classifier (helpers.settings.available_models() lists them).")


@dataclass(frozen=True)
class Settings:
    data_uri: str  # "sample", an absolute local folder, or an s3:// URI
    model_name: str
    output_dir: Location  # a local folder or an s3:// prefix
    limit: int | None
    batch_size: int
    num_actors: int | None

    @property
    def predictions_dir(self) -> Location:
        """A folder per run (``helpers.machinery.runs``)."""
        return self.output_dir / "predictions"

    @property
    def predictions_manifest(self) -> Location:
        """The JSON that names the last complete run."""
        return self.output_dir / "predictions.json"

    @property
    def metrics_path(self) -> Location:
        return self.output_dir / "metrics.json"

    @property
    def figures_dir(self) -> Location:
        return self.output_dir / "figures"


def _project_path(path: str | os.PathLike) -> Path:
    """Relative paths are relative to the project folder, wherever the notebook runs."""
    return PROJECT_ROOT / Path(path).expanduser()  # an absolute path replaces PROJECT_ROOT


def _check_positive_int(name: str, value, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        hint = "a whole number >= 1, or None" if allow_none else "a whole number >= 1"
        raise SettingsError(f"{name}={value!r} is not valid: use {hint}.")


def _check_data_uri(data_uri) -> str:
    if not isinstance(data_uri, str) or not data_uri.strip():
        raise SettingsError(f"data_uri={data_uri!r} is empty: use {SAMPLE_DATA!r} for the embedded sample, a "
                            "folder of images (class folders or not), or an s3:// URI.")
    if data_uri == SAMPLE_DATA or data_uri.startswith("s3://"):
        return data_uri
    folder = _project_path(data_uri)
    if not folder.is_dir():
        raise SettingsError(f"data_uri={data_uri!r}: no such folder ({folder}). Point it at a folder of "
                            f"images (in class folders <wnid>/<image> or not), or use {SAMPLE_DATA!r} for the "
                            "embedded sample.")
    return str(folder)


def _check_output_dir(output_dir) -> Location:
    """The output folder, created if needed, after writing and deleting a probe file in it."""
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
        raise SettingsError(f"output_dir={output_dir!r} is empty: name a writable folder or an s3:// URI.")
    remote = "://" in str(output_dir)
    try:
        location = Location.parse(output_dir if remote else _project_path(output_dir))
        if location.is_local:
            location.mkdir()
        probe = location / f".write-check-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.delete()
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid (a bad URI) is a ValueError
        fix = s3_hint() if remote else "Choose a folder you can write to."
        raise SettingsError(f"output_dir={str(output_dir)!r} is not writable ({str(error).splitlines()[0]}). "
                            f"{fix}") from None
    return location


def resolve(data_uri: str = SAMPLE_DATA, model_name: str = OFFLINE_MODEL, output_dir: str = "outputs",
            limit: int | None = None, batch_size: int = 8, num_actors: int | None = None) -> Settings:
    """Validate the notebook parameters and return them resolved."""
    _check_positive_int("limit", limit, allow_none=True)
    _check_positive_int("batch_size", batch_size, allow_none=False)
    _check_positive_int("num_actors", num_actors, allow_none=True)
    check_model_name(model_name)
    return Settings(data_uri=_check_data_uri(data_uri), model_name=model_name,
                    output_dir=_check_output_dir(output_dir), limit=limit, batch_size=batch_size, num_actors=num_actors)
