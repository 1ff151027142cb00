"""The fair share's policy, pure: weighted shares in tokens, no banked credit for an idle
tenant, settling by the tokens a call used, a newcomer served at once, bounded state."""

from __future__ import annotations

import random
from collections import Counter

from briefd.limits import fair
from briefd.limits.fair import FairShare, pick_fair
from briefd.limits.order import Latencies, Waiting, pick
from briefd.messages.token import RequestToken

NOW = 1_000.0


def _waiting(tenant: str, seq: int, *, weight: float = 1.0, est: int = 100, age: float = 0.0):
    req = RequestToken(
        job_id=f"{tenant}-{seq}",
        stage="S",
        requester="r",
        admitted_at=NOW - 100 + seq * 0.001 - age,
        est_tokens=est,
        tenant=tenant,
        weight=weight,
    )
    return Waiting(seq, req, 0.0)


def _grant(
    share: FairShare, queues: dict[str, list[Waiting]], window: int = 3
) -> tuple[RequestToken, float]:
    """One grant of the fair pick among the first ``window`` waiting of each tenant's queue,
    charged its cost (not yet settled): its request and what it was charged."""
    waiting = [w for q in queues.values() for w in q[:window]]
    w = waiting[pick_fair(waiting, NOW, Latencies(), share)]
    req = w.request
    queues[req.tenant].remove(w)
    charged = share.cost(req.est_tokens)
    share.charge(req.tenant, req.weight, charged, NOW)
    return req, charged


def _serve(
    share: FairShare,
    queues: dict[str, list[Waiting]],
    grants: int,
    used: dict[str, int] | None = None,
) -> Counter[str]:
    """Grant ``grants`` times from always-backlogged ``queues`` (each grant settled at once by
    ``used`` tokens, else its estimate); the tokens each tenant was served."""
    served: Counter[str] = Counter()
    for _ in range(grants):
        req, charged = _grant(share, queues)
        spent = (used or {}).get(req.tenant, req.est_tokens)
        share.settle(req.tenant, req.weight, charged, spent, NOW, est_tokens=req.est_tokens)
        served[req.tenant] += spent
    return served


def _backlog(tenant: str, n: int, **kw) -> list[Waiting]:
    return [_waiting(tenant, i, **kw) for i in range(n)]


def test_weights_one_two_three_share_the_tokens_within_five_percent() -> None:
    """Saturating tenants of weights 1:2:3 with calls of different sizes (a tenant of long
    prompts is not served more tokens for as many calls): token shares 1:2:3."""
    rng = random.Random(7)
    queues = {}
    for name, weight in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        queues[name] = [
            _waiting(name, i, weight=weight, est=rng.randint(50, 2000)) for i in range(3000)
        ]
    served = _serve(FairShare(), queues, 2000)
    total = sum(served.values())
    for name, weight in (("a", 1), ("b", 2), ("c", 3)):
        share = served[name] / total
        assert abs(share - weight / 6) <= 0.05 * weight / 6, (name, share, served)


def test_shares_are_in_tokens_not_in_requests() -> None:
    """Equal weights, one tenant's calls ten times larger: equal tokens, ten times the calls."""
    queues = {"big": _backlog("big", 500, est=1000), "small": _backlog("small", 2000, est=100)}
    share = FairShare()
    calls: Counter[str] = Counter()
    for _ in range(440):
        calls[_grant(share, queues, window=2)[0].tenant] += 1
    assert 9 <= calls["small"] / calls["big"] <= 11, calls


def test_settled_by_the_tokens_used_not_the_estimate() -> None:
    """Both estimate 1,000 tokens a call; a's calls use 100, b's all 1,000: once settled, a
    has had ten calls for each of b's (the same tokens), not one for one."""
    queues = {"a": _backlog("a", 2000, est=1000), "b": _backlog("b", 2000, est=1000)}
    share = FairShare()
    served = _serve(share, queues, 550, used={"a": 100, "b": 1000})
    calls_a, calls_b = served["a"] / 100, served["b"] / 1000
    assert 9 <= calls_a / calls_b <= 11, served
    assert abs(served["a"] - served["b"]) <= 1000, served


def test_a_returning_idle_tenant_gets_no_burst() -> None:
    """a and b share the service for a long while, c idle; c comes back with a backlog: it
    gets a third of the next grants (equal weights), not a run of them for the time it was
    away (its start is brought up to V)."""
    share = FairShare()
    queues = {"a": _backlog("a", 3000), "b": _backlog("b", 3000), "c": _backlog("c", 30)}
    _serve(share, queues, 30)  # c is served, then has nothing more to ask
    del queues["c"]
    _serve(share, queues, 1000)
    queues["c"] = _backlog("c", 3000)
    first: Counter[str] = Counter()
    for _ in range(30):
        first[_grant(share, queues)[0].tenant] += 1
    assert first["c"] <= 11, first  # a burst would be all 30
    assert first["c"] >= 9, first  # and it is not held back either


def test_a_newcomer_behind_a_thousand_waits_goes_at_the_next_grant() -> None:
    """a has 1,000 calls waiting and has been served; b arrives with one: b's start tag is V,
    below a's, so b's call is the very next grant."""
    share = FairShare()
    queues = {"a": _backlog("a", 1000)}
    _serve(share, queues, 5)
    waiting = queues["a"] + [_waiting("b", 0, age=-50)]  # b's job is the newest
    i = pick_fair(waiting, NOW, Latencies(), share)
    assert waiting[i].request.tenant == "b"


