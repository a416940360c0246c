"""A run of notebook 03 (``open_run``, ``Run.writing``, ``Run.publish``): a folder under
``<output_dir>/predictions/`` whose ``run.json`` records its settings and what made its rows, and
whose complete Parquet files are the checkpoint. A run that is killed, stopped, loses a node or
fails keeps its folder, and the next ``open_run`` with the same settings resumes it, unless it
failed in your code: then a new run starts. Only ``publish`` deletes the runs it supersedes.
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
from dataclasses import asdict, dataclass, field, replace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from helpers import cluster, ray_workarounds
from helpers.data import Listing, select_images
from helpers.inference import ActorPlan, steady_images_per_second
from helpers.settings import Settings
from helpers.storage import Location, read_json, read_parquet, write_csv, write_json

RUN_RECORD = "run.json"
SETTINGS = ("data_uri", "model_name", "limit")  # a run resumes only with the same
READ_ATTEMPTS = 4  # of each file of a run being resumed, 1, 2 and 4 s apart
NODE_CHECK_S, PROGRESS_S = 2.0, 10.0


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
    resumed_rows: int  # rows written before this run resumed the folder
    seconds: float  # the write: starting the actors, loading the model, reading, classifying, writing
    images_per_second: float | None  # steady, once every actor is up (None: too few batches)
    made_by: dict  # the model and the fingerprint of the code that classified
    model_name: str
    data_uri: str
    limit: int | None
    batch_size: int
    num_actors: int  # that classified this run's rows (where the rows say), else as planned
    threads_per_actor: int

    def __str__(self) -> str:
        return (f"{self.num_images} images classified, {self.num_skipped} files skipped, in {self.seconds:.1f} s "
                f"with {self.num_actors} actor(s): " + (f"{self.images_per_second} images/s once every actor was up"
                                                       if self.images_per_second else "no steady rate (it needs "
                                                       "predicted_at and actor columns, and 2 batches an actor)"))


@dataclass
class Run:
    """One run's folder, and ``to_read``: the selected images that no complete file holds yet."""

    settings: Settings
    listing: Listing
    location: Location
    to_read: list[str]
    resumed: frozenset[str] = frozenset()  # the paths that its complete files held when opened
    seconds: float = math.nan
    plan: ActorPlan | None = None
    _files_at_open: frozenset[str] = field(default=frozenset(), repr=False)

    path = property(lambda self: self.location.path, doc="The folder inside its filesystem, for write_parquet.")
    filesystem = property(lambda self: self.location.filesystem)

    @contextlib.contextmanager
    def writing(self, *code: Callable, plan: ActorPlan) -> Iterator[Run]:
        """Around ``write_parquet``: record what makes the rows (``code``), print progress, watch
        the nodes (a lost node the plan needs stops the run with a ``RunError``); on any failure
        keep every complete file, end the run's actors and say what happened."""
        import ray
        made_by = {"model_name": self.settings.model_name, "code": fingerprint(*code)}
        self._check_can_write(made_by)
        self.plan, before, free, lost = plan, ray_workarounds.live_actors(), _free_resources(), []
        started = time.perf_counter()
        try:
            with _watching(self, plan, lost, before):
                yield self
        except BaseException as error:
            in_your_code = isinstance(error, ray.exceptions.UserCodeException)
            with contextlib.suppress(Exception):  # keep the run's own error, not the clean-up's
                _end_actors(before, free)
                self._record(last_attempt=f"{type(error).__name__}: {str(error)[:200]}", resume=not in_your_code)
            note = (f"The rows in complete files of {self.location} are kept, and the previous predictions are "
                    "unchanged. " + ("Fix your code and run the notebook again: a new run starts." if in_your_code
                                     else "Run the notebook again with the same data_uri, model_name and limit: "
                                          "it resumes."))
            if lost:
                raise RunError(f"{lost[0]} {note}") from None
            error.add_note(note)
            raise
        self.seconds = time.perf_counter() - started

    def _check_can_write(self, made_by: dict) -> None:
        """Refuse to mix rows of other code, or to write again images written since the read."""
        record = _record_of(self.location) or self._record(**_settings_of(self.settings))
        names = _parquet_names(self.location)
        if names and record.get("made_by", made_by) != made_by:
            self._record(resume=False)
            raise RunError(f"Run {self.location.name} was made by other code ({record['made_by']}, now {made_by}): "
                           "its rows must not mix with this code's. Run the cells again from `runs.open_run`: it "
                           "starts a new run, and the old one is deleted once the new one completes.")
        if names - self._files_at_open:
            raise RunError(f"Run {self.location.name} has written files since this dataset was read (an earlier "
                           "attempt): writing it again would repeat their images. Run the cells again from "
                           "`runs.open_run`: it reads only what is left.")
        self._record(made_by=made_by)

    def _record(self, **changes) -> dict:
        write_json(self.location / RUN_RECORD, record := {**(_record_of(self.location) or {}), **changes})
        return record

    def publish(self) -> RunSummary:
        """Once every image has one row: write ``skipped.csv``, replace ``predictions.json``
        to name this run, delete the runs it supersedes."""
        cfg, files = self.settings, [file for file in self.location.children() if file.name.endswith(".parquet")]
        written = read_parquet(files)
        selected = set(select_images(self.listing.images, self.listing.root, cfg.limit))
        if len(written) != written["path"].nunique() or set(written["path"]) != selected:
            raise RunError(f"Run {self.location.name} holds {written['path'].nunique()} of the {len(selected)} images "
                           f"({len(written)} rows): not published. Run the notebook again: it resumes.")
        skipped = skipped_files(self.listing, written)
        write_csv(self.location / "skipped.csv", skipped, index=False)
        this_run = written[~written["path"].isin(self.resumed)]
        steady = (steady_images_per_second(this_run) if {"predicted_at", "actor"} <= set(written.columns)
                  and this_run["predicted_at"].notna().all() else math.nan)
        planned, threads = (self.plan.num_actors, self.plan.threads) if self.plan else (0, 0)
        actors = int(this_run["actor"].nunique()) if "actor" in this_run and len(this_run) else planned
        summary = RunSummary(
            self.location.name, [file.relative_to(cfg.output_dir) for file in files],
            (self.location / "skipped.csv").relative_to(cfg.output_dir), len(written),
            int((written["error"] == "").sum()), len(skipped), len(written) - len(this_run), round(self.seconds, 3),
            None if math.isnan(steady) else round(steady, 2), _record_of(self.location).get("made_by", {}),
            cfg.model_name, cfg.data_uri, cfg.limit, cfg.batch_size, actors, threads)
        previous = read_json(cfg.predictions_manifest)["run_id"] if cfg.predictions_manifest.exists() else None
        write_json(cfg.predictions_manifest, asdict(summary))
        for folder in cfg.predictions_dir.children():  # the last complete run, and this one's forerunners
            record = _record_of(folder)
            if folder.name != summary.run_id and (folder.name == previous or record is None
                                                  or _settings_of(record) == _settings_of(cfg)):
                folder.delete()
        return summary


