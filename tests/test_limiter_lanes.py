"""The real limiter actor with endpoint lanes: a 429, a window or a budget of one endpoint
holds only that endpoint's calls; the global K holds them all; lanes survive a restart."""

from __future__ import annotations

import time
from typing import Any

from actor_helpers import eventually

from briefd.actors import RateLimiterActor
from briefd.actors.limiter_supervisor import LimiterSupervisor
from briefd.limits.lanes import EndpointLimits
from briefd.messages import (
    RateLimitCooldown,
    ReleaseToken,
    ReportRateLimit,
    RequestToken,
    TokenGranted,
)
from briefd.messages.token import RateLimits


def _req(urn: str, job: str, endpoint: str, age: float = 0.0) -> RequestToken:
    """Older jobs (larger ``age``) rank first."""
    return RequestToken(
        job_id=job, stage="A", endpoint=endpoint, requester=urn, admitted_at=time.time() - age
    )


def _stats(limiter: Any) -> Any:
    return limiter.proxy().stats().get(timeout=5)


def test_a_429_on_one_endpoint_pauses_only_that_endpoint(inbox: Any) -> None:
    """After A's 429, A's request (ranked first) waits out A's Retry-After while B's is
    granted; the cool-down event names A."""
    ref, got = inbox
    seen: list[Any] = []
    limiter = RateLimiterActor.start(capacity=4, observers=[seen.append])
    limiter.tell(ReportRateLimit(job_id="x", stage="A", endpoint="a", retry_after_s=60.0))
    limiter.tell(_req(ref.actor_urn, "old", "a", age=10))
    limiter.tell(_req(ref.actor_urn, "new", "b"))
    granted = got.get(timeout=5)
    assert isinstance(granted, TokenGranted)
    assert (granted.job_id, granted.endpoint) == ("new", "b")
    s = _stats(limiter)
    assert s.endpoints["a"].waiting == 1 and s.endpoints["a"].cooling_down_for_s > 50
    assert s.endpoints["b"].cooling_down_for_s == 0 and s.endpoints["b"].in_flight == 1
    [cooldown] = [e for e in seen if isinstance(e, RateLimitCooldown)]
    assert cooldown.endpoint == "a"
    assert got.empty()


def test_one_endpoints_window_does_not_hold_another(inbox: Any) -> None:
    """A's max_concurrent of 1 is full: A's second request waits, B's (ranked after it) goes;
    when A's call ends, A's second request goes."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=4, endpoints={"a": EndpointLimits(max_concurrent=1)})
    limiter.tell(_req(ref.actor_urn, "a1", "a", age=30))
    first = got.get(timeout=5)
    limiter.tell(_req(ref.actor_urn, "a2", "a", age=20))
    limiter.tell(_req(ref.actor_urn, "b1", "b", age=10))
    assert got.get(timeout=5).job_id == "b1"
    assert _stats(limiter).endpoints["a"].waiting == 1
    limiter.tell(ReleaseToken(job_id="a1", stage="A", lease_id=first.lease_id, outcome="success"))
    assert got.get(timeout=5).job_id == "a2"


def test_one_endpoints_budget_does_not_hold_another(inbox: Any) -> None:
    """A's 6 RPM (one call at once) is spent: A's next request waits for its budget, B's
    goes meanwhile; the '' endpoint keeps the settings' RPM, an unknown one has none."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=4, rpm=120, endpoints={"a": EndpointLimits(rpm=6)})
    limiter.tell(_req(ref.actor_urn, "a1", "a", age=30))
    assert got.get(timeout=5).job_id == "a1"
    limiter.tell(_req(ref.actor_urn, "a2", "a", age=20))
    limiter.tell(_req(ref.actor_urn, "z1", "zzz", age=10))
    assert got.get(timeout=5).job_id == "z1"
    s = _stats(limiter)
    assert s.endpoints["a"].waiting == 1 and s.endpoints["a"].rpm_lag_s > 5
    assert s.endpoints[""].rpm == 120 and s.endpoints["zzz"].rpm is None


