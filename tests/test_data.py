from pathlib import Path

import pytest

from helpers import data, sample


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_list_files_keeps_every_image_and_reports_the_rest(tmp_path):
    _touch(tmp_path, "n01/a.JPEG", "n01/b.jpg", "n02/c.png", "n02/notes.txt", "n02/.DS_Store",
           "loose.jpg", "n03/deeper/d.jpeg", "n03/Thumbs.db", ".hidden/e.jpg")
    listing = data.list_files(str(tmp_path))
    relative = lambda path: Path(path).relative_to(tmp_path).as_posix()  # noqa: E731
    assert [relative(p) for p in listing.images] == ["loose.jpg", "n01/a.JPEG", "n01/b.jpg", "n02/c.png",
                                                     "n03/deeper/d.jpeg"]
    assert {relative(p): reason for p, reason in listing.skipped} == {
        ".hidden/e.jpg": "hidden file",
        "n02/.DS_Store": "hidden file",
        "n02/notes.txt": "not an image file (extension '.txt')",
        "n03/Thumbs.db": "not an image file (extension '.db')",
    }


def test_a_flat_folder_of_photos_lists_every_one_with_no_label(tmp_path):
    _touch(tmp_path, "beach.jpg", "holiday/2024/beach/sea.JPEG", "holiday/2024/.DS_Store", ".DS_Store")
    listing = data.list_files(str(tmp_path))
    assert [data.class_folder(path, listing.root) for path in listing.images] == ["", "holiday"]
    assert len(listing.skipped) == 2 and {reason for _, reason in listing.skipped} == {"hidden file"}
    assert data.select_images(listing.images, listing.root, 1) == [listing.images[0]]


def test_a_folder_without_images_is_refused_with_its_name(tmp_path):
    _touch(tmp_path, "n01/notes.txt")
    with pytest.raises(FileNotFoundError, match=f"data_uri='{tmp_path}' holds no images"):
        data.list_files(str(tmp_path))


def test_select_images_takes_every_class_in_turn(tmp_path):
    root = str(tmp_path)
    paths = [f"{root}/{label}/{i}.jpg" for label in ("a", "b", "c") for i in range(5)]
    chosen = data.select_images(paths, root, limit=4)
    assert sorted(data.class_folder(p, root) for p in chosen) == ["a", "a", "b", "c"]
    assert data.select_images(paths, root, limit=None) == paths
    assert data.select_images(paths, root, limit=100) == paths


def test_sample_data_uri_builds_the_sample_and_other_uris_pass_through(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(sample, "ensure_sample", lambda: calls.append("built") or tmp_path / "sample")
    assert data.resolve_data_uri("sample") == str(tmp_path / "sample") and calls == ["built"]
    assert data.resolve_data_uri("/some/folder") == "/some/folder" and calls == ["built"]
    assert data.resolve_data_uri("s3://bucket/images") == "s3://bucket/images"
