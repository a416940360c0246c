import pytest

from helpers import settings
from helpers.settings import SettingsError


def test_defaults_resolve(tmp_path):
    cfg = settings.resolve(output_dir=tmp_path)
    assert cfg.data_uri == "sample" and cfg.model_name == "efficientnet_lite0"
    assert str(cfg.output_dir) == str(tmp_path) and cfg.limit is None and cfg.batch_size == 8


def test_relative_paths_are_relative_to_the_project(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "PROJECT_ROOT", tmp_path)
    (tmp_path / "images").mkdir()
    cfg = settings.resolve(data_uri="images", output_dir="out")
    assert cfg.data_uri == str(tmp_path / "images")
    assert str(cfg.output_dir) == str(tmp_path / "out") and (tmp_path / "out").is_dir()


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": -4}, "batch_size=-4"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"limit": -1}, "limit=-1"),
        ({"limit": True}, "limit=True"),
        ({"num_actors": 0}, "num_actors=0"),
        ({"model_name": "resnet9000"}, "model_name='resnet9000'"),
        ({"data_uri": ""}, "data_uri=''"),
        ({"data_uri": None}, "data_uri=None"),
        ({"data_uri": "/no/such/folder"}, "data_uri='/no/such/folder'"),
    ],
)
def test_bad_values_are_named_in_the_error(tmp_path, overrides, named):
    with pytest.raises(SettingsError) as error:
        settings.resolve(**{"output_dir": tmp_path, **overrides})
    assert named in str(error.value)


def test_unwritable_output_dir_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SettingsError, match="output_dir=.*a-file/out.* is not writable"):
        settings.resolve(output_dir=blocker / "out")


def test_known_models_include_the_reference_and_offline_ones():
    assert {"efficientnet_lite0", "resnet152", "resnet50", "vit_b_16"} <= set(settings.available_models())
