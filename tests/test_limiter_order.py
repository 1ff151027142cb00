"""The real limiter actor: oldest job first, critical path within a job, job priority that
ages, the adaptive window from ReleaseToken outcomes, and pacing by the server's headers."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest

from briefd.actors import RateLimiterActor
from briefd.actors.limiter_supervisor import LimiterSupervisor
from briefd.limits.order import PRIORITY_AGING_S, Latencies, Waiting, pick
from briefd.messages import ReleaseToken, RequestToken, TokenGranted
from briefd.messages.token import RateLimits

DAG = {"A": ["C"], "B": ["C"], "C": ["D"], "D": []}  # the seed's shape: A, B -> C -> D


def _sub(stage: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    todo = [stage]
    while todo:
        n = todo.pop()
        out[n] = DAG.get(n, [])
        todo += out[n]
    return out


def _req(urn: str, job: str, stage: str, admitted: float, **kw: Any) -> RequestToken:
    return RequestToken(
        job_id=job,
        stage=stage,
        requester=urn,
        admitted_at=admitted,
        downstream=_sub(stage),
        **kw,
    )


def _drain(limiter: Any, got: queue.Queue[Any], first: TokenGranted, n: int) -> list[str]:
    """Release the held token n times, recording who gets it each time."""
    order, lease = [], first.lease_id
    for _ in range(n):
        limiter.tell(ReleaseToken(job_id="x", stage="x", lease_id=lease, outcome="success"))
        granted = got.get(timeout=5)
        order.append(f"{granted.job_id}/{granted.stage}")
        lease = granted.lease_id
    return order


def test_the_oldest_job_first_and_the_critical_path_within_it(inbox: Any) -> None:
    """A new job's root stages wait behind an old job's last stage, whatever their path."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=1)
    try:
        now = time.time()  # admitted_at is Unix time
        limiter.tell(_req(ref.actor_urn, "hold", "A", now - 5))
        first = got.get(timeout=5)
        limiter.tell(_req(ref.actor_urn, "new", "A", now - 1, priority=3))
        limiter.tell(_req(ref.actor_urn, "new", "D", now - 1, priority=1))
        limiter.tell(_req(ref.actor_urn, "old", "D", now - 4, priority=1))
        limiter.tell(_req(ref.actor_urn, "old", "C", now - 4, priority=2))
        order = _drain(limiter, got, first, 4)
        assert order == ["old/C", "old/D", "new/A", "new/D"]
    finally:
        limiter.stop()


def test_job_priority_comes_before_age(inbox: Any) -> None:
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=1)
    try:
        now = time.time()  # admitted_at is Unix time
        limiter.tell(_req(ref.actor_urn, "hold", "A", now - 5))
        first = got.get(timeout=5)
        limiter.tell(_req(ref.actor_urn, "old", "A", now - 4))
        limiter.tell(_req(ref.actor_urn, "urgent", "A", now - 1, job_priority=2))
        assert _drain(limiter, got, first, 2) == ["urgent/A", "old/A"]
    finally:
        limiter.stop()


def test_priority_ages_so_a_low_priority_job_is_not_starved() -> None:
    """A job admitted PRIORITY_AGING_S x (gap + 1) before a higher-priority one goes first."""
    lat = Latencies()
    t0 = 10_000.0
    low = Waiting(0, RequestToken(job_id="low", stage="A", requester="u", admitted_at=t0), t0)
    gap = 3
    later = t0 + PRIORITY_AGING_S * (gap + 1)
    high = Waiting(
        1,
        RequestToken(job_id="hi", stage="A", requester="u", admitted_at=later, job_priority=gap),
        later,
    )
    assert pick([low, high], now=t0 + PRIORITY_AGING_S * gap - 1, latencies=lat) == 1
    assert pick([low, high], now=later, latencies=lat) == 0  # aged past the gap: its turn


def test_learned_latencies_weigh_the_path_within_a_job() -> None:
    """Two roots of one job: A's path (A -> C -> D) is longer only if A itself is slow."""
    lat = Latencies()
    t = 1.0
    a = Waiting(
        0,
        RequestToken(job_id="j", stage="A", requester="u", admitted_at=t, downstream=_sub("A")),
        t,
    )
    b = Waiting(
        1,
        RequestToken(job_id="j", stage="B", requester="u", admitted_at=t, downstream=_sub("B")),
        t,
    )
    assert pick([a, b], now=2.0, latencies=lat) == 0  # equal weights: arrival order
    lat.observe("A", 0.1)
    lat.observe("B", 4.0)
    assert pick([a, b], now=2.0, latencies=lat) == 1


def test_a_429_halves_the_window_and_successes_grow_it_back(inbox: Any) -> None:
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=4)
    stats = limiter.proxy().stats
    try:
        for i in range(4):
            limiter.tell(_req(ref.actor_urn, "j", f"S{i}", 1.0))
        leases = [got.get(timeout=5).lease_id for _ in range(4)]
        limiter.tell(
            ReleaseToken(job_id="j", stage="S0", lease_id=leases[0], outcome="rate_limited")
        )
        limiter.tell(
            ReleaseToken(job_id="j", stage="S1", lease_id=leases[1], outcome="rate_limited")
        )  # same epoch: no second cut
        s = stats().get(timeout=5)
        assert s.window == 2.0 and s.rate_limited_total == 2 and s.in_flight == 2
        limiter.tell(_req(ref.actor_urn, "j", "T", 1.0))
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)  # 2 in flight, W = 2: it waits
        limiter.tell(ReleaseToken(job_id="j", stage="S2", lease_id=leases[2], outcome="success"))
        assert got.get(timeout=5).stage == "T"
        assert stats().get(timeout=5).window == pytest.approx(2.5)
    finally:
        limiter.stop()


