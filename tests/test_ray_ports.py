"""Every port Ray opens listens on 127.0.0.1 only, its token authentication stays on, and
its dashboard answers on 127.0.0.1 to the token alone: for ``make run``'s head (joined by
each notebook) and for a notebook's own instance."""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import psutil
import pytest

from helpers.machinery import ray_start
from helpers.machinery.auth_token import auth_token_path

pytestmark = pytest.mark.slow

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

DRIVER = """
import sys
import ray  # before helpers: the order does not matter
from helpers.machinery import ray_start
from ray._private.authentication.authentication_utils import is_token_auth_enabled

context = ray.init(**ray_start.init_options())

@ray.remote(num_cpus=0)
class Where:
    def node_ip(self):
        return ray.util.get_node_ip_address()

where = Where.remote()
print(ray.get(where.node_ip.remote()), is_token_auth_enabled(), "http://" + context.dashboard_url, flush=True)
sys.stdin.read()  # stay up while the test looks at the sockets
"""


def _listening(pids: set[int]) -> set[tuple[str, str]]:
    """(process name, address) of every listening TCP socket of these processes."""
    found = set()
    for connection in psutil.net_connections("inet"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in pids:
            found.add((psutil.Process(connection.pid).name(), connection.laddr.ip))
    return found


def _status(url: str, token: str | None) -> int:
    """The HTTP status of a GET, with the token as a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _check_dashboard(url: str) -> None:
    """The dashboard answers on 127.0.0.1, refuses a request without the token (or with a
    wrong one) and serves one with it; and its Ray sends no usage reports."""
    assert url.startswith("http://127.0.0.1:"), url
    token = auth_token_path().read_text().strip()
    assert _status(f"{url}/api/version", None) == 401
    assert _status(f"{url}/api/version", "not-the-token") == 403
    assert _status(f"{url}/api/version", token) == 200
    request = urllib.request.Request(f"{url}/usage_stats_enabled", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.load(response)["data"]["usageStatsEnabled"] is False  # camelCase, as the dashboard answers


def _drive(env: dict) -> set[tuple[str, str]]:
    """Run a driver with an actor; check its dashboard; return the listening sockets of this
    process's tree."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        node_ip, token_auth, dashboard = driver.stdout.readline().split()
        me = psutil.Process()
        found = _listening({me.pid, *(child.pid for child in me.children(recursive=True))})
        _check_dashboard(dashboard)
    finally:
        driver.stdin.close()
        driver.wait(timeout=120)
    assert node_ip == "127.0.0.1" and token_auth == "True"
    return found


def _assert_loopback_only(found: set[tuple[str, str]]) -> None:
    names = {name for name, _ in found}
    assert {"gcs_server", "raylet"} <= names, found  # the check saw Ray's servers at all
    assert any("dashboard" in name.lower() for name in names), found  # and the dashboard's agent
    assert any(name.startswith("ray::") for name in names), found  # and a worker
    assert {address for _, address in found} <= LOOPBACK, sorted(found)


@pytest.mark.timeout(300)
def test_the_series_head_and_its_drivers_listen_on_loopback_only(tmp_path):
    with ray_start.head(tmp_path / "ray-head.log") as variables:
        found = _drive({**os.environ, **variables})
    _assert_loopback_only(found)


@pytest.mark.timeout(300)
def test_a_notebooks_own_ray_instance_listens_on_loopback_only():
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    _assert_loopback_only(_drive(env))
