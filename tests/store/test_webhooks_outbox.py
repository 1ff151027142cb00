"""The webhook outbox on both backends: a delivery exists exactly when its event was
committed, and a claim gives each due delivery to one sender at a time.

Each test runs on SQLite and on PostgreSQL (``conftest.backend``), the outbox attached the
way the daemon attaches it (:class:`briefd.webhooks.service.Webhooks` sets ``store.outbox``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from daemon_helpers import STAGES

from briefd.messages import (
    JobResult,
    JobSpec,
    JobStatus,
    StageState,
    StageSucceeded,
    WebhookAttempted,
    WebhookSpec,
)
from briefd.store import JournalStore
from briefd.webhooks.outbox import Outbox

from .conftest import Backend

Spec = Callable[[str], JobSpec]
URL = "https://hooks.example.com/in?token=abc"


def attach(backend: Backend, store: JournalStore, default: str | None = None) -> Any:
    if backend.name == "sqlite":
        from briefd.webhooks.outbox import SqliteOutbox

        outbox: Outbox = SqliteOutbox(store, default)  # type: ignore[arg-type]
    else:
        from briefd.webhooks.pg_outbox import PgOutbox

        outbox = PgOutbox(store, default)  # type: ignore[arg-type]
    store.outbox = outbox  # type: ignore[attr-defined]
    return outbox


def hooked(spec: Spec, job_id: str, events: list[str]) -> JobSpec:
    return spec(job_id).model_copy(update={"webhook": WebhookSpec(url=URL, events=events)})


def succeeded(job_id: str, stage: str) -> StageSucceeded:
    return StageSucceeded(
        job_id=job_id, stage=stage, document=f"# {stage}", elapsed_ms=1, attempts=1
    )


def finish_all(store: JournalStore, job_id: str, make_result: Callable[..., JobResult]) -> bool:
    docs = {s: f"# {s}" for s in STAGES}
    states = dict.fromkeys(STAGES, StageState.COMPLETE)
    return store.finish(make_result(job_id, JobStatus.SUCCEEDED, docs, states))


def test_deliveries_are_written_with_their_events_once(
    backend: Backend, store: JournalStore, spec: Spec, make_result: Callable[..., JobResult]
) -> None:
    """A stage's document and its delivery are one write; a stage written again (it has
    ended) or a job ended again makes none; events the job did not ask for make none."""
    outbox = attach(backend, store)
    job = hooked(spec, "o-1", ["StageSucceeded", "JobCompleted"])
    store.add_job(job)
    store.start_run("o-1")
    store.stage_started("o-1", "BRIEFING_MD", 1, event=None)
    for stage in STAGES:
        store.stage_succeeded("o-1", stage, f"# {stage}", 1, event=succeeded("o-1", stage))
    store.stage_succeeded("o-1", "PLAYS_MD", "# again", 2, event=succeeded("o-1", "PLAYS_MD"))
    assert finish_all(store, "o-1", make_result)
    assert not finish_all(store, "o-1", make_result)
    shown = outbox.deliveries("o-1")
    assert [d.event for d in shown].count("StageSucceeded") == 4
    assert [d.event for d in shown].count("JobCompleted") == 1 and len(shown) == 5
    assert {d.state for d in shown} == {"pending"} and len({d.id for d in shown}) == 5
    assert {d.url for d in shown} == {"https://hooks.example.com/in?token=***"}
    assert outbox.counts() == {"pending": 5, "delivered": 0, "failed": 0}


def test_jobs_without_a_webhook_use_the_default_for_their_end_only(
    backend: Backend, store: JournalStore, spec: Spec, make_result: Callable[..., JobResult]
) -> None:
    outbox = attach(backend, store, default="https://default.example.com/x")
    store.add_job(spec("o-2"))
    store.start_run("o-2")
    store.stage_succeeded("o-2", "BRIEFING_MD", "# b", 1, event=succeeded("o-2", "BRIEFING_MD"))
    assert outbox.deliveries("o-2") == []
    assert finish_all(store, "o-2", make_result)
    (only,) = outbox.deliveries("o-2")
    assert only.event == "JobCompleted" and only.url == "https://default.example.com/x"
    outbox.default_url = None
    store.add_job(spec("o-3"))
    store.start_run("o-3")
    assert finish_all(store, "o-3", make_result)
    assert outbox.deliveries("o-3") == []


def test_a_delivery_that_cannot_be_written_takes_its_event_with_it(
    backend: Backend, store: JournalStore, spec: Spec
) -> None:
    """One transaction: if the delivery's insert fails, the stage's document is not
    committed either (the journal will write both again, or neither)."""
    outbox = attach(backend, store)
    store.add_job(hooked(spec, "o-4", ["StageSucceeded"]))
    store.start_run("o-4")

    def broken(*_: Any) -> list[str]:
        raise RuntimeError("the outbox failed")

    outbox.urls_for = broken
    with pytest.raises(RuntimeError):
        store.stage_succeeded("o-4", "PLAYS_MD", "# p", 1, event=succeeded("o-4", "PLAYS_MD"))
    info = backend.open().get("o-4")
    assert info is not None and info.stages["PLAYS_MD"] is StageState.PENDING
    assert outbox.deliveries("o-4") == []


def attempted(
    delivery_id: str, outcome: str, status: int | None, retry_in_s: float | None = None
) -> WebhookAttempted:
    return WebhookAttempted(
        job_id="o-5",
        delivery_id=delivery_id,
        event_type="JobCompleted",
        attempt=1,
        outcome=outcome,  # type: ignore[arg-type]
        status=status,
        error="" if status == 204 else "HTTP 503",
        retry_in_s=retry_in_s,
    )


def test_claims_lease_rows_and_outcomes_are_recorded(
    backend: Backend, store: JournalStore, spec: Spec, make_result: Callable[..., JobResult]
) -> None:
    """A claimed delivery is nobody else's until its lease passes; a retry is due again
    after its delay, under the same id; a delivered one is never claimed again."""
    outbox = attach(backend, store, default="https://default.example.com/x")
    store.add_job(spec("o-5"))
    store.start_run("o-5")
    assert finish_all(store, "o-5", make_result)
    (due,) = outbox.claim("d1", 10, lease_s=60)
    assert due.job_id == "o-5" and due.attempts == 0 and '"type":"JobCompleted"' in due.payload
    assert outbox.claim("d2", 10, lease_s=60) == []
    outbox.record(attempted(due.id, "retry", 503, retry_in_s=0.0))
    (again,) = outbox.claim("d2", 10, lease_s=60)
    assert (again.id, again.attempts, again.payload) == (due.id, 1, due.payload)
    outbox.record(attempted(due.id, "delivered", 204))
    assert outbox.claim("d1", 10, lease_s=0) == []
    (shown,) = outbox.deliveries("o-5")
    assert (shown.state, shown.attempts, shown.last_status) == ("delivered", 2, 204)
    assert shown.delivered_at is not None and shown.next_at is None
    outbox.record(attempted(due.id, "retry", 503, retry_in_s=0.0))  # late: changes nothing
    assert outbox.deliveries("o-5")[0].state == "delivered"


def test_two_senders_claiming_at_once_never_take_the_same_delivery(
    backend: Backend, spec: Spec, make_result: Callable[..., JobResult]
) -> None:
    """Two daemons (two stores on PostgreSQL) claim concurrently: every delivery is taken
    exactly once (FOR UPDATE SKIP LOCKED; on SQLite, the journal's one writer)."""
    stores = backend.daemons()
    outboxes = [attach(backend, s, default="https://default.example.com/x") for s in stores]
    n = 30
    for i in range(n):
        stores[0].add_job(spec(f"c-{i}"))
        stores[0].start_run(f"c-{i}")
        assert finish_all(stores[0], f"c-{i}", make_result)
    taken: list[list[str]] = [[], []]

    def drain(k: int) -> None:
        while rows := outboxes[k].claim(f"d{k}", 3, lease_s=60):
            taken[k].extend(r.id for r in rows)

    threads = [threading.Thread(target=drain, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    both = taken[0] + taken[1]
    assert len(both) == n and len(set(both)) == n, (len(taken[0]), len(taken[1]))


def test_a_restarted_daemon_takes_back_its_predecessors_claims_at_once(
    backend: Backend, store: JournalStore, spec: Spec, make_result: Callable[..., JobResult]
) -> None:
    """A delivery claimed by a daemon killed mid-attempt is due again as soon as its data
    dir's next daemon starts, not after the lease; on PostgreSQL another daemon's claim
    (another node) is left to its lease."""
    outbox = attach(backend, store, default="https://default.example.com/x")
    for job_id in ("r-1", "r-2"):
        store.add_job(spec(job_id))
        store.start_run(job_id)
        assert finish_all(store, job_id, make_result)
    mine = outbox.claim("host:100:node0001", 1, lease_s=600)
    theirs = outbox.claim("other:7:node0002", 1, lease_s=600)
    assert len(mine) == len(theirs) == 1
    assert outbox.claim("host:200:node0001", 10, lease_s=600) == []
    released = outbox.release("host:200:node0001")
    again = outbox.claim("host:200:node0001", 10, lease_s=600)
    if backend.name == "sqlite":  # one daemon per journal: every claim was a predecessor's
        assert released == 2 and {d.id for d in again} == {mine[0].id, theirs[0].id}
    else:
        assert released == 1 and [d.id for d in again] == [mine[0].id]
