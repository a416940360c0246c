"""A new user on a fresh machine: no ~/.ray, no token; and a failed run that leaves nothing behind."""
import functools
import os
import stat
import subprocess
import sys
import time

import pytest

from helpers import data, settings
from helpers.machinery import auth_token, ray_start, ray_workarounds, runs

JOIN = """
import ray  # before helpers: the order does not matter
from helpers.machinery import cluster_shape, ray_start
ray.init(**ray_start.init_options())
info = cluster_shape.describe()
print("joined", len(info.node_sizes), info.cpus, [node["NodeManagerAddress"] for node in ray.nodes()])
ray.data.range(8).map_batches(lambda batch: batch, batch_size=4).materialize()  # Ray Data's detached actors
"""


@pytest.fixture
def new_home(tmp_path, monkeypatch):
    """A brand-new, empty home; no Ray of ours running, no token given."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    return home


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_auth_token_creates_a_private_token_once(new_home):
    path = auth_token.ensure_auth_token()
    assert path == new_home / ".ray" / "auth_token"
    token = path.read_text()
    assert len(token) == 64 and _mode(path) == 0o600
    assert auth_token.ensure_auth_token() == path and path.read_text() == token  # kept, not replaced


def test_ensure_auth_token_makes_an_existing_token_private(new_home):
    path = new_home / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text("f" * 64)
    path.chmod(0o644)  # as `ray.init` writes it
    assert auth_token.ensure_auth_token() == path
    assert _mode(path) == 0o600 and path.read_text() == "f" * 64


def test_ensure_auth_token_follows_ray_auth_token_path_and_leaves_ray_auth_token_alone(new_home, monkeypatch):
    custom = new_home / "elsewhere" / "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(custom))
    assert auth_token.ensure_auth_token() == custom and _mode(custom) == 0o600
    assert not (new_home / ".ray").exists()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a" * 64)
    custom.unlink()
    assert auth_token.ensure_auth_token() is None and not custom.exists()


def test_the_series_starts_ray_for_a_new_user(new_home, tmp_path, monkeypatch):
    """What `make run` does first: `ray start --head` with token authentication, then a
    kernel joins it; the token is created private and never shows in any output."""
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    log = tmp_path / "ray-head.log"
    started = time.monotonic()
    with ray_start.head(log) as variables:
        token_file = new_home / ".ray" / "auth_token"
        assert token_file.is_file() and _mode(token_file) == 0o600
        assert variables["RAY_AUTH_MODE"] == "token" and variables["RAY_ADDRESS"].startswith("127.0.0.1:")
        assert ray_workarounds.address_note().read_text().strip() == variables["RAY_ADDRESS"]  # for ray.init()
        joined = subprocess.run([sys.executable, "-c", JOIN], capture_output=True, text=True, timeout=300,
                                env={**os.environ, **variables})
    note = ray_workarounds.address_note()  # gone with the head: a plain ray.init() would wait for it
    assert not note.exists() or note.read_text().strip() != variables["RAY_ADDRESS"]
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "joined 1" in joined.stdout and "['127.0.0.1']" in joined.stdout, (joined.stdout, joined.stderr[-2000:])
    token = token_file.read_text()
    assert token not in log.read_text() + joined.stdout + joined.stderr
    assert "did not finish draining" not in log.read_text()  # the head stops at once, not after 30 s
    assert time.monotonic() - started < 240


def test_a_rerun_into_the_same_outputs_waits_for_its_own_ray(new_home, tmp_path, monkeypatch):
    """`make run` again into the same outputs appends to ray-head.log: the earlier run's "Ray runtime
    started" must not pass for this one's (here a `ray start` that never gets that far)."""
    log = tmp_path / "ray-head.log"
    log.write_text("INFO scripts.py:1134 -- Ray runtime started.\n")
    popen, wait = subprocess.Popen, ray_start.wait_until_started
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: popen(["sleep", "60"], start_new_session=True))
    monkeypatch.setattr(ray_start, "wait_until_started", functools.partial(wait, timeout_s=2))
    with pytest.raises(TimeoutError, match="did not start Ray within 2 s"):
        with ray_start.head(log):
            pass


# ---------------------------------------------------------------- a failed run's actors


def _pipeline(folder, fail_from: str | None, delay: float = 0.0):
    import ray.data

    class _Slow:  # local, so that Ray's workers get it by value
        def __init__(self, delay: float):
            time.sleep(delay)  # a model loading

        def __call__(self, batch):
            time.sleep(0.02)
            return batch

    ds = ray.data.read_binary_files(str(folder), include_paths=True, override_num_blocks=6, num_cpus=1)
    ds = ds.map(lambda row: {"path": row["path"], "size": len(row["bytes"])})
    ds = ds.map_batches(_Slow, fn_constructor_args=(delay,), batch_size=4,
                        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
    if fail_from is not None:
        def killed_midway(row):
            if row["path"] >= fail_from:
                raise RuntimeError(f"killed midway, at {row['path']}")
            return row
        ds = ds.map(killed_midway)
    return ds


@pytest.fixture(scope="module")
def local_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(**ray_start.init_options())
    yield
    ray.shutdown()


@pytest.mark.slow  # four failed runs and their clean-up: a minute
@pytest.mark.timeout(600)  # a run that waits for CPUs a failed run still holds hangs
@pytest.mark.parametrize(("delay", "fail_at"), [(0.0, 0), (1.5, 0), (0.0, 30), (1.5, 30)])
def test_a_failed_run_leaves_no_actor_and_no_cpu_behind_and_keeps_its_files(local_ray, tmp_path, delay, fail_at):
    """``run.writing`` around a write that fails: its error, unchanged but for a note; every
    actor gone and every CPU free at once; and the complete files kept for the next run."""
    import ray

    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(48):
        (folder / f"n01440764/f{i:03d}.jpg").parent.mkdir(exist_ok=True)
        (folder / f"n01440764/f{i:03d}.jpg").write_bytes(os.urandom(1000))
    cfg = settings.resolve(str(folder), output_dir=str(tmp_path / "outputs"))
    run = runs.open_run(cfg, data.list_files(cfg.data_uri))
    with pytest.raises(Exception) as raised:
        with run.writing(_pipeline, actors=2, num_cpus=0.5):
            _pipeline(folder, str(folder / f"n01440764/f{fail_at:03d}.jpg"), delay).write_parquet(
                run.path, ray_remote_args={"num_cpus": 1})
    assert "killed midway" in str(raised.value)  # the block's own error
    assert "The rows in complete files of" in " ".join(raised.value.__notes__)
    assert ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"]
    assert not ray_workarounds.live_actors()
    assert run.location.exists() and (run.location / runs.RUN_RECORD).exists()

    started = time.monotonic()
    _pipeline(folder, None).write_parquet(str(tmp_path / "complete"), ray_remote_args={"num_cpus": 1})
    assert len(list((tmp_path / "complete").glob("*.parquet"))) >= 1
    assert time.monotonic() - started < 120
