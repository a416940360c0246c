"""A run's images per second once every actor is up, from when each batch was classified and by
which actor: the start-up every run pays once is left out, so that runs of any size compare."""
from __future__ import annotations

import math

import pandas as pd


def steady_images_per_second(finished: pd.DataFrame) -> float:
    """Images/s from the moment the last actor to start finished its first batch to the last batch
    (NaN when none finishes after): ``finished`` has ``predicted_at`` and ``actor`` per image."""
    all_up = finished.groupby("actor")["predicted_at"].min().max()
    later = finished["predicted_at"][finished["predicted_at"] > all_up]
    span = later.max() - all_up if len(later) else 0.0
    return float(len(later) / span) if span > 0 else math.nan
