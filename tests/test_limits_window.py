"""The adaptive window (AIMD): halving once per epoch, x0.9, additive growth, bounds."""

from __future__ import annotations

import pytest

from briefd.limits.window import Window


def test_starts_at_the_ceiling_so_the_default_is_the_old_fixed_cap() -> None:
    w = Window(ceiling=2)
    assert w.w == 2.0 and w.limit == 2


def test_a_429_halves_once_per_epoch() -> None:
    w = Window(ceiling=8)
    started = w.epoch  # three calls started under the full window
    w.on_outcome("rate_limited", started, in_flight=8)
    assert w.w == 4.0
    w.on_outcome("rate_limited", started, in_flight=7)  # sent before the cut: no second cut
    w.on_outcome("rate_limited", started, in_flight=6)
    assert w.w == 4.0 and w.limit == 4
    w.on_outcome("rate_limited", w.epoch, in_flight=4)  # started after the cut: cuts again
    assert w.w == 2.0


def test_timeouts_and_5xx_cut_by_a_tenth_and_start_no_epoch() -> None:
    w = Window(ceiling=10)
    epoch = w.epoch
    w.on_outcome("overloaded", epoch, in_flight=10)
    assert w.w == pytest.approx(9.0) and w.limit == 9
    w.on_outcome("overloaded", epoch, in_flight=9)
    assert w.w == pytest.approx(8.1)
    w.on_outcome("rate_limited", epoch, in_flight=8)  # a refusal after slowness still halves
    assert w.w == pytest.approx(4.05)


def test_success_grows_by_one_over_w_only_when_half_the_window_is_used() -> None:
    w = Window(ceiling=10, w=4.0)
    w.on_outcome("success", w.epoch, in_flight=1)  # mostly idle: no evidence, no growth
    assert w.w == 4.0
    w.on_outcome("success", w.epoch, in_flight=2)
    assert w.w == pytest.approx(4.25)
    for _ in range(100):
        w.on_outcome("success", w.epoch, in_flight=10)
    assert w.w == 10.0  # never above the ceiling


def test_never_below_one_and_other_outcomes_change_nothing() -> None:
    w = Window(ceiling=4)
    for _ in range(10):
        w.on_outcome("rate_limited", w.epoch, in_flight=1)
    assert w.w == 1.0 and w.limit == 1
    w.on_outcome("other", w.epoch, in_flight=1)
    w.on_outcome("unknown", w.epoch, in_flight=1)
    assert w.w == 1.0


def test_a_lower_ceiling_clamps_and_a_fixed_window_ignores_outcomes() -> None:
    w = Window(ceiling=8)
    w.set_ceiling(3)
    assert w.limit == 3
    w.set_ceiling(6)  # raising the ceiling does not raise W: it grows back by successes
    assert w.limit == 3
    fixed = Window(ceiling=5, adaptive=False)
    fixed.on_outcome("rate_limited", 0, in_flight=5)
    assert fixed.limit == 5
    fixed.set_ceiling(7)
    assert fixed.limit == 7
