"""The cluster's token budget per endpoint: one row each, rounds in parallel, K kept by slots.

Several ``ClusterTokens`` (separate pools, as separate daemons) and limiter actors against
one throwaway database; the endpoints are names ("A", "B"), as ``RequestToken.endpoint``
carries them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pykka
import pytest

from briefd.actors.cluster_limiter import ClusterLimiterActor
from briefd.actors.limiter_supervisor import LimiterSupervisor
from briefd.cluster.records import Grant, HeldLease
from briefd.cluster.shared import load
from briefd.cluster.state import ClusterLimiterState, ClusterLimiterStats
from briefd.cluster.tokens import ClusterTokens
from briefd.daemon.prometheus import _endpoints
from briefd.limits.lanes import EndpointLimits
from briefd.messages import ReleaseToken, ReportRateLimit, RequestToken
from briefd.store.pg_setup import MIGRATIONS, SCHEMA_VERSION, contended, ensure_schema

from .conftest import Factory, until
from .test_cluster_limiter import Requester


def ask(tokens: ClusterTokens, name: str, endpoint: str) -> int:
    req = RequestToken(job_id=f"job-{name}", stage="S", endpoint=endpoint, requester=name)
    return tokens.enqueue(req, age_s=None)


def end(tokens: ClusterTokens, g: Grant, outcome: Any = "success") -> bool:
    held = HeldLease(
        g.lease_id, g.wait_id, g.requester, g.job_id, g.stage, g.epoch, g.est_tokens, 0.0,
        g.endpoint,
    )  # fmt: skip
    return tokens.release(held, outcome=outcome, elapsed_s=0.01)


def count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_k_holds_across_two_endpoints_granting_at_once(make_tokens: Factory, pg_url: str) -> None:
    """Three daemons grant and release on two endpoints from threads, each endpoint's window
    as large as K: the leases live, counted by another session all along, never pass K."""
    k, per_daemon = 3, 30
    daemons = [make_tokens(f"d{i}") for i in range(3)]
    daemons[0].configure(k, adaptive=False)
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("SELECT count(*) FROM briefd_tokens").fetchone()
                seen.append(int(row[0]) if row else 0)

    def hammer(i: int) -> None:
        tokens, served = daemons[i], 0
        try:
            for n in range(per_daemon):
                ask(tokens, f"d{i}-{n}", "AB"[(i + n) % 2])
            deadline = time.monotonic() + 60
            while served < per_daemon and time.monotonic() < deadline:
                for endpoint in ("A", "B"):
                    for g in [*tokens.grant(endpoint).mine, *tokens.take_grants()]:
                        assert end(tokens, g)
                        served += 1
        except BaseException as err:
            errors.append(err)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    stop.set()
    watcher.join(10)
    assert not errors, errors
    assert count(pg_url, "SELECT count(*) FROM briefd_token_waits") == 0  # all served
    assert seen and max(seen) <= k
    assert count(pg_url, "SELECT count(*) FROM briefd_token_slots") == k


def test_k_slots_are_shared_by_the_endpoints(make_tokens: Factory) -> None:
    """K=2: two calls on A leave none for B (its round says it starved); one ends, B gets
    its slot. Each endpoint's window alone would allow both."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(2, adaptive=False)
    ask(a, "a1", "A")
    ask(a, "a2", "A")
    first = a.grant("A").mine
    assert len(first) == 2
    ask(b, "b1", "B")
    starved = b.grant("B")
    assert starved.mine == () and starved.starved
    assert b.starved_endpoints() == []  # no slot is free: nothing to retry yet
    assert end(a, first[0])
    assert a.starved_endpoints() == ["B"]  # the releaser sees whom its slot serves
    (got,) = a.grant("B").others and b.take_grants()
    assert got.requester == "b1" and got.endpoint == "B"


def test_a_round_on_one_endpoint_does_not_wait_for_another(
    make_tokens: Factory, pg_url: str
) -> None:
    """A round on A paused with A's row locked (a daemon stopped mid-round): B's rounds grant
    at once, while A's waits for the lock (and fails at the session's bound)."""
    a = make_tokens("a", bound_s=1.0)
    holder = make_tokens("p")
    a.configure(4, adaptive=False)
    ask(a, "a1", "A")
    ask(a, "b1", "B")
    a.grant("A")  # makes A's row (first use)
    holding, done = threading.Event(), threading.Event()

    def pause_in_a_round() -> None:
        with contextlib.suppress(psycopg.Error), holder._tx() as db:  # ended by the server
            load(db, "A")
            holding.set()
            done.wait(10)

    t = threading.Thread(target=pause_in_a_round)
    t.start()
    try:
        assert holding.wait(5)
        ask(a, "a2", "A")
        began = time.monotonic()
        (g,) = a.grant("B").mine
        assert g.requester == "b1" and time.monotonic() - began < 0.5
        with pytest.raises(psycopg.Error) as err:
            a.grant("A")
        assert contended(err.value)  # the lock's (or the statement's) bound: tried again
    finally:
        done.set()
        t.join(15)


