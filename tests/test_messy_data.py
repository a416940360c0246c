"""Bad input never breaks the series or loses work.

A messy folder is built in ``tmp_path``: real photographs from the embedded sample beside
images in every Pillow mode, EXIF-rotated, tiny and over-large images, empty, truncated and
garbage files, non-image files, nested folders and a class folder that is no ImageNet id.
The series runs on a copy of it in a bucket on a real S3 server (moto's, on 127.0.0.1) and
writes its outputs back there: bad input and S3, in and out, in one run.
"""
import json
import os
import posixpath
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import nbformat
import numpy as np
import pandas as pd
import pytest

import ray
from bad_files import (CORRUPT, EMPTY, TOO_LARGE, UNKNOWN, bomb_png, cmyk_jpeg, decode_quietly, exif_rotated_jpeg,
                       garbage, i16_png, l_png, la_png, one_pixel_png, over_limit_png, p_png, p_transparent_png,
                       rgba_png, truncated_jpeg)
from helpers import data, evaluation, labels, sample, settings, storage
from helpers.data import UnreadableImage
from helpers.machinery import runs, series
from helpers.storage import Location

pytestmark = pytest.mark.slow  # the messy series on S3: minutes


# ---------------------------------------------------------------- the messy folder


@dataclass
class Messy:
    root: Path
    readable: dict[str, str] = field(default_factory=dict)  # relative path -> label
    unreadable: dict[str, str] = field(default_factory=dict)  # relative path -> reason prefix
    never_images: dict[str, str] = field(default_factory=dict)  # relative path -> exact reason
    photographs: list[str] = field(default_factory=list)  # the readable real photographs

    def expected_reason(self, relative: str) -> str:
        """The exact reason for a skipped file; unreadable ones are decoded here to get it."""
        if relative in self.never_images:
            return self.never_images[relative]
        try:
            decode_quietly((self.root / relative).read_bytes())
        except UnreadableImage as unreadable:
            assert str(unreadable).startswith(self.unreadable[relative])
            return str(unreadable)
        raise AssertionError(f"{relative} decoded")

    @property
    def skipped(self) -> set[str]:
        return set(self.unreadable) | set(self.never_images)


def build_messy_folder(root: Path) -> Messy:
    source = sample.ensure_sample()
    messy = Messy(root)

    def put(relative: str, payload: bytes) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(payload)

    photos = {
        "n02123045": sorted((source / "n02123045").glob("*.JPEG"))[:4],
        "n07920052": sorted((source / "n07920052").glob("*.JPEG"))[:4],
    }
    for wnid, paths in photos.items():
        for path in paths:
            put(f"{wnid}/{path.name}", path.read_bytes())
            messy.readable[f"{wnid}/{path.name}"] = wnid
            messy.photographs.append(f"{wnid}/{path.name}")
    china = sorted((source / "n03877845").glob("*.JPEG"))
    put("my_holiday/palace.JPEG", china[0].read_bytes())
    put("my_holiday/day2/palace_again.jpeg", china[1].read_bytes())  # nested folder
    messy.readable.update({"my_holiday/palace.JPEG": "my_holiday",
                           "my_holiday/day2/palace_again.jpeg": "my_holiday"})
    messy.photographs += ["my_holiday/palace.JPEG", "my_holiday/day2/palace_again.jpeg"]
    for relative, make in {
        "n02123045/gray_L.PNG": l_png, "n02123045/gray_alpha_LA.png": la_png,
        "n02123045/palette_P.png": p_png, "n02123045/palette_transparent.png": p_transparent_png,
        "n07920052/rgba.png": rgba_png, "n07920052/cmyk.jpg": cmyk_jpeg,
        "n07920052/depth_16bit.png": i16_png, "n07920052/rotated_exif.jpeg": exif_rotated_jpeg,
        "n07920052/tiny_1x1.png": one_pixel_png,
    }.items():
        put(relative, make())
        messy.readable[relative] = relative.split("/")[0]
    for relative, (make, prefix) in {
        "n02123045/empty.jpg": (lambda: b"", EMPTY),
        "n02123045/truncated.JPEG": (truncated_jpeg, CORRUPT),
        "n07920052/garbage.jpg": (garbage, UNKNOWN),
        "n07920052/huge_header.png": (bomb_png, TOO_LARGE),
        "my_holiday/too_large.png": (over_limit_png, TOO_LARGE),
    }.items():
        put(relative, make())
        messy.unreadable[relative] = prefix
    put("cover.jpg", china[2].read_bytes())  # in no folder: classified, with no label to score
    messy.readable["cover.jpg"] = ""
    messy.photographs.append("cover.jpg")
    for relative, reason in {
        "n02123045/notes.txt": "not an image file (extension '.txt')",
        "n02123045/.DS_Store": "hidden file",
        "my_holiday/Thumbs.db": "not an image file (extension '.db')",
    }.items():
        put(relative, b"\x00\x01 junk")
        messy.never_images[relative] = reason
    return messy


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Messy:
    return build_messy_folder(tmp_path_factory.mktemp("messy"))


