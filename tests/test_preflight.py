"""The preflight: a series whose Python lacks the pinned requirements (a Ray job on a node whose
`python` is another one) stops at once, naming the packages, that Python and the rule, rather
than on a bare ModuleNotFoundError; with a Ray head and `make submit` end to end (slow)."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from helpers import PROJECT_ROOT
from helpers.machinery import auth_token, preflight, ray_start

RAY = str(Path(sys.executable).with_name("ray"))
WITHOUT_PYTHONPATH = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "RAY_ADDRESS")}


def python_without_ray() -> str:
    """A Python 3 on this machine without the project's packages (the system's, or the one this
    venv was made from), else skip."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(entry for entry in os.environ.get("PATH", "").split(os.pathsep) if entry != venv_bin)
    candidates = [getattr(sys, "_base_executable", None), "/usr/bin/python3", shutil.which("python3", path=path)]
    probe = "import importlib.util, sys; sys.exit(sys.version_info < (3, 8) or importlib.util.find_spec('ray') is not None)"
    for candidate in dict.fromkeys(filter(None, candidates)):
        if os.access(candidate, os.X_OK) and subprocess.run([candidate, "-c", probe], env=WITHOUT_PYTHONPATH,
                                                            capture_output=True, timeout=30).returncode == 0:
            return candidate
    pytest.skip(f"no Python 3 without ray among {candidates}")


def test_a_wrong_pin_and_a_missing_package_are_named_with_the_python_and_the_rule(tmp_path):
    numpy = preflight.importlib.metadata.version("numpy")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(textwrap.dedent(f"""\
        # a comment, and a pin with extras and one of its own
        ray[data,default]=={preflight.importlib.metadata.version("ray")}  # the dashboard
        numpy==0.0.1
        Not_A-Real.Package==1.2.3  # nowhere installed

        pytest==0.0.2
        """))
    with pytest.raises(SystemExit) as stopped:
        preflight.check(requirements, skip=frozenset({"pytest"}))
    message = str(stopped.value.code)  # a text: Python prints it and exits 1
    lines = message.splitlines()
    assert lines[:3] == ["This Python lacks the project's pinned requirements (requirements.txt):",
                         "  missing: not-a-real-package==1.2.3", f"  at another version: numpy (found {numpy}, wanted 0.0.1)"]
    assert "pytest" not in message  # skipped
    assert f"Python: {sys.executable}" in message
    assert "`pip install -r requirements.txt` in its image" in message and "`python` on its PATH" in message
    assert "runtime_env with `pip:`" in message and "deploy/rayjob.yaml" in message


def test_the_pins_are_read_as_pip_reads_them(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("ray[data,default]==2.60.0  # default: the dashboard\nScikit_Image==0.26.0\n"
                            "# numpy==1.0\n  tqdm == 4.70.1\n")
    assert preflight.read_pins(requirements) == {"ray": "2.60.0", "scikit-image": "0.26.0", "tqdm": "4.70.1"}
    assert preflight.same_version("2.14.1+cpu", "2.14.1") and not preflight.same_version("2.14.1", "2.14.1+cu128")
    assert not preflight.same_version("2.14.10", "2.14.1")
    preflight.check(tmp_path / "absent.txt")  # nothing to compare against: no check


def test_the_real_requirements_pass_in_the_venv():
    assert preflight.check() is None
    assert {"ray", "torch", "papermill", "ipykernel"} <= set(preflight.read_pins()) - preflight.NOT_NEEDED_BY_THE_SERIES


def test_the_rayjobs_runtime_env_installs_what_the_preflight_checks():
    """deploy/rayjob.yaml's `pip:` and Ray's image: together what the preflight asks of a job's node."""
    rayjob = yaml.safe_load((PROJECT_ROOT / "deploy" / "rayjob.yaml").read_text())
    installed = {preflight.normalized(pin.split("==")[0]) for pin in yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["pip"]}
    checked = set(preflight.read_pins()) - preflight.NOT_NEEDED_BY_THE_SERIES
    assert installed | {"ray"} == checked
    assert preflight.NOT_NEEDED_BY_THE_SERIES <= set(preflight.read_pins())  # no stale name


def test_the_series_imports_nothing_heavy_before_the_preflight():
    code = ("import sys; from helpers.machinery import series; series.preflight.check(); "
            "print(sorted(name for name in ('ray', 'torch', 'numpy', 'pandas', 'papermill', 'yaml') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_series_under_a_python_without_the_packages_exits_1_with_the_message(tmp_path):
    python = python_without_ray()
    result = subprocess.run([python, "-m", "helpers.machinery.series", "--output-dir", str(tmp_path)],
                            cwd=PROJECT_ROOT, env=WITHOUT_PYTHONPATH, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "  missing: torch==" in result.stderr and " ray==" in result.stderr and f"Python: {python}" in result.stderr
    assert "requirements.txt" in result.stderr and not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_submit_to_a_cluster_whose_python_lacks_the_packages_says_so(tmp_path):
    """A head started from the venv's `ray`, with a PATH on which `python` is a bare Python (as
    nodes started from `.venv/bin/ray` without the venv on PATH): the job fails in seconds, and
    `make submit` prints the preflight's message."""
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(python_without_ray())
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join([str(bare), *(entry for entry in os.environ.get("PATH", "").split(os.pathsep)
                                         if entry and entry != venv_bin)])
    head_env = {**WITHOUT_PYTHONPATH, "PATH": path, ray_start.SINGLE_MACHINE_VARIABLE: "0", "RAY_AUTH_MODE": "token"}
    auth_token.ensure_auth_token()  # in the tests' fresh home: `ray start` and `make submit` read it
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    log_path = tmp_path / "ray-head.log"
    dashboard_port = ray_start.free_port()
    with open(log_path, "wb") as log:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={ray_start.free_port()}",
             "--num-cpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
             # ports of their own: a Ray already running here (another test's, a developer's) holds the
             # defaults, and a head whose agent cannot listen takes no job ("No available agent")
             f"--dashboard-agent-listen-port={ray_start.free_port()}", f"--ray-client-server-port={ray_start.free_port()}"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=head_env, start_new_session=True)
    try:
        ray_start.wait_until_started(log_path, head)
        started = time.monotonic()
        result = subprocess.run(["make", "-s", "submit", f"RAY_ADDRESS=http://127.0.0.1:{dashboard_port}",
                                 f"OUTPUT_DIR={tmp_path / 'outputs'}", "PARAMS=-p limit=4"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=60,
                                env={name: value for name, value in WITHOUT_PYTHONPATH.items()
                                     if name != "RAY_AUTH_MODE"})  # as a plain shell: make submit sets it
        seconds = time.monotonic() - started
        printed = result.stdout + result.stderr
        print(f"make submit exited {result.returncode} after {seconds:.1f} s")
        # The series exited 1 (make itself exits 2 for a failed recipe), in seconds, before any notebook.
        assert result.returncode == 2 and "submit] Error 1" in result.stderr, printed[-3000:]
        assert seconds < 60 and "No module named" not in printed and not (tmp_path / "outputs").exists()
        # All of the preflight's message in the job's error, which make submit prints last.
        error = result.stderr[result.stderr.index(" FAILED: "):]
        assert "This Python lacks the project's pinned requirements (requirements.txt):" in error, error
        assert "  missing: torch==" in error and " ray==" in error and f"Python: {bare / 'python'}" in error
        assert "`pip install -r requirements.txt` in its image" in error and "deploy/rayjob.yaml" in error
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
