"""The tenants' fair share across daemons: two ``ClusterTokens`` (separate pools, as separate
daemons) on one throwaway PostgreSQL; the tags live in the endpoint's row, so whichever
daemon runs a round picks the tenant by the same rule one daemon uses."""

from __future__ import annotations

import time
from collections import Counter

import psycopg

from briefd.cluster.records import Grant, HeldLease
from briefd.cluster.tokens import ClusterTokens
from briefd.limits.fair import FairShare
from briefd.messages.token import RequestToken

from .conftest import Factory  # make_tokens: the conftest's fixture


def _enqueue(
    tokens: ClusterTokens, tenant: str, i: int, *, age_s: float, est: int = 500, weight=1.0
) -> int:
    req = RequestToken(
        job_id=f"{tenant}-{i}",
        stage="BRIEFING_MD",
        requester=f"{tenant}-{i}",
        admitted_at=time.time() - age_s,
        est_tokens=est,
        tenant=tenant,
        weight=weight,
    )
    return tokens.enqueue(req, age_s=age_s)


def _release(tokens: ClusterTokens, g: Grant, used: int | None) -> bool:
    held = HeldLease(
        g.lease_id, g.wait_id, g.requester, g.job_id, g.stage, g.epoch, g.est_tokens, 0.0
    )
    return tokens.release(held, outcome="success", elapsed_s=0.01, used_tokens=used)


def _round(by_id: dict[str, ClusterTokens], runner: ClusterTokens) -> list[tuple[str, Grant]]:
    """One grant round run by ``runner``: every grant it made, with the daemon holding it."""
    r = runner.grant()
    out = [(runner.daemon_id, g) for g in r.mine]
    for daemon in r.others:
        out += [(daemon, g) for g in by_id[daemon].take_grants()]
    return out


def test_a_newcomer_on_another_daemon_is_granted_within_two_rounds(
    make_tokens: Factory,
) -> None:
    """K=2. Daemon a queues 1,000 calls of tenant a (older jobs); daemon b then queues one of
    tenant b: it is granted in one of the next two rounds (each after one release), by
    whichever daemon runs them, not after a's 998 others."""
    a, b = make_tokens("da"), make_tokens("db")
    by_id = {"da": a, "db": b}
    a.configure(2, adaptive=False)
    for i in range(1000):
        _enqueue(a, "a", i, age_s=2000 - i)
    held = _round(by_id, a)
    assert sorted(g.job_id for _, g in held) == ["a-0", "a-1"]
    _enqueue(b, "b", 0, age_s=1)
    got: list[str] = []
    for runner, (owner, g) in zip((b, a), held, strict=True):  # each daemon runs one round
        assert _release(by_id[owner], g, used=450)
        got += [x.job_id for _, x in _round(by_id, runner)]
    assert "b-0" in got, got
    assert got[0] == "b-0", got


def test_weights_one_two_three_across_two_daemons(make_tokens: Factory, pg_url: str) -> None:
    """Three saturating tenants of weights 1:2:3 queued on two daemons, rounds run by both in
    turn, releases settled by the tokens used (30, 90 and 60 % of the estimates: charged by the
    estimates alone the shares would be off):
    token shares within 5 % of 1:2:3, and the tags are in the endpoint's row."""
    a, b = make_tokens("da"), make_tokens("db")
    by_id = {"da": a, "db": b}
    a.configure(2, adaptive=False)
    weights = {"t1": 1.0, "t2": 2.0, "t3": 3.0}
    est = {"t1": 800, "t2": 300, "t3": 500}
    fraction = {"t1": 3, "t2": 9, "t3": 6}
    n = 0
    for tenant, w in weights.items():
        for i in range(100):
            _enqueue((a, b)[i % 2], tenant, i, age_s=1000 - i, est=est[tenant], weight=w)
            n += 1
    served: Counter[str] = Counter()
    live = _round(by_id, a)
    runners = (a, b)
    for turn in range(180):
        owner, g = live.pop(0)
        tenant = g.job_id.split("-")[0]
        used = est[tenant] * fraction[tenant] // 10
        served[tenant] += used
        assert _release(by_id[owner], g, used=used)
        live += _round(by_id, runners[turn % 2])
    total = sum(served.values())
    for tenant, w in weights.items():
        share = served[tenant] / total
        assert abs(share - w / 6) <= 0.05 * w / 6, (tenant, share, served)
    with psycopg.connect(pg_url) as conn:
        (text,) = conn.execute(
            "SELECT fair_share FROM briefd_limiter_endpoints WHERE endpoint = ''"
        ).fetchone()  # type: ignore[misc]
    kept = FairShare.from_json(text)
    assert set(kept.finish) == set(weights)
    assert kept.vtime > 0