# ---------------------------------------------------------------- the messy folder on a bucket, and the series on it

MESSY_BUCKET = "messy-photos"


@dataclass(frozen=True)
class SeriesOnS3:
    data_uri: str  # the messy folder, uploaded as it is
    outputs: Location  # predictions, metrics and figures, in the bucket
    local: Path  # the executed notebooks and logs


@pytest.fixture(scope="module")
def messy_bucket(messy, s3_endpoint) -> str:
    """The messy folder uploaded file by file, hidden and empty files included."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=MESSY_BUCKET)
    for path in sorted(p for p in messy.root.rglob("*") if p.is_file()):
        client.upload_file(str(path), MESSY_BUCKET, f"in/{path.relative_to(messy.root).as_posix()}")
    return f"s3://{MESSY_BUCKET}/in"


@pytest.fixture(scope="module")
def series_output(messy_bucket, series_ray, tmp_path_factory) -> SeriesOnS3:
    """The four notebooks on the messy bucket, writing their outputs back into it."""
    local = tmp_path_factory.mktemp("messy-series")
    outputs = f"s3://{MESSY_BUCKET}/outputs"
    with mock.patch.dict(os.environ, series_ray):
        series.execute_series(local, {"data_uri": messy_bucket, "output_dir": outputs, "batch_size": 8},
                              progress=False)
    return SeriesOnS3(messy_bucket, Location.parse(outputs), local)


def _relative(path: str, root: str) -> str:
    """``path`` below ``root``: local paths and a bucket's ("bucket/key") alike."""
    return posixpath.relpath(path, root)


# ---------------------------------------------------------------- 2. listing, from the folder and the bucket


def test_list_files_on_the_messy_folder(messy):
    listing = data.list_files(str(messy.root))
    images = [_relative(p, listing.root) for p in listing.images]
    assert images == sorted(images)
    assert set(images) == set(messy.readable) | set(messy.unreadable)  # read, then decoded
    assert {_relative(p, listing.root): reason for p, reason in listing.skipped} == messy.never_images
    assert data.class_folder(str(messy.root / "my_holiday/day2/palace_again.jpeg"), str(messy.root)) == "my_holiday"


def test_the_bucket_lists_as_the_folder_does(messy, messy_bucket):
    folder, bucket = data.list_files(str(messy.root)), data.list_files(messy_bucket)
    assert [_relative(p, bucket.root) for p in bucket.images] == [_relative(p, folder.root) for p in folder.images]
    assert ({_relative(p, bucket.root): reason for p, reason in bucket.skipped}
            == {_relative(p, folder.root): reason for p, reason in folder.skipped})


# ---------------------------------------------------------------- 3. the series end to end, on the bucket


