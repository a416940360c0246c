"""Bad input never breaks the series or loses work.

A messy folder is built in ``tmp_path``: real photographs from the embedded sample beside
images in every Pillow mode, EXIF-rotated, tiny and over-large images, empty, truncated and
garbage files, non-image files, nested folders and a class folder that is no ImageNet id.
The series runs on a copy of it in a bucket on a real S3 server (moto's, on 127.0.0.1) and
writes its outputs back there: bad input and S3, in and out, in one run.
"""
import io
import json
import math
import os
import posixpath
import struct
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import ray
from helpers import data, evaluation, inference, runs, sample, settings, storage
import series
from helpers.data import UnreadableImage
from helpers.storage import Location

pytestmark = pytest.mark.slow  # the messy series on S3: minutes

EMPTY = "empty file (0 bytes)"
UNKNOWN = "not a readable image (unknown or corrupt format)"
CORRUPT = "corrupt or truncated: "
TOO_LARGE = "too large: "
ORIENTATION = 0x0112


# ---------------------------------------------------------------- generated files


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG that claims ``width`` x ``height`` pixels (never allocated)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _over_limit_side() -> int:
    """A square side just over Pillow's limit, but under twice it (Pillow only warns)."""
    return math.isqrt(Image.MAX_IMAGE_PIXELS) + 1


def _bomb_side() -> int:
    """A square side over twice Pillow's limit: ``Image.open`` itself refuses it."""
    return math.isqrt(3 * Image.MAX_IMAGE_PIXELS)


def _real_jpeg() -> bytes:
    return sorted((sample.ensure_sample() / "n02123045").glob("*.JPEG"))[0].read_bytes()


def l_png() -> bytes:
    return _encode(Image.new("L", (6, 4), 100), "PNG")


def la_png() -> bytes:
    image = Image.new("LA", (6, 4), (100, 255))
    image.putpixel((0, 0), (0, 0))  # fully transparent black
    return _encode(image, "PNG")


def _palette_image() -> Image.Image:
    image = Image.new("P", (6, 4), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)  # 0: red, 1: green
    image.putpixel((0, 0), 0)
    return image


def p_png() -> bytes:
    return _encode(_palette_image(), "PNG")


def p_transparent_png() -> bytes:
    return _encode(_palette_image(), "PNG", transparency=0)  # the red pixel is transparent


def rgba_png() -> bytes:
    image = Image.new("RGBA", (6, 4), (0, 0, 255, 255))  # opaque blue
    image.putpixel((0, 0), (255, 0, 0, 0))  # transparent red
    return _encode(image, "PNG")


def cmyk_jpeg() -> bytes:
    return _encode(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95)  # red


def i16_png() -> bytes:
    gradient = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    image = Image.fromarray(gradient)
    assert image.mode == "I;16"
    return _encode(image, "PNG")


