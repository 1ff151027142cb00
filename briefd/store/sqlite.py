"""The SQLite backend of the journal: the embedded default, nothing to install.

The promises every backend keeps are in :mod:`briefd.store.base`.

The database is in WAL mode with ``synchronous=FULL``: a commit survives a
power cut, not only ``kill -9``. One connection, guarded by one lock, serves
every thread (the HTTP threads, the root and the journal actor). Opening it
checks it and moves a damaged one aside (:mod:`briefd.store.sqlite_open`).

A write the disk refuses (full, I/O error) is rolled back and raised as
:class:`~briefd.store.base.StoreUnavailable`, to be made again; output files
that cannot be written end the job with an ``OUTPUT_ERROR`` instead. Both are
recorded for ``/healthz`` (:class:`~briefd.store.health.WriteHealth`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from briefd.config import ConfigError, PipelineSpec
from briefd.messages import (
    ErrorCode,
    Event,
    JobCompleted,
    JobInfo,
    JobResult,
    JobSpec,
    JobState,
    PipelineError,
    StageState,
)
from briefd.store.base import (
    Run,
    StageRow,
    StageWrites,
    StoreUnavailable,
    closing_result,
    job_info,
    resumed_run,
)
from briefd.store.events import EventLog, SqliteEvents
from briefd.store.files import FILES, JobFiles
from briefd.store.health import WriteHealth
from briefd.store.pinned import SpecCache, pin_sqlite, pinned_sqlite, save_prompt_sqlite
from briefd.store.sqlite_open import open_journal_db, unavailable
from briefd.webhooks.outbox import SQLITE_SCHEMA as OUTBOX_SCHEMA

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL UNIQUE,
    spec         TEXT NOT NULL,
    state        TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    runs         INTEGER NOT NULL DEFAULT 0,  -- runs begun since the last clean end
    restarts     INTEGER NOT NULL DEFAULT 0,  -- runs that died, over the job's life
    result       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS stages (
    job_id     TEXT NOT NULL,
    stage      TEXT NOT NULL,
    state      TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    document   TEXT,
    error      TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, stage)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (  -- each job's events, streamed (briefd/store/events.py)
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    type   TEXT NOT NULL,
    ts     REAL NOT NULL,
    data   TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS pipelines (  -- every pipeline a job was accepted with (store/pinned)
    version    TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_pipelines (
    job_id  TEXT PRIMARY KEY,
    version TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stage_prompts (  -- templated prompts as rendered: a resume resends
    job_id TEXT NOT NULL,
    stage  TEXT NOT NULL,
    prompt TEXT NOT NULL,
    PRIMARY KEY (job_id, stage)
) WITHOUT ROWID;
"""
_LIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
JOURNAL = "journal"
"""The area journal write failures are reported under (:class:`WriteHealth`)."""


