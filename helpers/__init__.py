"""Shared code for the batch image classification notebooks: what an earlier notebook taught,
and what is not about Ray or PyTorch (see the README's map of the modules).
"""
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Ray's servers listen on 127.0.0.1 only when the node's IP is 127.0.0.1, and Ray keeps that IP
# only with multi-node clusters off; it reads this variable once, when `ray` is imported, so it
# is set here, before the notebooks import Ray. A cluster named by RAY_ADDRESS is left alone.
LOOPBACK_ONLY_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_SEES_LOOPBACK_ONLY = "ray" not in sys.modules or os.environ.get(LOOPBACK_ONLY_VARIABLE) == "0"
if not os.environ.get("RAY_ADDRESS"):
    os.environ.setdefault(LOOPBACK_ONLY_VARIABLE, "0")
