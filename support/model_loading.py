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


def prepared(model: torch.nn.Module, levers: str, example: torch.Tensor):
    """The model run as notebook 03's ``FastClassifier`` runs it with ``levers`` (the names of its
    ``LEVERS``: "plain", "channels_last", "... + frozen graph", "bf16 + ..."): a function of a
    normalised batch that returns float logits, in inference mode."""
    import copy
    import warnings

    if levers == "plain":
        def plain(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(batch)
        return plain
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    autocast = torch.autocast(example.device.type, dtype=torch.bfloat16, enabled=levers.startswith("bf16"))
    if levers.endswith("frozen graph"):
        with torch.inference_mode(), autocast, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated for torch.compile
            model = torch.jit.freeze(torch.jit.trace(model, example.contiguous(memory_format=torch.channels_last)))

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return model(batch.contiguous(memory_format=torch.channels_last)).float()
    return run
