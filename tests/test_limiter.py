"""The rate limiter: the cap holds, grants follow the critical path, dead holders lose leases."""

from __future__ import annotations

import queue
from typing import Any

from actor_helpers import Inbox

import briefd
from briefd.actors import RateLimiterActor
from briefd.messages import ReleaseToken, RequestToken, TokenGranted
from briefd.sim.server import SimServer


def test_concurrent_calls_never_exceed_the_token_count(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """Five jobs share one pipeline: the server never sees more than 2 calls at once, and
    does see 2 (the cap is used, not just respected)."""
    with briefd.Pipeline(make_settings(max_concurrent=2)) as pipeline:
        futures = [pipeline.submit(make_job(f"j{i}")) for i in range(5)]
        results = [f.get(timeout=60) for f in futures]
    assert all(r.status == "succeeded" for r in results)
    stats = sim.stats()
    assert stats.max_in_flight == 2
    assert stats.total_requests == 20


def test_a_cap_of_three_and_the_sequential_rollback(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """BRIEFD_MAX_CONCURRENT=3 allows 3; BRIEFD_PARALLEL=false runs one stage at a time."""
    with briefd.Pipeline(make_settings(max_concurrent=3)) as pipeline:
        for f in [pipeline.submit(make_job(f"j{i}")) for i in range(3)]:
            f.get(timeout=60)
    assert sim.stats().max_in_flight == 3
    sim.reset()
    briefd.run(make_job("seq"), make_settings(parallel=False))
    assert sim.stats().max_in_flight == 1


def test_grants_go_to_the_longest_remaining_path_first() -> None:
    """With the token busy, a waiting stage with a longer path ahead is served before an
    earlier-arrived one with a shorter path; equal paths go in arrival order."""
    got: queue.Queue[Any] = queue.Queue()
    limiter = RateLimiterActor.start(capacity=1)
    holder = Inbox.start(got)
    limiter.tell(RequestToken(job_id="j", stage="HOLD", requester=holder.actor_urn, priority=1))
    first = got.get(timeout=5)
    assert isinstance(first, TokenGranted)
    waiting = [("SHORT", 1), ("LONG", 3), ("SHORT2", 1), ("LONG2", 3)]
    for stage, prio in waiting:
        limiter.tell(
            RequestToken(job_id="j", stage=stage, requester=holder.actor_urn, priority=prio)
        )
    order = []
    lease = first.lease_id
    for _ in waiting:
        limiter.tell(ReleaseToken(job_id="j", stage="x", lease_id=lease))
        granted = got.get(timeout=5)
        order.append(granted.stage)
        lease = granted.lease_id
    assert order == ["LONG", "LONG2", "SHORT", "SHORT2"]


def test_a_dead_holder_loses_its_lease() -> None:
    """A token whose holder died comes back without a ReleaseToken; the next waiter gets it."""
    got: queue.Queue[Any] = queue.Queue()
    waiter_q: queue.Queue[Any] = queue.Queue()
    limiter = RateLimiterActor.start(capacity=1)
    doomed = Inbox.start(got)
    waiter = Inbox.start(waiter_q)
    limiter.tell(RequestToken(job_id="j", stage="A", requester=doomed.actor_urn))
    assert isinstance(got.get(timeout=5), TokenGranted)
    limiter.tell(RequestToken(job_id="j", stage="B", requester=waiter.actor_urn))
    doomed.stop(block=True, timeout=5)
    granted = waiter_q.get(timeout=5)  # the periodic reaper hands it on
    assert granted.stage == "B"
    stats = limiter.proxy().stats().get(timeout=5)
    assert stats.reclaimed_total == 1 and stats.in_use == 1
