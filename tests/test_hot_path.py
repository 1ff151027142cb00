"""The per-call path's shortcuts keep what they cut around: order, reports, the pool."""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any

import pytest
from actor_helpers import Inbox, eventually

import briefd
from briefd.actors import RateLimiterActor
from briefd.actors.metrics import AGGREGATED, metrics_observer
from briefd.config import load_pipeline
from briefd.llm.call import ChatClient, build_request
from briefd.llm.errors import TransportError
from briefd.messages import (
    Event,
    JobStarted,
    JobStatus,
    ReleaseToken,
    RequestToken,
    StageFailed,
    StageRetrying,
    StageStarted,
    StageSucceeded,
    TokenGranted,
    TokenReleased,
)
from briefd.sim.server import Fault, SimServer


def test_the_next_grant_is_told_before_the_release_is_published() -> None:
    """A release's grant reaches the waiting requester before the limiter publishes
    anything (an observer of TokenReleased finds the grant already told), and observers
    still see TokenReleased before the TokenGranted it allowed."""
    got: queue.Queue[Any] = queue.Queue()
    seen: list[str] = []
    granted_first: list[bool] = []
    gate = threading.Event()

    def observe(event: Event) -> None:
        seen.append(event.type)
        if isinstance(event, TokenReleased) and gate.is_set():
            try:  # in the limiter's thread: the grant was told before this publication
                granted_first.append(isinstance(got.get(timeout=2), TokenGranted))
            except queue.Empty:
                granted_first.append(False)

    limiter = RateLimiterActor.start(capacity=1, observers=[observe])
    holder, waiter = Inbox.start(got), Inbox.start(got)
    limiter.tell(RequestToken(job_id="j", stage="A", requester=holder.actor_urn))
    lease = got.get(timeout=5).lease_id
    limiter.tell(RequestToken(job_id="j", stage="B", requester=waiter.actor_urn))
    gate.set()
    limiter.tell(ReleaseToken(job_id="j", stage="A", lease_id=lease))
    limiter.proxy().stats().get(timeout=5)  # a barrier behind the release
    assert granted_first == [True]
    assert seen == ["TokenGranted", "TokenReleased", "TokenGranted"]


def test_the_metrics_actor_is_told_only_what_it_counts() -> None:
    """Events the metrics actor does not count (job and stage starts) are not sent to it."""
    told: list[Any] = []

    class _Ref:
        def tell(self, message: Any) -> None:
            told.append(message)

    observe = metrics_observer(_Ref())  # type: ignore[arg-type]
    ignored = [
        JobStarted(job_id="j", stages=["A"], parallel=True, max_concurrent=2),
        StageStarted(job_id="j", stage="A", attempt=1),
    ]
    for event in ignored:
        observe(event)
    assert told == []
    granted = TokenGranted(job_id="j", stage="A", lease_id=1, in_use=1, capacity=2, waiting=0)
    observe(granted)
    assert told == [granted] and isinstance(granted, AGGREGATED)


def test_pipeline_metrics_show_the_calls_in_flight_now(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """``Pipeline.metrics().tokens_in_use`` follows the calls in flight: 2 while two calls
    hang, 0 once their job is cancelled."""
    sim.inject(Fault(stage="BRIEFING_MD", job_id="held", hang=True, times=None))
    sim.inject(Fault(stage="PLAYS_MD", job_id="held", hang=True, times=None))
    with briefd.Pipeline(make_settings(max_concurrent=2, timeout_ms=60_000)) as pipeline:
        future = pipeline.submit(make_job("held"))
        assert sim.wait_for_in_flight(2, timeout=5)
        assert eventually(lambda: pipeline.metrics().tokens_in_use == 2)
        assert pipeline.cancel("held")
        assert future.get(timeout=10).status is JobStatus.CANCELLED
        assert eventually(lambda: pipeline.metrics().tokens_in_use == 0)


def test_stage_started_follows_the_request_and_precedes_the_outcome(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """Each stage reports StageStarted once per attempt, before its outcome."""
    events: list[Event] = []
    with briefd.Pipeline(make_settings()) as pipeline:
        result = pipeline.submit(make_job(), observers=[events.append]).get(timeout=30)
    assert result.status == "succeeded"
    for stage in result.documents:
        mine = [e.type for e in events if getattr(e, "stage", None) == stage]
        mine = [t for t in mine if t in ("StageStarted", "StageSucceeded")]
        assert mine == ["StageStarted", "StageSucceeded"], (stage, mine)


def test_a_request_never_sent_still_reports_its_start_first(make_settings: Any) -> None:
    """A refused connection (nothing written): every attempt's StageStarted still comes
    before its StageRetrying or the StageFailed that ends it."""
    events: list[Event] = []
    settings = make_settings(base_url="http://127.0.0.1:9/v1", max_retries=1, model="m")
    with briefd.Pipeline(settings) as pipeline:
        job = {
            "job_id": "refused",
            "prompts": {s: "Write it." for s in pipeline.pipeline.names},
            "procurement_metrics": {"summary": "crm", "vendors": []},
        }
        pipeline.submit(job, observers=[events.append]).get(timeout=60)
    ends = (StageStarted, StageRetrying, StageFailed, StageSucceeded)
    briefing = [type(e) for e in events if isinstance(e, ends) and e.stage == "BRIEFING_MD"]
    assert briefing[0] is StageStarted and briefing[-1] is StageFailed
    for before, after in itertools.pairwise(briefing):
        if after in (StageRetrying, StageFailed):
            assert before is StageStarted, briefing


def test_on_sent_is_called_once_when_the_request_is_written(
    sim: SimServer, make_settings: Any
) -> None:
    """The client calls ``on_sent`` once per call that reached the wire, never otherwise."""
    settings = make_settings()
    spec = load_pipeline().by_name["BRIEFING_MD"]
    body = build_request(spec, "Write it.", settings)
    sent: list[int] = []
    client = ChatClient(settings, sim.base_url)
    assert client.complete(body, job_id="j", stage="BRIEFING_MD", on_sent=lambda: sent.append(1))
    assert sent == [1]
    refused = ChatClient(settings, "http://127.0.0.1:9/v1")
    with pytest.raises(TransportError):
        refused.complete(body, job_id="j", stage="BRIEFING_MD", on_sent=lambda: sent.append(2))
    assert sent == [1]


def test_a_closed_pool_is_looked_up_again(sim: SimServer, make_settings: Any) -> None:
    """Clients share the endpoint's pool; once it is closed (the process's pools moved
    on), the next call finds the adapter's current pool instead of failing."""
    from briefd.llm.abort import close_pools

    settings = make_settings()
    spec = load_pipeline().by_name["BRIEFING_MD"]
    body = build_request(spec, "Write it.", settings)
    client = ChatClient(settings, sim.base_url)
    assert client.complete(body, job_id="j", stage="BRIEFING_MD")
    close_pools()
    assert client.complete(body, job_id="j", stage="BRIEFING_MD")  # the same endpoint
    assert ChatClient(settings, sim.base_url).complete(body, job_id="j", stage="BRIEFING_MD")
