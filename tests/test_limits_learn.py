"""Budgets learned from the headers (limit, remaining, reset) and paced by GCRA, on a fake clock."""

from __future__ import annotations

import math

import pytest

from briefd.limits.learn import Refill
from briefd.limits.pacing import Pacer
from briefd.messages.token import RateLimits


class Clock:
    """A clock the test moves by hand (monotonic seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Bucket:
    """A server's token bucket: ``size`` units, refilled at ``rate`` a second, on the test's
    clock; its answers carry the headers an OpenAI-compatible server sends."""

    def __init__(self, clock: Clock, size: int, rate: float) -> None:
        self.clock, self.size, self.rate = clock, size, rate
        self.level, self.at = float(size), clock.now

    def _refill(self) -> None:
        self.level = min(self.size, self.level + (self.clock.now - self.at) * self.rate)
        self.at = self.clock.now

    def call(self) -> tuple[bool, RateLimits]:
        """One request: admitted (or refused, 429) and the headers of its answer."""
        self._refill()
        ok = self.level >= 1.0
        if ok:
            self.level -= 1.0
        reset_ms = round((self.size - self.level) / self.rate * 1000)  # whole ms, as OpenAI
        return ok, RateLimits(
            limit_requests=self.size,
            remaining_requests=math.floor(self.level),
            reset_requests_s=reset_ms / 1000,
        )


def test_one_answer_bounds_the_rate_and_more_answers_narrow_it() -> None:
    """A bucket of 2 lacking between 1 and 2 units, full in 0.2 s, refills at 5 to 10 a
    second; an answer lacking 1 to 2 in 0.12 s narrows that to 8.3 to 10."""
    refill = Refill()
    refill.observe(2, 0, 0.2)
    assert refill.lo == pytest.approx(5.0, rel=0.02) and refill.hi == pytest.approx(10, rel=0.02)
    refill.observe(2, 0, 0.12)
    assert refill.lo == pytest.approx(1 / 0.12, rel=0.02)
    assert refill.lo <= 10.0 <= refill.hi
    assert refill.rate == pytest.approx((refill.lo + refill.hi) / 2)


def test_answers_that_say_nothing_of_the_rate_teach_nothing() -> None:
    """A full bucket, no reset, no limit, or a daily reset leave the estimate unknown."""
    refill = Refill()
    for limit, remaining, reset in [(2, 2, 0.0), (2, 1, None), (None, 0, 0.2), (9, 0, 86_000.0)]:
        refill.observe(limit, remaining, reset)
    assert refill.rate is None


def test_a_budget_that_changed_starts_the_estimate_again() -> None:
    """Answers that no rate fits (the provider raised the limit) start from the newest."""
    refill = Refill()
    refill.observe(600, 599, 0.1)  # 10 a second
    refill.observe(600, 500, 1.0)  # 100 a second: not the same budget
    assert refill.lo == pytest.approx(99 / 1.0, rel=0.02)
    refill.observe(1200, 1199, 0.05)  # a new size
    assert refill.limit == 1200


def test_a_configured_rpm_wins_over_the_headers() -> None:
    clock = Clock()
    pacer = Pacer.new(4, rpm=60, clock=clock, learn=True)
    pacer.obey(RateLimits(limit_requests=2, remaining_requests=0, reset_requests_s=0.2))
    assert pacer.learned_rpm is None and pacer.requests is pacer.rpm


def test_without_learning_or_a_limit_the_old_rule_pauses_until_the_reset() -> None:
    """The cluster's pacer does not learn; a server that sends no limit teaches nothing: in
    both, remaining 0 pauses until the whole reset."""
    for pacer, limits in [
        (Pacer.new(4, clock=Clock()), RateLimits(limit_requests=2)),
        (Pacer.new(4, clock=Clock(), learn=True), RateLimits()),
    ]:
        spent = limits.model_copy(update={"remaining_requests": 0, "reset_requests_s": 0.2})
        pacer.obey(spent)
        assert pacer.delay(1) == pytest.approx(0.2)
        assert pacer.learned_rpm is None


def test_learned_pacing_waits_for_one_unit_not_the_whole_reset() -> None:
    """No requests left, full again in 0.2 s at 10 a second: the next call waits about the
    time for one and a half units to come back (0.15 s), not the whole reset; the budget
    counts as learned, 600 a minute give or take what one answer can tell."""
    clock = Clock()
    pacer = Pacer.new(4, clock=clock, learn=True)
    pacer.obey(RateLimits(limit_requests=2, remaining_requests=1, reset_requests_s=0.1))
    pacer.obey(RateLimits(limit_requests=2, remaining_requests=0, reset_requests_s=0.199))
    assert pacer.learned_rpm is not None
    assert 300 <= pacer.learned_rpm.per_minute <= 600
    wait = pacer.delay(1)
    assert 0.1 < wait < 0.199
    assert pacer.pauses == 0  # paced, not paused


def test_learned_tokens_wait_for_what_the_call_lacks() -> None:
    """400 of 1,000 tokens left, full in 6 s (100 a second): a call of 300 goes now, one of
    500 waits about 1 s for the 100 it lacks (the old rule: the whole 6 s)."""
    clock = Clock()
    pacer = Pacer.new(4, clock=clock, learn=True)
    pacer.obey(RateLimits(limit_tokens=1000, remaining_tokens=400, reset_tokens_s=6.0))
    assert pacer.delay(300) == 0.0
    assert pacer.delay(500) == pytest.approx(1.0, abs=0.1)
    assert pacer.tokens_left is None  # the learned budget replaces the count-down


def test_paced_by_what_it_learned_a_client_gets_the_servers_rate_without_refusals() -> None:
    """Against a bucket of 2 refilled at 10 a second, a client that calls as soon as the
    pacer allows (every answer read at once, no other budget) gets at least 0.9 of the rate
    over 20 s after its first second, and at most one refusal: the first call after the
    start, before anything was learned, may find the bucket spent by the start's burst."""
    clock = Clock()
    server = Bucket(clock, size=2, rate=10.0)
    pacer = Pacer.new(16, clock=clock, learn=True)
    for _ in range(16):  # the start: 16 calls at once, before any answer
        pacer.spend(0)
        ok, limits = server.call()
        pacer.obey(limits)
    start, admitted, refused = clock.now + 1.0, 0, 0
    while clock.now < start + 20.0:
        clock.now += max(pacer.delay(0), 0.001)  # a timer wakes the client then
        if pacer.delay(0) > 0:
            continue
        pacer.spend(0)
        ok, limits = server.call()
        pacer.obey(limits)
        if clock.now >= start:
            admitted += ok
            refused += not ok
    assert admitted >= 0.9 * 10.0 * 20.0
    assert refused <= 1