class Journal(StageWrites):
    """The durable record of the daemon's jobs (thread-safe)."""

    def __init__(
        self,
        path: Path,
        pipeline: PipelineSpec,
        *,
        jobs_dir: Path | None = None,
        on_finished: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.jobs_dir = jobs_dir if jobs_dir is not None else path.parent / "jobs"
        self._pipeline = pipeline
        self._on_finished = on_finished
        self._lock = threading.RLock()
        self._health = WriteHealth()
        self.files = JobFiles(self.jobs_dir, pipeline, self._health)
        self.event_log: EventLog = SqliteEvents(self)
        self._specs = SpecCache()  # each job's pipeline (its files' names), parsed once
        self.files.pipeline_of = self.pipeline_of
        self._db = open_journal_db(path)
        try:
            self._prepare()
        except BaseException:
            self._db.close()
            raise

    def _prepare(self) -> None:
        """Settings and schema; ConfigError (one line, exit 2) if the journal cannot be used."""
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(f"journal {self.path}: schema {version} is newer than this briefd")
        try:
            with self._tx() as db:  # not executescript: it commits on its own
                for statement in (_SCHEMA + OUTBOX_SCHEMA).split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except StoreUnavailable as err:
            raise ConfigError(f"{err} (free space, or check the disk)") from None

    def close(self) -> None:
        """Checkpoint the WAL and close; later calls raise."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed, or rolled back and raised (StoreUnavailable when
        the disk refused it)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self.event_log.begin()
                try:
                    yield self._db
                    self.event_log.flush(self._db)  # the events of this write, with it
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                if not unavailable(err):
                    raise
                self._health.failed(JOURNAL, f"{self.path}: {err}")
                raise StoreUnavailable(f"journal {self.path}: {err}") from err
            self._health.ok(JOURNAL)
        self.event_log.committed()

    # -- health ----------------------------------------------------------------------

    def write_problem(self) -> str | None:
        """What cannot be written now (None: all can). An area that failed is tried again
        (at most once a second), so freed space clears it without waiting for a job."""
        if self._health.probe_due(JOURNAL):
            with contextlib.suppress(StoreUnavailable), self._tx() as db:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # a real write, 1 page
        if self._health.probe_due(FILES):
            self.files.probe()
        return self._health.problem()

    # -- submission ------------------------------------------------------------------

    def add_job(
        self, job: JobSpec, *, pipeline: PipelineSpec | None = None
    ) -> tuple[JobInfo, bool]:
        """Record ``job`` as queued (committed on return); ``False`` if the id already exists.
        With ``pipeline``, the job keeps that version of it (:mod:`briefd.store.pinned`)."""
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM jobs WHERE job_id=?", (job.job_id,)).fetchone():
                created = False
            else:
                db.execute(
                    "INSERT INTO jobs (job_id, spec, state, submitted_at) VALUES (?, ?, ?, ?)",
                    (job.job_id, job.model_dump_json(), JobState.QUEUED.value, now),
                )
                db.executemany(
                    "INSERT INTO stages (job_id, stage, state, updated_at) VALUES (?, ?, ?, ?)",
                    [(job.job_id, s, StageState.PENDING.value, now) for s in job.prompts],
                )
                if pipeline is not None:
                    pin_sqlite(db, job.job_id, pipeline, now)
                created = True
        info = self.get(job.job_id)
        assert info is not None
        return info, created

    # -- runs ------------------------------------------------------------------------

    def unfinished(self) -> list[str]:
        """Jobs to resume at start: those that were running first, then the queue, each FIFO."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id FROM jobs WHERE state IN (?, ?) ORDER BY state = ? DESC, seq",
                (*_LIVE, JobState.RUNNING.value),
            ).fetchall()
        return [r["job_id"] for r in rows]

    def start_run(self, job_id: str) -> Run:
        """Mark the job running and return it with its ended stages' documents and errors.

        ``runs_died`` counts the runs begun since the job last ended cleanly: each
        of them died (a daemon crash, a coordinator death). Stages left ``running``
        by a dead run go back to ``pending``: their calls are made again. A stage
        that ended, in success or failure, is final.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None or row["state"] not in _LIVE:
                return Run(job=None)
            died = int(row["runs"])
            db.execute(
                "UPDATE jobs SET state=?, runs=runs+1, restarts=restarts+?, "
                "started_at=COALESCE(started_at, ?) WHERE job_id=?",
                (JobState.RUNNING.value, 1 if died else 0, now, job_id),
            )
            db.execute(
                "UPDATE stages SET state=?, updated_at=? WHERE job_id=? AND state=?",
                (StageState.PENDING.value, now, job_id, StageState.RUNNING.value),
            )
            ended = db.execute(
                "SELECT stage, state, document, error FROM stages "
                "WHERE job_id=? AND state IN (?, ?)",
                (job_id, StageState.COMPLETE.value, StageState.FAILED.value),
            ).fetchall()
            _, snapshot, prompts = pinned_sqlite(db, job_id)
        run = resumed_run(
            row["spec"],
            [(r["stage"], r["state"], r["document"], r["error"]) for r in ended],
            died,
            float(row["submitted_at"]),
        )
        return replace(run, pipeline=snapshot, prompts=prompts)

    def stage_prompt(self, job_id: str, stage: str, prompt: str) -> None:
        """A templated prompt as rendered: a resumed run sends this text again."""
        with self._tx() as db:
            save_prompt_sqlite(db, job_id, stage, prompt)

    def pipeline_of(self, job_id: str) -> PipelineSpec | None:
        """The pipeline the job was accepted with (None: none kept)."""
        with self._lock:
            version, snapshot, _ = pinned_sqlite(self._db, job_id)
        return self._specs.get(version, snapshot) if version else None

    def suspend(self, job_ids: list[str]) -> None:
        """Clean stop: the jobs go back to the queue, their run counted as ended well."""
        now = time.time()
        with self._tx() as db:
            for job_id in job_ids:
                db.execute(
                    "UPDATE jobs SET state=?, runs=0 WHERE job_id=? AND state IN (?, ?)",
                    (JobState.QUEUED.value, job_id, *_LIVE),
                )
                db.execute(  # only a job now queued: a terminal job never changes
                    "UPDATE stages SET state=?, updated_at=? WHERE job_id=? AND state=? "
                    "AND (SELECT state FROM jobs WHERE job_id=?)=?",
                    (
                        StageState.PENDING.value,
                        now,
                        job_id,
                        StageState.RUNNING.value,
                        job_id,
                        JobState.QUEUED.value,
                    ),
                )

    # -- stage results ---------------------------------------------------------------

    def _set_stage(
        self,
        job_id: str,
        stage: str,
        state: StageState,
        attempts: int,
        document: Any,
        error: PipelineError | None,
        event: Event | None = None,
    ) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE stages SET state=?, attempts=MAX(attempts, ?), document=?, error=?, "
                "updated_at=? WHERE job_id=? AND stage=? AND state NOT IN (?, ?) AND "
                "(SELECT state FROM jobs WHERE job_id=?) IN (?, ?)",
                (
                    state.value,
                    attempts,
                    None if document is None else json.dumps(document),
                    None if error is None else error.model_dump_json(),
                    time.time(),
                    job_id,
                    stage,
                    StageState.COMPLETE.value,
                    StageState.FAILED.value,
                    job_id,
                    *_LIVE,
                ),
            )
            if cur.rowcount > 0 and event is not None and self.outbox is not None:
                self.outbox.add(db, job_id, event)
            return cur.rowcount > 0

    # -- the end ---------------------------------------------------------------------

    def finish(self, result: JobResult) -> bool:
        """Write the result files, then commit the terminal state; False if already terminal.

        Files that cannot be written do not keep the job from ending: the result
        committed (served by the API, documents included) then carries an
        ``OUTPUT_ERROR`` naming the path. StoreUnavailable: nothing committed, call again.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM jobs WHERE job_id=?", (result.job_id,)
            ).fetchone()
            if row is None or row["state"] not in _LIVE:
                return False
            problem = self.files.write_result(result)
            if problem is not None:
                result = result.model_copy(update={"errors": [*result.errors, problem]})
            now = time.time()
            with self._tx() as db:
                db.execute(
                    "UPDATE jobs SET state=?, finished_at=?, result=?, runs=0 WHERE job_id=?",
                    (result.status.value, now, result.model_dump_json(), result.job_id),
                )
                if self.outbox is not None:
                    self.outbox.add(
                        db, result.job_id, JobCompleted(job_id=result.job_id, result=result)
                    )
                for stage, state in result.progress.stages.items():
                    if state in (StageState.COMPLETE, StageState.FAILED):
                        db.execute(
                            "UPDATE stages SET state=?, updated_at=? "
                            "WHERE job_id=? AND stage=? AND state!=?",
                            (state.value, now, result.job_id, stage, StageState.COMPLETE.value),
                        )
                self.event_log.insert_now(db, [JobCompleted(job_id=result.job_id, result=result)])
        if self._on_finished is not None:
            self._on_finished(result.job_id)
        return True

    def close_job(
        self, job_id: str, state: JobState, code: ErrorCode, message: str, hint: str = ""
    ) -> JobResult | None:
        """End a job that has no coordinator result (cancelled in the queue, budget spent)."""
        with self._lock:
            stages = self._stages(job_id)
            if not stages or not state.terminal:
                return None
            rows = {
                s: StageRow(
                    state=StageState(r["state"]),
                    attempts=int(r["attempts"]),
                    document=json.loads(r["document"]) if r["document"] else None,
                )
                for s, r in stages.items()
            }
            result = closing_result(self._pipeline, job_id, rows, state, (code, message, hint))
            return result if self.finish(result) else None

    # -- reading ---------------------------------------------------------------------

    def get(self, job_id: str) -> JobInfo | None:
        """The job's state, stages and progress; None if unknown."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
            if row is None:
                return None
            return self._info(row, self._stages(job_id))

    def result(self, job_id: str) -> JobResult | None:
        """The final result once the job is terminal, else None."""
        with self._lock:
            row = self._db.execute("SELECT result FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None or row["result"] is None:
            return None
        return JobResult.model_validate_json(row["result"])

    def list_jobs(self, state: JobState | None = None, limit: int = 100) -> list[JobInfo]:
        """The newest ``limit`` jobs, optionally only those in ``state``."""
        with self._lock:
            if state is None:
                rows = self._db.execute(
                    "SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM jobs WHERE state=? ORDER BY seq DESC LIMIT ?",
                    (state.value, limit),
                ).fetchall()
            return [self._info(r, self._stages(r["job_id"])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            found = {r["state"]: int(r["n"]) for r in rows}
        return {s.value: found.get(s.value, 0) for s in JobState}

    def spent_since(self, since: float) -> float:
        """USD the jobs that ended at or after ``since`` (a Unix time) cost, by their results."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(json_extract(result, '$.total_cost_usd')), 0) AS usd "
                "FROM jobs WHERE finished_at >= ? AND result IS NOT NULL",
                (since,),
            ).fetchone()
        return round(float(row["usd"]), 6)

    def _stages(self, job_id: str) -> dict[str, sqlite3.Row]:
        rows = self._db.execute("SELECT * FROM stages WHERE job_id=?", (job_id,)).fetchall()
        pipeline = self.pipeline_of(job_id) or self._pipeline
        order = {name: i for i, name in enumerate(pipeline.names)}
        rows.sort(key=lambda r: (order.get(r["stage"], len(order)), r["stage"]))
        return {r["stage"]: r for r in rows}

    def _info(self, row: sqlite3.Row, stages: dict[str, sqlite3.Row]) -> JobInfo:
        return job_info(
            self._pipeline,
            dict(row),
            [(s, r["state"], r["error"]) for s, r in stages.items()],
        )
