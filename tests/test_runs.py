"""Runs keep every complete file, resume what a killed or stopped run left, and never mix rows
of other code (``helpers.runs``); on a folder and on a bucket (moto on 127.0.0.1)."""
import dataclasses
import io
import os
from unittest import mock

import pandas as pd
import pytest

from helpers import data, settings, storage
from helpers.machinery import run_files, runs
from helpers.machinery.fingerprint import fingerprint
from support.s3_server import Proxy

CODE = {"model_name": settings.OFFLINE_MODEL, "code": "0123456789abcdef"}


@pytest.fixture
def images(tmp_path):
    """Twelve 'images' in three class folders (the listing looks at names only)."""
    for label in ("n01440764", "n02102040", "n02979186"):
        for k in range(4):
            (tmp_path / "images" / label / f"{k}.jpg").parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "images" / label / f"{k}.jpg").write_bytes(b"x")
    return str(tmp_path / "images")


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    """An output folder on this disk, or in a bucket of moto's S3 server."""
    if request.param == "local":
        yield str(tmp_path / "outputs")
        return
    import boto3

    variables = request.getfixturevalue("moto_server")
    with mock.patch.dict(os.environ, variables):
        boto3.client("s3").create_bucket(Bucket="runs")
        yield f"s3://runs/{request.node.originalname}/outputs"


def _parquet(paths) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame({"path": paths, "label": "x", "error": ""}).to_parquet(buffer)
    return buffer.getvalue()


def _killed_run(cfg, run_id: str, *files: list[str], **record) -> storage.Location:
    folder = cfg.predictions_dir / run_id
    storage.write_json(folder / runs.RUN_RECORD, {"data_uri": cfg.data_uri, "model_name": cfg.model_name,
                                                  "limit": cfg.limit, **record})
    for number, paths in enumerate(files):
        (folder / f"part-{number}.parquet").write_bytes(_parquet(paths))
    return folder


def _names(folder: storage.Location) -> list[str]:
    return sorted(child.name for child in folder.children())


def test_a_new_run_reads_every_selected_image(images, output, capsys):
    cfg = settings.resolve(images, output_dir=output, limit=6)
    run = runs.open_run(cfg, data.list_files(images))
    assert len(run.to_read) == 6 and not run.resumed
    assert {data.class_folder(path, run.listing.root) for path in run.to_read} == {"n01440764", "n02102040", "n02979186"}
    assert f"New run {run.location.name}: 6 images to classify." in capsys.readouterr().out


