"""Shared code for the batch image classification notebooks.

Data flows one way: settings -> labels -> data -> models -> inference -> evaluation -> plots.
"""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