def test_the_servers_reading_counts_from_when_the_call_was_sent() -> None:
    """A reading taken on admission, answered 0.4 s later: the bucket was full again 0.2 s
    ago, so the next call goes now; calls sent after the answered one (not in that reading)
    are added to it."""
    clock = Clock()
    pacer = Pacer.new(4, clock=clock, learn=True)
    spent = RateLimits(limit_requests=2, remaining_requests=0, reset_requests_s=0.2)
    pacer.obey(spent)
    assert pacer.delay(1) > 0
    pacer.obey(spent, sent_at=clock.now - 0.4)
    assert pacer.delay(1) == 0.0
    pacer.obey(spent, sent_at=clock.now - 0.4, later_calls=5)
    assert pacer.delay(1) > 0.2


def test_with_slow_answers_many_calls_in_flight_still_get_the_rate_without_refusals() -> None:
    """Answers take 0.4 s (four refills) and carry the bucket as it admitted the call; the
    client keeps up to 16 calls in flight. From its second second on it still gets at least
    0.9 of the rate and no refusal: each answer is read as of its call's sending, plus the
    calls sent after it."""
    clock = Clock()
    server = Bucket(clock, size=2, rate=10.0)
    pacer = Pacer.new(16, clock=clock, learn=True)
    in_flight: list[tuple[float, float, int, RateLimits, bool]] = []  # due, sent, seq, ...
    start, admitted, refused, seq = clock.now + 1.0, 0, 0, 0
    while clock.now < start + 20.0:
        for call in sorted(c for c in in_flight if c[0] <= clock.now):
            in_flight.remove(call)
            _, sent, n, limits, ok = call
            later = sum(1 for c in in_flight if c[2] > n)
            pacer.obey(limits, sent_at=sent, later_calls=later)
            if sent >= start:
                admitted += ok
                refused += not ok
        if len(in_flight) < 16 and pacer.delay(0) <= 0:
            pacer.spend(0)
            ok, limits = server.call()
            seq += 1
            in_flight.append((clock.now + 0.4, clock.now, seq, limits, ok))
            continue
        due = min((c[0] for c in in_flight), default=math.inf)
        clock.now = min(due, clock.now + max(pacer.delay(0), 0.001))
    assert admitted >= 0.9 * 10.0 * 19.6
    assert refused == 0
