"""The verdict on where a run's time went, fed both shapes: a busy pool, and actors that waited."""
import pandas as pd

from helpers.machinery import time_report

MODEL = "Map(preprocess)->MapBatches(FastClassifier)"


def _table(read: float, model: float, write: float) -> pd.DataFrame:
    """Steps busy at once as given, over 10 s each."""
    rows = {"ReadBinary": read, MODEL: model, "Write": write}
    return pd.DataFrame({"busy_s": {step: at_once * 10 for step, at_once in rows.items()},
                         "rows": 1000.0, "seconds": 10.0}).assign(busy_at_once=lambda t: t["busy_s"] / t["seconds"])


def test_a_busy_pool_points_at_more_actors_or_a_gpu():
    verdict = time_report.verdict(_table(read=0.3, model=1.9, write=0.1), actors=2)
    assert verdict.startswith(f"{MODEL}: 1.9 of its 2 actors busy at once") and "more actors" in verdict


def test_actors_that_waited_point_at_the_step_that_held_them_up():
    verdict = time_report.verdict(_table(read=0.9, model=0.9, write=0.1), actors=2)
    assert "only 0.9 of its 2 actors" in verdict and "they waited" in verdict
    assert "ReadBinary was busiest" in verdict and "more reads at once" in verdict
    assert "more actors" not in verdict


def test_the_same_busy_count_reads_differently_for_a_bigger_pool():
    assert "bound the run" in time_report.verdict(_table(0.2, 3.5, 0.1), actors=4)
    assert "they waited" in time_report.verdict(_table(0.2, 3.5, 0.1), actors=8)


def test_a_short_run_whose_pool_idled_says_so():
    verdict = time_report.verdict(_table(read=0.04, model=1.2, write=0.05), actors=2)
    assert "No other step was busy either" in verdict and "more images" in verdict


def test_steps_come_from_ray_datas_summary_parents_first():
    class Stat:
        def __init__(self, total):
            self.sum = total

    class Operator:
        def __init__(self, name, busy, rows_in, rows_out, start, end):
            self.operator_name, self.wall_time, self.total_input_num_rows = name, Stat(busy), rows_in
            self.output_num_rows, self.earliest_start_time, self.latest_end_time = Stat(rows_out), start, end

    class Summary:
        def __init__(self, operators, parents=()):
            self.operators_stats, self.parents = operators, list(parents)

    read = Summary([Operator("ReadBinary", 2.0, 0, 100, 0.0, 4.0)])
    summary = Summary([Operator(MODEL, 16.0, 100, 98, 1.0, 9.0)], parents=[read])
    table = time_report.steps(summary)
    assert list(table.index) == ["ReadBinary", MODEL]
    assert table.loc[MODEL, "busy_at_once"] == 2.0 and table.loc["ReadBinary", "rows"] == 100  # a read takes no rows in: its output
