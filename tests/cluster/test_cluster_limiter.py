"""The cluster limiter actor end to end: fake requesters (``Inbox`` actors) on two "daemons"
(two limiters, each with its own pool and listener) sharing one throwaway database."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pykka
import pytest
from actor_helpers import Inbox
from pg import PgServer

from briefd.actors.cluster_limiter import ClusterLimiterActor
from briefd.actors.limiter_supervisor import LimiterSupervisor, cluster_limiter
from briefd.cluster.state import ClusterLimiterState, ClusterLimiterStats
from briefd.cluster.tokens import ClusterTokens
from briefd.config import Settings
from briefd.messages import (
    CancelTokenRequest,
    ReleaseToken,
    RequestToken,
    SetCapacity,
    TokenGranted,
)

from .conftest import until

ASK_S = 5.0
MakeLimiter = Callable[..., LimiterSupervisor]


@pytest.fixture
def make_limiter(pg_url: str) -> Iterator[MakeLimiter]:
    """``make_limiter(daemon_id, k=1)``: one daemon's supervised cluster limiter (poll 0.2 s,
    short pool timeout so a lost database is noticed quickly); stopped after the test."""
    made: list[LimiterSupervisor] = []

    def make(daemon_id: str, k: int = 1, **kw: Any) -> LimiterSupervisor:
        tokens = ClusterTokens(pg_url, daemon_id, lease_s=kw.get("lease_s", 3.0), timeout_s=0.5)
        tokens.register()
        tokens.configure(k, adaptive=False)
        state = ClusterLimiterState(capacity=k)

        def start() -> pykka.ActorRef[Any]:
            return ClusterLimiterActor.start(
                tokens, state, poll_s=0.2, lease_s=kw.get("lease_s", 3.0)
            )

        sup = LimiterSupervisor(k, state=state, start=start)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop(5.0)


class Requester:
    """A stand-in stage: an ``Inbox`` actor whose grants land in a queue."""

    def __init__(self, limiter: LimiterSupervisor, name: str) -> None:
        self.out: queue.Queue[Any] = queue.Queue()
        self.ref = Inbox.start(self.out)
        self.limiter = limiter
        self.name = name

    def request(self, **kw: Any) -> None:
        self.limiter.tell(
            RequestToken(job_id=f"job-{self.name}", stage="S", requester=self.ref.actor_urn, **kw)
        )

    def granted(self, timeout_s: float) -> TokenGranted:
        msg = self.out.get(timeout=timeout_s)
        assert isinstance(msg, TokenGranted)
        return msg

    def nothing_for(self, seconds: float) -> None:
        with pytest.raises(queue.Empty):
            self.out.get(timeout=seconds)

    def release(self, grant: TokenGranted, outcome: Any = "success") -> None:
        self.limiter.tell(
            ReleaseToken(job_id=grant.job_id, stage="S", lease_id=grant.lease_id, outcome=outcome)
        )


def stats(limiter: LimiterSupervisor) -> ClusterLimiterStats:
    got = limiter.proxy().stats().get(timeout=ASK_S)
    assert isinstance(got, ClusterLimiterStats)
    return got


def test_one_token_for_two_daemons_handed_over_by_notify(make_limiter: MakeLimiter) -> None:
    """K=1 across two daemons: B's requester waits while A's holds the token, and gets it
    when A's is released (A's grant round grants B's request; NOTIFY wakes B)."""
    a, b = make_limiter("a"), make_limiter("b")
    ra, rb = Requester(a, "ra"), Requester(b, "rb")
    ra.request()
    first = ra.granted(5)
    assert (first.in_use, first.capacity) == (1, 1)
    rb.request()
    rb.nothing_for(0.5)
    until(lambda: stats(b).cluster_waiting == 1 or stats(a).cluster_waiting == 1, 3, "figures")
    ra.release(first)
    began = time.monotonic()
    second = rb.granted(5)
    assert time.monotonic() - began < 1.0  # woken, not waiting for some poll by luck
    assert second.lease_id > first.lease_id  # the fence only grows
    assert stats(a).in_use == 0
    assert stats(b).in_use == 1
    rb.release(second)
    until(lambda: stats(b).in_use == 0, 3, "B's lease released")


def test_grant_to_a_dead_requester_is_released_at_once(make_limiter: MakeLimiter) -> None:
    """A request whose stage died while it waited does not hold the token: the next one
    gets it."""
    a = make_limiter("a")
    holder, doomed, next_ = Requester(a, "h"), Requester(a, "d"), Requester(a, "n")
    holder.request()
    lease = holder.granted(5)
    doomed.request()
    next_.request()
    until(lambda: stats(a).waiting == 2, 3, "both queued")
    doomed.ref.stop(block=True, timeout=ASK_S)
    holder.release(lease)
    assert next_.granted(5).job_id == "job-n"


def test_a_holder_that_dies_is_reaped_for_another_daemon(make_limiter: MakeLimiter) -> None:
    """A stage that dies holding a token loses it to the periodic reap; a requester on
    another daemon gets it."""
    a, b = make_limiter("a"), make_limiter("b")
    holder, other = Requester(a, "h"), Requester(b, "o")
    holder.request()
    holder.granted(5)
    other.request()
    other.nothing_for(0.3)
    holder.ref.stop(block=True, timeout=ASK_S)
    other.granted(5)
    assert stats(a).reclaimed_total == 1


