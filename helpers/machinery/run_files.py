"""A run folder's Parquet files: which are there, and the images a complete one holds. A file cut
off mid-write (all its bytes read, no Parquet footer) is deleted; one that cannot be read is
retried, then stops the run naming it; one that is whole but damaged stops it too."""
from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from helpers.storage import Location

READ_ATTEMPTS = 4  # of each file, 1, 2 and 4 s apart


class RunError(RuntimeError):
    """A run cannot go on as asked; the message says why and what to do. Nothing was deleted."""


def parquet_names(folder: Location) -> frozenset[str]:
    return frozenset(child.name for child in folder.children() if child.name.endswith(".parquet"))


def paths_in(file: Location) -> list[str]:
    """The ``path`` column of a complete Parquet file; none for a file cut off mid-write, which is deleted."""
    data = _read_whole(file)
    try:
        return pq.read_table(pa.BufferReader(data), columns=["path"]).column("path").to_pylist()
    except (pa.ArrowInvalid, OSError):  # what pyarrow raises for a file that is not whole Parquet
        if data.endswith(b"PAR1"):  # the footer is there: damaged, not unfinished
            raise RunError(f"{file} is a whole Parquet file that cannot be read; nothing was deleted. "
                           "Move it away and run the notebook again.") from None
    file.delete()
    return []


def read_columns(files: list[Location], columns: tuple[str, ...]) -> pa.Table:
    """Those of ``columns`` that the Parquet files hold, as one table (null where a file lacks
    one; no files: no rows): only what is asked is read, for millions of rows."""
    tables = []
    for file in files:
        with file.filesystem.open_input_file(file.path) as source:
            parquet = pq.ParquetFile(source)
            tables.append(parquet.read(columns=[name for name in columns if name in parquet.schema_arrow.names]))
    if not tables:
        return pa.table({name: pa.array([], pa.string()) for name in columns})
    return pa.concat_tables(tables, promote_options="default")


def _read_whole(file: Location) -> bytes:
    """Every byte of ``file``, retried ``READ_ATTEMPTS`` times (a dropped connection, a timeout)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            size, data = file.filesystem.get_file_info(file.path).size, file.read_bytes()
            if len(data) == size:
                return data
            error: Exception = OSError(f"read {len(data)} of its {size} bytes")
        except OSError as failed:
            error = failed
        if attempt < READ_ATTEMPTS - 1:
            time.sleep(2 ** attempt)
    raise RunError(f"Cannot read {file} of an unfinished run ({error}); nothing was deleted. "
                   "Check the connection and permissions, then run the notebook again.")