def test_series_classifies_every_readable_image_and_reports_the_rest(messy, series_output):
    out = series_output.outputs
    manifest, metrics = storage.read_json(out / "predictions.json"), storage.read_json(out / "metrics.json")
    readable = len(messy.readable)
    assert metrics["num_images"] == manifest["num_images"] == readable
    assert metrics["num_scored"] == readable - 3 and metrics["num_classes"] == 2
    assert metrics["unscored_labels"] == ["", "my_holiday"]  # "": cover.jpg, in no folder
    assert metrics["num_skipped"] == manifest["num_skipped"] == len(messy.skipped)
    assert manifest["num_rows"] == readable + len(messy.unreadable)

    root = data.list_files(series_output.data_uri).root
    skipped = storage.read_csv(out / manifest["skipped_file"], keep_default_na=False)
    assert list(skipped.columns) == ["path", "reason"]
    found = {_relative(p, root): reason for p, reason in zip(skipped["path"], skipped["reason"])}
    assert found == {relative: messy.expected_reason(relative) for relative in messy.skipped}

    frame = storage.read_parquet([out / f for f in manifest["files"]])
    frame["relative"] = [_relative(p, root) for p in frame["path"]]
    assert len(frame) == frame["relative"].nunique() == manifest["num_rows"]
    good, bad = frame[frame["error"] == ""], frame[frame["error"] != ""]
    assert dict(zip(good["relative"], good["label"])) == messy.readable
    assert good["top1_wnid"].str.match(r"^n\d{8}$").all() and good["top1_name"].notna().all()
    assert good["top1_score"].between(0, 1).all()
    assert all(len(top5) == 5 for top5 in good["top5_wnid"])
    assert dict(zip(bad["relative"], bad["error"])) == {
        relative: messy.expected_reason(relative) for relative in messy.unreadable
    }
    prediction_columns = [c for c in frame.columns if c.startswith(("top1_", "top5_"))]
    assert bad[prediction_columns].isna().all().all()

    per_class = storage.read_csv(out / "per_class.csv", index_col="label")
    assert set(per_class.index) == {"n02123045", "n07920052"}  # what could be scored


def test_photographs_from_the_bucket_get_the_predictions_of_the_local_files(messy, series_output, local_top1):
    """The real photographs (no near ties), classified here from the local copies."""
    out = series_output.outputs
    manifest = storage.read_json(out / "predictions.json")
    frame = storage.read_parquet([out / f for f in manifest["files"]])
    root = data.list_files(series_output.data_uri).root
    from_bucket = dict(zip((_relative(p, root) for p in frame["path"]), frame["top1_wnid"]))
    local = [messy.root / relative for relative in messy.photographs]
    assert [from_bucket[relative] for relative in messy.photographs] == local_top1(local, manifest["model_name"])


def test_only_the_notebooks_and_logs_stay_local(series_output):
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket=MESSY_BUCKET, Prefix="outputs/")["Contents"]
    keys = {item["Key"] for item in listed}
    assert {"outputs/predictions.json", "outputs/metrics.json", "outputs/per_class.csv",
            "outputs/figures/04_confusion_matrix.png"} <= keys
    assert any(key.startswith("outputs/predictions/") and key.endswith(".parquet") for key in keys)
    assert not any("/.sweep-" in key or "/.write-check-" in key for key in keys)
    assert sorted(p.name for p in series_output.local.iterdir()) == ["logs", "notebooks"]


def test_executed_notebooks_hold_no_errors(series_output):
    for path in series.NOTEBOOKS:
        notebook = nbformat.read(series_output.local / "notebooks" / path.name, as_version=4)
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                assert output.output_type != "error", (path.name, output.get("evalue"))
                if output.output_type == "stream":
                    assert "Traceback" not in output.text, (path.name, output.text[:500])


# ---------------------------------------------------------------- 4. never lose work


@pytest.fixture(scope="module")
def ray_here(series_output):
    """Ray in this process, only once the notebooks (each joining the series' Ray) are done."""
    from helpers.machinery import cluster_shape, ray_start

    ray.init(**ray_start.init_options())
    info = cluster_shape.describe()
    yield info
    ray.shutdown()


def _load(cfg) -> tuple[pd.DataFrame, dict]:
    manifest = evaluation.check_run(cfg)
    return storage.read_parquet([cfg.output_dir / name for name in manifest["files"]]), manifest