def test_a_killed_run_is_resumed_and_only_a_file_cut_off_mid_write_is_deleted(images, output, capsys):
    cfg = settings.resolve(images, output_dir=output)
    listing = data.list_files(images)
    done = listing.images[:5]
    killed = _killed_run(cfg, "20261201-100000-aaaaaa", done[:3], done[3:5])
    whole = _parquet(listing.images[5:7])
    (killed / "part-2.parquet").write_bytes(whole[: len(whole) // 2])  # no footer: cut off mid-write
    _killed_run(cfg, "20261201-110000-bbbbbb", listing.images[:1], limit=3)  # other settings: not this run's
    run = runs.open_run(cfg, listing)
    assert run.location.name == killed.name and run.resumed == set(done)
    assert run.to_read == listing.images[5:]
    assert _names(killed) == ["part-0.parquet", "part-1.parquet", "run.json"]
    assert f"Resuming run {killed.name}: 5 of 12 images are classified already; reading the other 7." in capsys.readouterr().out


def test_a_damaged_whole_file_stops_the_resume_and_nothing_is_deleted(images, output):
    cfg = settings.resolve(images, output_dir=output)
    listing = data.list_files(images)
    killed = _killed_run(cfg, "20261201-100000-aaaaaa", listing.images[:3])
    whole = _parquet(listing.images[3:6])
    (killed / "part-1.parquet").write_bytes(whole[:8] + b"\0" * (len(whole) - 12) + whole[-4:])  # footer kept
    with pytest.raises(runs.RunError, match="part-1.parquet is a whole Parquet file that cannot be read"):
        runs.open_run(cfg, listing)
    assert _names(killed) == ["part-0.parquet", "part-1.parquet", "run.json"]


def test_reads_that_fail_now_and_then_are_retried_and_delete_nothing(images, moto_server, monkeypatch):
    """Through a proxy that drops some connections that fetch a killed run's file: the files
    are read whole in the end; with every such connection dropped, the run stops naming a
    file. Nothing is deleted."""
    import boto3

    monkeypatch.setattr(run_files, "READ_ATTEMPTS", 3)
    monkeypatch.setattr(run_files.time, "sleep", lambda seconds: None)
    fetches = []

    def every_other_fetch(request: bytes) -> bool:
        if request.startswith(b"GET ") and b".parquet" in request.split(b"\r\n")[0]:
            fetches.append(request)
            return len(fetches) % 2 == 1
        return False

    with mock.patch.dict(os.environ, moto_server):
        boto3.client("s3").create_bucket(Bucket="flaky")
        cfg = settings.resolve(images, output_dir="s3://flaky/outputs")
        listing = data.list_files(images)
        killed = _killed_run(cfg, "20261201-100000-aaaaaa", *[listing.images[k:k + 2] for k in range(0, 8, 2)])
        for drop, survives in ((every_other_fetch, True), (lambda request: b".parquet" in request[:300], False)):
            with Proxy(moto_server["AWS_ENDPOINT_URL"], drop=drop) as proxy, \
                    mock.patch.dict(os.environ, AWS_ENDPOINT_URL=proxy.url):
                flaky = dataclasses.replace(cfg, output_dir=storage.Location.parse("s3://flaky/outputs"))
                if survives:
                    assert runs.open_run(flaky, listing).resumed == set(listing.images[:8])
                else:
                    with pytest.raises(runs.RunError, match=r"Cannot read s3://flaky/outputs/predictions/.*"
                                                            r"\.parquet of an unfinished run .*nothing was deleted"):
                        runs.open_run(flaky, listing)
                assert proxy.server.dropped >= 2
            assert _names(killed) == [f"part-{k}.parquet" for k in range(4)] + ["run.json"]


def test_rows_of_other_code_are_never_mixed_in(images, output, capsys):
    cfg = settings.resolve(images, output_dir=output)
    listing = data.list_files(images)
    killed = _killed_run(cfg, "20261201-100000-aaaaaa", listing.images[:4], made_by=CODE)
    run = runs.open_run(cfg, listing)
    with pytest.raises(runs.RunError, match="was made by other code .*starts a new run"):
        run._check_can_write({**CODE, "code": "fedcba9876543210"})
    assert _names(killed) == ["part-0.parquet", "run.json"]
    fresh = runs.open_run(cfg, listing)  # the refused run is not resumed again
    assert fresh.location.name != killed.name and fresh.to_read == listing.images


def test_a_run_that_wrote_since_it_was_opened_is_refused(images, output):
    cfg = settings.resolve(images, output_dir=output)
    listing = data.list_files(images)
    run = runs.open_run(cfg, listing)
    run._check_can_write(CODE)
    (run.location / "part-0.parquet").write_bytes(_parquet(listing.images[:2]))  # an earlier attempt's
    with pytest.raises(runs.RunError, match="has written files since this dataset was read"):
        run._check_can_write(CODE)
    again = runs.open_run(cfg, listing)
    assert again.location.name == run.location.name and again.to_read == listing.images[2:]


def test_a_run_that_failed_in_your_code_is_kept_but_not_resumed(images, output, capsys):
    cfg = settings.resolve(images, output_dir=output)
    listing = data.list_files(images)
    failed = _killed_run(cfg, "20261201-100000-aaaaaa", listing.images[:4], resume=False,
                         last_attempt="ValueError: cannot handle 0.jpg")
    run = runs.open_run(cfg, listing)
    assert run.location.name != failed.name and run.to_read == listing.images
    assert "stopped on an error in your code (ValueError: cannot handle 0.jpg): a new run" in capsys.readouterr().out
    assert _names(failed) == ["part-0.parquet", "run.json"]


def test_publish_needs_every_image_once_then_replaces_what_it_supersedes(images, output):
    cfg = settings.resolve(images, output_dir=output)
    listing = data.list_files(images)
    other = _killed_run(cfg, "20261201-090000-cccccc", listing.images[:1], limit=3)  # other settings: kept
    last = _killed_run(cfg, "20261201-080000-dddddd", listing.images[:2], limit=2)  # the last complete run
    storage.write_json(cfg.predictions_manifest, {"run_id": last.name})
    killed = _killed_run(cfg, "20261201-100000-aaaaaa", listing.images[:4], made_by=CODE)
    run = runs.open_run(cfg, listing)
    (run.location / "part-1.parquet").write_bytes(_parquet(listing.images[4:11]))
    with pytest.raises(runs.RunError, match="holds 11 of the 12 images"):
        run.publish()
    assert storage.read_json(cfg.predictions_manifest) == {"run_id": last.name}
    (run.location / "part-2.parquet").write_bytes(_parquet(listing.images[11:]))
    summary = run.publish()
    assert summary.run_id == killed.name and summary.num_rows == 12 and summary.resumed_rows == 4
    assert summary.made_by == CODE and storage.read_json(cfg.predictions_manifest)["run_id"] == killed.name
    assert sorted(folder.name for folder in cfg.predictions_dir.children()) == [other.name, killed.name]


def test_the_fingerprint_follows_the_code_not_its_place():
    namespace: dict = {}
    exec("def preprocess(row):\n    return row\n", namespace)
    first = fingerprint(namespace["preprocess"])
    exec("\n\n# moved, with a comment\ndef preprocess(row):\n    return row\n", namespace)
    assert fingerprint(namespace["preprocess"]) == first
    exec("def preprocess(row):\n    return {**row, 'x': 1}\n", namespace)
    assert fingerprint(namespace["preprocess"]) != first

    exec("class A:\n    def __call__(self, b):\n        return b\nclass B(A):\n    pass\n", namespace)
    before = fingerprint(namespace["B"])
    exec("class A:\n    def __call__(self, b):\n        return b[:1]\nclass B(A):\n    pass\n", namespace)
    assert fingerprint(namespace["B"]) != before  # a change in the base class counts


def test_steady_throughput_excludes_the_first_batch():
    import math

    from helpers.machinery.steady_rate import steady_images_per_second

    finished = pd.DataFrame({"predicted_at": [10.0] * 32 + [11.0] * 32 + [12.0] * 10, "actor": "a"})
    assert steady_images_per_second(finished) == 21.0
    assert math.isnan(steady_images_per_second(pd.DataFrame({"predicted_at": [5.0] * 8, "actor": "a"})))


def test_steady_throughput_starts_once_every_actor_is_up():
    from helpers.machinery.steady_rate import steady_images_per_second

    early = pd.DataFrame({"predicted_at": [10.0] * 8 + [11.0] * 8 + [12.0] * 8 + [13.0] * 8, "actor": "a"})
    late = pd.DataFrame({"predicted_at": [12.0] * 8 + [13.0] * 8, "actor": "b"})  # up 2 s later
    # From 12.0 (b's first batch) to 13.0: a's and b's batches at 13.0 count, 16 images in 1 s.
    assert steady_images_per_second(pd.concat([early, late])) == 16.0
