"""A run of notebook 03: which images it reads, where it writes, and when its predictions
replace the last complete ones. Nothing complete is deleted because of an error.

    run = runs.open_run(cfg, listing)            # a new run, or the killed or stopped one it resumes
    files = ray.data.read_binary_files(run.to_read, ...)   # ... map, map_batches: the pipeline
    with run.writing(FastClassifier, preprocess, plan=plan):
        predictions.write_parquet(run.path, filesystem=run.filesystem)
    summary = run.publish()                      # predictions.json names it; notebook 04 reads it

Each run writes into a folder of its own under ``<output_dir>/predictions/``. Its ``run.json``
records the settings it classifies (``data_uri``, ``model_name``, ``limit``) and what made its
rows: the model and a fingerprint of the code of the classes and functions given to
``writing``. Its Parquet files are the checkpoint: a complete file holds whole rows. A run
that is killed, stopped, loses a node or fails on the way keeps its folder and files, and the
previous predictions stay what ``predictions.json`` names. The next ``open_run`` with the same
settings resumes it, reading only the images no complete file holds, unless it failed with an
error raised in your code (you will change the code): then a new run starts, and the old
folder stays until a run completes. ``publish`` deletes the runs it supersedes.
"""
from __future__ import annotations

import _thread
import contextlib
import gc
import hashlib
import inspect
import math
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from helpers import cluster, ray_workarounds
from helpers.data import Listing, select_images
from helpers.inference import ActorPlan, steady_images_per_second
from helpers.settings import Settings
from helpers.storage import Location, read_json, read_parquet, write_csv, write_json

RUN_RECORD = "run.json"
READ_ATTEMPTS = 4  # of each file of a run being resumed, 1, 2 and 4 s apart
NODE_CHECK_S = 2.0


class RunError(RuntimeError):
    """A run cannot go on as asked; the message says why and what to do. Nothing was deleted."""


@dataclass(frozen=True)
class RunSummary:
    """What ``predictions.json`` records for notebook 04."""

    run_id: str
    files: list[str]  # the Parquet files, relative to the output folder
    skipped_file: str  # CSV of every file not classified, with the reason
    num_rows: int  # image files read: classified plus unreadable
    num_images: int  # images classified
    num_skipped: int  # unreadable images plus files that were never images
    resumed_rows: int  # rows written before this run resumed the folder (0: a fresh run)
    seconds: float  # the write: starting the actors, loading the model, reading, classifying, writing
    images_per_second: float | None  # steady state (needs ``predicted_at``, ``actor`` and 2 batches an actor)
    overall_images_per_second: float | None  # images this run classified / ``seconds``
    made_by: dict  # the model and the fingerprint of the code that classified
    model_name: str
    data_uri: str
    limit: int | None
    batch_size: int
    num_actors: int
    threads_per_actor: int

    def __str__(self) -> str:
        steady = (f"{self.images_per_second} images/s once every actor was up" if self.images_per_second
                  else "too few batches per actor for a steady rate")
        return (f"{self.num_images} images classified, {self.num_skipped} files skipped, in {self.seconds:.1f} s "
                f"with {self.num_actors} actor(s): {steady}")