def exif_rotated_jpeg() -> bytes:
    """Stored 40 wide, 20 high, blue with a red top-left corner; Orientation 6 (rotate 90 CW)."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return _encode(image, "JPEG", exif=exif, quality=95)


def one_pixel_png() -> bytes:
    return _encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")


def truncated_jpeg() -> bytes:
    whole = _real_jpeg()
    return whole[: len(whole) // 2]


def garbage() -> bytes:
    return np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes()


def over_limit_png() -> bytes:
    return _png_header(_over_limit_side(), _over_limit_side())


def bomb_png() -> bytes:
    return _png_header(_bomb_side(), _bomb_side())


def _decode(payload: bytes, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return data.decode_image(payload, **options)


# ---------------------------------------------------------------- 1. decoding each kind


def _close(tensor, rgb, tolerance=3) -> bool:
    return bool((tensor.int() - torch.tensor(rgb)).abs().max() <= tolerance)


def test_grayscale_becomes_three_equal_channels():
    image = data.decode_image(l_png())
    assert image.shape == (3, 4, 6) and str(image.dtype) == "torch.uint8"
    assert (image == 100).all()


def test_grayscale_with_alpha_is_composited_over_white():
    image = data.decode_image(la_png())
    assert image[:, 0, 0].tolist() == [255, 255, 255]  # transparent
    assert image[:, 3, 5].tolist() == [100, 100, 100]  # opaque grey keeps its value


def test_palette_images_with_and_without_transparency():
    plain = data.decode_image(p_png())
    assert plain.shape == (3, 4, 6)
    assert plain[:, 0, 0].tolist() == [255, 0, 0] and plain[:, 1, 1].tolist() == [0, 255, 0]
    transparent = data.decode_image(p_transparent_png())
    assert transparent[:, 0, 0].tolist() == [255, 255, 255]  # the transparent index is white
    assert transparent[:, 1, 1].tolist() == [0, 255, 0]


def test_rgba_transparent_pixels_are_white_and_opaque_pixels_keep_their_colour():
    image = data.decode_image(rgba_png())
    assert image.shape == (3, 4, 6)
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert (image[:, 1:, :] == torch.tensor([0, 0, 255], dtype=torch.uint8).view(3, 1, 1)).all()


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    image = data.decode_image(cmyk_jpeg())
    assert image.shape == (3, 8, 16)
    assert _close(image[:, 4, 8], [255, 0, 0], tolerance=4)


def test_16_bit_gradient_is_scaled_down_not_clipped_to_white():
    image = data.decode_image(i16_png())
    assert image.shape == (3, 4, 16)
    row = image[0, 0].tolist()
    assert row == sorted(row) and len(set(row)) == 16  # still a gradient
    assert row[0] == 0 and row[-1] == 255
    assert row == [v // 257 for v in np.linspace(0, 65535, 16).astype(np.uint16).tolist()]
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()


def test_exif_orientation_is_applied():
    image = data.decode_image(exif_rotated_jpeg())
    assert tuple(image.shape) == (3, 40, 20)  # H=40, W=20 once rotated 90 degrees clockwise
    red, blue = [255, 0, 0], [0, 0, 255]
    assert _close(image[:, 2, 17], red, 6)  # the stored top-left corner is now top-right
    assert _close(image[:, 2, 2], blue, 6)
    assert _close(image[:, 37, 2], blue, 6) and _close(image[:, 37, 17], blue, 6)


def test_exif_orientation_is_applied_to_reduced_scale_decoding():
    image = Image.new("RGB", (800, 400), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    decoded = data.decode_image(_encode(image, "JPEG", exif=exif, quality=95), at_least=100)
    _, height, width = decoded.shape
    assert height == 2 * width and 100 <= width < 400  # reduced, never below at_least
    assert _close(decoded[:, 5, width - 5], [255, 0, 0], 8) and _close(decoded[:, 5, 5], [0, 0, 255], 8)


def test_one_pixel_image():
    image = data.decode_image(one_pixel_png())
    assert image.shape == (3, 1, 1) and image[:, 0, 0].tolist() == [10, 20, 30]
    assert data.decode_image(one_pixel_png(), at_least=256).shape == (3, 1, 1)


def test_image_over_the_pixel_limit_is_refused(monkeypatch):
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 1000)
    payload = _encode(Image.new("RGB", (50, 40)), "PNG")
    with pytest.raises(UnreadableImage) as raised:
        data.decode_image(payload)
    assert str(raised.value) == (
        "too large: 50x40 pixels is over Pillow's decompression-bomb limit of 1000 pixels"
    )


def test_header_over_pillows_limit_is_refused():
    side = _over_limit_side()
    with pytest.raises(UnreadableImage) as raised:
        _decode(over_limit_png())
    assert str(raised.value) == (
        f"too large: {side}x{side} pixels is over Pillow's decompression-bomb limit of "
        f"{Image.MAX_IMAGE_PIXELS} pixels"
    )


def test_header_over_twice_pillows_limit_is_refused_not_raised_as_a_bomb_error():
    """Pillow's own DecompressionBombError must become an UnreadableImage too."""
    with pytest.raises(UnreadableImage, match=r"^too large: ") as raised:
        _decode(bomb_png())
    assert f"{_bomb_side() ** 2} pixels" in str(raised.value)


