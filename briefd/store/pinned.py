"""What a job runs with, kept with the job: its pipeline's version and its rendered prompts.

A daemon serves several pipelines and reloads them on SIGHUP; a job must keep
the pipeline it was accepted with, or a resume after an edit would run stages,
prompts or schemas the job never saw. So the journal keeps every pipeline a job
was accepted with (its snapshot, keyed by its content hash: many jobs, one row)
and, per job, which one. A templated prompt is rendered once, as its stage
starts; the text is kept too, and a resumed run sends it again rather than
rendering anew (``INSERT`` only: the first rendering wins).

The SQL for both backends is here; :mod:`briefd.store.sqlite` and
:mod:`briefd.store.postgres` call it inside their own transactions. The tables:
``pipelines``/``briefd_pipelines`` (version, name, spec), ``job_pipelines``/
``briefd_job_pipelines`` (job_id, version) and ``stage_prompts``/
``briefd_stage_prompts`` (job_id, stage, prompt).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from briefd.config import PipelineSpec
from briefd.messages import StageState

PG_MIGRATION = (
    """CREATE TABLE briefd_pipelines (
        version    text PRIMARY KEY,
        name       text NOT NULL,
        spec       text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    "COMMENT ON TABLE briefd_pipelines IS 'every pipeline a job was accepted with, by hash'",
    """CREATE TABLE briefd_job_pipelines (
        job_id  text PRIMARY KEY REFERENCES briefd_jobs (job_id) ON DELETE CASCADE,
        version text NOT NULL REFERENCES briefd_pipelines (version)
    )""",
    """CREATE TABLE briefd_stage_prompts (
        job_id text NOT NULL REFERENCES briefd_jobs (job_id) ON DELETE CASCADE,
        stage  text NOT NULL,
        prompt text NOT NULL,
        PRIMARY KEY (job_id, stage)
    )""",
    "COMMENT ON TABLE briefd_stage_prompts IS 'templated prompts as rendered: a resume resends'",
)


class SpecCache:
    """Parsed snapshots by version: a pipeline is parsed once, whatever the number of jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, PipelineSpec] = {}

    def get(self, version: str, snapshot: str) -> PipelineSpec:
        with self._lock:
            spec = self._specs.get(version)
        if spec is None:
            from briefd.pipelines.registry import from_snapshot

            spec = from_snapshot(snapshot)
            with self._lock:
                self._specs[version] = spec
        return spec


# -- SQLite (a connection inside the journal's transaction) --------------------------------


def pin_sqlite(db: sqlite3.Connection, job_id: str, pipeline: PipelineSpec, now: float) -> None:
    """Keep the job's pipeline, and a stage row for each of its stages (those whose prompt
    is the pipeline's have none from the job's prompts)."""
    db.execute(
        "INSERT OR IGNORE INTO pipelines (version, name, spec, created_at) VALUES (?, ?, ?, ?)",
        (pipeline.version, pipeline.name, pipeline.snapshot, now),
    )
    db.execute(
        "INSERT OR REPLACE INTO job_pipelines (job_id, version) VALUES (?, ?)",
        (job_id, pipeline.version),
    )
    db.executemany(
        "INSERT OR IGNORE INTO stages (job_id, stage, state, updated_at) VALUES (?, ?, ?, ?)",
        [(job_id, s, StageState.PENDING.value, now) for s in pipeline.names],
    )


def pinned_sqlite(db: sqlite3.Connection, job_id: str) -> tuple[str, str, dict[str, str]]:
    """The job's pipeline ``(version, snapshot)`` ('' if none kept) and its rendered prompts."""
    row = db.execute(
        "SELECT p.version, p.spec FROM job_pipelines j JOIN pipelines p USING (version) "
        "WHERE j.job_id=?",
        (job_id,),
    ).fetchone()
    prompts = db.execute(
        "SELECT stage, prompt FROM stage_prompts WHERE job_id=?", (job_id,)
    ).fetchall()
    version, spec = (row[0], row[1]) if row is not None else ("", "")
    return version, spec, {r[0]: r[1] for r in prompts}


def save_prompt_sqlite(db: sqlite3.Connection, job_id: str, stage: str, prompt: str) -> None:
    db.execute(
        "INSERT OR IGNORE INTO stage_prompts (job_id, stage, prompt) VALUES (?, ?, ?)",
        (job_id, stage, prompt),
    )


# -- PostgreSQL (a cursor inside the store's transaction) ----------------------------------


def pin_pg(cur: Any, job_id: str, pipeline: PipelineSpec) -> None:
    cur.execute(
        "INSERT INTO briefd_pipelines (version, name, spec) VALUES (%s, %s, %s) "
        "ON CONFLICT (version) DO NOTHING",
        (pipeline.version, pipeline.name, pipeline.snapshot),
    )
    cur.execute(
        "INSERT INTO briefd_job_pipelines (job_id, version) VALUES (%s, %s) "
        "ON CONFLICT (job_id) DO UPDATE SET version = excluded.version",
        (job_id, pipeline.version),
    )
    cur.execute(
        "INSERT INTO briefd_stages (job_id, stage, state) "
        "SELECT %s, s, %s FROM unnest(%s::text[]) AS s ON CONFLICT DO NOTHING",
        (job_id, StageState.PENDING.value, list(pipeline.names)),
    )


def pinned_pg(cur: Any, job_id: str) -> tuple[str, str, dict[str, str]]:
    cur.execute(
        "SELECT p.version, p.spec FROM briefd_job_pipelines j "
        "JOIN briefd_pipelines p USING (version) WHERE j.job_id = %s",
        (job_id,),
    )
    row = cur.fetchone()
    cur.execute("SELECT stage, prompt FROM briefd_stage_prompts WHERE job_id = %s", (job_id,))
    prompts = {r["stage"]: r["prompt"] for r in cur.fetchall()}
    version, spec = (row["version"], row["spec"]) if row is not None else ("", "")
    return version, spec, prompts


def save_prompt_pg(cur: Any, job_id: str, stage: str, prompt: str) -> None:
    cur.execute(
        "INSERT INTO briefd_stage_prompts (job_id, stage, prompt) VALUES (%s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        (job_id, stage, prompt),
    )