@dataclass
class Run:
    """One run's folder; ``to_read`` is what is left for it to classify."""

    settings: Settings
    listing: Listing
    location: Location
    to_read: list[str]  # the paths to read: the selected images no complete file holds yet
    resumed: frozenset[str] = frozenset()  # the paths that complete files held when opened
    seconds: float | None = None
    plan: ActorPlan | None = None
    _files_at_open: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def path(self) -> str:
        """The folder inside its filesystem, as ``write_parquet`` takes it."""
        return self.location.path

    @property
    def filesystem(self):
        return self.location.filesystem

    @contextlib.contextmanager
    def writing(self, *code: Callable, plan: ActorPlan) -> Iterator[Run]:
        """Around ``write_parquet``: record what makes the rows (``code``: your class and
        ``preprocess``), watch the nodes, and on any failure keep every complete file, end the
        run's actors and say what happened. A node lost in a way that the plan no longer
        fits (the run would wait forever for CPUs) ends the run with a ``RunError``."""
        import ray

        made_by = {"model_name": self.settings.model_name, "code": fingerprint(*code)}
        self._check_can_write(made_by)
        self.plan = plan
        before, free = ray_workarounds.live_actors(), _free_resources()
        started = time.perf_counter()
        try:
            with _NodeWatch(plan) as watch:
                yield self
        except BaseException as error:
            in_your_code = isinstance(error, ray.exceptions.UserCodeException)
            with contextlib.suppress(Exception):  # keep the run's own error, not the clean-up's
                _end_actors(before, free)
                self._record(last_attempt=f"{type(error).__name__}: {str(error)[:200]}", resume=not in_your_code)
            kept = f"The rows in complete files of {self.location} are kept, and the previous predictions are unchanged."
            then = ("Fix your code and run the notebook again: a new run starts." if in_your_code
                    else "Run the notebook again with the same data_uri, model_name and limit: it resumes.")
            if watch.lost:
                raise RunError(f"{watch.lost} {kept} {then}") from None
            error.add_note(f"{kept} {then}")
            raise
        self.seconds = time.perf_counter() - started

    def _check_can_write(self, made_by: dict) -> None:
        """Refuse to mix rows of other code, or to write images again that are written already."""
        record = _record_of(self.location) or self._record(**_settings_record(self.settings))
        names = _parquet_names(self.location)
        if names and record.get("made_by", made_by) != made_by:
            self._record(resume=False)
            raise RunError(f"Run {self.location.name} was made by other code ({record['made_by']}, now {made_by}): "
                           "its rows must not mix with this code's. Run the cells again from `runs.open_run`: "
                           "it starts a new run, and the old one is deleted once the new one completes.")
        if names - self._files_at_open:
            raise RunError(f"Run {self.location.name} has written files since this dataset was read (an earlier "
                           "attempt of this run): writing it again would repeat their images. Run the cells "
                           "again from `runs.open_run`: it reads only what is left.")
        self._record(made_by=made_by)

    def _record(self, **changes) -> dict:
        """Update the folder's ``run.json`` and return it."""
        record = {**(_record_of(self.location) or {}), **changes}
        write_json(self.location / RUN_RECORD, record)
        return record

    def publish(self) -> RunSummary:
        """Once every selected image has one row: write ``skipped.csv``, then replace
        ``predictions.json`` (in one step) to name this run, and delete the runs it supersedes."""
        cfg, files = self.settings, [file for file in self.location.children() if file.name.endswith(".parquet")]
        written = read_parquet(files)
        selected = set(select_images(self.listing.images, self.listing.root, cfg.limit))
        if len(written) != written["path"].nunique() or set(written["path"]) != selected:
            raise RunError(f"Run {self.location.name} holds {written['path'].nunique()} of the {len(selected)} images "
                           f"({len(written)} rows): not published. Run the notebook again: it resumes.")
        skipped = skipped_files(self.listing, written)
        write_csv(self.location / "skipped.csv", skipped, index=False)
        this_run = written[~written["path"].isin(self.resumed)]
        timed = {"predicted_at", "actor"} <= set(written.columns) and this_run["predicted_at"].notna().all()
        seconds = self.seconds or float("nan")
        summary = RunSummary(
            run_id=self.location.name, files=[file.relative_to(cfg.output_dir) for file in files],
            skipped_file=(self.location / "skipped.csv").relative_to(cfg.output_dir),
            num_rows=len(written), num_images=int((written["error"] == "").sum()), num_skipped=len(skipped),
            resumed_rows=len(written) - len(this_run), seconds=round(seconds, 3),
            images_per_second=_round(steady_images_per_second(this_run)) if timed else None,
            overall_images_per_second=_round(int((this_run["error"] == "").sum()) / seconds),
            made_by=_record_of(self.location).get("made_by", {}), model_name=cfg.model_name,
            data_uri=cfg.data_uri, limit=cfg.limit, batch_size=cfg.batch_size,
            num_actors=self.plan.num_actors if self.plan else 0, threads_per_actor=self.plan.threads if self.plan else 0,
        )
        write_json(cfg.predictions_manifest, asdict(summary))
        for folder in cfg.predictions_dir.children():
            record = _record_of(folder)
            if folder.name != summary.run_id and (record is None or _same_settings(record, cfg)):
                folder.delete()
        return summary


