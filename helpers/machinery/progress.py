"""Progress during a write: every ``PRINT_EVERY_S``, how many images the run's complete Parquet
files hold, once that number has grown."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pyarrow.parquet as pq

from helpers.machinery.run_files import parquet_names
from helpers.storage import Location

PRINT_EVERY_S = 10.0


@contextlib.contextmanager
def reporting(folder: Location, files_before: frozenset[str], total: int) -> Iterator[None]:
    """For the duration, print ``N of total images written, T s`` as the files in ``folder``
    (other than ``files_before``) fill up."""
    rows: dict[str, int] = {}
    stop, started = threading.Event(), time.monotonic()

    def report() -> None:
        while not stop.wait(PRINT_EVERY_S):
            before = sum(rows.values())
            with contextlib.suppress(OSError):  # the store comes and goes
                for name in parquet_names(folder) - files_before - set(rows):
                    with contextlib.suppress(OSError, ValueError):  # being written
                        with folder.filesystem.open_input_file((folder / name).path) as file:
                            rows[name] = pq.read_metadata(file).num_rows
            if sum(rows.values()) > before:
                print(f"{sum(rows.values())} of {total} images written, {time.monotonic() - started:.0f} s", flush=True)

    thread = threading.Thread(target=report, daemon=True, name="progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
