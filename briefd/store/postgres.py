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

Times come from the database's clock (one clock for every daemon). Claims,
leases and fencing (``claimed_by``, ``lease_until``, ``fence``) exist in the
schema but are not used yet: today every daemon on a database resumes every
unfinished job, so run one daemon per database until claims land.

A connection that fails (server down, failover, a lock waited on too long, a
read-only standby) raises :class:`~briefd.store.base.StoreUnavailable`. If it
fails during COMMIT the write may have been made after all; every write here
is safe to make twice (an existing job is not added again, a terminal job is
not ended again).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row

from briefd.config import PipelineSpec
from briefd.messages import (
    ErrorCode,
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
from briefd.store.files import FILES, JobFiles
from briefd.store.health import WriteHealth
from briefd.store.pg_setup import ensure_schema, one_line, open_pool, redact_url, unavailable

JOURNAL = "journal"
"""The area journal write failures are reported under (:class:`WriteHealth`)."""
_LIVE = f"('{JobState.QUEUED.value}', '{JobState.RUNNING.value}')"
_COMPLETE = f"'{StageState.COMPLETE.value}'"
_ENDED = f"('{StageState.COMPLETE.value}', '{StageState.FAILED.value}')"
_EPOCH = "extract(epoch FROM {0})::float8 AS {0}"
_INFO = (
    "SELECT j.job_id, j.state, j.restarts, j.result, "
    + ", ".join(_EPOCH.format(c) for c in ("submitted_at", "started_at", "finished_at"))
    + ", (SELECT coalesce(json_agg(json_build_array(s.stage, s.state, s.error)), '[]') "
    "FROM briefd_stages s WHERE s.job_id = j.job_id) AS stages FROM briefd_jobs j "
)
Cursor = psycopg.Cursor[DictRow]


class PostgresStore(StageWrites):
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
    ) -> None:
        self.where = redact_url(url)
        self.jobs_dir = jobs_dir
        self._pipeline = pipeline
        self._on_finished = on_finished
        self._health = WriteHealth()
        self.files = JobFiles(jobs_dir, pipeline, self._health)
        self._pool = open_pool(url, max_size=pool_size, timeout_s=timeout_s)
        try:
            with self._pool.connection() as conn:
                ensure_schema(conn, self.where)
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        """Close every connection; later calls raise StoreUnavailable."""
        self._pool.close()

    @contextlib.contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Cursor]:
        """One transaction: committed, or rolled back and raised (StoreUnavailable when the
        server or the link failed). Only writes count as the journal working again."""
        try:
            with (
                self._pool.connection() as conn,
                conn.transaction(),
                conn.cursor(row_factory=dict_row) as cur,
            ):
                yield cur
        except psycopg.Error as err:
            if not unavailable(err):
                raise
            reason = f"{self.where}: {one_line(err)}"
            self._health.failed(JOURNAL, reason)
            raise StoreUnavailable(f"journal {reason}") from err
        if write:
            self._health.ok(JOURNAL)

    # -- health ----------------------------------------------------------------------

    def write_problem(self) -> str | None:
        """What cannot be written now (None: all can). An area that failed is tried again
        (at most once a second) with a real write, so a server back (or promoted) clears it."""
        if self._health.probe_due(JOURNAL):
            with contextlib.suppress(StoreUnavailable), self._tx() as cur:
                cur.execute(
                    "UPDATE briefd_schema SET applied_at = applied_at "
                    "WHERE version = (SELECT max(version) FROM briefd_schema)"
                )
        if self._health.probe_due(FILES):
            self.files.probe()
        return self._health.problem()

    # -- submission ------------------------------------------------------------------

    def add_job(self, job: JobSpec) -> tuple[JobInfo, bool]:
        """Record ``job`` as queued (committed on return); ``False`` if the id already exists.

        ``ON CONFLICT DO NOTHING`` makes racing submissions of one id (from threads or
        daemons) wait for the first one's commit, then add nothing.
        """
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO briefd_jobs (job_id, spec, state) VALUES (%s, %s, %s) "
                "ON CONFLICT (job_id) DO NOTHING RETURNING seq",
                (job.job_id, job.model_dump_json(), JobState.QUEUED.value),
            )
            created = cur.fetchone() is not None
            if created:
                cur.execute(
                    "INSERT INTO briefd_stages (job_id, stage, state) "
                    "SELECT %s, s, %s FROM unnest(%s::text[]) AS s",
                    (job.job_id, StageState.PENDING.value, list(job.prompts)),
                )
            info = self._get(cur, job.job_id)
        assert info is not None
        return info, created

    # -- runs ------------------------------------------------------------------------

    def unfinished(self) -> list[str]:
        """Jobs to resume at start: those that were running first, then the queue, each FIFO."""
        with self._tx(write=False) as cur:
            cur.execute(
                f"SELECT job_id FROM briefd_jobs WHERE state IN {_LIVE} "
                "ORDER BY state = %s DESC, seq",
                (JobState.RUNNING.value,),
            )
            return [r["job_id"] for r in cur.fetchall()]

    def start_run(self, job_id: str) -> Run:
        """Mark the job running and return it with its ended stages' documents and errors.

        ``runs_died`` counts the runs begun since the job last ended cleanly: each
        of them died. Stages left ``running`` by a dead run go back to ``pending``;
        a stage that ended, in success or failure, is final.
        """
        with self._tx() as cur:
            cur.execute(
                "SELECT state, runs, spec FROM briefd_jobs WHERE job_id = %s FOR UPDATE",
                (job_id,),
            )
            row = cur.fetchone()
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
        return resumed_run(
            row["spec"],
            [(r["stage"], r["state"], r["document"], r["error"]) for r in ended],
            died,
        )

    def suspend(self, job_ids: list[str]) -> None:
        """Clean stop: the jobs go back to the queue, their run counted as ended well.

        A job already terminal is left as it is, stages included.
        """
        with self._tx() as cur:
            cur.execute(
                f"SELECT job_id FROM briefd_jobs WHERE job_id = ANY(%s::text[]) "
                f"AND state IN {_LIVE} ORDER BY job_id FOR UPDATE",
                (sorted(set(job_ids)),),
            )
            live = [r["job_id"] for r in cur.fetchall()]
            if not live:
                return
            cur.execute(
                "UPDATE briefd_jobs SET state = %s, runs = 0 WHERE job_id = ANY(%s::text[])",
                (JobState.QUEUED.value, live),
            )
            self._reset_running(cur, live)

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
    ) -> bool:
        """Write one stage unless it has ended or its job is not live; whether it was."""
        with self._tx() as cur:
            cur.execute(
                f"WITH job AS (SELECT 1 FROM briefd_jobs WHERE job_id = %(job)s "
                f"AND state IN {_LIVE} FOR SHARE) "
                "UPDATE briefd_stages SET state = %(state)s, "
                "attempts = greatest(attempts, %(attempts)s), document = %(document)s, "
                "error = %(error)s, updated_at = now() "
                f"WHERE job_id = %(job)s AND stage = %(stage)s AND state NOT IN {_ENDED} "
                "AND EXISTS (SELECT 1 FROM job)",
                {
                    "job": job_id,
                    "stage": stage,
                    "state": state.value,
                    "attempts": attempts,
                    "document": None if document is None else json.dumps(document),
                    "error": None if error is None else error.model_dump_json(),
                },
            )
            return cur.rowcount > 0

    # -- the end ---------------------------------------------------------------------

    def finish(self, result: JobResult) -> bool:
        """Write the result files, then commit the terminal state; False if already terminal.

        The job's row stays locked from the check to the commit, so the files on
        disk are those of the one result committed. Files that cannot be written
        do not keep the job from ending: the result committed then carries an
        ``OUTPUT_ERROR`` naming the path. StoreUnavailable: nothing committed, call again.
        """
        with self._tx() as cur:
            if not self._lock_live(cur, result.job_id):
                return False
            self._end(cur, result)
        if self._on_finished is not None:
            self._on_finished(result.job_id)
        return True

    def close_job(
        self, job_id: str, state: JobState, code: ErrorCode, message: str, hint: str = ""
    ) -> JobResult | None:
        """End a job that has no coordinator result (cancelled in the queue, budget spent)."""
        if not state.terminal:
            return None
        with self._tx() as cur:
            if not self._lock_live(cur, job_id):
                return None
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
            result = closing_result(self._pipeline, job_id, rows, state, (code, message, hint))
            result = self._end(cur, result)
        if self._on_finished is not None:
            self._on_finished(job_id)
        return result

    def _lock_live(self, cur: Cursor, job_id: str) -> bool:
        """Lock the job's row; whether it is still queued or running."""
        cur.execute("SELECT state FROM briefd_jobs WHERE job_id = %s FOR UPDATE", (job_id,))
        row = cur.fetchone()
        return row is not None and not JobState(row["state"]).terminal

    def _end(self, cur: Cursor, result: JobResult) -> JobResult:
        """Files first, then the terminal row and the stages' final states; what was written."""
        problem = self.files.write_result(result)
        if problem is not None:
            result = result.model_copy(update={"errors": [*result.errors, problem]})
        cur.execute(
            "UPDATE briefd_jobs SET state = %s, finished_at = now(), result = %s, runs = 0 "
            "WHERE job_id = %s",
            (result.status.value, result.model_dump_json(), result.job_id),
        )
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
        return result

    # -- reading ---------------------------------------------------------------------

    def get(self, job_id: str) -> JobInfo | None:
        """The job's state, stages and progress; None if unknown."""
        with self._tx(write=False) as cur:
            return self._get(cur, job_id)

    def _get(self, cur: Cursor, job_id: str) -> JobInfo | None:
        cur.execute(_INFO + "WHERE j.job_id = %s", (job_id,))
        row = cur.fetchone()
        return None if row is None else self._info(row)

    def result(self, job_id: str) -> JobResult | None:
        """The final result once the job is terminal, else None."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT result FROM briefd_jobs WHERE job_id = %s", (job_id,))
            row = cur.fetchone()
        if row is None or row["result"] is None:
            return None
        return JobResult.model_validate_json(row["result"])

    def list_jobs(self, state: JobState | None = None, limit: int = 100) -> list[JobInfo]:
        """The newest ``limit`` jobs, optionally only those in ``state``."""
        with self._tx(write=False) as cur:
            if state is None:
                cur.execute(_INFO + "ORDER BY j.seq DESC LIMIT %s", (limit,))
            else:
                cur.execute(
                    _INFO + "WHERE j.state = %s ORDER BY j.seq DESC LIMIT %s", (state.value, limit)
                )
            rows = cur.fetchall()
        return [self._info(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        with self._tx(write=False) as cur:
            cur.execute("SELECT state, count(*) AS n FROM briefd_jobs GROUP BY state")
            found = {r["state"]: int(r["n"]) for r in cur.fetchall()}
        return {s.value: found.get(s.value, 0) for s in JobState}

    def spent_since(self, since: float) -> float:
        """USD the jobs that ended at or after ``since`` cost: every daemon's, one figure."""
        with self._tx(write=False) as cur:
            cur.execute(
                "SELECT COALESCE(SUM((result::jsonb ->> 'total_cost_usd')::float8), 0) AS usd "
                "FROM briefd_jobs WHERE finished_at >= to_timestamp(%s) AND result IS NOT NULL",
                (since,),
            )
            row = cur.fetchone()
        return round(float(row["usd"]) if row else 0.0, 6)

    def _order(self, stage: str) -> tuple[int, str]:
        """Pipeline order, then stages the pipeline lacks by name (as the SQLite journal)."""
        order = self._pipeline.names
        return (order.index(stage) if stage in order else len(order), stage)

    def _info(self, row: DictRow) -> JobInfo:
        stages = sorted(row["stages"], key=lambda s: self._order(s[0]))  # [stage, state, error]
        return job_info(self._pipeline, row, [(s, st, e) for s, st, e in stages])
