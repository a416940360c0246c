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
