"""Which waiting request goes next across endpoint lanes (pure, on a fake clock)."""

from __future__ import annotations

import math

from briefd.limits.lanes import EndpointLimits, Lanes
from briefd.limits.order import Waiting
from briefd.messages import RequestToken

WALL = 1_000_000.0  # Unix time for admitted_at


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _w(seq: int, endpoint: str, job: str, *, age: float = 0.0, est: int = 0) -> Waiting:
    req = RequestToken(
        job_id=job,
        stage="A",
        endpoint=endpoint,
        requester="urn:x",
        admitted_at=WALL - 100 + seq - age,
        est_tokens=est,
    )
    return Waiting(seq, req, 0.0)


def _grant(lanes: Lanes, waiting: list[Waiting], i: int) -> Waiting:
    """What the actor does with a grant: the lane counts it, its budgets are charged."""
    w = waiting.pop(i)
    lane = lanes.get(w.request.endpoint)
    lane.in_flight += 1
    lane.pacer.spend(w.request.est_tokens)
    return w


def test_the_empty_endpoint_takes_the_settings_budgets_and_others_their_own() -> None:
    """'' gets BRIEFD_RPM/TPM; a configured endpoint its own; an unknown one none, and the
    ceiling of each is its max_concurrent under K."""
    lanes = Lanes.new(
        8, {"a": EndpointLimits(max_concurrent=3, rpm=60)}, rpm=120, tpm=9000, clock=Clock()
    )
    stats = lanes.stats([])
    assert stats[""].rpm == 120 and stats[""].tpm == 9000 and stats[""].ceiling == 8
    assert stats["a"].rpm == 60 and stats["a"].tpm is None and stats["a"].ceiling == 3
    unknown = lanes.get("zzz")
    assert unknown.pacer.rpm is None and unknown.ceiling(8) == 8
    assert Lanes.new(2, {"a": EndpointLimits(max_concurrent=5)}).get("a").ceiling(2) == 2


def test_a_lane_blocked_by_its_budget_does_not_hold_back_another_lane() -> None:
    """A's head waits for A's budget; B's request, ranked after it, goes meanwhile, and A's
    second request does not pass A's head; the wake is when A's budget opens."""
    clock = Clock()
    lanes = Lanes.new(4, {"a": EndpointLimits(rpm=6)}, clock=clock)  # 1 a minute's 10 s
    waiting = [_w(0, "a", "j0"), _w(1, "a", "j1"), _w(2, "b", "j2")]
    i, _ = lanes.next_grant(waiting, 0, WALL)
    assert i == 0
    _grant(lanes, waiting, i)
    i, wake = lanes.next_grant(waiting, 1, WALL)
    assert i is not None and waiting[i].request.job_id == "j2"
    assert wake == 10.0  # A's next unit
    _grant(lanes, waiting, i)
    i, wake = lanes.next_grant(waiting, 2, WALL)
    assert i is None and wake == 10.0
    clock.now += 10.0
    i, _ = lanes.next_grant(waiting, 2, WALL)
    assert i == 0 and waiting[0].request.job_id == "j1"


def test_within_a_lane_the_request_picked_waits_rather_than_letting_a_cheaper_pass() -> None:
    """An older job's large prompt waiting for A's tokens holds A's smaller one behind it."""
    clock = Clock()
    lanes = Lanes.new(4, {"a": EndpointLimits(tpm=600)}, clock=clock)  # 100 tokens in 10 s
    waiting = [_w(0, "a", "old", est=90), _w(1, "a", "new", est=5)]
    _grant(lanes, waiting, 0)
    waiting.insert(0, _w(2, "a", "older", age=50, est=90))
    i, wake = lanes.next_grant(waiting, 1, WALL)
    assert i is None and wake > 0


def test_a_cooling_lane_or_a_full_window_closes_only_that_lane() -> None:
    clock = Clock()
    lanes = Lanes.new(4, {"a": EndpointLimits(max_concurrent=1)}, clock=clock)
    waiting = [_w(0, "a", "j0"), _w(1, "a", "j1"), _w(2, "b", "j2"), _w(3, "b", "j3")]
    _grant(lanes, waiting, 0)  # A's window (1) is full
    i, wake = lanes.next_grant(waiting, 1, WALL)
    assert i is not None and waiting[i].request.endpoint == "b" and math.isinf(wake)
    lanes.get("b").cooldown_until = clock.now + 5.0  # a 429 on B
    i, _ = lanes.next_grant(waiting, 1, WALL)
    assert i is None
    clock.now += 5.0
    i, _ = lanes.next_grant(waiting, 1, WALL)
    assert i is not None and waiting[i].request.endpoint == "b"


def test_the_global_k_caps_every_lane_together() -> None:
    lanes = Lanes.new(2, clock=Clock())
    waiting = [_w(0, "a", "j0"), _w(1, "b", "j1"), _w(2, "c", "j2")]
    assert lanes.next_grant(waiting, 2, WALL) == (None, math.inf)
    assert lanes.next_grant(waiting, 1, WALL)[0] == 0


def test_a_new_k_moves_every_lanes_ceiling() -> None:
    lanes = Lanes.new(8, {"a": EndpointLimits(max_concurrent=4)}, clock=Clock())
    lanes.get("b")
    lanes.set_capacity(3)
    assert lanes.get("a").pacer.window.ceiling == 3 and lanes.get("b").pacer.window.ceiling == 3
    lanes.set_capacity(16)
    assert lanes.get("a").pacer.window.ceiling == 4 and lanes.get("b").pacer.window.ceiling == 16