def test_remaining_zero_pauses_grants_until_the_reset(inbox: Any) -> None:
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=2)
    try:
        limiter.tell(_req(ref.actor_urn, "j", "A", 1.0))
        lease = got.get(timeout=5).lease_id
        spent = RateLimits(remaining_requests=0, reset_requests_s=0.5)
        limiter.tell(
            ReleaseToken(job_id="j", stage="A", lease_id=lease, outcome="success", limits=spent)
        )
        asked = time.monotonic()
        limiter.tell(_req(ref.actor_urn, "j", "B", 1.0))
        granted = got.get(timeout=5)  # a timer, not a poll, wakes the limiter at the reset
        assert granted.stage == "B" and time.monotonic() - asked >= 0.45
        assert limiter.proxy().stats().get(timeout=5).pauses_total == 1
    finally:
        limiter.stop()


def test_a_requests_per_minute_budget_paces_grants(inbox: Any) -> None:
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=4, rpm=120)  # 2/s, 10 s of burst: 20 at once
    try:
        for i in range(21):
            limiter.tell(_req(ref.actor_urn, "j", f"S{i}", 1.0))
        leases = []
        for _ in range(4):
            leases.append(got.get(timeout=5).lease_id)
        for lease in leases[:4]:
            limiter.tell(ReleaseToken(job_id="j", stage="x", lease_id=lease, outcome="success"))
        seen = 4
        start = time.monotonic()
        while seen < 21:
            g = got.get(timeout=5)
            seen += 1
            limiter.tell(ReleaseToken(job_id="j", stage="x", lease_id=g.lease_id))
        assert time.monotonic() - start >= 0.4  # the 21st waited for the budget's timer
        assert limiter.proxy().stats().get(timeout=5).rpm_lag_s > 9.0
    finally:
        limiter.stop()


def test_a_restarted_limiter_keeps_its_window(inbox: Any) -> None:
    """The window lives in LimiterState: a successor does not start back at the ceiling."""
    ref, got = inbox
    sup = LimiterSupervisor(capacity=4)
    try:
        sup.tell(_req(ref.actor_urn, "j", "A", 1.0))
        lease = got.get(timeout=5).lease_id
        sup.tell(ReleaseToken(job_id="j", stage="A", lease_id=lease, outcome="rate_limited"))
        assert sup.proxy().stats().get(timeout=5).window == 2.0
        sup.ref.stop(block=True, timeout=5)
        assert sup.check()
        s = sup.proxy().stats().get(timeout=5)
        assert s.restarts == 1 and s.window == 2.0 and s.rate_limited_total == 1
    finally:
        sup.stop()


def test_a_job_submitted_earlier_but_started_later_is_served_first(inbox: Any) -> None:
    """admitted_at is the job's submission (Unix time), not its run's start: a job that was
    submitted first but whose stages ask later (a resumed job, one that queued for
    admission) is served before a job submitted after it that asked first."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=1)
    try:
        now = time.time()
        limiter.tell(_req(ref.actor_urn, "hold", "A", now - 60))
        first = got.get(timeout=5)
        limiter.tell(_req(ref.actor_urn, "later", "A", now - 1))  # submitted later, asks first
        limiter.tell(_req(ref.actor_urn, "resumed", "A", now - 20))  # submitted earlier
        assert _drain(limiter, got, first, 2) == ["resumed/A", "later/A"]
    finally:
        limiter.stop()


def test_the_coordinator_stamps_every_request_with_the_jobs_submission(inbox: Any) -> None:
    """CoordinatorActor(admitted_at=T) puts T on each stage's RequestToken (None: now)."""
    from briefd.actors import CoordinatorActor
    from briefd.config import Settings, load_pipeline
    from briefd.messages import JobSpec

    _ref, got = inbox
    requests: queue.Queue[RequestToken] = queue.Queue()

    class Recorder:
        def tell(self, message: Any) -> None:
            if isinstance(message, RequestToken):
                requests.put(message)

    pipeline = load_pipeline()
    job = JobSpec(
        job_id="old-job",
        prompts={s.name: "Write it." for s in pipeline.stages},
        procurement_metrics={"summary": "x", "vendors": []},
    )
    submitted = time.time() - 3600.0
    coordinator = CoordinatorActor.start(
        job=job,
        pipeline=pipeline,
        settings=Settings(base_url="http://127.0.0.1:9/v1"),
        base_url="http://127.0.0.1:9/v1",
        limiter=Recorder(),
        admitted_at=submitted,
    )
    try:
        roots = [requests.get(timeout=5) for _ in range(2)]
        assert {r.stage for r in roots} == {"BRIEFING_MD", "PLAYS_MD"}
        assert all(r.admitted_at == submitted for r in roots)
    finally:
        coordinator.stop()
    assert got.empty()
