from pathlib import Path

import pyarrow.fs

from helpers import data


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_list_images_keeps_image_files_in_class_folders(tmp_path):
    _touch(tmp_path, "n01/a.JPEG", "n01/b.jpg", "n02/c.png", "n02/notes.txt", "n02/.DS_Store",
           "loose.jpg", "n03/deeper/d.jpeg")
    found = data.list_images(pyarrow.fs.LocalFileSystem(), str(tmp_path))
    names = [Path(p).relative_to(tmp_path).as_posix() for p in found]
    assert names == ["n01/a.JPEG", "n01/b.jpg", "n02/c.png", "n03/deeper/d.jpeg"]


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
