"""The cluster's token budget in PostgreSQL: several ``ClusterTokens`` (separate pools, as
separate daemons) against one throwaway database."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from briefd.cluster.records import Grant
from briefd.cluster.tokens import ClusterTokens
from briefd.messages.token import RateLimits, RequestToken

from .conftest import Factory, until


def request(name: str, *, age_s: float = 0.0, est: int = 0) -> RequestToken:
    admitted = time.time() - age_s if age_s else 0.0
    return RequestToken(
        job_id=f"job-{name}", stage="BRIEFING_MD", requester=name, admitted_at=admitted,
        est_tokens=est,
    )  # fmt: skip


def enqueue(tokens: ClusterTokens, name: str, *, age_s: float = 0.0, est: int = 0) -> int:
    req = request(name, age_s=age_s, est=est)
    age = time.time() - req.admitted_at if req.admitted_at else None
    return tokens.enqueue(req, age_s=age)


def release(tokens: ClusterTokens, g: Grant, outcome: Any = "success", **kw: Any) -> bool:
    from briefd.cluster.records import HeldLease

    held = HeldLease(
        g.lease_id, g.wait_id, g.requester, g.job_id, g.stage, g.epoch, g.est_tokens, 0.0
    )
    return tokens.release(held, outcome=outcome, elapsed_s=0.01, **kw)


def test_cap_holds_across_three_daemons(make_tokens: Factory, pg_url: str) -> None:
    """Three daemons hammering grant/release from threads never have more than K leases
    live at once: checked by the database itself, at every insert of a lease."""
    k, per_daemon = 2, 12
    daemons = [make_tokens(f"d{i}") for i in range(3)]
    daemons[0].configure(k, adaptive=False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE cap_seen (n integer)")
        conn.execute(
            """CREATE FUNCTION cap_check() RETURNS trigger AS $$ BEGIN
                INSERT INTO cap_seen SELECT count(*) FROM briefd_tokens; RETURN NULL; END
            $$ LANGUAGE plpgsql"""
        )
        conn.execute(
            "CREATE TRIGGER cap AFTER INSERT ON briefd_tokens FOR EACH ROW EXECUTE FUNCTION "
            "cap_check()"
        )
    errors: list[BaseException] = []
    served = [0, 0, 0]

    def work(i: int) -> None:
        tokens = daemons[i]
        try:
            for n in range(per_daemon):
                enqueue(tokens, f"d{i}-r{n}")
            deadline = time.monotonic() + 20
            while served[i] < per_daemon and time.monotonic() < deadline:
                grants = list(tokens.grant().mine) + tokens.take_grants()
                for g in grants:
                    release(tokens, g)
                    served[i] += 1
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert served == [per_daemon] * 3
    with psycopg.connect(pg_url) as conn:
        seen = conn.execute("SELECT count(*), max(n) FROM cap_seen").fetchone()
    assert seen is not None
    assert seen[0] == 3 * per_daemon  # every grant was checked
    assert seen[1] == k  # the cap was reached, never passed


def test_grant_order_oldest_job_first_across_daemons(make_tokens: Factory) -> None:
    """With one token, requests queued by three daemons are served oldest admitted job
    first (the same rule one daemon uses), whichever daemon grants."""
    a, b, c = make_tokens("a"), make_tokens("b"), make_tokens("c")
    a.configure(1, adaptive=False)
    enqueue(a, "holder")
    (held,) = a.grant().mine
    enqueue(a, "a-new", age_s=10)
    enqueue(b, "b-old", age_s=100)
    enqueue(c, "c-mid", age_s=50)
    by_id = {d.daemon_id: d for d in (a, b, c)}
    order = []
    holder, lease = a, held
    for _ in range(3):
        release(holder, lease)
        round_ = holder.grant()  # whoever released grants, to whichever daemon
        if round_.mine:
            (lease,) = round_.mine
        else:
            (owner,) = round_.others
            holder = by_id[owner]
            (lease,) = holder.take_grants()
        order.append(lease.requester)
    assert order == ["b-old", "c-mid", "a-new"]


def test_arrival_order_across_daemons_when_jobs_are_alike(make_tokens: Factory) -> None:
    """Requests alike in every other way are served in the order they arrived, cluster-wide."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(3, adaptive=False)
    enqueue(b, "b-1")
    enqueue(a, "a-2")
    enqueue(b, "b-3")
    round_ = a.grant()
    assert [g.requester for g in round_.mine] == ["a-2"]
    assert round_.others == {"b": 2}
    assert [g.requester for g in b.take_grants()] == ["b-1", "b-3"]
    assert b.take_grants() == []  # delivered once


def test_lease_of_a_dead_daemon_is_reclaimed_after_lease_s(make_tokens: Factory) -> None:
    """A daemon that stops heartbeating loses its lease after lease_s; another gets it."""
    dead, alive = make_tokens("dead", lease_s=1.0), make_tokens("alive", lease_s=1.0)
    alive.configure(1, adaptive=False)
    enqueue(dead, "dead-r")
    assert dead.grant().mine
    enqueue(alive, "alive-r")
    assert not alive.grant().mine  # the dead daemon's lease still counts

    def granted() -> tuple[Grant, ...]:
        alive.heartbeat()  # the living daemon stays seen, so its request is kept
        return alive.grant().mine

    began = time.monotonic()
    (g,) = until(granted, 4.0, "the dead daemon's lease reclaimed")
    assert g.requester == "alive-r"
    assert time.monotonic() - began >= 0.5  # not before its lease ran out
    figures = alive.figures()
    assert figures is not None and figures.reclaimed_total == 1