def open_run(settings: Settings, listing: Listing) -> Run:
    """The newest unfinished run with these settings, resumed, or a new one; it says which."""
    selected = select_images(listing.images, listing.root, settings.limit)
    current = read_json(settings.predictions_manifest)["run_id"] if settings.predictions_manifest.exists() else None
    for folder in sorted(settings.predictions_dir.children(), key=lambda folder: folder.name, reverse=True):
        record = _record_of(folder)
        if folder.name == current or record is None or _settings_of(record) != _settings_of(settings):
            continue
        if not record.get("resume", True):
            print(f"Run {folder.name} stopped on an error in your code ({record.get('last_attempt')}): a new run "
                  "starts; that run's files are kept until this one completes.")
            break
        done = {path for name in _parquet_names(folder) for path in _paths_in(folder / name)}
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
    unreadable = predictions.loc[predictions["error"] != "", ["path", "error"]].rename(columns={"error": "reason"})
    return pd.concat([pd.DataFrame(listing.skipped, columns=["path", "reason"]), unreadable],
                     ignore_index=True).sort_values("path", ignore_index=True)


def fingerprint(*code: Callable) -> str:
    """A digest of the bytecode of these functions and classes (and their bases in the same
    module): it changes with their code, not with comments (``getsource`` fails in notebooks)."""
    digest = hashlib.sha256()
    for thing in code:
        classes = inspect.getmro(thing) if inspect.isclass(thing) else ()  # the class itself first
        for cls in (cls for cls in classes if cls.__module__ == thing.__module__):
            digest.update(cls.__qualname__.encode())
            for name, member in sorted(vars(cls).items()):
                if inspect.isfunction(function := getattr(member, "__func__", member)):
                    digest.update(name.encode() + _code_bytes(function.__code__))
        if not classes:
            digest.update(_code_bytes(thing.__code__))
    return digest.hexdigest()[:16]


