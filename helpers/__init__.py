"""Shared code for the batch image classification notebooks, in two layers (README: the module map).

``helpers`` itself holds what a learner reads: what an earlier notebook taught, and what is not
about Ray or PyTorch. ``helpers.machinery`` holds what notebook 03 calls in a line or two and a
learner need not read: runs and resume, starting or joining Ray, Ray workarounds, the series.
Importing either configures nothing.
"""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
