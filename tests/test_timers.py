"""The process's one timer thread: order, cancel, ``every``, close, and one thread for all.

Targets here are plain objects with a ``tell`` (what the scheduler calls), recording
what they hear and setting an Event; every wait is on an Event with a timeout.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka

from briefd.messages import CancelJob, Tick
from briefd.timers import Timers

WAIT_S = 5.0


class Recorder:
    """A target that records each message with the time it arrived."""

    def __init__(self, expect: int = 1) -> None:
        self.heard: list[tuple[float, Any]] = []
        self.expect = expect
        self.done = threading.Event()
        self._lock = threading.Lock()

    def tell(self, message: Any) -> None:
        with self._lock:
            self.heard.append((time.monotonic(), message))
            if len(self.heard) >= self.expect:
                self.done.set()


class Dead:
    """A target whose actor is gone."""

    def __init__(self) -> None:
        self.calls = 0

    def tell(self, message: Any) -> None:
        self.calls += 1
        raise pykka.ActorDeadError("gone")


def _tag(tag: str) -> CancelJob:
    """A message that says which timer told it."""
    return CancelJob(job_id=tag, reason="test")


def _timer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("briefd-t"))


def test_one_shots_fire_in_deadline_order_not_scheduling_order() -> None:
    timers = Timers()
    rec = Recorder(expect=3)
    for delay, tag in ((0.06, "c"), (0.0, "a"), (0.03, "b")):
        timers.tell_later(rec, delay, _tag(tag))
    assert rec.done.wait(WAIT_S)
    assert [m.job_id for _, m in rec.heard] == ["a", "b", "c"]
    assert len(timers) == 0, "fired one-shots leave their owner's set"


def test_a_one_shot_is_not_early() -> None:
    rec = Recorder()
    scheduled = time.monotonic()
    Timers().tell_later(rec, 0.1, Tick())
    assert rec.done.wait(WAIT_S)
    assert rec.heard[0][0] - scheduled >= 0.1


def test_cancelled_one_shot_never_fires_and_the_others_do() -> None:
    timers = Timers()
    rec = Recorder(expect=2)
    handle = timers.tell_later(rec, 0.05, _tag("cancelled"))
    timers.tell_later(rec, 0.0, _tag("first"))
    timers.tell_later(rec, 0.1, _tag("last"))
    assert handle is not None
    handle.cancel()
    assert rec.done.wait(WAIT_S)
    # "last" is due after "cancelled" would have been: it has been reached and skipped.
    assert [m.job_id for _, m in rec.heard] == ["first", "last"]


def test_every_repeats_until_closed() -> None:
    timers = Timers()
    rec = Recorder(expect=3)
    timers.every(rec, 0.02, Tick())
    assert rec.done.wait(WAIT_S)
    gaps = [b[0] - a[0] for a, b in zip(rec.heard, rec.heard[1:], strict=False)]
    assert all(g >= 0.015 for g in gaps), gaps  # a beat, not a burst
    timers.close()
    # A marker due after several more beats: once it arrives, no beat came in between.
    after = Recorder()
    Timers().tell_later(after, 0.1, _tag("marker"))
    count = len(rec.heard)
    assert after.done.wait(WAIT_S)
    assert len(rec.heard) <= count + 1  # at most one beat already being told at close


def test_close_cancels_every_entry_and_refuses_new_ones() -> None:
    timers = Timers()
    rec = Recorder()
    timers.tell_later(rec, 0.05, _tag("one-shot"))
    timers.every(rec, 0.05, _tag("beat"))
    assert len(timers) == 2
    timers.close()
    assert len(timers) == 0
    assert timers.tell_later(rec, 0.0, Tick()) is None
    assert timers.every(rec, 0.01, Tick()) is None
    marker = Recorder()
    Timers().tell_later(marker, 0.15, Tick())
    assert marker.done.wait(WAIT_S)
    assert rec.heard == []


def test_a_dead_target_stops_its_every() -> None:
    timers = Timers()
    dead = Dead()
    timers.every(dead, 0.01, Tick())
    marker = Recorder()
    Timers().tell_later(marker, 0.1, Tick())
    assert marker.done.wait(WAIT_S)
    assert dead.calls == 1
    assert len(timers) == 0


def test_a_target_that_raises_does_not_kill_the_timer_thread() -> None:
    class Broken:
        def tell(self, message: Any) -> None:
            raise RuntimeError("boom")

    Timers().tell_later(Broken(), 0.0, Tick())
    rec = Recorder()
    Timers().tell_later(rec, 0.02, Tick())
    assert rec.done.wait(WAIT_S)


def test_thousands_of_timers_and_500_health_ticks_use_one_thread() -> None:
    """500 'parked coordinators' each with a health beat, plus 2,000 one-shots: the thread
    count does not move beyond the one scheduler (the old Timers made a thread each)."""
    warm = Recorder()
    Timers().tell_later(warm, 0.0, Tick())  # the scheduler exists before the baseline
    assert warm.done.wait(WAIT_S)
    baseline = threading.active_count()
    owners = [Timers() for _ in range(500)]
    beats = [Recorder(expect=2) for _ in owners]
    for owner, rec in zip(owners, beats, strict=True):
        owner.every(rec, 0.05, Tick())
    shots = [Recorder() for _ in range(2_000)]
    once = Timers()
    for i, rec in enumerate(shots):
        once.tell_later(rec, (i % 50) / 1000, Tick())
    peak = threading.active_count()
    assert all(rec.done.wait(WAIT_S) for rec in shots)
    assert all(rec.done.wait(WAIT_S) for rec in beats), "every health beat ticked twice"
    peak = max(peak, threading.active_count())
    assert peak == baseline, (baseline, peak)
    assert _timer_threads() == 1
    for owner in owners:
        owner.close()
