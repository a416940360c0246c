"""Locations: the same file operations on a local folder as on a bucket (see test_s3.py)."""
import pandas as pd

from helpers import storage
from helpers.storage import Location


def test_paths_join_and_print_like_pathlib(tmp_path):
    root = Location.parse(tmp_path)
    report = root / "figures" / "04_confusion.png"
    assert str(report) == str(tmp_path / "figures" / "04_confusion.png") and report.name == "04_confusion.png"
    assert report.relative_to(root) == "figures/04_confusion.png"
    assert repr(root) == f"Location({str(tmp_path)!r})"


def test_writes_replace_the_file_and_leave_no_staging_files(tmp_path):
    manifest = Location.parse(tmp_path) / "runs" / "predictions.json"
    storage.write_json(manifest, {"run_id": "first"})
    storage.write_json(manifest, {"run_id": "second"})
    assert storage.read_json(manifest) == {"run_id": "second"}
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["predictions.json"]


def test_children_are_sorted_and_delete_removes_trees(tmp_path):
    root = Location.parse(tmp_path)
    for name in ("b/part-1.parquet", "a/part-0.parquet", "c.csv"):
        (root / name).write_bytes(b"x")
    assert [child.name for child in root.children()] == ["a", "b", "c.csv"]
    (root / "a").delete()
    (root / "c.csv").delete()
    (root / "never-written").delete()
    assert [child.name for child in root.children()] == ["b"]
    assert (root / "nothing-here").children() == []


def test_tables_round_trip(tmp_path):
    root = Location.parse(tmp_path)
    frame = pd.DataFrame({"path": ["a", "b"], "reason": ["", "corrupt"]})
    storage.write_csv(root / "skipped.csv", frame, index=False)
    pd.testing.assert_frame_equal(storage.read_csv(root / "skipped.csv", keep_default_na=False), frame)
    frame.to_parquet(tmp_path / "part-0.parquet")
    frame.to_parquet(tmp_path / "part-1.parquet")
    both = storage.read_parquet([root / "part-0.parquet", root / "part-1.parquet"], columns=["path"])
    assert list(both["path"]) == ["a", "b", "a", "b"]
