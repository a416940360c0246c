import os
import shutil
import tempfile
from unittest import mock

import pytest

# The tests run as a new user would, never with the developer's state: a fresh, empty home
# (Ray's ~/.ray and its token, ~/.cache, Jupyter's and matplotlib's folders) for the whole
# session, set before anything imports Ray; papermill's kernels and `ray start` inherit it.
# Variables that would point elsewhere are dropped, so that everything derives from it.
FRESH_HOME = tempfile.mkdtemp(prefix="fresh-home-")
os.environ["HOME"] = FRESH_HOME
for _name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "JUPYTER_CONFIG_DIR",
              "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_PATH", "IPYTHONDIR", "MPLCONFIGDIR",
              "TORCH_HOME", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    os.environ.pop(_name, None)


def pytest_unconfigure(config):
    shutil.rmtree(FRESH_HOME, ignore_errors=True)

from helpers import sample  # noqa: E402


@pytest.fixture(scope="session")
def sample_dir():
    """The embedded sample set, built once (shared with the notebooks)."""
    return sample.ensure_sample()


@pytest.fixture(scope="session")
def local_top1():
    """The top-1 WordNet ids the model gives local image files, preprocessed as notebook 3 does:
    ``local_top1(paths, model_name)``; what a pipeline's predictions are checked against."""
    import numpy as np
    import torch

    from helpers import data, labels, models
    from support.model_loading import load_model

    def top1(paths, model_name: str) -> list[str]:
        spec = models.preprocessing(model_name)
        pixels = np.stack([spec.resize_and_crop(data.decode_image(path.read_bytes(), at_least=spec.resize_size))
                           for path in paths])
        model = load_model(model_name)
        with torch.inference_mode():
            logits = model(spec.normalize(torch.from_numpy(pixels)))
        return [labels.wnids()[int(index)] for index in logits.argmax(dim=1)]

    return top1


@pytest.fixture(scope="session")
def moto_server() -> dict[str, str]:
    """A moto S3 server on 127.0.0.1 for the whole session; yields the AWS variables for it."""
    from support.s3_server import moto_s3

    with moto_s3() as variables:
        yield variables


@pytest.fixture(scope="module")
def s3_endpoint(moto_server) -> str:
    """Within a test module: the AWS variables point at the moto server (yields its URL)."""
    with mock.patch.dict(os.environ, moto_server):
        yield moto_server["AWS_ENDPOINT_URL"]


@pytest.fixture(scope="session")
def series_ray(moto_server, tmp_path_factory) -> dict[str, str]:
    """One Ray head (the series' own kind) for every series the tests run, which would each
    start and stop one (20 to 30 s here); its workers reach the moto server. Yields the
    variables that make a series join it: ``with mock.patch.dict(os.environ, series_ray): ...``."""
    import contextlib

    from helpers.machinery import ray_start

    with contextlib.ExitStack() as stack:
        with mock.patch.dict(os.environ, moto_server):  # what the head's workers inherit
            log = tmp_path_factory.mktemp("series-ray") / "ray-head.log"
            variables = stack.enter_context(ray_start.head(log, stop_timeout_s=5))  # then killed: nothing to keep
        yield variables


SERIES_LIMIT = 42  # images in the main series run of the tests


@pytest.fixture(scope="session")
def executed(tmp_path_factory, sample_dir, series_ray):
    """The series run once on the sample; ``TEST_OUTPUT_DIR`` keeps its outputs (CI uploads
    them). Yields the output folder and the seconds of each step."""
    from pathlib import Path

    from helpers.machinery import series

    kept = os.environ.get("TEST_OUTPUT_DIR")
    output_dir = Path(kept).resolve() if kept else tmp_path_factory.mktemp("series")
    with mock.patch.dict(os.environ, series_ray):
        seconds = series.execute_series(output_dir, {"limit": SERIES_LIMIT, "batch_size": 8}, progress=False)
    return output_dir, seconds
