from collections import Counter

import numpy as np
from PIL import Image

from helpers import labels, sample


def test_every_source_photo_ships_and_holds_its_box():
    for photo in sample.SOURCE_PHOTOS:
        assert photo.path.exists(), photo.path
        assert labels.is_imagenet_wnid(photo.wnid)
        left, top, right, bottom = photo.box
        with Image.open(photo.path) as image:
            assert 0 <= left < right <= image.width and 0 <= top < bottom <= image.height


def test_default_sample_is_large_varied_and_in_imagenette_layout(sample_dir):
    files = sorted(sample_dir.rglob("*.JPEG"))
    assert len(files) >= 500
    per_class = Counter(path.parent.name for path in files)
    assert set(per_class) == {photo.wnid for photo in sample.SOURCE_PHOTOS}
    assert all(path.parent.parent == sample_dir for path in files)
    sizes = set()
    for path in files[::7]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.add(image.size)
    assert len(sizes) > 0.9 * len(files[::7])  # nearly every image has its own size


def test_building_is_deterministic(tmp_path):
    first = sample.ensure_sample(tmp_path / "a", images_per_photo=3)
    second = sample.ensure_sample(tmp_path / "b", images_per_photo=3)
    assert sample.fingerprint(first) == sample.fingerprint(second)
    assert len(list(first.rglob("*.JPEG"))) == 3 * len(sample.SOURCE_PHOTOS)


def test_a_set_from_another_recipe_is_rebuilt(tmp_path):
    target = sample.ensure_sample(tmp_path / "s", images_per_photo=2)
    (target / "n02123045" / "stray.JPEG").write_bytes(b"left over")
    sample.ensure_sample(target, images_per_photo=3)
    assert not (target / "n02123045" / "stray.JPEG").exists()
    assert len(list(target.rglob("*.JPEG"))) == 3 * len(sample.SOURCE_PHOTOS)


def test_crops_keep_the_labelled_object():
    rng = np.random.default_rng(0)
    box = (100, 50, 200, 300)
    for _ in range(200):
        left, top, right, bottom = sample._random_crop(rng, (640, 480), box)
        assert 0 <= left <= 100 and 0 <= top <= 50 and 200 <= right <= 640 and 300 <= bottom <= 480