def test_a_429_or_a_cut_on_one_endpoint_leaves_the_other_granting(make_tokens: Factory) -> None:
    """A's cool-down holds A's requests only, from every daemon; A's window cut is A's."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(4, adaptive=True)
    ask(a, "a1", "A")
    (g,) = a.grant("A").mine
    assert end(a, g, "rate_limited")  # a 429: A's W halves
    assert b.cool_down(30.0, "A")
    ask(b, "a2", "A")
    ask(b, "b1", "B")
    held = a.grant("A")
    assert held.mine == () and held.others == {}
    assert held.wake_in_s is not None and 29.0 < held.wake_in_s <= 30.0
    assert a.grant("B").others == {"b": 1}
    fa, fb = a.figures("A"), a.figures("B")
    assert fa is not None and fb is not None
    assert (fa.window, fa.cuts, fa.cooling_for_s > 29.0) == (2.0, 1, True)
    assert (fb.window, fb.cuts, fb.cooling_for_s) == (4.0, 0, 0.0)
    assert (fb.in_use, fb.cluster_in_use) == (1, 1)


def test_endpoint_rows_take_the_daemons_limits_last_writer_wins(
    make_tokens: Factory, log_lines: list[str]
) -> None:
    """configure() gives each endpoint of the daemon's routing its row (cap under K,
    budgets); a second daemon configuring it otherwise sets it, and says so."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(4, adaptive=False, endpoints={"A": EndpointLimits(max_concurrent=1, rpm=60)})
    fig = a.figures("A")
    assert fig is not None and (fig.ceiling, fig.capacity, fig.rpm) == (1, 4, 60.0)
    ask(a, "a1", "A")
    ask(a, "a2", "A")
    assert len(a.grant("A").mine) == 1  # its own cap, though K is 4
    b.configure(4, adaptive=False, endpoints={"A": EndpointLimits(max_concurrent=2)})
    fig = a.figures("A")
    assert fig is not None and (fig.ceiling, fig.rpm) == (2, None)
    assert any("set by daemon a" in line and "endpoint 'A'" in line for line in log_lines)
    fresh = b.figures("C")
    assert fresh is None  # made on first use, not before
    ask(b, "c1", "C")
    assert len(b.grant("C").mine) == 1
    fig = b.figures("C")
    assert fig is not None and fig.ceiling == 4  # nobody configured it: K


def test_a_lower_k_waits_for_the_calls_above_it(make_tokens: Factory, pg_url: str) -> None:
    """K 3 -> 1 with three calls in flight on two endpoints: no grant until all three end
    (then one), whichever endpoint ends first; one slot is left."""
    a = make_tokens("a")
    a.configure(3, adaptive=False)
    ask(a, "a1", "A")
    ask(a, "a2", "A")
    ask(a, "b1", "B")
    live = [*a.grant("A").mine, *a.grant("B").mine]
    assert len(live) == 3
    a.set_ceiling(1)
    ask(a, "b2", "B")
    for g in live[::-1]:
        assert a.grant("B").mine == () and a.grant("A").mine == ()
        assert end(a, g)
    (last,) = a.grant("B").mine
    assert last.requester == "b2"
    assert count(pg_url, "SELECT count(*) FROM briefd_token_slots") == 1
    a.set_ceiling(2)
    assert count(pg_url, "SELECT count(*) FROM briefd_token_slots WHERE NOT doomed") == 2


