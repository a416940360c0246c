"""Each workaround in ``helpers/ray_workarounds.py`` against the Ray installed: these tests fail,
naming the workaround, when a Ray upgrade changes what it works around."""
import json
import os
import subprocess
import sys

import pytest

from helpers.machinery import ray_workarounds

# A driver with its own Ray and an actor pool that fails.
DRIVER = """
import json, sys, time
import ipykernel  # as in a notebook's kernel: hide_harmless_lines acts only there
import ray, ray.data  # before helpers: the order does not matter
from helpers.machinery import ray_start, ray_workarounds

ray_workarounds._installed = True  # see the raw stderr here; the filter is tested on its own
ray.init(**ray_start.init_options())

class Failing:
    def __call__(self, batch):
        if (batch["id"] > 200).any():
            raise ValueError("bad row")
        return batch

before = ray_workarounds.live_actors()
try:
    ray.data.range(1000, override_num_blocks=20).map_batches(
        Failing, batch_size=10, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5).take_all()
except Exception as error:
    kept = error  # as Jupyter keeps the last error
time.sleep(3)
left = ray_workarounds.live_actors() - before
ray_workarounds.kill_actors(left)
deadline = time.monotonic() + 30
while ray_workarounds.live_actors() - before and time.monotonic() < deadline:
    time.sleep(0.1)
after_kill = ray_workarounds.live_actors() - before

from ray.core.generated import autoscaler_pb2
from ray.experimental import internal_kv
without_autoscaler = ray_workarounds.largest_cluster()
groups = [autoscaler_pb2.NodeGroupConfig(name="cpu", resources={"CPU": 4}, max_count=4),
          autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"CPU": 8, "GPU": 1}, max_count=2)]
internal_kv._internal_kv_put(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY,  # where the autoscaler's report lands
                             autoscaler_pb2.ClusterConfig(node_group_configs=groups).SerializeToString(),
                             namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE)
print(json.dumps({"left_after_failure": len(left), "left_after_kill": len(after_kill),
                  "largest": [without_autoscaler, ray_workarounds.largest_cluster()]}), flush=True)
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    found = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    return json.loads(found), result.stderr + result.stdout


@pytest.mark.slow
def test_workaround_3_the_largest_cluster_is_read_from_the_autoscalers_node_groups(driver):
    found, _ = driver
    assert found["largest"] == [None, [32, 2]], (
        "ray_workarounds.largest_cluster: Ray's state API no longer reads the autoscaler's node groups "
        "(4 x 4 CPUs + 2 x (8 CPUs + 1 GPU)) as it did; see if Ray now offers a public way.")


@pytest.mark.slow
def test_workaround_1_a_failed_runs_actors_outlive_its_error_until_killed(driver):
    found, _ = driver
    assert found["left_after_failure"] >= 1, (
        "ray_workarounds.live_actors/kill_actors: Ray no longer keeps a failed execution's actors alive "
        "while its error lives; the workaround may go (and runs._end_actors with it).")
    assert found["left_after_kill"] == 0, "ray_workarounds.kill_actors no longer ends actors by ID"


@pytest.mark.slow
def test_workaround_2_ray_still_prints_the_constructor_arguments_line(driver):
    """(The raylet's "killed by `ray.kill`" line comes only now and then, with the timing of
    the tasks in flight: the filter's test below covers it.)"""
    _, output = driver
    line = "has constructor arguments in the object store and max_restarts > 0"
    assert line in output, f"ray_workarounds.HARMLESS_LINES: Ray no longer prints {line!r}; drop it from the filter"
    assert [text for text in output.splitlines() if line in text and ray_workarounds.HARMLESS_LINES.search(text)]


def test_workaround_2_the_filter_drops_those_lines_only():
    class Sink:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    sink = Sink()
    stream = ray_workarounds._LineFilter(sink)
    harmless = ("(raylet) Task MapWorker(MapBatches(Slow)).submit failed. There are infinite retries remaining, "
                "so the task will be retried. Error: The actor is dead because it was killed by `ray.kill`.")
    for text in ("a real error\n", harmless, "\n", "(MapWorker pid=1) your print", "\n", "half a line"):
        stream.write(text)
    stream.flush()
    assert sink.text == "a real error\n(MapWorker pid=1) your print\nhalf a line"


FD2 = r"""
import os, sys, time
import ipykernel
from helpers.machinery import ray_workarounds
ray_workarounds.hide_harmless_lines()
os.write(2, b"[E core_worker.cc] Actor ... has constructor arguments in the object store and max_restarts > 0. ...\n")
os.write(2, b"[E raylet] a real crash\n")
time.sleep(0.5)
"""


def test_workaround_2_native_stderr_keeps_every_other_line():
    result = subprocess.run([sys.executable, "-c", FD2], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "[E raylet] a real crash\n"


WORKAROUND_4 = """
import ray._private.services as services
from helpers.machinery import ray_workarounds

before = services.resolve_ip_for_localhost("127.0.0.1")
ray_workarounds.keep_loopback_addresses()
print(before, services.resolve_ip_for_localhost("127.0.0.1"))
"""


def _own_address() -> str | None:
    """This machine's address towards the network, where it has one (a UDP connect sends nothing)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed where there is a network, never reached
        except OSError:
            return None
        return probe.getsockname()[0]


def test_workaround_4_loopback_stays_loopback_whatever_was_imported_first():
    env = {name: value for name, value in os.environ.items() if name != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    result = subprocess.run([sys.executable, "-c", WORKAROUND_4], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = result.stdout.split()
    assert after == "127.0.0.1", "ray_workarounds.keep_loopback_addresses no longer keeps 127.0.0.1: check Ray's ENABLE_RAY_CLUSTER"
    if (own := _own_address()) and not own.startswith("127."):
        assert before != "127.0.0.1", (
            "Ray no longer turns 127.0.0.1 into the machine's address: ray_workarounds.keep_loopback_addresses may go")


def test_workaround_5_a_stopped_heads_address_note_is_removed_and_no_other(tmp_path, monkeypatch):
    """Workaround 5: the note Ray keeps for a plain ray.init() lies where Ray's own utility says, and
    only a note naming the stopped head goes (test_fresh_user checks that `ray start` writes it)."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    note = ray_workarounds.address_note()
    assert note == tmp_path / "ray" / "ray_current_cluster"
    note.parent.mkdir()
    note.write_text("127.0.0.1:6379")
    ray_workarounds.forget_stopped_head("127.0.0.1:6380")  # another head's: kept
    assert note.read_text() == "127.0.0.1:6379"
    ray_workarounds.forget_stopped_head("127.0.0.1:6379")
    assert not note.exists()
    ray_workarounds.forget_stopped_head("127.0.0.1:6379")  # nothing left to remove: no error
