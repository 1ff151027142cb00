"""Reading the PostgreSQL journal: a job's status, its result, the lists, the counts.

Reads take no row lock and write nothing (a failing read does not count as the
journal working again). A mixin of :class:`~briefd.store.postgres.PostgresStore`,
kept apart so the write path (locks, claims, fences) reads on its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg.rows import DictRow

from briefd.config import PipelineSpec
from briefd.messages import JobInfo, JobResult, JobState
from briefd.store.base import job_info
from briefd.store.pg_claims import Cursor

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

_EPOCH = "extract(epoch FROM {0})::float8 AS {0}"
_INFO = (
    "SELECT j.job_id, j.state, j.restarts, j.result, "
    + ", ".join(_EPOCH.format(c) for c in ("submitted_at", "started_at", "finished_at"))
    + ", (SELECT coalesce(json_agg(json_build_array(s.stage, s.state, s.error)), '[]') "
    "FROM briefd_stages s WHERE s.job_id = j.job_id) AS stages FROM briefd_jobs j "
)


class PgReads:
    """What the daemon reads of the jobs; the store provides ``_tx`` and ``_pipeline``."""

    _pipeline: PipelineSpec

    def _tx(self, *, write: bool = True) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

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