def _code_bytes(code: types.CodeType) -> bytes:
    consts = [_code_bytes(const) if isinstance(const, types.CodeType)
              else repr(sorted(map(repr, const)) if isinstance(const, frozenset) else const).encode()
              for const in code.co_consts]
    return b"|".join([code.co_code, repr((code.co_names, code.co_varnames)).encode(), code.co_exceptiontable, *consts])


def _settings_of(record: dict | Settings) -> dict:
    return {key: record[key] if isinstance(record, dict) else getattr(record, key) for key in SETTINGS
            if isinstance(record, Settings) or key in record}


def _record_of(folder: Location) -> dict | None:
    record = folder / RUN_RECORD
    return read_json(record) if record.exists() else None


def _parquet_names(folder: Location) -> frozenset[str]:
    return frozenset(child.name for child in folder.children() if child.name.endswith(".parquet"))


def _paths_in(file: Location) -> list[str]:
    """The ``path`` column of a complete Parquet file; none for a file cut off mid-write, which is
    deleted. A file that cannot be read is retried, then stops the run, naming it."""
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
    return []


def _free_resources() -> dict[str, float]:
    import ray
    return {name: ray.available_resources().get(name, 0.0) for name in ("CPU", "GPU")}


def _end_actors(before: set[str], free_before: dict[str, float], grace_s: float = 2.0, timeout_s: float = 30.0) -> None:
    """After a failed run: end its actors and wait until their CPUs and GPUs are free again."""
    gc.collect()  # the executor's reference cycles, and with them its actors
    deadline = time.monotonic() + grace_s
    while (left := ray_workarounds.live_actors() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    ray_workarounds.kill_actors(left)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (ray_workarounds.live_actors() - before or any(
            free < free_before[name] for name, free in _free_resources().items())):
        time.sleep(0.1)


@contextlib.contextmanager
def _watching(run: Run, plan: ActorPlan, lost: list[str], before: set[str]) -> Iterator[None]:
    """Within ``writing``, every ``NODE_CHECK_S``: print progress; if a node is gone and the pool (as
    planned or grown since ``before``) no longer fits the nodes left, say why in ``lost`` and interrupt."""
    rows, stop = {}, threading.Event()
    start, started = cluster.live_nodes(), time.monotonic()

    def progress() -> None:
        before = sum(rows.values())
        for name in _parquet_names(run.location) - run._files_at_open - set(rows):
            with contextlib.suppress(OSError, ValueError):  # being written
                with run.filesystem.open_input_file((run.location / name).path) as file:
                    rows[name] = pq.read_metadata(file).num_rows
        if sum(rows.values()) > before:
            print(f"{sum(rows.values())} of {len(run.to_read)} images written, {time.monotonic() - started:.0f} s",
                  flush=True)

    def watch() -> None:
        checks = 0
        while not stop.wait(NODE_CHECK_S):
            checks += 1
            try:
                live = cluster.live_nodes()
                if checks % round(PROGRESS_S / NODE_CHECK_S) == 0:
                    progress()
                gone = [node for node_id, node in start.items() if node_id not in live]
                actors = len(ray_workarounds.live_actors() - before) if gone else 0
            except Exception:  # noqa: BLE001 - the connection to Ray or the store comes and goes
                continue
            sizes = tuple((node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0)) for node in live.values())
            pool = replace(plan, num_actors=max(plan.num_actors, actors))
            if gone and not pool.fits(sizes) and not stop.is_set():
                names = ", ".join(f"{node['NodeID'][:12]} ({node['NodeManagerAddress']}, "
                                  f"{node['Resources'].get('CPU', 0):g} CPUs)" for node in gone)
                lost.append(f"Lost node {names} at {time.strftime('%H:%M:%S')}: the pool ({pool}) does not fit the "
                            f"nodes left ({cluster.ClusterInfo(tuple(sorted(sizes))).describe_nodes()}), so the run "
                            "would wait forever for a CPU.")
                _thread.interrupt_main()
                return

    thread = threading.Thread(target=watch, daemon=True, name="run-watch")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