def open_run(settings: Settings, listing: Listing) -> Run:
    """The run that classifies ``listing``'s selected images with these settings, and says so:
    the newest unfinished run with the same settings, resumed, or a new one."""
    selected = select_images(listing.images, listing.root, settings.limit)
    manifest = settings.predictions_manifest
    current = read_json(manifest)["run_id"] if manifest.exists() else None
    for folder in sorted(settings.predictions_dir.children(), key=lambda folder: folder.name, reverse=True):
        record = _record_of(folder)
        if folder.name == current or record is None or not _same_settings(record, settings):
            continue
        if not record.get("resume", True):
            print(f"Run {folder.name} stopped on an error in your code ({record.get('last_attempt')}): a new run "
                  "starts; that run's files are kept until this one completes.")
            break
        names = _parquet_names(folder)
        done = {path for name in names if (paths := _paths_in(folder / name)) is not None for path in paths}
        left = [path for path in selected if path not in done]
        if not left or done - set(selected):
            print(f"Run {folder.name} holds {len(done)} images of another selection, or all of them unpublished: "
                  "a new run starts; that run is kept until this one completes.")
            break
        print(f"Resuming run {folder.name}: {len(done)} of {len(selected)} images are classified already; "
              f"reading the other {len(left)}.")
        return Run(settings, listing, folder, left, frozenset(done), _files_at_open=_parquet_names(folder))
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    print(f"New run {run_id}: {len(selected)} images to classify.")
    return Run(settings, listing, settings.predictions_dir / run_id, list(selected))


def skipped_files(listing: Listing, predictions: pd.DataFrame) -> pd.DataFrame:
    """Every file that was not classified, with the reason."""
    unreadable = predictions.loc[predictions["error"] != "", ["path", "error"]]
    return pd.concat([pd.DataFrame(listing.skipped, columns=["path", "reason"]),
                      unreadable.rename(columns={"error": "reason"})], ignore_index=True
                     ).sort_values("path", ignore_index=True)


def fingerprint(*code: Callable) -> str:
    """A digest of the bytecode of these functions and classes (and of the classes they
    derive from in the same module): it changes when their code changes, not when a cell
    moves or a comment changes. (``inspect.getsource`` fails for notebook classes.)"""
    digest = hashlib.sha256()
    for thing in code:
        classes = [cls for cls in inspect.getmro(thing) if cls.__module__ == thing.__module__] \
            if inspect.isclass(thing) else []
        for cls in classes:
            digest.update(cls.__qualname__.encode())
            for name, member in sorted(vars(cls).items()):
                function = getattr(member, "__func__", member)
                if inspect.isfunction(function):
                    digest.update(name.encode() + _code_bytes(function.__code__))
        if not classes:
            digest.update(_code_bytes(thing.__code__))
    return digest.hexdigest()[:16]


def _code_bytes(code: types.CodeType) -> bytes:
    consts = [_code_bytes(const) if isinstance(const, types.CodeType)
              else repr(sorted(map(repr, const)) if isinstance(const, frozenset) else const).encode()
              for const in code.co_consts]
    return b"|".join([code.co_code, repr((code.co_names, code.co_varnames)).encode(),
                      getattr(code, "co_exceptiontable", b""), *consts])


def _round(rate: float) -> float | None:
    """A rate for JSON: 2 decimals, None where there is none (NaN)."""
    return None if math.isnan(rate) else round(rate, 2)


def _settings_record(settings: Settings) -> dict:
    return {"data_uri": settings.data_uri, "model_name": settings.model_name, "limit": settings.limit}