def test_the_global_k_caps_every_endpoint_together(inbox: Any) -> None:
    """K=2 across two endpoints with no limits of their own: a third call waits for a
    release, whichever endpoint it is for."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=2)
    for job, endpoint in [("j1", "a"), ("j2", "b"), ("j3", "b")]:
        limiter.tell(_req(ref.actor_urn, job, endpoint))
    leases = [got.get(timeout=5) for _ in range(2)]
    s = _stats(limiter)
    assert s.in_use == 2 and s.waiting == 1 and s.endpoints["b"].waiting == 1
    assert got.empty()
    limiter.tell(ReleaseToken(job_id="j1", stage="A", lease_id=leases[0].lease_id))
    assert got.get(timeout=5).job_id == "j3"


def test_learned_pacing_shows_in_the_figures(inbox: Any) -> None:
    """An answer with limit, remaining and reset gives the lane a learned RPM (2 units, full
    in 0.2 s: between 5 and 10 a second) and no pause; another endpoint learns nothing."""
    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=4)
    limiter.tell(_req(ref.actor_urn, "j1", "a"))
    lease = got.get(timeout=5).lease_id
    limits = RateLimits(limit_requests=2, remaining_requests=0, reset_requests_s=0.2)
    limiter.tell(ReleaseToken(job_id="j1", stage="A", lease_id=lease, limits=limits))
    s = _stats(limiter)
    a = s.endpoints["a"]
    assert a.rpm_learned and a.rpm is not None and 300 <= a.rpm <= 600
    assert a.paused_for_s == 0 and s.pauses_total == 0
    assert s.endpoints[""].rpm is None and not s.endpoints[""].rpm_learned


def test_a_restarted_limiter_keeps_every_lane(inbox: Any) -> None:
    """A's cool-down, B's halved window and learned budget, and each lane's lease survive
    the limiter's death; the successor still holds A and grants B."""
    ref, got = inbox
    sup = LimiterSupervisor(capacity=4, endpoints={"b": EndpointLimits(max_concurrent=2)})
    try:
        sup.tell(_req(ref.actor_urn, "b1", "b"))
        sup.tell(_req(ref.actor_urn, "b2", "b"))
        b1, b2 = got.get(timeout=5), got.get(timeout=5)
        learned = RateLimits(limit_requests=100, remaining_requests=99, reset_requests_s=0.5)
        sup.tell(
            ReleaseToken(
                job_id="b1", stage="A", lease_id=b1.lease_id, outcome="rate_limited", limits=learned
            )
        )
        sup.tell(ReportRateLimit(job_id="x", stage="A", endpoint="a", retry_after_s=60.0))
        before = sup.proxy().stats().get(timeout=5)
        assert before.endpoints["b"].window == 1.0
        sup.ref.stop(block=True, timeout=5)
        assert eventually(sup.check)
        after = sup.proxy().stats().get(timeout=5)
        assert after.restarts == 1
        assert after.endpoints["a"].cooling_down_for_s > 50
        assert after.endpoints["b"].window == 1.0 and after.endpoints["b"].in_flight == 1
        assert after.endpoints["b"].rpm == before.endpoints["b"].rpm is not None
        assert after.endpoints["b"].ceiling == 2
        sup.tell(_req(ref.actor_urn, "a1", "a", age=60))
        sup.tell(_req(ref.actor_urn, "b3", "b"))
        sup.tell(ReleaseToken(job_id="b2", stage="A", lease_id=b2.lease_id, outcome="success"))
        assert got.get(timeout=5).job_id == "b3"
        assert sup.proxy().stats().get(timeout=5).endpoints["a"].waiting == 1
    finally:
        sup.stop()


def test_metrics_show_each_endpoint_with_a_label(inbox: Any) -> None:
    """/metrics keeps the unlabelled limiter series and adds briefd_endpoint_* series with an
    ``endpoint`` label, the budget in force saying whether it was learned."""
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry

    from briefd.daemon.prometheus import _endpoints

    ref, got = inbox
    limiter = RateLimiterActor.start(capacity=4, rpm=120, endpoints={"b": EndpointLimits(tpm=9e4)})
    limiter.tell(_req(ref.actor_urn, "j1", "a"))
    lease = got.get(timeout=5).lease_id
    limits = RateLimits(limit_requests=10, remaining_requests=9, reset_requests_s=1.0)
    limiter.tell(ReleaseToken(job_id="j1", stage="A", lease_id=lease, limits=limits))
    limiter.tell(ReportRateLimit(job_id="x", stage="A", endpoint="b", retry_after_s=30.0))
    stats = _stats(limiter)

    class One:
        def collect(self) -> Any:
            return _endpoints(stats)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'briefd_endpoint_tokens_granted_total{endpoint="a"} 1.0' in text
    assert 'briefd_endpoint_limiter_pauses_total{endpoint="b"} 1.0' in text
    assert 'briefd_endpoint_rpm{endpoint="",learned="false"} 120.0' in text
    assert 'briefd_endpoint_rpm{endpoint="a",learned="true"}' in text
    assert 'briefd_endpoint_tpm{endpoint="b",learned="false"} 90000.0' in text
    assert 'briefd_endpoint_cooldown_seconds{endpoint="b"} 2' in text  # 29.9...
    assert 'briefd_endpoint_max_concurrent{endpoint="a"} 4.0' in text
