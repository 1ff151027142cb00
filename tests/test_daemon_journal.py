"""The daemon's durable core in-process: the SQLite journal and the root actor's restarts.

The journal is read back through a second connection, as the next daemon
would; the root runs real coordinators against the simulator, some made to
crash, to show that a dead run is resumed without paying twice, and that the
restart budget ends a job that keeps dying.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pykka
import pytest
from daemon_helpers import STAGES

from briefd.actors import CoordinatorActor, RateLimiterActor
from briefd.actors.journal import JournalActor, journal_observer
from briefd.actors.root import RootActor
from briefd.config import PipelineSpec, Settings, load_pipeline
from briefd.messages import (
    ErrorCode,
    JobSpec,
    JobState,
    JobStatus,
    PipelineError,
    StageState,
    StageSucceeded,
)
from briefd.sim.server import SimServer
from briefd.store.sqlite import Journal


@pytest.fixture
def pipeline() -> PipelineSpec:
    return load_pipeline()


@pytest.fixture
def journal(tmp_path: Path, pipeline: PipelineSpec) -> Any:
    """A journal in a fresh data dir, closed after the test."""
    j = Journal(tmp_path / "briefd.sqlite3", pipeline)
    yield j
    j.close()


def _spec(make_job: Any, job_id: str) -> JobSpec:
    return JobSpec.model_validate(make_job(job_id))


def test_a_job_is_committed_before_add_job_returns_and_only_once(
    journal: Journal, make_job: Any, tmp_path: Path
) -> None:
    """add_job commits (another connection sees the row at once); the same id adds nothing."""
    info, created = journal.add_job(_spec(make_job, "j-1"))
    assert created and info.status is JobState.QUEUED
    assert set(info.stages.values()) == {StageState.PENDING}
    other = sqlite3.connect(tmp_path / "briefd.sqlite3")
    assert other.execute("SELECT state FROM jobs WHERE job_id='j-1'").fetchall() == [("queued",)]
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()
    again, created = journal.add_job(_spec(make_job, "j-1"))
    assert not created and again.job_id == "j-1"
    assert journal.counts()["queued"] == 1


def test_a_resumed_run_gets_the_documents_and_counts_the_dead_run(
    journal: Journal, make_job: Any
) -> None:
    """Completed stages come back as documents; a stage left running goes back to pending."""
    journal.add_job(_spec(make_job, "j-2"))
    first = journal.start_run("j-2")
    assert first.job is not None and first.done_stages == {} and first.runs_died == 0
    journal.stage_started("j-2", "BRIEFING_MD", 1)
    journal.stage_succeeded("j-2", "BRIEFING_MD", "# Briefing", 1)
    journal.stage_started("j-2", "PLAYS_MD", 1)
    assert journal.get("j-2").stages["PLAYS_MD"] is StageState.RUNNING  # type: ignore[union-attr]
    second = journal.start_run("j-2")  # as after a crash: the first run never ended
    assert second.done_stages == {"BRIEFING_MD": "# Briefing"} and second.runs_died == 1
    info = journal.get("j-2")
    assert info is not None and info.restarts == 1 and info.status is JobState.RUNNING
    assert info.stages["PLAYS_MD"] is StageState.PENDING
    assert journal.unfinished() == ["j-2"]


def test_suspend_ends_a_run_cleanly(journal: Journal, make_job: Any) -> None:
    """A run stopped by SIGTERM is not a death: the next start_run counts none."""
    journal.add_job(_spec(make_job, "j-3"))
    journal.add_job(_spec(make_job, "j-4"))
    journal.start_run("j-4")
    assert journal.unfinished() == ["j-4", "j-3"], "running jobs resume first"
    journal.suspend(["j-4"])
    assert journal.get("j-4").status is JobState.QUEUED  # type: ignore[union-attr]
    assert journal.start_run("j-4").runs_died == 0


def test_a_job_ends_in_exactly_one_terminal_state(
    journal: Journal, make_job: Any, tmp_path: Path
) -> None:
    """The first terminal write wins; later stage events and results change nothing."""
    journal.add_job(_spec(make_job, "j-5"))
    journal.start_run("j-5")
    journal.stage_succeeded("j-5", "BRIEFING_MD", "# Briefing", 1)
    cancelled = journal.close_job("j-5", JobState.CANCELLED, ErrorCode.CANCELLED, "by test")
    assert cancelled is not None and cancelled.status is JobStatus.CANCELLED
    assert cancelled.documents["BRIEFING_MD"] == "# Briefing"
    assert {e.stage for e in cancelled.errors} == set(STAGES) - {"BRIEFING_MD"}
    assert journal.finish(cancelled.model_copy(update={"status": JobStatus.SUCCEEDED})) is False
    error = PipelineError(stage="PLAYS_MD", code=ErrorCode.TIMEOUT, message="late")
    journal.stage_failed("j-5", "PLAYS_MD", error, 1)
    journal.stage_succeeded("j-5", "PLAYS_MD", "# Plays", 1)
    result = journal.result("j-5")
    assert result is not None and result.status is JobStatus.CANCELLED
    assert journal.start_run("j-5").job is None, "a terminal job never runs again"
    out = tmp_path / "jobs" / "j-5"
    assert (out / "briefing.md").read_text() == "# Briefing"
    assert not (out / "plays.md").exists()
    assert '"cancelled"' in (out / "result.json").read_text()


class _Rig:
    """A journal, its actor, a limiter and a root, wired as the daemon wires them."""

    def __init__(
        self, tmp: Path, settings: Settings, pipeline: PipelineSpec, coordinator: type
    ) -> None:
        self.finished = threading.Event()
        self.journal = Journal(
            tmp / "briefd.sqlite3", pipeline, on_finished=lambda _: self.finished.set()
        )
        self.journal_ref = JournalActor.start(self.journal)
        limiter = RateLimiterActor.start(capacity=2)
        self.root = RootActor.start(
            journal=self.journal,
            journal_ref=self.journal_ref,
            pipeline=pipeline,
            settings=settings,
            base_url=settings.base_url or "",
            limiter=limiter,
            observers=[journal_observer(self.journal_ref)],
            coordinator_cls=coordinator,
        )

    def run(self, job: JobSpec) -> Any:
        assert self.root.proxy().submit(job).get(timeout=10).created
        assert self.finished.wait(30), self.journal.get(job.job_id)
        return self.journal.result(job.job_id)

    def close(self) -> None:
        pykka.ActorRegistry.stop_all(block=True, timeout=10)
        self.journal.close()


def test_a_crashed_coordinator_is_restarted_without_repeating_a_stage(
    sim: SimServer,
    make_settings: Any,
    make_job: Any,
    pipeline: PipelineSpec,
    tmp_path: Path,
    log_lines: list[str],
) -> None:
    """The coordinator dies after its first stage result: the run is loaded again from the
    journal and completes; that stage is not requested again (one in flight may be). The log
    says the job restarted and ends it once: the crashed run's end is not the job's."""
    crashes: list[str] = []

    class CrashOnce(CoordinatorActor):
        def on_receive(self, message: Any) -> Any:
            super().on_receive(message)
            if isinstance(message, StageSucceeded) and not crashes:
                crashes.append(message.stage)
                raise RuntimeError("simulated coordinator bug")

    rig = _Rig(tmp_path, make_settings(), pipeline, CrashOnce)
    try:
        result = rig.run(_spec(make_job, "crash-once"))
        info = rig.journal.get("crash-once")
    finally:
        rig.close()
    assert crashes and result.status is JobStatus.SUCCEEDED
    assert info is not None and info.restarts == 1
    counts = sim.stats().by_job_stage["crash-once"]
    assert counts[crashes[0]] == 1, "the journaled stage is not called again"
    assert all(counts[s] in (1, 2) for s in STAGES), "a call in flight at the crash may be"
    mine = [ln for ln in log_lines if "crash-once" in ln]
    ended = [ln for ln in mine if "'event': 'JobCompleted'" in ln]
    assert len(ended) == 1 and "succeeded" in ended[0], ended
    assert any("'event': 'JobRestarted'" in ln for ln in mine)


def test_a_coordinator_that_dies_silently_is_noticed_and_restarted(
    sim: SimServer, make_settings: Any, make_job: Any, pipeline: PipelineSpec, tmp_path: Path
) -> None:
    """A coordinator that dies without reporting (no on_done) is found by the root's watch."""
    starts: list[int] = []

    class DieSilently(CoordinatorActor):
        def on_start(self) -> None:
            starts.append(1)
            if len(starts) == 1:
                raise RuntimeError("dies before doing anything")
            super().on_start()

        def on_failure(self, *args: Any) -> None:
            pass  # no result, no on_done: only the watch can tell

    rig = _Rig(tmp_path, make_settings(), pipeline, DieSilently)
    try:
        result = rig.run(_spec(make_job, "silent"))
    finally:
        rig.close()
    assert len(starts) == 2 and result.status is JobStatus.SUCCEEDED


def test_a_job_whose_coordinator_always_crashes_fails_after_the_budget(
    sim: SimServer,
    make_settings: Any,
    make_job: Any,
    pipeline: PipelineSpec,
    tmp_path: Path,
    log_lines: list[str],
) -> None:
    """restart_budget=2: three runs die, then the job fails with an error that says why, and
    the event log gets exactly one terminal event for it (the console sees it end)."""
    starts: list[int] = []

    class AlwaysCrash(CoordinatorActor):
        def on_start(self) -> None:
            starts.append(1)
            raise RuntimeError("always")

    rig = _Rig(tmp_path, make_settings(restart_budget=2), pipeline, AlwaysCrash)
    try:
        result = rig.run(_spec(make_job, "doomed"))
    finally:
        rig.close()
    assert len(starts) == 3
    assert result.status is JobStatus.FAILED
    assert all(e.code is ErrorCode.CRASHED for e in result.errors)
    assert "restart budget is 2" in result.errors[0].message
    ended = [ln for ln in log_lines if "'event': 'JobCompleted'" in ln and "doomed" in ln]
    assert len(ended) == 1 and "failed" in ended[0], ended
