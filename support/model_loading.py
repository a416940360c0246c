"""The model as notebook 03's ``load_model`` cell loads it, for the tests and the benchmarks."""
from __future__ import annotations

import torch

from helpers import models
from helpers.settings import OFFLINE_MODEL


def load_model(model_name: str) -> torch.nn.Module:
    """The named model in inference mode (``.eval()``): torchvision's, or the offline EfficientNet-Lite0."""
    if model_name == OFFLINE_MODEL:
        return models.efficientnet_lite0().eval()
    import torchvision
    return torchvision.models.get_model(model_name, weights=models.get_weights(model_name)).eval()