def test_the_tenants_own_order_within_its_share() -> None:
    """Inside the tenant chosen, today's order: the higher job priority first."""
    share = FairShare()
    share.charge("a", 1.0, 100, NOW)  # a has been served: b goes next
    low = _waiting("b", 1)
    high = Waiting(2, low.request.model_copy(update={"job_id": "b-high", "job_priority": 5}), 0.0)
    waiting = [_waiting("a", 0), low, high]
    assert waiting[pick_fair(waiting, NOW, Latencies(), share)].request.job_id == "b-high"


def test_one_tenant_is_exactly_todays_order() -> None:
    """Everyone 'default': pick_fair picks what pick picks, whatever the share holds."""
    rng = random.Random(3)
    share = FairShare()
    share.charge("default", 1.0, 500, NOW)
    for _ in range(200):
        waiting = [
            Waiting(
                i,
                RequestToken(
                    job_id=f"j{rng.randint(0, 9)}",
                    stage="S",
                    requester="r",
                    admitted_at=NOW - rng.random() * 100,
                    job_priority=rng.randint(0, 2),
                    priority=rng.randint(0, 4),
                ),
                0.0,
            )
            for i in range(rng.randint(1, 30))
        ]
        assert pick_fair(waiting, NOW, Latencies(), share) == pick(waiting, NOW, Latencies())


def test_a_tenant_in_debt_is_forgiven_after_a_long_quiet() -> None:
    """A tenant that used more than its share waits for the others, but not forever: after
    FORGIVE_S without a grant its debt is forgotten (and so is its entry)."""
    share = FairShare()
    share.charge("hog", 1.0, 10_000, NOW)
    share.charge("other", 1.0, 10, NOW)
    assert share.start("hog") > share.start("other")
    share.prune(NOW + fair.FORGIVE_S + 1)
    assert "hog" not in share.finish
    assert share.start("hog") == share.vtime


def test_the_state_stays_bounded() -> None:
    """Thousands of one-off tenants leave at most MAX_TENANTS entries; one level with V goes
    once its calls could no longer settle; all go after FORGIVE_S."""
    share = FairShare()
    for i in range(fair.MAX_TENANTS + 500):
        share.charge(f"t{i}", 1.0, 1, NOW)
    assert len(share.finish) <= fair.MAX_TENANTS
    share.charge("level", 1.0, 1, NOW)
    share.charge("busy", 1.0, 5, NOW)
    share.charge("busy", 1.0, 5, NOW)  # V is now past level's finish
    assert share.finish["level"] <= share.vtime
    share.prune(NOW + fair.SETTLE_GRACE_S + 1)
    assert "level" not in share.finish and "busy" in share.finish
    share.prune(NOW + fair.FORGIVE_S + 1)
    assert share.finish == {}


def test_the_state_round_trips_through_json_and_survives_damage() -> None:
    share = FairShare()
    share.charge("a", 2.0, 300, NOW)
    share.charge("b", 1.0, 100, NOW)
    again = FairShare.from_json(share.to_json())
    assert again == share
    assert FairShare.from_json("{not json") == FairShare()
    assert FairShare.from_json('{"v": "NaN"}') == FairShare()
    assert FairShare.from_json(None) == FairShare()


def test_a_failed_call_keeps_its_estimate() -> None:
    """No usage reported (a failure): the grant's estimate stays charged."""
    share = FairShare()
    share.charge("a", 1.0, 400, NOW)
    before = share.finish["a"]
    share.settle("a", 1.0, 400, None, NOW)
    assert share.finish["a"] == before
    share.settle("a", 1.0, 400, 100, NOW)
    assert share.finish["a"] == before - 300


def test_admission_fewest_running_per_weight_and_a_tenants_first_job_past_a_full_window() -> None:
    """Room in the window: the first job of the tenant with the fewest running per weight
    (ties: whose job comes first), not the oldest. Full: the first job of a tenant with
    nothing running, and none when every queued tenant has a job running."""
    queued = ["a", "a", "b", "a", "c"]
    assert fair.next_to_admit(queued, {"a": 3}, 3, 4) == 2, "b has nothing running: before a's 4th"
    assert fair.next_to_admit(queued, {"a": 1, "b": 1, "c": 1}, 3, 4) == 0, "tied: the oldest"
    assert fair.next_to_admit(queued, {"a": 1, "b": 2, "c": 1}, 4, 8) == 0
    assert fair.next_to_admit(queued, {"a": 4}, 4, 4) == 2
    assert fair.next_to_admit(queued, {"a": 3, "b": 1}, 4, 4) == 4
    assert fair.next_to_admit(queued, {"a": 2, "b": 1, "c": 1}, 4, 4) is None
    assert fair.next_to_admit(["default"] * 5, {"default": 4}, 4, 4) is None
    assert fair.next_to_admit(["default"] * 5, {"default": 3}, 3, 4) == 0, "one tenant: FIFO"
    assert fair.next_to_admit([], {}, 0, 4) is None


def test_admission_shares_the_window_by_weight() -> None:
    """Weights 1:3 fill a window of 8 as 2:6, whatever the queue's order."""
    queued = ["a"] * 20 + ["b"] * 20
    weights = {"a": 1.0, "b": 3.0}
    active: dict[str, int] = {}
    for total in range(8):
        i = fair.next_to_admit(queued, active, total, 8, weights)
        assert i is not None
        t = queued.pop(i)
        active[t] = active.get(t, 0) + 1
    assert active == {"a": 2, "b": 6}
