"""The real limiter actor shares its tokens fairly between tenants: a newcomer is not held
behind another tenant's backlog, shares follow the weights in tokens, settled at release."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from briefd.actors import RateLimiterActor
from briefd.messages import ReleaseToken, RequestToken, TokenGranted


def _req(urn: str, tenant: str, i: int, *, admitted: float, **kw: Any) -> RequestToken:
    return RequestToken(
        job_id=f"{tenant}-{i}",
        stage="BRIEFING_MD",
        requester=urn,
        admitted_at=admitted,
        tenant=tenant,
        **kw,
    )


def _release(limiter: Any, g: TokenGranted, used: int | None = None) -> None:
    limiter.tell(
        ReleaseToken(
            job_id=g.job_id, stage=g.stage, lease_id=g.lease_id, outcome="success",
            used_tokens=used,
        )
    )  # fmt: skip


def test_a_newcomer_is_granted_within_two_rounds_behind_a_thousand(inbox: Any) -> None:
    """K=2. Tenant a has 1,000 calls waiting (its jobs all older); tenant b asks for one:
    b's call is among the next two grants, not the 999th (oldest job first would put it
    behind all of a's)."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=2, adaptive=False)
    try:
        now = time.time()
        for i in range(1000):
            limiter.tell(_req(ref.actor_urn, "a", i, admitted=now - 1000 + i, est_tokens=500))
        held = [got.get(timeout=5), got.get(timeout=5)]
        assert {g.job_id for g in held} == {"a-0", "a-1"}
        limiter.tell(_req(ref.actor_urn, "b", 0, admitted=now, est_tokens=500))
        after: list[str] = []
        for g in held:  # two grant rounds: each release lets one call go
            _release(limiter, g, used=480)
            after.append(got.get(timeout=5).job_id)
        assert "b-0" in after, after
        assert after[0] == "b-0", after  # in fact at the first
    finally:
        limiter.stop()


def test_weighted_shares_in_tokens_settled_at_release(inbox: Any) -> None:
    """K=1, tenants of weight 1 and 3 both backlogged, each call estimated at 1,000 tokens
    but a's calls use 100 and b's 900: settled from usage, b is served 3x a's tokens, which
    is more calls for a than for b (by requests it would be 1:3 in calls)."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=1, adaptive=False)
    try:
        now = time.time()
        for i in range(400):
            limiter.tell(_req(ref.actor_urn, "a", i, admitted=now - 400 + i, est_tokens=1000))
            limiter.tell(
                _req(ref.actor_urn, "b", i, admitted=now - 400 + i, est_tokens=1000, weight=3.0)
            )
        used = {"a": 100, "b": 900}
        tokens: Counter[str] = Counter()
        g = got.get(timeout=5)
        for _ in range(300):
            tenant = g.job_id.split("-")[0]
            tokens[tenant] += used[tenant]
            _release(limiter, g, used=used[tenant])
            g = got.get(timeout=5)
        ratio = tokens["b"] / tokens["a"]
        assert 2.85 <= ratio <= 3.15, tokens
    finally:
        limiter.stop()


def test_one_tenant_keeps_the_oldest_job_first(inbox: Any) -> None:
    """Everyone 'default' (no tenant given): grants in admission order, as before."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=1, adaptive=False)
    try:
        now = time.time()
        limiter.tell(RequestToken(job_id="hold", stage="S", requester=ref.actor_urn))
        g = got.get(timeout=5)
        for i in (3, 1, 2):
            limiter.tell(
                RequestToken(
                    job_id=f"j{i}", stage="S", requester=ref.actor_urn, admitted_at=now - 10 + i
                )
            )
        order = []
        for _ in range(3):
            _release(limiter, g, used=10)
            g = got.get(timeout=5)
            order.append(g.job_id)
        assert order == ["j1", "j2", "j3"]
    finally:
        limiter.stop()
