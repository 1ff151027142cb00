"""No daemon can hold the cluster hostage: PostgreSQL itself ends what a paused daemon holds.

A daemon paused (SIGSTOP, a frozen VM) in the middle of a transaction is simulated by
one of briefd's own connections left inside an open transaction by the test: the
server's bounds set on every briefd session end it, and the other daemons' grants go
on. Before, the limiter ran its rounds in pipeline mode, where no Sync reaches the
server, so ``idle_in_transaction_session_timeout`` never armed and the cluster waited
for as long as the pause.
"""

from __future__ import annotations

import threading
import time

import psycopg

from briefd.cluster.shared import load
from briefd.cluster.tokens import ClusterTokens
from briefd.messages.token import RequestToken
from briefd.store.pg_setup import client_bounds, session_bounds

from .conftest import Factory, until
from .test_cluster_limiter import MakeLimiter, Requester
from .test_cluster_limiter import make_limiter as make_limiter  # the fixture

LEASE_S = 3.0
BOUND_S = LEASE_S / 2


def test_every_session_carries_the_bounds(make_tokens: Factory) -> None:
    """The settings are on the server side of briefd's own connections (not only asked)."""
    tokens = make_tokens("d1", lease_s=LEASE_S)
    with tokens._tx() as db:
        row = db.execute(
            "SELECT current_setting('lock_timeout') AS lock, "
            "current_setting('statement_timeout') AS stmt, "
            "current_setting('idle_in_transaction_session_timeout') AS idle"
        ).fetchone()
    assert (row["lock"], row["stmt"], row["idle"]) == ("1500ms", "1500ms", "1500ms")
    assert session_bounds(2.5)["idle_in_transaction_session_timeout"] == "2500"
    tcp = client_bounds("postgresql://u@db.example/briefd", 2.5)
    assert tcp["keepalives"] == 1 and tcp["tcp_user_timeout"] == 2500
    assert tcp["keepalives_idle"] + tcp["keepalives_interval"] * tcp["keepalives_count"] <= 3
    assert "tcp_user_timeout" not in client_bounds("postgresql:///b?tcp_user_timeout=9", 2.5)


def test_a_paused_limiter_transaction_is_ended_and_the_others_grant(
    make_limiter: MakeLimiter, make_tokens: Factory
) -> None:
    """Daemon P opens a grant round (the limiter row locked) and stops there; daemon A's
    requester gets its token once PostgreSQL ends P's transaction, within the bound."""
    a = make_limiter("a", lease_s=LEASE_S)
    paused = make_tokens("p", lease_s=LEASE_S)
    requester = Requester(a, "ra")
    waited: dict[str, float] = {}
    failed: list[BaseException] = []
    holding = threading.Event()
    done = threading.Event()

    def pause_in_a_round() -> None:
        try:
            with paused._tx() as db:  # exactly as a grant round begins
                load(db, "")  # SELECT ... FOR UPDATE of the endpoint's limiter row
                holding.set()
                done.wait(15)  # "SIGSTOP": nothing more is sent on this session
        except psycopg.Error as err:  # the server ended the session: what we want
            failed.append(err)

    t = threading.Thread(target=pause_in_a_round)
    t.start()
    try:
        assert holding.wait(5)
        began = time.monotonic()
        requester.request()
        requester.granted(BOUND_S + 3.0)  # without the bound: only after the 15 s "pause"
        waited["s"] = time.monotonic() - began
    finally:
        done.set()
        t.join(20)
    assert waited["s"] < BOUND_S + 1.5, waited
    assert failed, "the paused transaction was not ended by the server"


def test_a_paused_heartbeat_does_not_hold_up_the_reap(make_tokens: Factory, pg_url: str) -> None:
    """A daemon paused inside its heartbeat holds its own leases' rows; another daemon's
    grant round reaps around them (SKIP LOCKED) instead of waiting on them."""
    a = make_tokens("a", lease_s=LEASE_S)
    p = make_tokens("p", lease_s=LEASE_S)
    a.configure(2, adaptive=False)
    p.enqueue(RequestToken(job_id="jp", stage="S", requester="rp"), age_s=None)
    (lease,) = p.grant().mine
    with psycopg.connect(pg_url, autocommit=True) as admin:  # its lease expired long ago
        admin.execute("UPDATE briefd_tokens SET expires_at = now() - interval '1 minute'")
    holding, done = threading.Event(), threading.Event()

    def pause_in_heartbeat() -> None:
        try:
            with p._tx() as db:
                db.execute("UPDATE briefd_tokens SET expires_at = expires_at WHERE daemon_id = 'p'")
                holding.set()
                done.wait(15)
        except psycopg.Error:
            pass

    t = threading.Thread(target=pause_in_heartbeat)
    t.start()
    try:
        assert holding.wait(5)
        a.enqueue(RequestToken(job_id="ja", stage="S", requester="ra"), age_s=None)
        began = time.monotonic()
        round_ = a.grant()
        took = time.monotonic() - began
    finally:
        done.set()
        t.join(20)
    assert took < 0.5, f"the grant round waited {took:.2f}s on a paused daemon's rows"
    assert [g.requester for g in round_.mine] == ["ra"]
    assert lease.lease_id > 0


def test_no_grant_for_a_job_whose_claim_is_unproven(pg_url: str) -> None:
    """The limiter's gate: a request of a job this daemon cannot prove it holds is held here
    (not queued, so it takes no token from the cluster); once the claim is proven again it
    is queued and granted; a requester that dies while held is dropped."""
    from briefd.actors.cluster_limiter import ClusterLimiterActor
    from briefd.actors.limiter_supervisor import LimiterSupervisor
    from briefd.cluster.state import ClusterLimiterState

    proven: set[str] = set()
    tokens = ClusterTokens(pg_url, "g", lease_s=LEASE_S, timeout_s=2.0)
    tokens.register()
    tokens.configure(2, adaptive=False)
    state = ClusterLimiterState(capacity=2, gate=lambda job_id: job_id in proven)
    sup = LimiterSupervisor(
        2,
        state=state,
        start=lambda: ClusterLimiterActor.start(tokens, state, poll_s=0.2, lease_s=LEASE_S),
    )
    try:
        held, doomed = Requester(sup, "held"), Requester(sup, "doomed")
        held.request()
        doomed.request()
        held.nothing_for(1.0)  # several polls: never queued, never granted
        with psycopg.connect(pg_url, autocommit=True) as admin:
            row = admin.execute("SELECT count(*) FROM briefd_token_waits").fetchone()
        assert row is not None and row[0] == 0, "an unproven job's request reached the cluster"
        doomed.ref.stop(block=True, timeout=5)
        proven.add("job-held")
        grant = held.granted(5)
        assert grant.job_id == "job-held"
        until(lambda: not state.parked, 5, "the dead requester's request dropped")
    finally:
        sup.stop(5.0)