def _same_settings(record: dict, settings: Settings) -> bool:
    return all(record.get(key) == value for key, value in _settings_record(settings).items())


def _record_of(folder: Location) -> dict | None:
    record = folder / RUN_RECORD
    return read_json(record) if record.exists() else None


def _parquet_names(folder: Location) -> frozenset[str]:
    return frozenset(child.name for child in folder.children() if child.name.endswith(".parquet"))


def _paths_in(file: Location) -> list[str] | None:
    """The ``path`` column of a complete Parquet file; None for a file cut off mid-write (no
    Parquet footer, all its bytes read), which is then deleted. A file that cannot be read
    (a dropped connection, a timeout, a permission) is retried, then stops the run, naming
    it; nothing is deleted."""
    for attempt in range(READ_ATTEMPTS):
        try:
            size, data = file.filesystem.get_file_info(file.path).size, file.read_bytes()
            if len(data) == size:
                break
            error: Exception = OSError(f"read {len(data)} of its {size} bytes")
        except OSError as failed:
            error = failed
        if attempt == READ_ATTEMPTS - 1:
            raise RunError(f"Cannot read {file} of an unfinished run ({error}); nothing was deleted. "
                           "Check the connection and permissions, then run the notebook again.") from None
        time.sleep(2 ** attempt)
    try:
        return pq.read_table(pa.BufferReader(data), columns=["path"]).column("path").to_pylist()
    except (pa.ArrowInvalid, OSError):  # what pyarrow raises for a file that is not whole Parquet
        if data.endswith(b"PAR1"):  # the footer is there: damaged, not unfinished
            raise RunError(f"{file} is a whole Parquet file that cannot be read; nothing was deleted. "
                           "Move it away and run the notebook again.") from None
    file.delete()
    return None


def _free_resources() -> dict[str, float]:
    import ray

    available = ray.available_resources()
    return {name: available.get(name, 0.0) for name in ("CPU", "GPU")}


def _end_actors(before: set[str], free_before: dict[str, float], grace_s: float = 2.0, timeout_s: float = 30.0) -> None:
    """After a failed run: end the actors it started and wait until Ray reports their CPUs
    and GPUs free again, so that running again does not wait for them."""
    gc.collect()  # the executor's reference cycles, and with them its actors
    deadline = time.monotonic() + grace_s
    while (left := ray_workarounds.live_actors() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    ray_workarounds.kill_actors(left)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (ray_workarounds.live_actors() - before or any(
            free < free_before[name] for name, free in _free_resources().items())):
        time.sleep(0.1)


class _NodeWatch:
    """Within: every ``NODE_CHECK_S``, look for nodes that were live at the start and are
    gone; if the plan no longer fits the nodes left, say why in ``lost`` and interrupt the
    main thread (the run would otherwise wait forever for a CPU that no node has)."""

    def __init__(self, plan: ActorPlan):
        self.plan, self.lost = plan, ""
        self._stop = threading.Event()

    def __enter__(self) -> _NodeWatch:
        self._start = cluster.live_nodes()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="node-watch")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(NODE_CHECK_S):
            try:
                live = cluster.live_nodes()
            except Exception:  # noqa: BLE001 - the connection to Ray is going away with the run
                continue
            gone = [node for node_id, node in self._start.items() if node_id not in live]
            sizes = tuple((node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
                          for node in live.values())
            if gone and not self.plan.fits(sizes) and not self._stop.is_set():
                names = ", ".join(f"{node['NodeID'][:12]} ({node['NodeManagerAddress']}, "
                                  f"{node['Resources'].get('CPU', 0):g} CPUs)" for node in gone)
                self.lost = (f"Lost node {names} at {time.strftime('%H:%M:%S')}: the plan ({self.plan}) does "
                             f"not fit the nodes left ({cluster.ClusterInfo(tuple(sorted(sizes))).describe_nodes()}),"
                             " so the run would wait forever for a CPU.")
                _thread.interrupt_main()
                return
