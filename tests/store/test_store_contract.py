"""Every promise of the ``Store`` protocol (``briefd.store.base``), held by every backend.

Each test runs on SQLite and on PostgreSQL (``conftest.backend``). A second
store opened on the same database stands for the next daemon (or, on
PostgreSQL, another daemon at the same time): what it reads is what was
committed, not what one object remembers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import STAGES

from briefd.messages import ErrorCode, JobResult, JobSpec, JobState, JobStatus, PipelineError
from briefd.messages import StageState as S
from briefd.store import JournalStore

from .conftest import Backend

Spec = Callable[[str], JobSpec]
DOC = {"zeta": 1, "alpha": [1, 2.5, None, "é ✓"], "mid": {"nested": True, "empty": {}}}
"""A JSON document whose key order, floats, nulls and non-ASCII must come back as they went."""


def _files(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(root.iterdir())} if root.is_dir() else {}


def _snapshot(store: JournalStore, backend: Backend, job_id: str) -> tuple[Any, ...]:
    info, result = store.get(job_id), store.result(job_id)
    assert info is not None and result is not None
    return info.model_dump(), result.model_dump(), _files(backend.jobs_dir / job_id)


def test_a_submission_is_committed_before_add_job_returns_and_added_once(
    backend: Backend, store: JournalStore, spec: Spec
) -> None:
    info, created = store.add_job(spec("j-1"))
    assert created and info.status is JobState.QUEUED and info.restarts == 0
    assert list(info.stages) == list(STAGES), "stages in pipeline order"
    assert set(info.stages.values()) == {S.PENDING} and info.progress == 0.0
    other = backend.open()  # the next daemon: only what was committed
    seen = other.get("j-1")
    assert seen is not None and seen.status is JobState.QUEUED
    changed = spec("j-1").model_copy(update={"prompts": {"BRIEFING_MD": "something else"}})
    again, created = other.add_job(changed)
    assert not created and again.job_id == "j-1" and list(again.stages) == list(STAGES)
    run = store.start_run("j-1")
    assert run.job == spec("j-1"), "the first submission is kept, not replaced"
    assert store.counts()[JobState.RUNNING.value] == 1 and sum(store.counts().values()) == 1


def test_concurrent_submissions_of_one_id_create_it_once(backend: Backend, spec: Spec) -> None:
    """Eight threads (of two daemons where a backend allows two) submit one id: one creates it."""
    stores = backend.daemons()
    start = threading.Barrier(8)
    created: list[bool] = []
    failures: list[BaseException] = []

    def submit(i: int) -> None:
        try:
            start.wait(timeout=10)
            created.append(stores[i % 2].add_job(spec("same"))[1])
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not failures and not any(t.is_alive() for t in threads)
    assert sorted(created) == [False] * 7 + [True]
    assert stores[0].counts()[JobState.QUEUED.value] == 1
    assert len(stores[1].list_jobs()) == 1


def test_a_resumed_run_gets_the_documents_and_reruns_what_was_running(
    backend: Backend, store: JournalStore, spec: Spec
) -> None:
    store.add_job(spec("j-2"))
    first = store.start_run("j-2")
    assert first.job is not None and first.done_stages == first.failed_stages == {}
    assert first.runs_died == 0
    store.stage_started("j-2", "BRIEFING_MD", 1)
    store.stage_succeeded("j-2", "BRIEFING_MD", "# Briefing", 1)
    store.stage_started("j-2", "PROCUREMENT_JSON", 1)
    store.stage_succeeded("j-2", "PROCUREMENT_JSON", DOC, 2)
    store.stage_started("j-2", "PLAYS_MD", 1)
    gave_up = PipelineError(stage="ANNEX_JSON", code=ErrorCode.TIMEOUT, message="too slow")
    store.stage_failed("j-2", "ANNEX_JSON", gave_up, 3)
    running = store.get("j-2")
    assert running is not None and running.stages["PLAYS_MD"] is S.RUNNING
    assert running.progress > 0 and running.started_at is not None
    # The daemon dies here; the next one resumes the job.
    after = backend.open()
    assert after.unfinished() == ["j-2"]
    second = after.start_run("j-2")
    assert second.runs_died == 1 and second.job == spec("j-2")
    assert second.done_stages == {"BRIEFING_MD": "# Briefing", "PROCUREMENT_JSON": DOC}
    assert second.failed_stages == {"ANNEX_JSON": gave_up}, "a stage that gave up is final"
    assert json.dumps(second.done_stages["PROCUREMENT_JSON"]) == json.dumps(DOC), "key order"
    info = after.get("j-2")
    assert info is not None and info.status is JobState.RUNNING and info.restarts == 1
    assert info.stages["PLAYS_MD"] is S.PENDING, "a call in flight at the crash is made again"
    assert info.started_at == running.started_at, "the first start is kept"
    assert after.start_run("j-2").runs_died == 2, "every run begun and not ended counts"


def test_suspend_is_a_clean_stop_and_running_jobs_resume_first(
    store: JournalStore, spec: Spec
) -> None:
    for job_id in ("q-1", "q-2", "q-3"):
        store.add_job(spec(job_id))
    store.start_run("q-3")
    store.start_run("q-2")
    assert store.unfinished() == ["q-2", "q-3", "q-1"], "running first, each FIFO"
    store.stage_started("q-3", "BRIEFING_MD", 1)
    store.suspend(["q-3", "unknown"])
    info = store.get("q-3")
    assert info is not None and info.status is JobState.QUEUED
    assert info.stages["BRIEFING_MD"] is S.PENDING
    assert store.unfinished() == ["q-2", "q-1", "q-3"]
    resumed = store.start_run("q-3")
    assert resumed.runs_died == 0 and store.get("q-3").restarts == 0  # type: ignore[union-attr]


def test_a_complete_stage_is_never_overwritten(
    backend: Backend, store: JournalStore, spec: Spec
) -> None:
    store.add_job(spec("j-3"))
    store.start_run("j-3")
    store.stage_succeeded("j-3", "BRIEFING_MD", "# First", 1)
    late = PipelineError(stage="BRIEFING_MD", code=ErrorCode.TIMEOUT, message="late")
    store.stage_started("j-3", "BRIEFING_MD", 2)
    store.stage_failed("j-3", "BRIEFING_MD", late, 2)
    store.stage_succeeded("j-3", "BRIEFING_MD", "# Second", 3)
    store.suspend(["j-3"])
    info = store.get("j-3")
    assert info is not None and info.stages["BRIEFING_MD"] is S.COMPLETE and info.errors == []
    assert backend.open().start_run("j-3").done_stages == {"BRIEFING_MD": "# First"}
    assert _files(backend.jobs_dir / "j-3") == {"briefing.md": "# First"}


def test_a_failed_stage_is_final_and_its_error_shows_while_the_job_is_live(
    backend: Backend, store: JournalStore, spec: Spec
) -> None:
    """A stage that gave up after its retries is not called again, even by a resumed run."""
    store.add_job(spec("j-4"))
    store.start_run("j-4")
    error = PipelineError(stage="PLAYS_MD", code=ErrorCode.TIMEOUT, message="too slow")
    store.stage_failed("j-4", "PLAYS_MD", error, 3)
    info = store.get("j-4")
    assert info is not None and info.stages["PLAYS_MD"] is S.FAILED and info.errors == [error]
    store.stage_started("j-4", "PLAYS_MD", 4)
    store.stage_succeeded("j-4", "PLAYS_MD", "# late", 4)
    other = PipelineError(stage="PLAYS_MD", code=ErrorCode.CRASHED, message="other")
    store.stage_failed("j-4", "PLAYS_MD", other, 5)
    resumed = backend.open().start_run("j-4")
    assert resumed.failed_stages == {"PLAYS_MD": error} and resumed.done_stages == {}
    info = store.get("j-4")
    assert info is not None and info.stages["PLAYS_MD"] is S.FAILED and info.errors == [error]
    assert "plays.md" not in _files(backend.jobs_dir / "j-4")


def test_finish_commits_once_and_the_first_result_wins(
    backend: Backend, spec: Spec, make_result: Callable[..., JobResult]
) -> None:
    """Four threads (of two daemons where a backend allows two) end one job at once: one
    result is kept, its files written, the job's end announced once."""
    finished: list[str] = []
    stores = backend.daemons(on_finished=finished.append)
    stores[0].add_job(spec("j-5"))
    stores[0].start_run("j-5")
    stores[0].stage_succeeded("j-5", "BRIEFING_MD", "# Briefing", 1)
    states = {s: S.COMPLETE for s in STAGES}
    statuses = (JobStatus.SUCCEEDED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED)
    results = [
        make_result("j-5", status, {s: f"# {status.value}" for s in STAGES}, states)
        for status in statuses
    ]
    start = threading.Barrier(4)
    won: dict[JobStatus, bool] = {}

    def end(i: int) -> None:
        start.wait(timeout=10)
        won[results[i].status] = stores[i % 2].finish(results[i])

    threads = [threading.Thread(target=end, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(won.values()) == [False, False, False, True] and finished == ["j-5"]
    winner = next(s for s, w in won.items() if w)
    kept = stores[1].result("j-5")
    assert kept is not None and kept.status is winner and kept.errors == []
    info = stores[0].get("j-5")
    assert info is not None and info.status.value == winner.value and info.finished_at
    assert info.stages["BRIEFING_MD"] is S.COMPLETE and info.progress == 100.0
    out = _files(backend.jobs_dir / "j-5")
    assert json.loads(out["result.json"])["status"] == winner.value, "files of the winner"
    assert stores[0].unfinished() == [] and stores[0].start_run("j-5").job is None


def test_a_terminal_job_is_never_changed(
    backend: Backend, store: JournalStore, spec: Spec, make_result: Callable[..., JobResult]
) -> None:
    store.add_job(spec("j-6"))
    store.start_run("j-6")
    store.stage_succeeded("j-6", "BRIEFING_MD", "# Briefing", 1)
    states = {s: S.COMPLETE if s == "BRIEFING_MD" else S.FAILED for s in STAGES}
    result = make_result("j-6", JobStatus.PARTIAL, {"BRIEFING_MD": "# Briefing"}, states)
    assert store.finish(result)
    before = _snapshot(store, backend, "j-6")
    error = PipelineError(stage="PLAYS_MD", code=ErrorCode.TIMEOUT, message="late")
    for other in (store, backend.open()):
        other.stage_started("j-6", "PLAYS_MD", 2)
        other.stage_failed("j-6", "PLAYS_MD", error, 2)
        other.stage_succeeded("j-6", "PLAYS_MD", "# Plays", 2)
        other.stage_succeeded("j-6", "BRIEFING_MD", "# Other", 2)
        other.suspend(["j-6"])
        assert other.start_run("j-6").job is None, "a terminal job never runs again"
        assert not other.finish(result.model_copy(update={"status": JobStatus.SUCCEEDED}))
        assert other.close_job("j-6", JobState.CANCELLED, ErrorCode.CANCELLED, "late") is None
        assert _snapshot(other, backend, "j-6") == before


def test_suspend_leaves_a_terminal_job_alone(
    backend: Backend,
    store: JournalStore,
    spec: Spec,
    make_result: Callable[..., JobResult],
) -> None:
    """A job that ended with a stage still marked running (a result cut short) stays so."""
    store.add_job(spec("j-7"))
    store.start_run("j-7")
    store.stage_started("j-7", "PLAYS_MD", 1)
    states = {s: S.RUNNING if s == "PLAYS_MD" else S.FAILED for s in STAGES}
    assert store.finish(make_result("j-7", JobStatus.FAILED, {}, states))
    before = _snapshot(store, backend, "j-7")
    store.suspend(["j-7"])
    assert _snapshot(store, backend, "j-7") == before


def test_close_job_keeps_the_completed_documents(
    backend: Backend, store: JournalStore, spec: Spec
) -> None:
    finished: list[str] = []
    store = backend.open(on_finished=finished.append)
    store.add_job(spec("j-8"))
    store.start_run("j-8")
    store.stage_succeeded("j-8", "BRIEFING_MD", "# Briefing", 2)
    assert store.close_job("j-8", JobState.RUNNING, ErrorCode.CANCELLED, "no") is None
    closed = store.close_job("j-8", JobState.CANCELLED, ErrorCode.CANCELLED, "by test", "hint")
    assert closed is not None and closed.status is JobStatus.CANCELLED and finished == ["j-8"]
    assert closed.documents["BRIEFING_MD"] == "# Briefing"
    assert {e.stage for e in closed.errors} == set(STAGES) - {"BRIEFING_MD"}
    assert {(e.code, e.message, e.hint) for e in closed.errors} == {
        (ErrorCode.CANCELLED, "by test", "hint")
    }
    assert closed.metrics.attempts["BRIEFING_MD"] == 2
    assert store.result("j-8") == closed
    info = store.get("j-8")
    assert info is not None and info.status is JobState.CANCELLED
    assert info.stages == {s: S.COMPLETE if s == "BRIEFING_MD" else S.FAILED for s in STAGES}
    assert info.errors == closed.errors
    out = _files(backend.jobs_dir / "j-8")
    assert out["briefing.md"] == "# Briefing" and "plays.md" not in out
    assert json.loads(out["result.json"])["status"] == "cancelled"
    store.add_job(spec("j-9"))  # never run: ended from the queue
    queued = store.close_job("j-9", JobState.FAILED, ErrorCode.CRASHED, "budget spent")
    assert queued is not None and len(queued.errors) == len(STAGES)


def test_counts_and_lists_newest_first(
    store: JournalStore, spec: Spec, make_result: Callable[..., JobResult]
) -> None:
    assert store.counts() == {s.value: 0 for s in JobState} and store.list_jobs() == []
    for job_id in ("a", "b", "c", "d"):
        store.add_job(spec(job_id))
    store.start_run("b")
    store.start_run("c")
    store.close_job("c", JobState.CANCELLED, ErrorCode.CANCELLED, "by test")
    counts = store.counts()
    assert counts == {**{s.value: 0 for s in JobState}, "queued": 2, "running": 1, "cancelled": 1}
    assert [j.job_id for j in store.list_jobs()] == ["d", "c", "b", "a"]
    assert [j.job_id for j in store.list_jobs(limit=2)] == ["d", "c"]
    assert [j.job_id for j in store.list_jobs(JobState.QUEUED)] == ["d", "a"]
    assert [j.job_id for j in store.list_jobs(JobState.CANCELLED)] == ["c"]
    assert store.list_jobs(JobState.SUCCEEDED) == []
    listed = {j.job_id: j for j in store.list_jobs()}
    assert all(listed[j] == store.get(j) for j in listed), "a list shows what get shows"


def test_an_unknown_job_is_nothing_and_changes_nothing(
    store: JournalStore, make_result: Callable[..., JobResult]
) -> None:
    assert store.get("nope") is None and store.result("nope") is None
    assert store.start_run("nope").job is None
    store.stage_started("nope", "BRIEFING_MD", 1)
    store.stage_succeeded("nope", "BRIEFING_MD", "# x", 1)
    store.suspend(["nope"])
    result = make_result("nope", JobStatus.SUCCEEDED, {}, {s: S.COMPLETE for s in STAGES})
    assert not store.finish(result)
    assert store.close_job("nope", JobState.CANCELLED, ErrorCode.CANCELLED, "x") is None
    assert store.counts() == {s.value: 0 for s in JobState} and store.write_problem() is None


@pytest.mark.parametrize("job_id", ["x" * 64, "a-b_C-9"])
def test_any_valid_job_id_round_trips(store: JournalStore, spec: Spec, job_id: str) -> None:
    store.add_job(spec(job_id))
    assert store.start_run(job_id).job == spec(job_id)
    assert [j.job_id for j in store.list_jobs()] == [job_id]


def test_spent_since_sums_the_results_that_ended_since(
    backend: Backend,
    store: JournalStore,
    spec: Spec,
    make_result: Callable[..., JobResult],
) -> None:
    """The daily budget's memory: what jobs that ended since a moment cost, from their results.
    A restarted daemon (a second store on the same data) reads the same figure, and a daily
    ledger seeded from it holds new jobs at once."""
    from briefd.costs.daily import DailyLedger

    before = time.time() - 1.0
    done = {s: S.COMPLETE for s in STAGES}
    for job_id, usd in (("c-1", 1.25), ("c-2", 2.0)):
        store.add_job(spec(job_id))
        store.start_run(job_id)
        result = make_result(job_id, JobStatus.SUCCEEDED, {}, done)
        assert store.finish(result.model_copy(update={"total_cost_usd": usd}))
    store.add_job(spec("c-3"))  # not ended: not counted
    assert store.spent_since(before) == 3.25
    assert store.spent_since(time.time() + 60) == 0.0
    again = backend.open()
    assert again.spent_since(before) == 3.25
    ledger = DailyLedger(budget_usd=3.0)
    ledger.sync_from(again, now=True)
    assert ledger.spent_today_usd == 3.25
    assert ledger.update(queued=0) is not None and ledger.held
