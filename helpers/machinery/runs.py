"""A run of notebook 03: a folder under ``<output_dir>/predictions/`` whose ``run.json`` records its
settings and what made its rows, and whose complete Parquet files are the checkpoint.

    run = runs.open_run(cfg, listing)                   # the images left to read, and where to write
    with run.writing(Classifier, preprocess, actors=2, num_cpus=0.5):
        predictions.write_parquet(run.path, filesystem=run.filesystem)
    print(run.summary)                                  # published: notebook 04 reads this run

A run that is killed, stopped, loses a node or fails keeps its folder, and the next ``open_run``
with the same settings resumes it, unless it failed in your code: then a new run starts. Only a
run that holds every image once is published, and only then are the runs it supersedes deleted.
"""
from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from helpers.data import Listing, select_images
from helpers.machinery import node_watch, progress, ray_workarounds
from helpers.machinery.fingerprint import fingerprint
from helpers.machinery.run_files import RunError, parquet_names, paths_in, read_columns
from helpers.machinery.steady_rate import steady_images_per_second
from helpers.settings import Settings
from helpers.storage import Location, read_json, write_csv, write_json

__all__ = ["RunError", "Run", "RunSummary", "open_run", "skipped_files"]

RUN_RECORD = "run.json"
SETTINGS = ("data_uri", "model_name", "limit")  # a run resumes only with the same
PUBLISHED_COLUMNS = ("path", "error", "levers", "predicted_at", "actor")  # what publishing reads of each row


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
    levers: dict[str, int]  # rows by the levers they were made with (the rows' ``levers`` column)
    model_name: str
    data_uri: str
    limit: int | None
    batch_size: int
    num_actors: int  # that classified this run's rows (where the rows say), else as asked

    def __str__(self) -> str:
        if self.images_per_second:
            rate = f"{self.images_per_second} images/s once every actor was up"
        else:
            rate = "no steady rate (it needs predicted_at and actor columns, and 2 batches an actor)"
        overall = f" ({self.num_rows / self.seconds:.1f} files/s in all, start-up included)" if self.seconds else ""
        return (f"{self.num_images} images classified, {self.num_skipped} files skipped, in {self.seconds:.1f} s"
                f"{overall} with {self.num_actors} actor(s): {rate}")


@dataclass
class Run:
    """One run's folder, and ``to_read``: the selected images that no complete file holds yet."""

    settings: Settings
    listing: Listing
    location: Location
    to_read: list[str]
    resumed: frozenset[str] = frozenset()  # the paths that its complete files held when opened
    summary: RunSummary | None = None  # once published
    _files_at_open: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def path(self) -> str:
        """The folder inside its filesystem, for ``write_parquet``."""
        return self.location.path

    @property
    def filesystem(self):
        return self.location.filesystem

    @contextlib.contextmanager
    def writing(self, *code: Callable, actors: int, num_cpus: float, num_gpus: float = 0) -> Iterator[Run]:
        """Around ``write_parquet``: record what makes the rows (``code``), print progress, and
        watch the nodes (``actors`` of ``num_cpus`` and ``num_gpus`` each, tasks of ``num_cpus``:
        a lost node they need stops the run with a ``RunError``); once the write is done, publish
        the run. On any failure keep every complete file, end the run's actors, say what happened."""
        import ray
        made_by = {"model_name": self.settings.model_name, "code": fingerprint(*code)}
        self._check_can_write(made_by)
        pool = node_watch.Pool(actors, num_cpus, num_gpus)
        before, free, lost = ray_workarounds.live_actors(), ray_workarounds.free_resources(), []
        started = time.perf_counter()
        try:
            with node_watch.watching(pool, lost), progress.reporting(self.location, self._files_at_open,
                                                                      len(self.to_read)):
                yield self
        except BaseException as error:
            in_your_code = isinstance(error, ray.exceptions.UserCodeException)
            with contextlib.suppress(Exception):  # keep the run's own error, not the clean-up's
                ray_workarounds.end_failed_run_actors(before, free)
                self._record(last_attempt=f"{type(error).__name__}: {str(error)[:200]}", resume=not in_your_code)
            if in_your_code:
                then = "Fix your code and run the notebook again: a new run starts."
            else:
                then = "Run the notebook again with the same data_uri, model_name and limit: it resumes."
            note = (f"The rows in complete files of {self.location} are kept, and the previous predictions are "
                    f"unchanged. {then}")
            if lost:
                raise RunError(f"{lost[0]} {note}") from None
            error.add_note(note)
            raise
        self.publish(seconds=time.perf_counter() - started, actors=actors)

    def _check_can_write(self, made_by: dict) -> None:
        """Refuse to mix rows of other code, or to write again images written since the read."""
        record = _record_of(self.location) or self._record(**_settings_of(self.settings))
        names = parquet_names(self.location)
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
        record = {**(_record_of(self.location) or {}), **changes}
        write_json(self.location / RUN_RECORD, record)
        return record

    def publish(self, seconds: float = math.nan, actors: int = 0) -> RunSummary:
        """Once every image has one row: write ``skipped.csv``, replace ``predictions.json`` to name
        this run, delete the runs it supersedes. ``seconds``: the write's; ``actors``: as asked."""
        cfg = self.settings
        files = [file for file in self.location.children() if file.name.endswith(".parquet")]
        written = read_columns(files, PUBLISHED_COLUMNS)
        paths = written["path"]
        selected = pa.array(select_images(self.listing.images, self.listing.root, cfg.limit), paths.type)
        held, wanted = pc.count_distinct(paths).as_py(), pc.count_distinct(selected).as_py()
        if len(written) != held or held != wanted or not pc.all(pc.is_in(paths, value_set=selected)).as_py():
            raise RunError(f"Run {self.location.name} holds {held} of the {wanted} images "
                           f"({len(written)} rows): not published. Run the notebook again: it resumes.")
        unreadable = pc.fill_null(pc.not_equal(written["error"], ""), True)
        skipped = skipped_files(self.listing, written.filter(unreadable).select(["path", "error"]).to_pandas())
        write_csv(self.location / "skipped.csv", skipped, index=False)
        this_run = written
        if self.resumed:
            resumed = pa.array(list(self.resumed), paths.type)
            this_run = written.filter(pc.invert(pc.is_in(paths, value_set=resumed)))
        self.summary = RunSummary(
            run_id=self.location.name,
            files=[file.relative_to(cfg.output_dir) for file in files],
            skipped_file=(self.location / "skipped.csv").relative_to(cfg.output_dir),
            num_rows=len(written),
            num_images=pc.sum(pc.equal(written["error"], "")).as_py() or 0,
            num_skipped=len(skipped),
            resumed_rows=len(written) - len(this_run),
            seconds=round(seconds, 3),
            images_per_second=_steady_rate(this_run),
            made_by=_record_of(self.location).get("made_by", {}),
            levers=_counts(written["levers"]) if "levers" in written.column_names else {},
            model_name=cfg.model_name,
            data_uri=cfg.data_uri,
            limit=cfg.limit,
            batch_size=cfg.batch_size,
            num_actors=_actors(this_run) or actors,
        )
        previous = read_json(cfg.predictions_manifest)["run_id"] if cfg.predictions_manifest.exists() else None
        write_json(cfg.predictions_manifest, asdict(self.summary))
        for folder in cfg.predictions_dir.children():  # the last complete run, and this one's forerunners
            record = _record_of(folder)
            superseded = folder.name == previous or record is None or _settings_of(record) == _settings_of(cfg)
            if folder.name != self.summary.run_id and superseded:
                folder.delete()
        return self.summary


