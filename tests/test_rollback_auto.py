"""Automatic rollback: the breaker's state machine (pure, fake clock), then the daemon
against a simulator whose error rate changes over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon_helpers import HTTP, Daemon, make_job, wait_for

from briefd.ops.breaker import Breaker, Mode, Outcome, OutcomeTracker
from briefd.ops.rollback import Thresholds
from briefd.sim.faults import Fault
from briefd.sim.server import SimServer

OK, FAIL, BAD_JSON = Outcome(), Outcome(failed=True), Outcome(failed=True, quality=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **kw: Any) -> Breaker:
    return Breaker(Thresholds(min_samples=4), window=8, probation_s=60, clock=clock, **kw)


def test_error_rate_trips_only_with_enough_samples() -> None:
    b = breaker(Clock())
    for _ in range(3):
        assert b.record(FAIL, parallel=True) is None  # 3 of 3 is below min_samples
    change = b.record(FAIL, parallel=True)
    assert change is not None and change.mode is Mode.SEQUENTIAL
    assert change.signal is not None and change.signal.name == "error"
    assert change.signal.rate == 1.0 and change.signal.threshold == 0.05
    assert b.mode is Mode.SEQUENTIAL and "error rate" in b.reason and b.trips == 1
    assert b.next_job_parallel() is False


def test_rates_under_threshold_and_baseline_keep_parallel() -> None:
    # 1 failure in 20 is exactly 5 points: not *more than* 5.
    b = Breaker(Thresholds(min_samples=4), window=20, clock=Clock())
    for i in range(20):
        assert b.record(FAIL if i == 19 else OK, parallel=True) is None
    # A baseline of 50% makes 50% errors no rise at all.
    b = breaker(Clock())
    b.thresholds = Thresholds(min_samples=4, baseline_error=0.5)
    for outcome in (OK, FAIL, OK, FAIL, OK, FAIL):
        assert b.record(outcome, parallel=True) is None
    # Timeouts are per attempt: 1 timed-out attempt in 4 is 25 > 10 points.
    b = breaker(Clock())
    outcomes = [OK, OK, OK, Outcome(attempts=1, timeouts=1)]
    changes = [b.record(o, parallel=True) for o in outcomes]
    assert changes[-1] is not None and changes[-1].signal is not None
    assert changes[-1].signal.name == "timeout"


def test_quality_failure_trips_at_any_rate() -> None:
    # 1 in 20 is no error-rate rise (5 points), but any quality-gate failure is.
    b = Breaker(Thresholds(min_samples=4), window=20, clock=Clock())
    changes = [b.record(o, parallel=True) for o in [OK] * 19 + [BAD_JSON]]
    assert changes[-1] is not None and changes[-1].signal is not None
    assert changes[-1].signal.name == "quality"


def test_probation_tries_a_fraction_then_clears_or_trips_again() -> None:
    clock = Clock()
    b = breaker(clock, trial_fraction=0.5)
    for _ in range(4):
        b.record(FAIL, parallel=True)
    assert b.mode is Mode.SEQUENTIAL
    clock.now += 59
    assert b.poll() is None
    assert b.record(FAIL, parallel=False) is None  # sequential stages are not judged
    clock.now += 1
    change = b.poll()
    assert change is not None and change.mode is Mode.PROBATION and b.mode is Mode.PROBATION
    assert [b.next_job_parallel() for _ in range(4)] == [True, False, True, False]
    # Trial stages fail again: back to sequential, probation starts over.
    for o in (OK, FAIL, OK):
        assert b.record(o, parallel=True) is None
    assert b.record(OK, parallel=False) is None  # a sequential job's stage: not a trial
    change = b.record(OK, parallel=True)
    assert change is not None and change.mode is Mode.SEQUENTIAL and b.trips == 2
    clock.now += 60
    assert b.poll() is not None
    for _ in range(3):
        assert b.record(OK, parallel=True) is None
    change = b.record(OK, parallel=True)
    assert change is not None and change.mode is Mode.PARALLEL and change.samples == 4
    assert b.mode is Mode.PARALLEL and b.reason == "" and b.next_job_parallel()


def test_outcome_tracker_counts_timeouts_and_skips_policy_failures() -> None:
    t = OutcomeTracker()
    t.retried("j", "S", "TIMEOUT")
    t.retried("j", "S", "SERVER_ERROR")
    assert t.ended("j", "S", 3, "TIMEOUT") == Outcome(True, False, 3, 2)
    assert t.ended("j", "S", 1, None) == Outcome(False, False, 1, 0)  # counts were cleared
    assert t.ended("j", "T", 0, "CANCELLED") is None
    assert t.ended("j", "T", 0, "BUDGET_EXCEEDED") is None
    assert t.ended("j", "U", 1, "INVALID_JSON") == Outcome(True, True, 1, 0)
    t.retried("j", "V", "STALLED")  # a streamed answer that stopped coming: a timeout too
    assert t.ended("j", "V", 2, "STALLED") == Outcome(True, False, 2, 2)


def _health(d: Daemon) -> dict[str, Any]:
    body: dict[str, Any] = HTTP.get(f"{d.url}/healthz", timeout=5).json()
    return body


def test_daemon_rolls_back_to_sequential_and_returns_after_probation(
    sim: SimServer, tmp_path: Path
) -> None:
    d = Daemon(
        tmp_path,
        sim.base_url,
        auto_rollback="true",
        rollback_min_samples=4,
        rollback_window=8,
        rollback_probation_s=1.0,
        rollback_trial_fraction=0.5,
        max_retries=0,
    )
    try:
        d.start()
        client = d.client()
        assert _health(d)["mode"]["mode"] == "parallel"
        sim.inject(Fault(status=500, times=4))  # every call of the first job fails
        client.submit(make_job("bad"))
        bad = client.result("bad", timeout=30)
        assert bad.status == "failed" and bad.parallel
        tripped = wait_for(lambda: d.events("RollbackTripped"), 10)
        assert tripped, d.log()
        assert tripped[0]["signal"] == "error" and tripped[0]["rate"] == 1.0
        assert tripped[0]["threshold"] == 0.05
        # New jobs run sequentially (the simulator is healthy again by now).
        client.submit(make_job("seq"))
        assert client.result("seq", timeout=30).parallel is False
        metrics = HTTP.get(f"{d.url}/metrics", headers=d.headers(), timeout=5).text
        # (the mode may already be probation: the probation period is one second)
        assert "briefd_rollback_trips_total 1.0" in metrics
        # After probation a trial job runs parallel; its clean stages clear the rollback.
        assert wait_for(lambda: d.events("RollbackProbation"), 10), d.log()
        client.submit(make_job("trial"))
        assert client.result("trial", timeout=30).parallel is True
        cleared = wait_for(lambda: d.events("RollbackCleared"), 10)
        assert cleared and cleared[0]["samples"] == 4, d.log()
        assert _health(d)["mode"]["mode"] == "parallel"
        client.submit(make_job("after"))
        assert client.result("after", timeout=30).parallel is True
    finally:
        d.stop()
