"""Each store test runs once per backend: SQLite in a temporary file, PostgreSQL in a database
of its own on the session's throwaway server (``tests/pg.py``), both opened the way the
daemon will open them (:func:`briefd.store.open_store`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import psycopg

from briefd.config import PipelineSpec, Settings, load_pipeline
from briefd.messages import JobMetrics, JobResult, JobSpec, JobStatus, Progress, StageState
from briefd.store import JournalStore, open_store

BACKENDS = ("sqlite", "postgres")


@dataclass
class Backend:
    """One backend's database; :meth:`open` is a daemon starting on it (closed after the test)."""

    name: str
    settings: Settings
    pipeline: PipelineSpec
    opened: list[JournalStore] = field(default_factory=list)

    def open(self, on_finished: Callable[[str], None] | None = None) -> JournalStore:
        store = open_store(self.settings, self.pipeline, on_finished=on_finished)
        self.opened.append(store)
        return store

    def daemons(self, on_finished: Callable[[str], None] | None = None) -> list[JournalStore]:
        """Two stores writing at once, as two daemons would: on PostgreSQL two stores; on
        SQLite one, twice, since a data dir (its journal) belongs to one daemon (it is locked)."""
        if self.name == "sqlite":
            return [self.open(on_finished)] * 2
        return [self.open(on_finished), self.open(on_finished)]

    @property
    def jobs_dir(self) -> Path:
        return self.settings.data_dir / "jobs"


def until(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll ``condition`` until it is true, with a deadline (fails the test at the deadline)."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        pause.wait(0.02)


@pytest.fixture
def admin(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection to the test's database, outside the stores (autocommit)."""
    import psycopg  # here, so that the SQLite half of the suite never needs psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def pipeline() -> PipelineSpec:
    return load_pipeline()


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, pipeline: PipelineSpec
) -> Iterator[Backend]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    b = Backend(request.param, settings, pipeline)
    yield b
    for store in b.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> JournalStore:
    return backend.open()


@pytest.fixture
def spec(make_job: Any) -> Callable[[str], JobSpec]:
    """``spec(job_id)``: a job for the default pipeline."""
    return lambda job_id: JobSpec.model_validate(make_job(job_id))


@pytest.fixture
def make_result() -> Callable[..., JobResult]:
    """``make_result(job_id, status, documents, states)``: a coordinator's result."""
    return _make_result


def _make_result(
    job_id: str,
    status: JobStatus,
    documents: dict[str, Any],
    states: dict[str, StageState],
) -> JobResult:
    """A coordinator's result, as far as a store cares (metrics zero)."""
    return JobResult(
        job_id=job_id,
        status=status,
        documents=documents,
        errors=[],
        fallbacks=[],
        progress=Progress(stages=states, percent=0.0),
        metrics=JobMetrics(
            stages_ms=dict.fromkeys(states, 0),
            parallel_group_ms=0,
            sequential_group_ms=0,
            total_ms=0,
            speedup_ratio=0.0,
            usage={},
            attempts=dict.fromkeys(states, 1),
        ),
    )
