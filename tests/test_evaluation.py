from pathlib import Path

import pandas as pd
import pytest

from helpers import evaluation, settings, storage


def _frame():
    return pd.DataFrame({
        "path": ["a", "b", "c", "d", "e"],
        "label": ["n02123045", "n02123045", "n07920052", "n07920052", "my_own_label"],
        "top1_wnid": ["n02123045", "n02124075", "n07920052", "n03063599", "n07920052"],
        "top1_name": ["tabby", "Egyptian cat", "espresso", "coffee mug", "espresso"],
        "top1_score": [0.9, 0.6, 0.8, 0.7, 0.5],
        "top5_wnid": [["n02123045"], ["n02124075", "n02123045"], ["n07920052"], ["n03063599", "n07930864"],
                      ["n07920052"]],
        "error": ["", "", "", "", ""],
    })


MANIFEST = {"images_per_second": 10.0, "seconds": 0.5, "model_name": "m", "data_uri": "d", "batch_size": 2,
            "num_actors": 1, "run_id": "r", "num_skipped": 2, "levers": {"plain": 5}}


def _scored(frame, acceptable=None):
    """The rows notebook 04 scores: those in an ImageNet class folder, with correctness columns."""
    from helpers import labels

    return evaluation.add_correctness(frame[frame["label"].map(labels.is_imagenet_wnid)], acceptable)


def test_accuracy_scores_imagenet_labels_and_reports_the_others():
    metrics = evaluation.summarize(_frame(), _scored(_frame()), MANIFEST)
    assert metrics["num_images"] == 5 and metrics["num_scored"] == 4 and metrics["num_skipped"] == 2
    assert metrics["top1"] == metrics["top1_folder_label"] == 0.5 and metrics["top5"] == 0.75
    assert metrics["unscored_labels"] == ["my_own_label"] and metrics["levers"] == {"plain": 5}


def test_a_folder_with_no_class_folders_has_nothing_to_score():
    flat = _frame().assign(label="")
    scored = _scored(flat)
    metrics = evaluation.summarize(flat, scored, MANIFEST)
    assert scored.empty and metrics["num_scored"] == 0 and metrics["top1"] is None and metrics["unscored_labels"] == [""]
    assert evaluation.per_class_table(scored).empty and evaluation.confusion(scored).empty
    assert evaluation.misclassified(scored, 3).empty


def test_acceptable_sets_score_beside_the_folder_label():
    sets = {"b": frozenset({"n02123045", "n02124075"}), "d": frozenset({"n07920052", "n07930864"})}
    frame = evaluation.add_correctness(_frame(), sets.get)  # a, c and e have no set: their folder label
    assert list(frame["top1_correct"]) == [True, True, True, False, False]
    assert list(frame["top5_correct"]) == [True, True, True, True, False]
    assert list(frame["top1_folder_label"]) == [True, False, True, False, False]
    metrics = evaluation.summarize(_frame(), frame[frame["label"] != "my_own_label"], MANIFEST)
    assert (metrics["top1"], metrics["top1_folder_label"], metrics["top5"]) == (0.75, 0.5, 1.0)
    table = evaluation.per_class_table(frame)
    assert table.loc["n02123045", "top1"] == 1.0 and table.loc["n02123045", "top1_folder_label"] == 0.5
    assert list(evaluation.misclassified(frame, 5)["path"]) == ["d", "e"]
    assert evaluation.confusion(frame).loc["tabby", "Egyptian cat"] == 1  # still what the model said


def test_per_class_table_and_confusion():
    frame = evaluation.add_correctness(_frame())
    table = evaluation.per_class_table(frame)
    assert table.loc["n02123045", "top1"] == 0.5 and table.loc["n02123045", "top5"] == 1.0
    assert table.loc["n02123045", "class"] == "tabby"
    matrix = evaluation.confusion(frame)
    assert matrix.loc["tabby", "tabby"] == 1 and matrix.loc["tabby", "Egyptian cat"] == 1
    assert matrix.loc["espresso", "espresso"] == 1 and matrix.loc["espresso", "coffee mug"] == 1
    assert list(matrix.columns[-1:]) == [evaluation.OTHER] and matrix[evaluation.OTHER].sum() == 0
    assert matrix.to_numpy().sum() == 5
    few = evaluation.confusion(frame, max_others=1)
    assert list(few.columns) == ["espresso", "my_own_label", "tabby", "Egyptian cat", evaluation.OTHER]
    assert few.loc["espresso", evaluation.OTHER] == 1


def test_confusion_keeps_the_classes_with_most_errors():
    extra = {"path": "f", "label": "n07920052", "top1_wnid": "n03063599", "top1_name": "coffee mug", "top1_score": 0.6,
             "top5_wnid": ["n03063599"], "error": ""}  # a second espresso taken for a mug
    frame = evaluation.add_correctness(pd.concat([_frame(), pd.DataFrame([extra])], ignore_index=True))
    assert list(evaluation.confusion(frame, max_classes=1).index) == ["espresso"]  # 2 errors, tabby 1
    assert list(evaluation.confusion(frame, max_classes=2).index) == ["espresso", "my_own_label"]  # ties by name


def _write_run(cfg, rows=3, recorded=3):
    run = Path(cfg.predictions_dir.path) / "run1"
    run.mkdir(parents=True)
    frame = _frame().head(rows)
    frame.loc[0, "error"] = "corrupt or truncated: image file is truncated"
    frame.to_parquet(run / "part-0.parquet")
    pd.DataFrame({"path": ["a", "n01/notes.txt"], "reason": ["corrupt", "not an image file"]}).to_csv(
        run / "skipped.csv", index=False)
    storage.write_json(cfg.predictions_manifest, {"run_id": "run1", "files": ["predictions/run1/part-0.parquet"],
                                                  "num_rows": recorded, "skipped_file": "predictions/run1/skipped.csv",
                                                  "num_skipped": 2})


def test_check_run_and_check_counts_refuse_missing_partial_and_mismatched_runs(tmp_path):
    cfg = settings.resolve(output_dir=tmp_path)
    with pytest.raises(evaluation.PredictionsError, match="run notebook 03"):
        evaluation.check_run(cfg)
    _write_run(cfg, rows=3, recorded=4)
    manifest = evaluation.check_run(cfg)
    frame = pd.read_parquet(Path(cfg.predictions_dir.path) / "run1" / "part-0.parquet")
    skipped = pd.read_csv(Path(cfg.predictions_dir.path) / "run1" / "skipped.csv")
    with pytest.raises(evaluation.PredictionsError, match="hold 3 rows and 2 skipped files, but the run recorded 4"):
        evaluation.check_counts(frame, skipped, manifest)
    evaluation.check_counts(frame, skipped, {**manifest, "num_rows": 3})
    (cfg.predictions_dir / "run1" / "part-0.parquet").delete()
    with pytest.raises(evaluation.PredictionsError, match="1 file.s. missing"):
        evaluation.check_run(cfg)
