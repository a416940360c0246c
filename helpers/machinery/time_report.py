"""Where a run's time went, from Ray Data's own account of its last execution
(``Dataset.get_stats_summary()``, a developer API): each step's busy time, rows, and workers busy
at once; and a verdict that compares the model's actors busy at once with how many there are,
so that actors waiting for input point at their input, and a busy pool at more actors or a GPU."""
from __future__ import annotations

from collections.abc import Iterator

import pandas as pd

BUSY = 0.8  # actors busy at once, as a share of the pool, above which the model is the limit
INPUT_BUSY = 0.5  # another step's workers busy at once, above which it may have held the actors up
LEVERS = {  # what gives a step more workers at once; checked in order ("Map" would match "MapBatches")
    "MapBatches": "more actors (more CPUs or nodes) or a GPU (num_gpus=1), then measure other batch sizes",
    "Map": "more CPU for decoding: a smaller num_cpus for the map's tasks, or decode in the actors "
           "(the same num_cpus as theirs: Ray then fuses the two steps)",
    "Read": "more reads at once: a smaller num_cpus per read task, or more read tasks (override_num_blocks)",
    "Write": "more writes at once (a smaller num_cpus per write task), or fewer, larger files",
}


def _operators(summary) -> Iterator:
    """Every operator's stats, the upstream ones (``parents``) first."""
    for parent in summary.parents:
        yield from _operators(parent)
    yield from summary.operators_stats


def steps(summary) -> pd.DataFrame:
    """One row per step (operator; fused steps show as ``A->B``): busy seconds of its tasks or actors
    in all, rows in (a read's: out), seconds from its first block to its last, rows per second, and
    workers busy at once on average (busy seconds over seconds)."""
    rows = {}
    for op in _operators(summary):
        rows[op.operator_name] = {"busy_s": op.wall_time.sum,
                                  "rows": op.total_input_num_rows or op.output_num_rows.sum,
                                  "seconds": op.latest_end_time - op.earliest_start_time}
    table = pd.DataFrame(rows).T
    table["rows_per_s"] = table["rows"] / table["seconds"]
    table["busy_at_once"] = table["busy_s"] / table["seconds"]
    return table


def _lever(step: str) -> str:
    kinds = step.split("->")
    return next(lever for kind, lever in LEVERS.items() if any(part.startswith(kind) for part in kinds))


def verdict(table: pd.DataFrame, actors: int) -> str:
    """What bounded the run: the model's actors (``actors`` of them) where they were busy; else the
    busiest other step, where one was busy enough to hold them up; else the run's own shortness."""
    model = next(step for step in table.index if "MapBatches" in step)
    busy = table.loc[model, "busy_at_once"]
    if busy >= BUSY * actors:
        work = "decoding and the model, fused in them," if "->" in model else "the model in them"
        return (f"{model}: {busy:.1f} of its {actors} actors busy at once on average: {work} bound the run. "
                f"Try {_lever(model)}.")
    waited = f"{model}: only {busy:.1f} of its {actors} actors busy at once on average: they waited."
    others = table.drop(index=model)
    if others.empty or others["busy_at_once"].max() < INPUT_BUSY:
        return (f"{waited} No other step was busy either ({', '.join(others.index) or 'none'}): the run was too "
                "short for the pool, whose start and first batches leave it idle. Measure on more images.")
    slowest = others["busy_at_once"].idxmax()
    return (f"{waited} {slowest} was busiest of the other steps ({others.loc[slowest, 'busy_at_once']:.1f} workers at "
            f"once). Try {_lever(slowest)}.")
