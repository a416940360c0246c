import os
import shutil
import tempfile

import pytest

# Executed notebooks and test logs stay free of Ray Data's progress output.
os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"

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
