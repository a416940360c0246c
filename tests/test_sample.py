from collections import Counter

import numpy as np
import pytest
from PIL import Image

from support.folders import fingerprint
from helpers import data, labels, sample


def _crops(directory):
    """The sample's crops: the files that ``acceptable_labels`` knows."""
    return sorted(path for path in directory.rglob("*") if sample.acceptable_labels(str(path)))


def test_every_source_photo_ships_and_holds_its_box():
    for photo in sample.SOURCE_PHOTOS:
        assert photo.path.exists(), photo.path
        left, top, right, bottom = photo.box
        with Image.open(photo.path) as image:
            assert 0 <= left < right <= image.width and 0 <= top < bottom <= image.height
        assert 0 < photo.margin <= 0.5


def test_every_photo_has_a_set_of_imagenet_classes_holding_its_folder_label():
    assert len({photo.wnid for photo in sample.SOURCE_PHOTOS}) == len(sample.SOURCE_PHOTOS)  # a folder each
    for photo in sample.SOURCE_PHOTOS:
        assert photo.acceptable[0] == photo.wnid and len(set(photo.acceptable)) == len(photo.acceptable)
        assert all(labels.is_imagenet_wnid(wnid) for wnid in photo.acceptable), photo.stem
        assert photo.reason and photo.pitfall


def test_acceptable_labels_and_pitfall_know_the_crops_and_nothing_else():
    for photo in sample.SOURCE_PHOTOS:
        for path in (f"/data/sample/{photo.wnid}/{photo.stem}_017.JPEG", f"s3://b/s/{photo.wnid}/{photo.stem}_000.JPEG"):
            assert sample.acceptable_labels(path) == frozenset(photo.acceptable)
            assert sample.pitfall(path) == photo.pitfall
    tabby = sample.SOURCE_PHOTOS[0].wnid
    for path in (*sample.BROKEN_FILES, f"{tabby}/coffee_000.JPEG", f"{tabby}/0_chelsea_000.JPEG",
                 f"{tabby}/chelsea_000.jpg", f"{tabby}/chelsea.JPEG", "my_cats/chelsea_000.JPEG", "chelsea_000.JPEG"):
        assert sample.acceptable_labels(path) is None and sample.pitfall(path) is None, path


def test_default_sample_is_large_varied_and_in_imagenette_layout(sample_dir):
    crops = _crops(sample_dir)
    assert len(crops) == sample.IMAGES_PER_PHOTO * len(sample.SOURCE_PHOTOS) >= 500
    everything = {path.relative_to(sample_dir).as_posix() for path in sample_dir.rglob("*") if path.is_file()}
    assert everything == {path.relative_to(sample_dir).as_posix() for path in crops} | set(sample.BROKEN_FILES)
    per_class = Counter(path.parent.name for path in crops)
    assert set(per_class) == {photo.wnid for photo in sample.SOURCE_PHOTOS}
    assert all(path.parent.parent == sample_dir for path in crops)
    assert all(path.parent.name in sample.acceptable_labels(str(path)) for path in crops)
    sizes = set()
    for path in crops[::7]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.add(image.size)
    assert len(sizes) > 0.9 * len(crops[::7])  # nearly every image has its own size


@pytest.mark.parametrize("relative, reason", [
    (sample.TRUNCATED, "corrupt or truncated: image file is truncated"),
    (sample.NOT_AN_IMAGE, "not a readable image (unknown or corrupt format)"),
    (sample.EMPTY, "empty file (0 bytes)"),
])
def test_broken_files_are_listed_as_images_and_fail_to_decode(sample_dir, relative, reason):
    listing = data.list_files(str(sample_dir))
    path = str(sample_dir / relative)
    assert path in listing.images and not listing.skipped
    with pytest.raises(data.UnreadableImage) as error:
        data.decode_image((sample_dir / relative).read_bytes())
    assert str(error.value).startswith(reason)
    folder = [image for image in listing.images if image.startswith(str(sample_dir / relative.split("/")[0]) + "/")]
    assert folder[-1] == path  # after every crop of its folder
    clean = data.select_images(listing.images, listing.root, len(_crops(sample_dir)))
    assert path not in clean  # so a run with a limit up to the number of crops sees none


def test_the_truncated_file_is_the_first_half_of_a_real_crop(sample_dir):
    truncated = (sample_dir / sample.TRUNCATED).read_bytes()
    whole = (sample_dir / sample.TRUNCATED).with_name("coffee_000.JPEG").read_bytes()
    assert len(truncated) == len(whole) // 2 > 0 and whole.startswith(truncated)


def test_building_is_deterministic(tmp_path):
    first = sample.ensure_sample(tmp_path / "a", images_per_photo=3)
    second = sample.ensure_sample(tmp_path / "b", images_per_photo=3)
    assert fingerprint(first) == fingerprint(second)
    assert len(_crops(first)) == 3 * len(sample.SOURCE_PHOTOS)
    assert all((first / relative).is_file() for relative in sample.BROKEN_FILES)


def test_a_set_from_another_recipe_is_rebuilt(tmp_path, monkeypatch):
    target = sample.ensure_sample(tmp_path / "s", images_per_photo=2)
    (target / "n02123045" / "stray.JPEG").write_bytes(b"left over")
    sample.ensure_sample(target, images_per_photo=3)
    assert not (target / "n02123045" / "stray.JPEG").exists()
    assert len(_crops(target)) == 3 * len(sample.SOURCE_PHOTOS)
    monkeypatch.setattr(sample, "NOTE", b"Another note.\n")  # the broken files are part of the recipe
    sample.ensure_sample(target, images_per_photo=3)
    assert (target / sample.NOT_AN_IMAGE).read_bytes() == b"Another note.\n"


@pytest.mark.parametrize("margin, reach", [(0.5, 125), (0.15, 37)])
def test_crops_keep_the_labelled_object(margin, reach):
    rng = np.random.default_rng(0)
    box = (100, 50, 200, 300)
    crops = np.array([sample._random_crop(rng, (640, 480), box, margin) for _ in range(200)])
    assert (crops[:, 0] >= 100 - reach).all() and (crops[:, 0] <= 100).all()
    assert (crops[:, 1] >= 0).all() and (crops[:, 1] <= 50).all()
    assert (crops[:, 2] >= 200).all() and (crops[:, 2] <= 200 + reach).all()
    assert (crops[:, 3] >= 300).all() and (crops[:, 3] <= 300 + reach).all()
    assert crops[:, 0].min() < 100 - reach // 2 and crops[:, 2].max() > 200 + reach // 2  # margins vary
