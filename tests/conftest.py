import os

import pytest

# Executed notebooks and test logs stay free of Ray Data's progress output.
os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"

from helpers import sample  # noqa: E402


@pytest.fixture(scope="session")
def sample_dir():
    """The embedded sample set, built once (shared with the notebooks)."""
    return sample.ensure_sample()
