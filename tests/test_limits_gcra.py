"""GCRA budgets with an injected clock: burst, steady rate, settling up and down."""

from __future__ import annotations

import pytest

from briefd.limits.gcra import Gcra, estimate_tokens


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_then_the_steady_rate() -> None:
    clock = Clock()
    g = Gcra(60, burst_s=3.0, clock=clock)  # one a second, three seconds of burst
    for _ in range(3):
        assert g.wait(1) == 0.0
        g.take(1)
    assert g.wait(1) == pytest.approx(1.0)  # the burst is spent: one more a second later
    clock.t += 1.0
    assert g.wait(1) == 0.0
    g.take(1)
    assert g.wait(1) == pytest.approx(1.0)
    assert g.lag() == pytest.approx(3.0)


def test_idle_time_refills_up_to_the_burst_only() -> None:
    clock = Clock()
    g = Gcra(60, burst_s=2.0, clock=clock)
    g.take(2)
    clock.t += 100.0
    assert g.lag() == 0.0
    g.take(1)
    g.take(1)
    assert g.wait(1) > 0  # a long idle does not bank more than the burst


def test_weighted_costs_and_a_call_larger_than_the_burst() -> None:
    clock = Clock()
    g = Gcra(6000, burst_s=1.0, clock=clock)  # 100 tokens a second, 100 of burst
    assert g.wait(80) == 0.0
    g.take(80)
    assert g.wait(50) == pytest.approx(0.3)
    big = Gcra(6000, burst_s=1.0, clock=clock)
    assert big.wait(500) == 0.0  # larger than any burst: allowed when idle, not never
    big.take(500)
    assert big.wait(500) == pytest.approx(5.0)


def test_settle_charges_an_underestimate_and_refunds_an_overestimate() -> None:
    clock = Clock()
    g = Gcra(60, burst_s=10.0, clock=clock)
    g.take(4)
    g.settle(4, 6)
    assert g.lag() == pytest.approx(6.0)
    g.settle(6, 1)
    assert g.lag() == pytest.approx(1.0)
    g.settle(1, 0)
    g.settle(5, 0)  # a refund never moves the clock before now
    assert g.lag() == 0.0 and g.tat == clock.t


def test_the_estimate_is_chars_over_four_plus_max_tokens() -> None:
    assert estimate_tokens(400, 50) == 150
    assert estimate_tokens(3, None) == 0
