"""Each job's events in the journal (the event streams' table), on both backends.

The same promises on SQLite and PostgreSQL: an event staged with a write commits with it
(and not without it: a write rolled back takes its events along); each job's events are
numbered 1..n in the order given; ids follow one global order; nothing is stored after a
job's JobCompleted, which the store writes itself with the terminal state; a job's
progress rows go when it ends; listeners hear each commit with the rows it wrote.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from briefd.messages import (
    ErrorCode,
    JobSpec,
    JobState,
    JobStatus,
    StageProgress,
    StageRetrying,
    StageStarted,
)
from briefd.messages import PipelineError as Err
from briefd.messages import StageState as S
from briefd.store import JournalStore
from briefd.store.events import EventRow

from .conftest import Backend

Spec = Callable[[str], JobSpec]


def _started(job_id: str, stage: str = "PLAYS_MD") -> StageStarted:
    return StageStarted(job_id=job_id, stage=stage, attempt=1)


def test_staged_events_commit_with_their_write_in_order(store: JournalStore, spec: Spec) -> None:
    """Events staged around a stage write are committed by it, numbered per job, with the
    event's own JSON; reads by job follow seq, the all-jobs read follows the global id."""
    heard: list[list[EventRow]] = []
    store.event_log.on_commit(lambda rows: heard.append(list(rows)))
    store.add_job(spec("ev-1"))
    store.add_job(spec("ev-2"))
    store.start_run("ev-1")
    store.start_run("ev-2")
    retry = StageRetrying(
        job_id="ev-2",
        stage="PLAYS_MD",
        attempt=1,
        wait_s=0.1,
        reason=Err(stage="PLAYS_MD", code=ErrorCode.TIMEOUT, message="slow"),
    )
    events = [_started("ev-1"), retry, _started("ev-2"), _started("ev-1", "BRIEFING_MD")]
    with store.event_log.staged(events) as staged:
        store.stage_started("ev-1", "PLAYS_MD", 1)
    assert staged.flushed
    one = store.event_log.read("ev-1", 0)
    assert [(r.seq, r.type) for r in one] == [(1, "StageStarted"), (2, "StageStarted")]
    assert json.loads(one[1].data) == json.loads(events[3].model_dump_json())
    assert [r.seq for r in store.event_log.read("ev-2", 0)] == [1, 2]
    everyone = store.event_log.read(None, 0)
    assert [r.job_id for r in everyone] == ["ev-1", "ev-2", "ev-2", "ev-1"]
    assert [r.id for r in everyone] == sorted(r.id for r in everyone)
    assert store.event_log.last_id() == everyone[-1].id
    assert heard and [r.id for r in heard[-1]] == [r.id for r in everyone]
    assert [r.seq for r in store.event_log.read("ev-1", 1)] == [2]


def test_a_write_rolled_back_takes_its_events_along(store: JournalStore, spec: Spec) -> None:
    """A transaction that fails after the events were inserted commits none of them, and
    they stay staged for the caller's next try."""
    store.add_job(spec("rb-1"))
    store.start_run("rb-1")
    tx: Any = store._tx  # type: ignore[attr-defined]
    with store.event_log.staged([_started("rb-1")]) as staged:
        with pytest.raises(RuntimeError), tx() as conn:
            store.event_log.flush(conn)
            raise RuntimeError("the write failed")
        assert not staged.flushed
        assert store.event_log.read("rb-1", 0) == []
        store.stage_started("rb-1", "PLAYS_MD", 1)  # the next try
    assert staged.flushed
    assert [r.type for r in store.event_log.read("rb-1", 0)] == ["StageStarted"]


def test_the_end_is_written_with_the_terminal_state_and_nothing_after(
    store: JournalStore, spec: Spec, make_result: Callable[..., Any]
) -> None:
    """``finish`` writes the job's JobCompleted in its transaction, after what was staged;
    its progress rows go; a straggler after it, or a second end, stores nothing."""
    store.add_job(spec("end-1"))
    store.start_run("end-1")
    progress = StageProgress(
        job_id="end-1", stage="PLAYS_MD", attempt=1, completion_tokens=3, fraction=0.1
    )
    store.event_log.append([_started("end-1"), progress])
    result = make_result("end-1", JobStatus.SUCCEEDED, {}, {s: S.COMPLETE for s in ()})
    with store.event_log.staged([_started("end-1", "ANNEX_JSON")]):
        assert store.finish(result)
    rows = store.event_log.read("end-1", 0)
    assert [(r.seq, r.type) for r in rows] == [
        (1, "StageStarted"),
        (3, "StageStarted"),
        (4, "JobCompleted"),
    ]
    assert json.loads(rows[-1].data)["result"]["status"] == "succeeded"
    store.event_log.append([_started("end-1")])
    assert store.close_job("end-1", JobState.CANCELLED, ErrorCode.CANCELLED, "late") is None
    assert len(store.event_log.read("end-1", 0)) == 3


def test_a_job_closed_from_outside_ends_its_events_too(store: JournalStore, spec: Spec) -> None:
    """A job cancelled in the queue (no run, no coordinator) gets its JobCompleted."""
    store.add_job(spec("cl-1"))
    assert store.close_job("cl-1", JobState.CANCELLED, ErrorCode.CANCELLED, "no") is not None
    rows = store.event_log.read("cl-1", 0)
    assert [r.type for r in rows] == ["JobCompleted"]
    assert json.loads(rows[0].data)["result"]["status"] == "cancelled"


def test_concurrent_appends_number_each_job_without_gaps(backend: Backend, spec: Spec) -> None:
    """Two stores (two daemons on PostgreSQL) appending to one job at once: its events are
    numbered 1..n with no gap or repeat, and the global ids commit in their order."""
    stores = backend.daemons()
    stores[0].add_job(spec("cc-1"))

    def append(store: JournalStore) -> None:
        for _ in range(20):
            store.event_log.append([_started("cc-1")])

    threads = [threading.Thread(target=append, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows: Sequence[EventRow] = stores[0].event_log.read("cc-1", 0)
    assert [r.seq for r in rows] == list(range(1, 41))
    assert [r.id for r in rows] == sorted(r.id for r in rows)