def open_run(settings: Settings, listing: Listing) -> Run:
    """A run for these settings: the unfinished one that they match, resumed, or a new one; it says which."""
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
        done = {path for name in parquet_names(folder) for path in paths_in(folder / name)}
        left = [path for path in selected if path not in done]
        if not left or done - set(selected):
            print(f"Run {folder.name} holds {len(done)} images of another selection, or all of them unpublished: "
                  "a new run starts; that run is kept until this one completes.")
            break
        print(f"Resuming run {folder.name}: {len(done)} of {len(selected)} images are classified already; "
              f"reading the other {len(left)}.")
        return Run(settings, listing, folder, left, frozenset(done), _files_at_open=parquet_names(folder))
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    print(f"New run {run_id}: {len(selected)} images to classify.")
    return Run(settings, listing, settings.predictions_dir / run_id, list(selected))


def skipped_files(listing: Listing, predictions: pd.DataFrame) -> pd.DataFrame:
    """Every file that was not classified, with the reason."""
    unreadable = predictions.loc[predictions["error"] != "", ["path", "error"]].rename(columns={"error": "reason"})
    return pd.concat([pd.DataFrame(listing.skipped, columns=["path", "reason"]), unreadable],
                     ignore_index=True).sort_values("path", ignore_index=True)


def _steady_rate(rows: pa.Table) -> float | None:
    """The steady images/s of these rows, where they say when and by which actor (else None)."""
    if not {"predicted_at", "actor"} <= set(rows.column_names):
        return None
    finished = rows.select(["predicted_at", "actor"]).to_pandas()
    if finished["predicted_at"].isna().any():
        return None
    rate = steady_images_per_second(finished)
    return None if math.isnan(rate) else round(rate, 2)


def _actors(rows: pa.Table) -> int:
    """How many actors classified these rows, where they say (else 0)."""
    return pc.count_distinct(rows["actor"]).as_py() if "actor" in rows.column_names else 0


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    """How many rows hold each value (nulls left out), the most frequent first, as pandas' ``value_counts``."""
    counts = pc.value_counts(column.drop_null())
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())
    return dict(sorted(pairs, key=lambda pair: -pair[1]))


def _settings_of(record: dict | Settings) -> dict:
    if isinstance(record, Settings):
        return {key: getattr(record, key) for key in SETTINGS}
    return {key: record[key] for key in SETTINGS if key in record}


def _record_of(folder: Location) -> dict | None:
    record = folder / RUN_RECORD
    return read_json(record) if record.exists() else None