def test_a_version_2_database_upgrades_with_its_rows(pg_url: str) -> None:
    """Schema 2's one limiter row becomes the 'default' endpoint's, its waits and leases are
    the 'default' endpoint's, and its live leases take slots (one more than K: doomed)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with conn.transaction():
            for version in (1, 2):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO briefd_schema (version, applied_by) VALUES (%s, 'test')",
                    (version,),
                )
        conn.execute(
            """INSERT INTO briefd_limiter (id, ceiling, adaptive, w, epoch, cuts, rpm,
                granted_total, set_by) VALUES (1, 1, true, 1.0, 3, 2, 60, 7, 'old')"""
        )
        conn.execute("CREATE SEQUENCE IF NOT EXISTS briefd_token_fence")
        for lease in (1, 2):
            conn.execute(
                """INSERT INTO briefd_tokens (lease_id, wait_id, daemon_id, requester, job_id,
                    stage, epoch, expires_at) VALUES (%s, %s, 'old', 'r', 'j', 'S', 3,
                    now() + interval '1 hour')""",
                (lease, lease),
            )
        conn.execute(
            """INSERT INTO briefd_token_waits (daemon_id, requester, job_id, stage, admitted_at)
            VALUES ('old', 'r3', 'j', 'S', 0)"""
        )
        assert ensure_schema(conn, "test") == 2
        rows = conn.execute(
            """SELECT endpoint, ceiling, w, epoch, cuts, rpm, granted_total, set_by
            FROM briefd_limiter_endpoints"""
        ).fetchall()
        assert rows == [("default", 1, 1.0, 3, 2, 60.0, 7, "old")]
        assert conn.execute("SELECT endpoint FROM briefd_token_waits").fetchall() == [("default",)]
        leases = conn.execute("SELECT lease_id, endpoint, slot FROM briefd_tokens ORDER BY 1")
        assert leases.fetchall() == [(1, "default", 1), (2, "default", 2)]
        slots = conn.execute("SELECT slot, lease_id, doomed FROM briefd_token_slots ORDER BY 1")
        assert slots.fetchall() == [(1, 1, False), (2, 2, True)]
        conn.execute("DELETE FROM briefd_tokens WHERE lease_id = 1")  # ends: its slot goes
        slots = conn.execute("SELECT slot, lease_id, doomed FROM briefd_token_slots ORDER BY 1")
        assert slots.fetchall() == [(2, 2, False)]  # the doomed one took its place
        assert ensure_schema(conn, "test") == SCHEMA_VERSION  # once, to the newest


# -- the actor ---------------------------------------------------------------------------


@pytest.fixture
def limiters(pg_url: str) -> Iterator[Callable[[str, int], LimiterSupervisor]]:
    """``limiters(daemon_id, k)``: a supervised cluster limiter whose safety-net poll is too
    slow to matter (30 s), so every grant here comes from a round a message ran."""
    made: list[LimiterSupervisor] = []

    def make(daemon_id: str, k: int) -> LimiterSupervisor:
        tokens = ClusterTokens(pg_url, daemon_id, lease_s=30.0, timeout_s=2.0)
        tokens.register()
        tokens.configure(
            k, adaptive=False, endpoints={"A": EndpointLimits(), "B": EndpointLimits()}
        )
        state = ClusterLimiterState(capacity=k)

        def start() -> pykka.ActorRef[Any]:
            return ClusterLimiterActor.start(tokens, state, poll_s=30.0, lease_s=30.0)

        sup = LimiterSupervisor(k, state=state, start=start)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop(5.0)


def stats(limiter: LimiterSupervisor) -> ClusterLimiterStats:
    got = limiter.proxy().stats().get(timeout=5.0)
    assert isinstance(got, ClusterLimiterStats)
    return got


def test_a_slot_freed_on_one_endpoint_serves_another_daemons_endpoint(
    limiters: Callable[[str, int], LimiterSupervisor],
) -> None:
    """K=1: daemon a's call on A holds the one slot; daemon b's request for B waits. When a's
    call ends, b's request is granted at once (the released slot's starved endpoint is
    rounded), not at a poll 30 s later."""
    a, b = limiters("a", 1), limiters("b", 1)
    ra, rb = Requester(a, "ra"), Requester(b, "rb")
    ra.request(endpoint="A")
    held = ra.granted(5)
    assert held.endpoint == "A"
    rb.request(endpoint="B")
    rb.nothing_for(0.3)
    a.tell(ReleaseToken(job_id=held.job_id, stage="S", lease_id=held.lease_id))
    got = rb.granted(5)
    assert got.endpoint == "B"
    each = stats(a).endpoints  # a ran B's round: its figures are a's latest view of B
    assert each["B"].in_flight == 1 and each["B"].granted_total == 1
    assert each["A"].in_flight == 0 and stats(a).cluster_in_use == 1
    series = {  # what /metrics exports from them
        (m.name, x.labels["endpoint"]): x.value for m in _endpoints(stats(a)) for x in m.samples
    }
    assert series[("briefd_endpoint_calls_in_flight", "B")] == 1.0
    assert series[("briefd_endpoint_max_concurrent", "A")] == 1.0


def test_a_429_on_one_endpoint_holds_only_its_requests_in_the_cluster(
    limiters: Callable[[str, int], LimiterSupervisor],
) -> None:
    """A stage's 429 on A (ReportRateLimit) holds A's requests on both daemons; B's go."""
    a, b = limiters("a", 4), limiters("b", 4)
    ra, rb_a, rb_b = Requester(a, "ra"), Requester(b, "rba"), Requester(b, "rbb")
    a.tell(ReportRateLimit(job_id="j", stage="S", endpoint="A", retry_after_s=30.0))
    ra.request(endpoint="A")  # A's round, after the cool-down was written
    rb_a.request(endpoint="A")
    rb_b.request(endpoint="B")
    assert rb_b.granted(5).endpoint == "B"
    ra.nothing_for(0.3)
    rb_a.nothing_for(0.1)
    each = until(lambda: stats(a).endpoints, 5, "a's per-endpoint figures")
    assert each["A"].cooling_down_for_s > 25 and each["A"].pauses_total == 1
    assert stats(b).endpoints["B"].cooling_down_for_s == 0.0
