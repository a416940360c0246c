"""Listing and failures against a real S3-compatible server (moto's server mode) on 127.0.0.1.

The whole series on a bucket, in and out, runs in test_messy_data.py, on the messy folder.
"""
import os
import posixpath
import time
from pathlib import Path

import pytest

from unittest import mock

from helpers import data, settings, storage
from helpers.machinery import series
from helpers.machinery.ray_start import free_port

BUCKET = "imagenette-like"


@pytest.fixture(scope="module")
def bucket(s3_endpoint, sample_dir):
    """The embedded sample uploaded in Imagenette layout: s3://BUCKET/sample/<wnid>/<image>."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(sample_dir.rglob("*.JPEG")):
        client.upload_file(str(path), BUCKET, f"sample/{path.relative_to(sample_dir).as_posix()}")
    return f"s3://{BUCKET}/sample"


def test_listing_reads_labels_from_the_bucket(bucket, sample_dir):
    listing = data.list_files(bucket)
    assert len(listing.images) == len(list(sample_dir.rglob("*.JPEG"))) and not listing.skipped
    assert {data.class_folder(p, listing.root) for p in listing.images} == {p.name for p in sample_dir.iterdir()}


def test_anonymous_uri_reads_the_same_bucket(bucket):
    anonymous = data.list_files(bucket.replace("s3://", "s3://anonymous@"))
    assert anonymous.images == data.list_files(bucket).images


def test_an_output_dir_in_a_missing_bucket_fails_fast_naming_it(s3_endpoint):
    started = time.monotonic()
    with pytest.raises(settings.SettingsError, match="output_dir='s3://no-such-bucket/out' is not writable"):
        settings.resolve(output_dir="s3://no-such-bucket/out")
    assert time.monotonic() - started < 60


def test_a_missing_bucket_fails_fast_naming_the_uri(s3_endpoint):
    started = time.monotonic()
    with pytest.raises(data.DataUnavailableError, match="data_uri='s3://no-such-bucket/x' cannot be listed"):
        data.list_files("s3://no-such-bucket/x")
    assert time.monotonic() - started < 60


def test_an_unreachable_endpoint_fails_within_a_minute(s3_endpoint, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    started = time.monotonic()
    with pytest.raises(data.DataUnavailableError) as error:
        data.list_files(f"s3://{BUCKET}/sample")
    assert time.monotonic() - started < 60
    assert f"s3://{BUCKET}/sample" in str(error.value) and closed in str(error.value)


def test_settings_accept_s3_uris_without_touching_the_network():
    assert settings.resolve(data_uri="s3://anonymous@air-example-data-2/imagenette2/train/").data_uri.startswith("s3://")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_notebook_03_from_a_bucket_30_ms_away_gives_every_image_once_with_the_same_predictions(
        bucket, sample_dir, local_top1, tmp_path):
    """Notebook 03, with a Ray of its own (its workers inherit the proxy's endpoint), reads the
    bucket through a proxy that delays every request by 30 ms."""
    from support.notebook_03 import without_extra_pipelines
    from support.s3_server import Proxy

    with Proxy(os.environ["AWS_ENDPOINT_URL"], delay_s=0.030) as proxy, \
            mock.patch.dict(os.environ, AWS_ENDPOINT_URL=proxy.url):
        os.environ.pop("RAY_ADDRESS", None)
        series.execute_series(tmp_path, {"data_uri": bucket, "limit": 24, "batch_size": 8},
                              notebooks=(without_extra_pipelines(tmp_path / "notebook-03"),), progress=False)
    manifest = storage.read_json(storage.Location.parse(tmp_path / "predictions.json"))
    frame = storage.read_parquet([storage.Location.parse(tmp_path / name) for name in manifest["files"]])
    listing = data.list_files(bucket)
    assert sorted(frame["path"]) == data.select_images(listing.images, listing.root, 24)
    assert manifest["num_images"] == 24 and (frame["error"] == "").all()
    local = [sample_dir / posixpath.relpath(path, listing.root) for path in frame["path"]]
    assert list(frame["top1_wnid"]) == local_top1(local, manifest["model_name"])


def test_a_series_into_a_bucket_copies_its_executed_notebooks_there_failed_or_not(s3_endpoint, monkeypatch):
    """`--output-dir s3://...` (what `make submit` asks of a cluster): the notebooks get the
    bucket as their output_dir, and their executed copies follow them into it."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="series-out")
    seen = []

    def execute(output_dir, parameters):
        seen.append(parameters["output_dir"])
        (Path(output_dir) / "notebooks").mkdir()
        (Path(output_dir) / "notebooks" / "01_load_images.ipynb").write_text("{}")
        if len(seen) == 2:
            raise RuntimeError("notebook 01 failed")
        return {"01_load_images": 1.0}

    monkeypatch.setattr(series, "execute_series", execute)
    assert series.main(["--output-dir", "s3://series-out/run", "-p", "limit=5"]) == 0
    with pytest.raises(RuntimeError, match="notebook 01 failed"):
        series.main(["--output-dir", "s3://series-out/failed"])
    assert seen == ["s3://series-out/run", "s3://series-out/failed"]
    for run in ("run", "failed"):
        assert storage.Location.parse(f"s3://series-out/{run}/notebooks/01_load_images.ipynb").read_bytes() == b"{}"
