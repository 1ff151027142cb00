"""The PostgreSQL backend of the journal: the foundation of running several daemons on one queue.

The promises every backend keeps are in :mod:`briefd.store.base`; this one keeps
them with the same rows and the same rules as :mod:`briefd.store.sqlite`, so
either passes one test suite (``tests/store``). What differs is who else may
be writing: SQLite has one process behind one lock, PostgreSQL may have several
daemons, each with a pool of connections. So every write is one short
transaction, and whatever decides on a job's state first locks the job's row:

* ``FOR UPDATE`` where the job's state changes (a run starts, it is suspended,
  it ends): of two racing ends the second waits, then sees the job terminal;
* ``FOR SHARE`` for a stage's write: stage writes do not wait for each other,
  but one waits for a concurrent end, then sees the job terminal and changes
  nothing. Every transaction locks the job before its stages, so none deadlocks.

Times come from the database's clock (one clock for every daemon). Daemons
sharing the database run only the jobs they claimed (:mod:`briefd.store.pg_claims`):
each write of a job this store holds checks the claim's fencing token under
that same row lock, and raises :class:`~briefd.store.base.ClaimLost` when a
newer claim replaced it. A job it does not hold is written as on one daemon.

A connection that fails (server down, failover, a lock waited on too long, a
read-only standby) raises :class:`~briefd.store.base.StoreUnavailable`. If it
fails during COMMIT the write may have been made after all; every write here
is safe to make twice (an existing job is not added again, a terminal job is
not ended again).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from loguru import logger
from psycopg.rows import dict_row
from psycopg_pool import PoolClosed, PoolTimeout

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
    ClaimLost,
    Run,
    StageRow,
    StageWrites,
    StoreUnavailable,
    closing_result,
    resumed_run,
)
from briefd.store.events import EventLog
from briefd.store.files import FILES, JobFiles
from briefd.store.health import WriteHealth
from briefd.store.pg_claims import (
    FINISHED_CHANNEL,
    FREE,
    JOBS_CHANNEL,
    LEASED,
    LIVE,
    Cursor,
    Fences,
    PgClaims,
    notify,
)
from briefd.store.pg_events import PgEvents
from briefd.store.pg_reads import PgReads
from briefd.store.pg_setup import (
    DEFAULT_BOUND_S,
    contended,
    one_line,
    open_pool,
    open_schema_pool,
    redact_url,
    unavailable,
)
from briefd.store.pinned import SpecCache, pin_pg, pinned_pg, save_prompt_pg

POOL_WAIT_MAX_S = 2.0
"""The longest a statement waits for a pooled connection (the server may be gone)."""
JOURNAL = "journal"
"""The area journal write failures are reported under (:class:`WriteHealth`)."""
_COMPLETE = f"'{StageState.COMPLETE.value}'"
_ENDED = f"('{StageState.COMPLETE.value}', '{StageState.FAILED.value}')"


class PostgresStore(PgClaims, PgReads, StageWrites):
    """The durable record of the daemon's jobs in PostgreSQL (thread-safe: a pool)."""

    def __init__(
        self,
        url: str,
        pipeline: PipelineSpec,
        *,
        jobs_dir: Path,
        on_finished: Callable[[str], None] | None = None,
        pool_size: int = 4,
        timeout_s: float = 10.0,
        bound_s: float = DEFAULT_BOUND_S,
    ) -> None:
        self.where = redact_url(url)
        self.jobs_dir = jobs_dir
        self._pipeline = pipeline
        self._on_finished = on_finished
        self._health = WriteHealth()
        self._fences = Fences()
        self.files = JobFiles(jobs_dir, pipeline, self._health)
        self.event_log: EventLog = PgEvents(self)
        self._specs = SpecCache()  # each job's pipeline (its files' names), parsed once
        self.files.pipeline_of = self.pipeline_of
        self.bound_s = bound_s
        self._probing = threading.Event()
        # A pooled connection is waited for briefly: an outage is not waited out by a reader.
        self._wait_s = min(max(1.0, bound_s), POOL_WAIT_MAX_S)
        self._pool = open_schema_pool(url, max_size=pool_size, timeout_s=timeout_s, bound_s=bound_s)
        self._url, self._pool_size = url, pool_size  # to open a fresh pool after an outage
        self._pool_lock = threading.Lock()
        self._reopen_at = 0.0

    def close(self) -> None:
        """Close every connection; later calls raise StoreUnavailable."""
        self._pool.close()

    @contextlib.contextmanager
    def _tx(
        self, *, write: bool = True, one: bool = False, within_s: float | None = None
    ) -> Iterator[Cursor]:
        """One transaction: committed, or rolled back and raised (StoreUnavailable when the
        server or the link failed, or a lock or statement passed the session's bound).

        ``one``: the body runs one statement, which is its own transaction (autocommit):
        its row locks end with it, whatever happens to this process afterwards.
        ``within_s``: the whole of it, waiting for a connection included, must end within
        this many seconds (the statement's ``statement_timeout`` is lowered to what is left),
        else StoreUnavailable and nothing committed. Only writes that succeed count as the
        journal working again; a lock or statement timeout is contention, not an outage.
        """
        assert not (one and within_s is not None), "a deadline needs a transaction"
        deadline = None if within_s is None else time.monotonic() + within_s
        wait_s = self._wait_s if within_s is None else min(self._wait_s, within_s)
        try:
            if wait_s <= 0:
                raise psycopg.errors.QueryCanceled("the deadline passed")
            with contextlib.ExitStack() as tx:
                pool = self._pool
                try:
                    conn = tx.enter_context(pool.connection(timeout=wait_s))
                except (PoolTimeout, PoolClosed):  # replaced meanwhile, or to be replaced
                    if self._pool is pool and not self._reopen():
                        raise
                    conn = tx.enter_context(self._pool.connection(timeout=wait_s))
                if not one:
                    tx.enter_context(conn.transaction())
                cur = tx.enter_context(conn.cursor(row_factory=dict_row))
                events = write and not one  # the events of this write go with it
                if events:
                    self.event_log.begin()
                if deadline is not None:
                    left_ms = round((deadline - time.monotonic()) * 1000)
                    if left_ms <= 0:
                        raise psycopg.errors.QueryCanceled("the deadline passed")
                    cur.execute(  # local: the session's own bound is back after it
                        "SELECT set_config('statement_timeout', %s, true)",
                        (str(min(left_ms, round(self.bound_s * 1000))),),
                    )
                yield cur
                if events:
                    self.event_log.flush(cur)
        except psycopg.Error as err:
            if not unavailable(err):
                raise
            reason = f"{self.where}: {one_line(err)}"
            if not contended(err):
                self._health.failed(JOURNAL, reason)
            raise StoreUnavailable(f"journal {reason}") from err
        if write:
            self._health.ok(JOURNAL)
        if write and not one:
            self.event_log.committed()

    def _reopen(self) -> bool:
        """Replace the pool with a fresh one, connected now; whether it could (at most once a
        second). psycopg_pool retries a lost server with a backoff that doubles, so after an
        outage of seconds its next attempt may come many seconds after the server is back:
        a caller that found no connection checks now instead."""
        with self._pool_lock:
            if time.monotonic() < self._reopen_at or self._pool.closed:
                return False
            self._reopen_at = time.monotonic() + 1.0
            try:
                fresh = open_pool(
                    self._url, max_size=self._pool_size, timeout_s=2.0, bound_s=self.bound_s
                )
            except ConfigError:
                return False
            old, self._pool = self._pool, fresh
        logger.info("journal {}: connected again (a fresh pool)", self.where)
        threading.Thread(target=old.close, args=(2.0,), daemon=True).start()
        return True

    # -- health ----------------------------------------------------------------------

    def write_problem(self) -> str | None:
        """What cannot be written now (None: all can), from what is known: no database
        round trip in the caller's thread (``/healthz`` answers at once). An area that
        failed is tried again (at most once a second) with a real write, in a thread of
        its own, so a server back (or promoted) clears it."""
        if self._health.probe_due(JOURNAL) and not self._probing.is_set():
            self._probing.set()
            threading.Thread(target=self._probe, name="briefd-journal-probe", daemon=True).start()
        if self._health.probe_due(FILES):
            self.files.probe()
        return self._health.problem()

    def _probe(self) -> None:
        try:
            with contextlib.suppress(StoreUnavailable), self._tx() as cur:
                cur.execute(
                    "UPDATE briefd_schema SET applied_at = applied_at "
                    "WHERE version = (SELECT max(version) FROM briefd_schema)"
                )
        except Exception as err:  # a closed pool at shutdown: nothing to report
            logger.debug("journal probe: {!r}", err)
        finally:
            self._probing.clear()

    # -- submission ------------------------------------------------------------------

    def add_job(
        self,
        job: JobSpec,
        *,
        within_s: float | None = None,
        pipeline: PipelineSpec | None = None,
    ) -> tuple[JobInfo, bool]:
        """Record ``job`` as queued (committed on return); ``False`` if the id already exists.

        ``within_s``: the write ends within this many seconds, committed or not at all
        (StoreUnavailable), so an HTTP answer given then matches what was stored.

        ``ON CONFLICT DO NOTHING`` makes racing submissions of one id (from threads or
        daemons) wait for the first one's commit, then add nothing. A new job is
        announced on :data:`JOBS_CHANNEL`: whichever daemon has room claims it.
        """
        with self._tx(within_s=within_s) as cur:
            cur.execute(
                "INSERT INTO briefd_jobs (job_id, spec, state, priority) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (job_id) DO NOTHING RETURNING seq",
                (job.job_id, job.model_dump_json(), JobState.QUEUED.value, job.priority),
            )
            created = cur.fetchone() is not None
            if created:
                notify(cur, JOBS_CHANNEL)
                cur.execute(
                    "INSERT INTO briefd_stages (job_id, stage, state) "
                    "SELECT %s, s, %s FROM unnest(%s::text[]) AS s",
                    (job.job_id, StageState.PENDING.value, list(job.prompts)),
                )
                if pipeline is not None:  # the job keeps this version (store/pinned)
                    pin_pg(cur, job.job_id, pipeline)
            info = self._get(cur, job.job_id)
        assert info is not None
        return info, created

    # -- runs ------------------------------------------------------------------------

    def unfinished(self) -> list[str]:
        """Jobs to resume at start: those that were running first, then the queue, each FIFO."""
        with self._tx(write=False) as cur:
            cur.execute(
                f"SELECT job_id FROM briefd_jobs WHERE state IN {LIVE} "
                "ORDER BY state = %s DESC, seq",
                (JobState.RUNNING.value,),
            )
            return [r["job_id"] for r in cur.fetchall()]

    def start_run(self, job_id: str) -> Run:
        """Mark the job running and return it with its ended stages' documents and errors.

        ``runs_died`` counts the runs begun since the job last ended cleanly: each
        of them died. Stages left ``running`` by a dead run go back to ``pending``;
        a stage that ended, in success or failure, is final. ClaimLost: this store
        claimed the job and lost the claim, the run is another daemon's.
        """
        with self._tx() as cur:
            row = self._locked(cur, job_id)
            if row is None or JobState(row["state"]).terminal:
                return Run(job=None)
            died = int(row["runs"])
            cur.execute(
                "UPDATE briefd_jobs SET state = %s, runs = runs + 1, restarts = restarts + %s, "
                "started_at = coalesce(started_at, now()) WHERE job_id = %s",
                (JobState.RUNNING.value, 1 if died else 0, job_id),
            )
            self._reset_running(cur, [job_id])
            cur.execute(
                f"SELECT stage, state, document, error FROM briefd_stages "
                f"WHERE job_id = %s AND state IN {_ENDED}",
                (job_id,),
            )
            ended = cur.fetchall()
            _, snapshot, prompts = pinned_pg(cur, job_id)
        run = resumed_run(
            row["spec"],
            [(r["stage"], r["state"], r["document"], r["error"]) for r in ended],
            died,
            row["submitted_at"],
        )
        return replace(run, pipeline=snapshot, prompts=prompts)

    def stage_prompt(self, job_id: str, stage: str, prompt: str) -> None:
        """A templated prompt as rendered: a resumed run sends this text again."""
        with self._tx() as cur:
            save_prompt_pg(cur, job_id, stage, prompt)

    def pipeline_of(self, job_id: str) -> PipelineSpec | None:
        """The pipeline the job was accepted with (None: none kept)."""
        with self._tx(write=False) as cur:
            version, snapshot, _ = pinned_pg(cur, job_id)
        return self._specs.get(version, snapshot) if version else None

    def suspend(self, job_ids: list[str]) -> None:
        """Clean stop: the jobs go back to the queue, their run counted as ended well, their
        claims freed (announced on :data:`JOBS_CHANNEL`: another daemon may take them now).

        A job already terminal is left as it is, stages included; so is one under
        another daemon's live claim. The jobs whose claim this store lost are left
        too, and named by the ClaimLost raised once the others are committed.
        """
        with self._tx() as cur:
            cur.execute(
                f"SELECT job_id, state, fence, {LEASED} AS leased FROM briefd_jobs "
                "WHERE job_id = ANY(%s::text[]) ORDER BY job_id FOR UPDATE",
                (sorted(set(job_ids)),),
            )
            rows = cur.fetchall()
            fences = {j: self._fences.of(j) for j in job_ids}
            lost = [r["job_id"] for r in rows if fences[r["job_id"]] not in (None, r["fence"])]
            live = [
                r["job_id"]
                for r in rows
                if not JobState(r["state"]).terminal
                and r["job_id"] not in lost
                and (fences[r["job_id"]] is not None or not r["leased"])
            ]
            if live:
                cur.execute(
                    f"UPDATE briefd_jobs SET state = %s, runs = 0, {FREE} "
                    "WHERE job_id = ANY(%s::text[])",
                    (JobState.QUEUED.value, live),
                )
                self._reset_running(cur, live)
                notify(cur, JOBS_CHANNEL)
        self._fences.release(list(job_ids))
        if lost:
            raise ClaimLost(lost)

    def _reset_running(self, cur: Cursor, job_ids: list[str]) -> None:
        """Stages a run left ``running`` go back to ``pending``: their calls are made again."""
        cur.execute(
            "UPDATE briefd_stages SET state = %s, updated_at = now() "
            "WHERE job_id = ANY(%s::text[]) AND state = %s",
            (StageState.PENDING.value, job_ids, StageState.RUNNING.value),
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
        """Write one stage unless it has ended or its job is not live; whether it was.

        A job this store claimed is written only under its claim's fence (ClaimLost if
        a newer claim replaced it), checked under the same shared row lock.
        """
        fence = self._fences.of(job_id)
        with self._tx() as cur:
            cur.execute(
                f"WITH job AS (SELECT 1 FROM briefd_jobs WHERE job_id = %(job)s "
                f"AND state IN {LIVE} AND (%(fence)s::bigint IS NULL OR fence = %(fence)s) "
                "FOR SHARE) "
                "UPDATE briefd_stages SET state = %(state)s, "
                "attempts = greatest(attempts, %(attempts)s), document = %(document)s, "
                "error = %(error)s, updated_at = now() "
                f"WHERE job_id = %(job)s AND stage = %(stage)s AND state NOT IN {_ENDED} "
                "AND EXISTS (SELECT 1 FROM job)",
                {
                    "job": job_id,
                    "fence": fence,
                    "stage": stage,
                    "state": state.value,
                    "attempts": attempts,
                    "document": None if document is None else json.dumps(document),
                    "error": None if error is None else error.model_dump_json(),
                },
            )
            if cur.rowcount > 0:
                if event is not None and self.outbox is not None:
                    self.outbox.add(cur, job_id, event)
                return True
            if fence is not None:  # why nothing was written: ended, or no longer ours?
                cur.execute("SELECT fence FROM briefd_jobs WHERE job_id = %s", (job_id,))
                row = cur.fetchone()
                self._check_fence(job_id, None if row is None else int(row["fence"]))
            return False

    # -- the end ---------------------------------------------------------------------

    def finish(self, result: JobResult) -> bool:
        """Write the result files, then commit the terminal state; False if already terminal.

        The job's row stays locked from the check to the commit, so the files on
        disk are those of the one result committed. Files that cannot be written
        do not keep the job from ending: the result committed then carries an
        ``OUTPUT_ERROR`` naming the path. StoreUnavailable: nothing committed, call again.
        ClaimLost: this store's claim on the job was replaced, nothing written.
        """
        with self._tx() as cur:
            row = self._locked(cur, result.job_id)
            if row is None or JobState(row["state"]).terminal:
                return False
            self._end(cur, result)
        self._ended(result.job_id)
        return True

    def close_job(
        self, job_id: str, state: JobState, code: ErrorCode, message: str, hint: str = ""
    ) -> JobResult | None:
        """End a job that has no coordinator result (cancelled in the queue, budget spent).

        None if it is not live, or if another daemon holds it under a live claim (that
        daemon ends it: :meth:`cancel_anywhere` asks it to). ClaimLost: this store's
        claim on the job was replaced.
        """
        if not state.terminal:
            return None
        with self._tx() as cur:
            row = self._locked(cur, job_id)
            if row is None or JobState(row["state"]).terminal:
                return None
            if row["leased"] and job_id not in self._fences.held():
                return None
            result = self._close_locked(cur, job_id, state, (code, message, hint))
        if result is not None:
            self._ended(job_id)
        return result

    def _close_locked(
        self, cur: Cursor, job_id: str, state: JobState, error: tuple[ErrorCode, str, str]
    ) -> JobResult | None:
        """End the live job whose row ``cur`` holds locked, from its stages' rows."""
        cur.execute(
            "SELECT stage, state, attempts, document FROM briefd_stages WHERE job_id = %s",
            (job_id,),
        )
        rows = {
            r["stage"]: StageRow(
                state=StageState(r["state"]),
                attempts=int(r["attempts"]),
                document=json.loads(r["document"]) if r["document"] else None,
            )
            for r in sorted(cur.fetchall(), key=lambda r: self._order(r["stage"]))
        }
        if not rows:
            return None
        return self._end(cur, closing_result(self._pipeline, job_id, rows, state, error))

    def _end(self, cur: Cursor, result: JobResult) -> JobResult:
        """Files first, then the terminal row (its claim freed, announced on
        :data:`FINISHED_CHANNEL`) and the stages' final states; what was written."""
        problem = self.files.write_result(result)
        if problem is not None:
            result = result.model_copy(update={"errors": [*result.errors, problem]})
        cur.execute(
            f"UPDATE briefd_jobs SET state = %s, finished_at = now(), result = %s, runs = 0, "
            f"{FREE} WHERE job_id = %s",
            (result.status.value, result.model_dump_json(), result.job_id),
        )
        notify(cur, FINISHED_CHANNEL, result.job_id)
        if self.outbox is not None:
            self.outbox.add(cur, result.job_id, JobCompleted(job_id=result.job_id, result=result))
        final = [
            (s, v.value)
            for s, v in result.progress.stages.items()
            if v in (StageState.COMPLETE, StageState.FAILED)
        ]
        if final:
            cur.execute(
                "UPDATE briefd_stages t SET state = f.state, updated_at = now() "
                "FROM unnest(%s::text[], %s::text[]) AS f(stage, state) "
                f"WHERE t.job_id = %s AND t.stage = f.stage AND t.state <> {_COMPLETE}",
                ([s for s, _ in final], [v for _, v in final], result.job_id),
            )
        self.event_log.insert_now(cur, [JobCompleted(job_id=result.job_id, result=result)])
        return result
