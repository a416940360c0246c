"""The series against a real S3-compatible server (moto's server mode) on 127.0.0.1."""
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import data, series, settings, storage
from helpers.cluster import environment
from helpers.storage import Location

BUCKET = "imagenette-like"
LIMIT = 42
S3_NOTEBOOKS = tuple(nb for nb in series.NOTEBOOKS if not nb.name.startswith("02"))


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, with the AWS variables pointing at it."""
    port = series.free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert time.monotonic() < deadline and server.poll() is None, "moto_server did not start"
        time.sleep(0.2)
    endpoint = f"http://127.0.0.1:{port}"
    with environment(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                     AWS_DEFAULT_REGION="us-east-1"):
        yield endpoint
    server.terminate()
    server.wait(timeout=30)
    log.close()


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


def test_notebooks_on_s3_report_the_same_as_on_the_local_copy(bucket, tmp_path):
    """Images from the bucket, predictions and metrics back into it; the same as locally."""
    outputs = f"s3://{BUCKET}/outputs"
    series.execute_series(tmp_path / "s3", {"data_uri": bucket, "output_dir": outputs, "limit": LIMIT},
                          notebooks=S3_NOTEBOOKS, progress=False)
    series.execute_series(tmp_path / "local", {"data_uri": "sample", "limit": LIMIT},
                          notebooks=S3_NOTEBOOKS[1:], progress=False)
    in_bucket, local = Location.parse(outputs), Location.parse(tmp_path / "local")
    s3_metrics, local_metrics = (storage.read_json(root / "metrics.json") for root in (in_bucket, local))
    assert s3_metrics["num_images"] == local_metrics["num_images"] == LIMIT
    assert (s3_metrics["top1"], s3_metrics["top5"]) == (local_metrics["top1"], local_metrics["top5"])

    def predictions(root: Location) -> pd.Series:
        frame = storage.read_parquet([root / f for f in storage.read_json(root / "predictions.json")["files"]])
        return frame.set_index(frame["path"].str.split("/").str[-2:].str.join("/"))["top1_wnid"].sort_index()

    pd.testing.assert_series_equal(predictions(in_bucket), predictions(local))
    import boto3

    keys = [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="outputs/")["Contents"]]
    assert {"outputs/predictions.json", "outputs/metrics.json", "outputs/per_class.csv",
            "outputs/figures/04_confusion_matrix.png"} <= set(keys)
    assert any(key.startswith("outputs/predictions/") and key.endswith(".parquet") for key in keys)
    assert not any("/.sweep-" in key or "/.write-check-" in key for key in keys)
    assert not (tmp_path / "s3" / "predictions.json").exists()  # only notebooks and logs stay local


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
    closed = f"http://127.0.0.1:{series.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    started = time.monotonic()
    with pytest.raises(data.DataUnavailableError) as error:
        data.list_files(f"s3://{BUCKET}/sample")
    assert time.monotonic() - started < 60
    assert f"s3://{BUCKET}/sample" in str(error.value) and closed in str(error.value)


def test_settings_accept_s3_uris_without_touching_the_network():
    assert settings.resolve(data_uri="s3://anonymous@air-example-data-2/imagenette2/train/").data_uri.startswith("s3://")
