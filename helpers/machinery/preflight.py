"""Before the series imports anything heavy: does this Python hold the pinned requirements? A Ray
job whose node runs another ``python`` (the nodes started from ``.venv/bin/ray`` without the
venv on ``PATH``, an image without the pins) would otherwise die on a bare ``ModuleNotFoundError``.

Standard library only, and ``importlib.metadata`` alone (no package is imported): it runs under
any Python 3, the bare one it is there to catch included.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

from helpers import PROJECT_ROOT

REQUIREMENTS = PROJECT_ROOT / "requirements.txt"
# Pins for whoever develops the project (JupyterLab, the tests), which the series never imports: a
# cluster's image or a job's runtime_env need not have them (deploy/rayjob.yaml installs the rest).
NOT_NEEDED_BY_THE_SERIES = frozenset({"jupyterlab", "ipywidgets", "nbval", "pytest", "pytest-timeout", "moto",
                                      "efficientnet-lite-pytorch"})
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s#;]+)")
RULE = ("The cluster needs the pinned requirements in its Python (`pip install -r requirements.txt` in its "
        "image), and `python` on its PATH must be that Python; or give the job a runtime_env with `pip:` the "
        "pins, as deploy/rayjob.yaml has (README: \"A cluster you share: make submit\").")


def normalized(name: str) -> str:
    """A distribution's name as pip compares them: ``Pytest_Timeout`` is ``pytest-timeout``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """``name==version`` per line of a requirements file (extras such as ``ray[data]`` and trailing
    ``# comments`` allowed); names normalized, in the file's order."""
    pins = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            pins[normalized(match[1])] = match[2]
    return pins


def same_version(found: str, wanted: str) -> bool:
    """``found`` satisfies ``==wanted`` (a local label such as ``+cpu`` counts only where pinned)."""
    if "+" not in wanted:
        found = found.split("+", 1)[0]
    return found.lower() == wanted.lower()


def problems(pins: dict[str, str]) -> tuple[list[str], list[str]]:
    """The pinned packages this Python lacks (``name==version``), and those it has at another
    version (``name (found X, wanted Y)``)."""
    missing, other = [], []
    for name, wanted in pins.items():
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{name}=={wanted}")
            continue
        if not same_version(version, wanted):
            other.append(f"{name} (found {version}, wanted {wanted})")
    return missing, other


def this_python() -> str:
    """``sys.executable``, and what it links to where that is another file."""
    real = os.path.realpath(sys.executable)
    return sys.executable if real == sys.executable else f"{sys.executable} (-> {real})"


def check(path: Path = REQUIREMENTS, skip: frozenset[str] = NOT_NEEDED_BY_THE_SERIES) -> None:
    """Return where this Python holds every pin of ``path`` that the series needs; else exit 1
    (``SystemExit``) with one message: the packages, this Python, and the rule. At most 5 lines,
    so that a failed Ray job's message (the last 10 lines of its logs) holds all of it. No file:
    no check."""
    if not path.is_file():
        return
    pins = {name: version for name, version in read_pins(path).items() if name not in skip}
    missing, other = problems(pins)
    if missing or other:
        lines = [f"  missing: {', '.join(missing)}"] * bool(missing) + \
                [f"  at another version: {', '.join(other)}"] * bool(other)
        raise SystemExit("\n".join([f"This Python lacks the project's pinned requirements ({path.name}):", *lines,
                                    f"Python: {this_python()}", RULE]))


if __name__ == "__main__":
    check()
