from helpers import labels


def test_index_order_matches_imagenet():
    assert len(labels.wnids()) == len(set(labels.wnids())) == 1000
    assert labels.wnids()[0] == "n01440764"
    assert labels.class_names()[0] == "tench"
    assert labels.wnid_to_index("n02123045") == 281
    assert labels.class_names()[281] == "tabby"
    assert labels.wnids()[999] == "n15075141"
    assert labels.class_names()[999] == "toilet tissue"


def test_round_trip_for_every_class():
    assert all(labels.wnid_to_index(labels.wnids()[i]) == i for i in range(1000))


def test_labels_that_are_not_imagenet_ids_are_kept():
    assert labels.wnid_to_index("my_cats") == -1
    assert not labels.is_imagenet_wnid("my_cats")
    assert labels.label_to_name("my_cats") == "my_cats"
    assert labels.label_to_name("n07920052") == "espresso"


def test_top_k_table_gives_plain_arrow_columns_and_nulls_for_unreadable_rows():
    import numpy as np

    scores = np.array([[0.5, 0.2, 0.1, 0.1, 0.1]], np.float32)
    indices = np.array([[281, 282, 285, 0, 1]])
    table = labels.top_k_table(scores, indices, np.array([True, False]), label=np.array(["n02123045"] * 2))
    row, unreadable = table.to_pylist()
    assert row["label"] == "n02123045" and row["top1_wnid"] == "n02123045"
    assert row["top1_name"] == "tabby" and row["top5_name"][2] == "Egyptian cat"
    assert row["top5_index"] == [281, 282, 285, 0, 1]
    assert unreadable["top1_name"] is None and unreadable["top5_wnid"] is None
    assert str(table.schema.field("top5_wnid").type) == "list<item: string>"


def test_an_image_with_no_folder_is_named_so():
    assert labels.label_to_name("") == labels.NO_FOLDER