def test_cancel_withdraws_a_waiting_request(make_limiter: MakeLimiter) -> None:
    """A cancelled request is never granted, even after the token frees up."""
    a = make_limiter("a")
    holder, gone = Requester(a, "h"), Requester(a, "g")
    holder.request()
    lease = holder.granted(5)
    gone.request()
    until(lambda: stats(a).waiting == 1, 3, "queued")
    a.tell(CancelTokenRequest(job_id="job-g", stage="S", requester=gone.ref.actor_urn))
    until(lambda: stats(a).waiting == 0, 3, "withdrawn")
    holder.release(lease)
    gone.nothing_for(0.4)
    assert stats(a).cluster_waiting == 0


def test_set_capacity_raises_the_cluster_ceiling(make_limiter: MakeLimiter) -> None:
    """SetCapacity on one daemon is the cluster's new K: both daemons hold a token."""
    a, b = make_limiter("a"), make_limiter("b")
    ra, rb = Requester(a, "ra"), Requester(b, "rb")
    ra.request()
    ra.granted(5)
    rb.request()
    rb.nothing_for(0.3)
    b.tell(SetCapacity(capacity=2))
    assert rb.granted(5).capacity == 2


def test_no_grant_while_the_database_is_unreachable(
    make_limiter: MakeLimiter, pg_server: PgServer, pg_url: str
) -> None:
    """With the database refusing connections the limiter grants nothing (it cannot know
    the cluster's count), says why, survives, and grants once it is back."""
    a = make_limiter("a")
    r = Requester(a, "r")
    r.request()
    r.release(r.granted(5))
    until(lambda: stats(a).in_use == 0, 3, "released")
    dbname = urlsplit(pg_url).path.lstrip("/")
    pg_server.admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    pg_server.admin(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
    )
    try:
        r.request()
        until(lambda: stats(a).db_problem is not None, 5, "the problem seen")
        r.nothing_for(0.5)
        s = stats(a)
        assert (s.in_use, s.waiting) == (0, 1)
        assert "out of reach" in str(a.proxy().problem().get(timeout=ASK_S))
    finally:
        pg_server.admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    r.granted(15)
    assert a.check()
    until(lambda: stats(a).db_problem is None, 5, "the problem cleared")


def test_cluster_limiter_from_settings(pg_url: str) -> None:
    """The daemon's entry point: settings in, a supervised cluster limiter out."""
    settings = Settings(database_url=pg_url, max_concurrent=2, poll_s=0.2, lease_s=3.0)
    sup = cluster_limiter(settings, "daemon-x")
    try:
        r = Requester(sup, "r")
        r.request()
        assert r.granted(5).capacity == 2
        assert stats(sup).daemons >= 1 or until(lambda: stats(sup).daemons == 1, 3, "beat")
    finally:
        sup.stop(5.0)
    tokens = ClusterTokens(pg_url, "probe")
    try:
        figures = tokens.figures()
        assert figures is not None and figures.in_use == 0  # it left the cluster
    finally:
        tokens.close()


def test_a_release_made_while_the_database_is_down_is_written_when_it_is_back(
    make_limiter: MakeLimiter, pg_server: PgServer, pg_url: str
) -> None:
    """A release told while the database is unreachable is held, then written: the token
    it frees reaches a requester on another daemon once the database is back."""
    a, b = make_limiter("a"), make_limiter("b")
    holder, other = Requester(a, "h"), Requester(b, "o")
    holder.request()
    lease = holder.granted(5)
    other.request()
    other.nothing_for(0.3)
    dbname = urlsplit(pg_url).path.lstrip("/")
    pg_server.admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    pg_server.admin(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}'"
    )
    try:
        until(lambda: stats(a).db_problem is not None, 5, "a sees the problem")
        holder.release(lease)
        until(lambda: stats(a).held == 1, 3, "the release held")
        assert stats(a).in_use == 0  # the call ended: the daemon's shutdown need not wait
        other.nothing_for(0.5)
    finally:
        pg_server.admin(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    other.granted(10)
    until(lambda: stats(a).held == 0, 5, "the release written")


def test_a_dead_limiter_is_restarted_with_its_leases(make_limiter: MakeLimiter) -> None:
    """The supervisor restarts a limiter that died; the successor keeps its leases, so a
    release after the restart frees the token for another daemon."""
    a, b = make_limiter("a"), make_limiter("b")
    holder, other = Requester(a, "h"), Requester(b, "o")
    holder.request()
    lease = holder.granted(5)
    other.request()
    a.ref.stop(block=True, timeout=ASK_S)  # dies without being retired
    assert a.check()
    assert stats(a).in_use == 1 and stats(a).restarts == 1
    holder.release(lease)
    other.granted(5)


def test_a_request_waits_in_the_database_with_its_jobs_submission_time(
    make_limiter: MakeLimiter, pg_url: str
) -> None:
    """``admitted_at`` is wall-clock (the job's submission, so a resumed job keeps its place);
    the cluster orders every daemon's requests by it, so it must reach the database as that
    instant on the database's clock, not shifted by this host's monotonic clock."""
    import psycopg

    a = make_limiter("a", k=1)
    holder, waiter = Requester(a, "holder"), Requester(a, "waiter")
    holder.request()
    grant = holder.granted(5.0)
    submitted = time.time() - 120.0
    waiter.request(admitted_at=submitted)

    def stored() -> float | None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT admitted_at FROM briefd_token_waits WHERE requester = %s",
                (waiter.ref.actor_urn,),
            ).fetchone()
        return None if row is None else float(row[0])

    at = until(stored, 5.0, "the request reached the database")
    assert abs(at - submitted) < 5.0, (at, submitted)
    holder.release(grant)
    waiter.granted(5.0)