@pytest.mark.timeout(600)  # a run that waits for CPUs a failed run still holds hangs
def test_a_failed_rerun_keeps_the_previous_predictions_and_its_own_files(messy, series_output, ray_here):
    cfg = settings.resolve(data_uri=series_output.data_uri, output_dir=str(series_output.outputs), batch_size=8)
    manifest_before = cfg.predictions_manifest.read_bytes()
    frame_before, manifest = _load(cfg)
    listing = data.list_files(cfg.data_uri)
    midway = listing.images[len(listing.images) // 2]

    def decode(row: dict) -> dict:
        try:
            data.decode_image(row["bytes"])
            error = ""
        except data.UnreadableImage as unreadable:
            error = str(unreadable)
        return {"path": row["path"], "label": data.class_folder(row["path"], listing.root), "error": error}

    class Stub:  # local, as the functions below, so that Ray's workers get it by value
        """A classifier for the runs' machinery, not for the predictions: always *tench*."""

        def __call__(self, batch: dict) -> dict:
            ok = batch["error"] == ""
            return labels.top_k_table(np.ones((ok.sum(), 5), np.float32), np.zeros((ok.sum(), 5), int),
                                      ok, path=batch["path"], label=batch["label"], error=batch["error"])

    def killed_midway(row: dict) -> dict:  # local, so that Ray's workers get it by value
        if row["path"] >= midway:
            raise RuntimeError(f"killed midway, at {row['path']}")
        return decode(row)

    actors = int(ray_here.cpus)  # notebook 03's rule: one per CPU, half a CPU for everything

    def write(run, preprocess) -> None:
        with run.writing(Stub, preprocess, actors=actors, num_cpus=0.5):
            ray.data.read_binary_files(run.to_read, filesystem=listing.filesystem, include_paths=True,
                                       num_cpus=0.5).map(preprocess, num_cpus=0.5).map_batches(
                Stub, batch_size=2, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=0.5
            ).write_parquet(run.path, filesystem=run.filesystem, ray_remote_args={"num_cpus": 0.5})

    failed = runs.open_run(cfg, listing)
    with pytest.raises(Exception) as raised:  # whatever Ray wraps it in
        write(failed, killed_midway)
    assert "killed midway" in "".join(traceback.format_exception(raised.value))
    del raised

    assert cfg.predictions_manifest.read_bytes() == manifest_before
    frame_after, manifest_after = _load(cfg)
    assert manifest_after["run_id"] == manifest["run_id"]
    pd.testing.assert_frame_equal(frame_after, frame_before)
    assert failed.location.exists()  # its complete files are kept, until a run completes

    # The next complete run (a new one: the last failed in its code) replaces both.
    fresh = runs.open_run(cfg, listing)
    assert fresh.location.name != failed.location.name and fresh.to_read == listing.images
    write(fresh, decode)
    summary = fresh.summary
    assert summary.num_images == len(messy.readable) and summary.num_skipped == len(messy.skipped)
    assert [p.name for p in cfg.predictions_dir.children()] == [summary.run_id]
    frame_new, _ = _load(cfg)
    assert sorted(frame_new["path"]) == sorted(frame_before["path"])


def test_a_run_whose_skipped_list_is_missing_or_miscounted_is_refused(series_output, tmp_path):
    """(Missing Parquet files and wrong ``num_rows`` are covered in test_evaluation.py.)"""
    copy = tmp_path / "outputs"
    out = series_output.outputs
    manifest = storage.read_json(out / "predictions.json")
    for name in ["predictions.json", manifest["skipped_file"], *manifest["files"]]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((out / name).read_bytes())
    cfg = settings.resolve(output_dir=str(copy))
    cfg.predictions_manifest.write_bytes(json.dumps({**manifest, "num_skipped": manifest["num_skipped"] + 1}).encode())
    frame, _ = _load(cfg)
    skipped = storage.read_csv(cfg.output_dir / manifest["skipped_file"], keep_default_na=False)
    with pytest.raises(evaluation.PredictionsError, match="but the run recorded"):
        evaluation.check_counts(frame, skipped, storage.read_json(cfg.predictions_manifest))
    cfg.predictions_manifest.write_bytes(json.dumps(manifest).encode())
    (copy / manifest["skipped_file"]).unlink()
    with pytest.raises(evaluation.PredictionsError, match=r"1 file\(s\) missing"):
        evaluation.check_run(cfg)
