from pathlib import Path

import pytest

from helpers import data


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_list_files_keeps_images_in_class_folders_and_reports_the_rest(tmp_path):
    _touch(tmp_path, "n01/a.JPEG", "n01/b.jpg", "n02/c.png", "n02/notes.txt", "n02/.DS_Store",
           "loose.jpg", "n03/deeper/d.jpeg", "n03/Thumbs.db", ".hidden/e.jpg")
    listing = data.list_files(str(tmp_path))
    relative = lambda path: Path(path).relative_to(tmp_path).as_posix()  # noqa: E731
    assert [relative(p) for p in listing.images] == ["n01/a.JPEG", "n01/b.jpg", "n02/c.png", "n03/deeper/d.jpeg"]
    assert {relative(p): reason for p, reason in listing.skipped} == {
        ".hidden/e.jpg": "hidden file",
        "loose.jpg": "not inside a class folder",
        "n02/.DS_Store": "hidden file",
        "n02/notes.txt": "not an image file (extension '.txt')",
        "n03/Thumbs.db": "not an image file (extension '.db')",
    }


def test_a_folder_without_images_is_refused_with_its_name(tmp_path):
    _touch(tmp_path, "n01/notes.txt")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        data.list_files(str(tmp_path))


def test_select_images_takes_every_class_in_turn(tmp_path):
    root = str(tmp_path)
    paths = [f"{root}/{label}/{i}.jpg" for label in ("a", "b", "c") for i in range(5)]
    chosen = data.select_images(paths, root, limit=4)
    assert sorted(data.class_folder(p, root) for p in chosen) == ["a", "a", "b", "c"]
    assert data.select_images(paths, root, limit=None) == paths
    assert data.select_images(paths, root, limit=100) == paths


def test_sample_data_uri_builds_and_reads_the_sample(sample_dir):
    assert data.resolve_data_uri("sample") == str(sample_dir)
    assert data.resolve_data_uri("/some/folder") == "/some/folder"