def test_a_lease_the_daemon_does_not_hold_is_not_renewed_but_freed(
    make_tokens: Factory,
) -> None:
    """A delivered lease the daemon's limiter does not hold (its release was lost: a server
    restarted without its last commits) is deleted by the heartbeat, so its token of K comes
    back at once; the leases it holds are renewed (fails when every lease is renewed)."""
    a, b = make_tokens("a", lease_s=30.0), make_tokens("b", lease_s=30.0)
    a.configure(2, adaptive=False)
    enqueue(a, "a-1")
    enqueue(a, "a-2")
    kept, lost = a.grant().mine
    enqueue(b, "b-r")
    assert not b.grant().mine  # K=2, both held by a
    a.heartbeat(held={kept.lease_id})
    (got,) = b.grant().mine  # the lost one's token is free again, long before lease_s
    assert got.requester == "b-r"
    assert kept.lease_id in a.heartbeat(held={kept.lease_id}).leases
    assert lost.lease_id not in a.heartbeat(held={kept.lease_id}).leases


def test_heartbeat_keeps_leases_alive(make_tokens: Factory) -> None:
    """A daemon that heartbeats keeps its lease past lease_s."""
    a, b = make_tokens("a", lease_s=1.0), make_tokens("b", lease_s=1.0)
    a.configure(1, adaptive=False)
    enqueue(a, "a-r")
    assert a.grant().mine
    enqueue(b, "b-r")
    end = time.monotonic() + 1.5
    pause = threading.Event()
    while time.monotonic() < end:
        a.heartbeat()
        b.heartbeat()
        assert not b.grant().mine
        pause.wait(0.1)


def test_window_is_cut_once_for_two_daemons_429s_of_one_epoch(make_tokens: Factory) -> None:
    """Calls sent together from two daemons that all get 429 halve W once, not per daemon."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(4, adaptive=True)
    for name in ("a-1", "a-2"):
        enqueue(a, name)
    for name in ("b-1", "b-2"):
        enqueue(b, name)
    a_grants = list(a.grant().mine)
    b_grants = b.take_grants()
    assert len(a_grants) == len(b_grants) == 2
    release(a, a_grants[0], "rate_limited")
    release(b, b_grants[0], "rate_limited")
    release(b, b_grants[1], "rate_limited")
    figures = a.figures()
    assert figures is not None
    assert (figures.window, figures.cuts, figures.epoch) == (2.0, 1, 1)
    enqueue(b, "b-3")
    (later,) = b.grant().mine  # one slot left under W=2 (a-2 is in flight)
    assert later.epoch == 1
    release(b, later, "rate_limited")  # sent after the cut: it cuts again
    figures = a.figures()
    assert figures is not None and (figures.window, figures.cuts) == (1.0, 2)


def test_rpm_is_one_budget_for_two_daemons(make_tokens: Factory) -> None:
    """RPM 12 (a burst of two calls) lets two calls through for both daemons together."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(16, adaptive=False, rpm=12)
    for i in range(3):
        enqueue(a, f"a-{i}")
        enqueue(b, f"b-{i}")
    first = a.grant()
    second = b.grant()
    granted = len(first.mine) + sum(first.others.values()) + len(second.mine)
    assert granted == 2
    assert second.wake_in_s is not None and 4.0 < second.wake_in_s <= 5.0


def test_cool_down_pauses_every_daemon(make_tokens: Factory) -> None:
    """One daemon's 429 Retry-After holds every daemon's grants."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(2, adaptive=False)
    assert a.cool_down(30.0)
    assert not b.cool_down(5.0)  # an earlier end does not shorten it
    enqueue(b, "b-1")
    round_ = b.grant()
    assert round_.mine == ()
    assert round_.wake_in_s is not None and 29.0 < round_.wake_in_s <= 30.0


def test_server_headers_pause_the_cluster(make_tokens: Factory) -> None:
    """remaining-requests 0 reported by one daemon pauses the other until its reset."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(2, adaptive=False)
    enqueue(a, "a-1")
    (g,) = a.grant().mine
    release(a, g, limits=RateLimits(remaining_requests=0, reset_requests_s=20.0))
    enqueue(b, "b-1")
    round_ = b.grant()
    assert round_.mine == () and round_.wake_in_s is not None and round_.wake_in_s > 19.0


def test_tpm_is_settled_from_usage(make_tokens: Factory) -> None:
    """An over-estimate is refunded on release, so the next call fits the shared TPM."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(4, adaptive=False, tpm=600)  # 10 s burst: 100 tokens
    enqueue(a, "a-1", est=100)
    (g,) = a.grant().mine
    enqueue(b, "b-1", est=50)
    assert b.grant().mine == ()  # the budget is spent for now
    release(a, g, used_tokens=10)  # it used 10 of its 100
    assert [x.requester for x in b.grant().mine] == ["b-1"]


def test_a_ceiling_change_over_another_daemons_is_logged(
    make_tokens: Factory, log_lines: list[str]
) -> None:
    """A daemon that changes K set by another says so; the new K is the cluster's."""
    a, b = make_tokens("a"), make_tokens("b")
    a.configure(2)
    b.set_ceiling(5)
    figures = a.figures()
    assert figures is not None and figures.capacity == 5
    assert any("set by daemon a" in line and "K=5" in line for line in log_lines)


def test_withdrawn_requests_are_not_granted(make_tokens: Factory) -> None:
    """A cancelled requester's wait is gone, and its lease ends with it."""
    a = make_tokens("a")
    a.configure(1, adaptive=False)
    enqueue(a, "r1")
    enqueue(a, "r2")
    (g,) = a.grant().mine
    assert a.cancel("r2") == []
    assert a.cancel("r1") == [g.lease_id]
    assert a.grant().mine == ()
    figures = a.figures()
    assert figures is not None and (figures.in_use, figures.waiting) == (0, 0)