@pytest.mark.parametrize("make, reason", [
    (lambda: b"", EMPTY),
    (garbage, UNKNOWN),
    (lambda: b"just some notes, saved as a .jpg\n", UNKNOWN),
], ids=["empty", "garbage", "text"])
def test_unreadable_files_raise_with_their_exact_reason(make, reason):
    with pytest.raises(UnreadableImage) as raised:
        data.decode_image(make())
    assert str(raised.value) == reason


@pytest.mark.parametrize("at_least", [None, 224])
def test_truncated_jpeg_is_reported_as_truncated(at_least):
    with pytest.raises(UnreadableImage) as raised:
        data.decode_image(truncated_jpeg(), at_least=at_least)
    reason = str(raised.value)
    assert reason.startswith(CORRUPT) and "truncated" in reason and "\n" not in reason


READABLE_KINDS = {
    "L": (l_png, (4, 6)), "LA": (la_png, (4, 6)), "P": (p_png, (4, 6)),
    "P-transparent": (p_transparent_png, (4, 6)), "RGBA": (rgba_png, (4, 6)),
    "CMYK": (cmyk_jpeg, (8, 16)), "I;16": (i16_png, (4, 16)),
    "EXIF-6": (exif_rotated_jpeg, (40, 20)), "1x1": (one_pixel_png, (1, 1)),
}
UNREADABLE_KINDS = {
    "empty": (lambda: b"", EMPTY), "truncated": (truncated_jpeg, CORRUPT),
    "garbage": (garbage, UNKNOWN), "over-limit": (over_limit_png, TOO_LARGE),
    "bomb": (bomb_png, TOO_LARGE),
}


@pytest.mark.parametrize("kind", READABLE_KINDS)
def test_every_readable_kind_decodes_to_rgb_at_its_size(kind):
    make, (height, width) = READABLE_KINDS[kind]
    image = data.decode_image(make())
    assert tuple(image.shape) == (3, height, width) and image.dtype == torch.uint8


@pytest.mark.parametrize("kind", UNREADABLE_KINDS)
def test_every_unreadable_kind_is_refused_with_its_reason(kind):
    make, prefix = UNREADABLE_KINDS[kind]
    with pytest.raises(UnreadableImage) as raised:
        _decode(make())
    assert str(raised.value).startswith(prefix) and (prefix != EMPTY or str(raised.value) == EMPTY)


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
            _decode((self.root / relative).read_bytes())
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
    for relative, reason in {
        "n02123045/notes.txt": "not an image file (extension '.txt')",
        "n02123045/.DS_Store": "hidden file",
        "my_holiday/Thumbs.db": "not an image file (extension '.db')",
        "cover.jpg": "not inside a class folder",
    }.items():
        put(relative, china[2].read_bytes() if relative.endswith(".jpg") else b"\x00\x01 junk")
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
    assert metrics["num_scored"] == readable - 2 and metrics["num_classes"] == 2
    assert metrics["unscored_labels"] == ["my_holiday"]
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
    assert per_class.loc["my_holiday", "images"] == 2


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
    from helpers import cluster

    ray.init(**cluster.init_options())
    info = cluster.describe()
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
    plan = inference.plan_actors(ray_here, None, reads_from_a_bucket=True)
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
            return inference.describe_predictions(np.ones((ok.sum(), 5), np.float32), np.zeros((ok.sum(), 5), int),
                                                  ok, path=batch["path"], label=batch["label"], error=batch["error"])

    def killed_midway(row: dict) -> dict:  # local, so that Ray's workers get it by value
        if row["path"] >= midway:
            raise RuntimeError(f"killed midway, at {row['path']}")
        return decode(row)

    def write(run, preprocess) -> None:
        with run.writing(Stub, preprocess, plan=plan):
            ray.data.read_binary_files(run.to_read, filesystem=listing.filesystem, include_paths=True,
                                       num_cpus=plan.read_cpus).map(preprocess).map_batches(
                Stub, batch_size=2, compute=ray.data.ActorPoolStrategy(size=plan.num_actors), num_cpus=plan.num_cpus
            ).write_parquet(run.path, filesystem=run.filesystem, ray_remote_args={"num_cpus": plan.task_cpus})

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
    summary = fresh.publish()
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
