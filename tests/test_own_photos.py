"""A learner's own photos: a flat folder, with nested folders that are no ImageNet classes and a
``.DS_Store``. The whole series runs on it: every image classified once, nothing scored against
a made-up label, notebook 04 shows what the model found and says there is nothing to score."""
import json
import os
import shutil
from unittest import mock

import nbformat
import pandas as pd
import pytest

from helpers import sample
from helpers.machinery import series

pytestmark = pytest.mark.slow  # the series on a folder of its own: a minute or two


@pytest.fixture(scope="module")
def own_photos(tmp_path_factory, sample_dir):
    """Real photographs (crops of the sample's), as a camera leaves them: some in the folder
    itself, some in nested dated folders, and the files a Mac or a note-taker adds."""
    root = tmp_path_factory.mktemp("holiday-photos")
    photos = [path for path in sorted(sample_dir.glob("*/*.JPEG")) if sample.acceptable_labels(str(path))][::40]
    for number, photo in enumerate(photos):
        folder = root if number % 3 == 0 else root / "holiday" / "2024" / ("beach" if number % 3 == 1 else "city")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, folder / f"IMG_{number:04d}.JPEG")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "holiday" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "holiday" / "2024" / "notes.txt").write_text("Beach on Tuesday, city on Thursday.\n")
    return root, sorted(str(path) for path in root.rglob("IMG_*.JPEG"))


@pytest.fixture(scope="module")
def outputs(own_photos, series_ray, tmp_path_factory):
    root, _ = own_photos
    output_dir = tmp_path_factory.mktemp("own-photos-series")
    with mock.patch.dict(os.environ, series_ray):
        series.execute_series(output_dir, {"data_uri": str(root), "batch_size": 8}, progress=False)
    return output_dir


def test_every_photo_is_classified_once_and_nothing_is_scored(own_photos, outputs):
    _, photos = own_photos
    manifest = json.loads((outputs / "predictions.json").read_text())
    predictions = pd.read_parquet([outputs / name for name in manifest["files"]])
    assert sorted(predictions["path"]) == photos and (predictions["error"] == "").all()
    assert set(predictions["label"]) == {"", "holiday"}  # the folder itself, and its first folder
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert metrics["num_images"] == len(photos) and metrics["num_scored"] == 0
    assert metrics["top1"] is None and metrics["unscored_labels"] == ["", "holiday"]
    assert metrics["num_skipped"] == 3  # two .DS_Store and the note


def test_the_notebooks_run_cleanly_and_notebook_04_shows_what_the_model_found(outputs):
    for path in series.NOTEBOOKS:
        notebook = nbformat.read(outputs / "notebooks" / path.name, as_version=4)
        errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
        assert not errors, (path.name, errors[0].get("evalue"))
    text = (outputs / "notebooks" / series.NOTEBOOKS[3].name).read_text()
    assert "there is nothing to score" in text
    assert (outputs / "figures" / "04_found_classes.png").stat().st_size > 10_000
