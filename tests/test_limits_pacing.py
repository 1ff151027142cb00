"""Pacing by what the server says is left: a call the budget cannot take waits for the reset."""

from __future__ import annotations

from briefd.limits.pacing import Pacer
from briefd.messages.token import RateLimits


class Clock:
    """A clock the test moves by hand (monotonic seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fewer_tokens_left_than_the_call_needs_waits_for_the_reset() -> None:
    """remaining_tokens below the next call's estimate holds that call until the tokens'
    reset (not sent to be refused); a call that fits still goes at once."""
    clock = Clock()
    pacer = Pacer.new(4, clock=clock)
    pacer.obey(RateLimits(remaining_tokens=500, reset_tokens_s=6.0, remaining_requests=10))
    assert pacer.delay(800) == 6.0
    assert pacer.delay(400) == 0.0
    clock.now += 2.0
    assert pacer.delay(800) == 4.0
    clock.now += 4.0  # the reset has passed: the server's budget is whole again
    assert pacer.delay(800) == 0.0


def test_calls_started_count_down_what_is_left() -> None:
    """Two calls of 300 against 500 left: the first starts, the second waits for the reset;
    a call that never started gives its share back."""
    clock = Clock()
    pacer = Pacer.new(4, clock=clock)
    pacer.obey(RateLimits(remaining_tokens=500, reset_tokens_s=3.0))
    assert pacer.delay(300) == 0.0
    pacer.spend(300)
    assert pacer.delay(300) == 3.0
    pacer.refund(300)
    assert pacer.delay(300) == 0.0


def test_no_requests_left_pauses_every_call_until_the_reset() -> None:
    """remaining_requests 0 pauses calls of any size until the requests' reset."""
    clock = Clock()
    pacer = Pacer.new(4, clock=clock)
    pacer.obey(RateLimits(remaining_requests=0, reset_requests_s=2.5, remaining_tokens=10_000))
    assert pacer.delay(1) == 2.5
    assert pacer.pauses == 1
    clock.now += 2.5
    assert pacer.delay(1) == 0.0


def test_a_server_that_says_nothing_about_tokens_holds_nothing() -> None:
    """Without remaining_tokens (or without a reset to wait for) no call is held."""
    clock = Clock()
    pacer = Pacer.new(4, clock=clock)
    pacer.obey(RateLimits(remaining_requests=5, reset_requests_s=1.0))
    assert pacer.delay(10_000) == 0.0
    pacer.obey(RateLimits(remaining_tokens=10))  # no reset: nothing to wait for
    assert pacer.delay(10_000) == 0.0
