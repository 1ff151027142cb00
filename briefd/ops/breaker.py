"""The automatic rollback's state machine: parallel, sequential, probation (half-open).

Pure: fed stage outcomes and asked for decisions, it reads time only through
the clock it was given, so every transition is unit-tested without threads.
The daemon's root actor drives it (``BRIEFD_AUTO_ROLLBACK=true``) and starts
each new job's coordinator with ``parallel`` as :meth:`Breaker.next_job_parallel`
says; jobs already running keep the mode they started with.

* **parallel** (closed). Every finished stage enters a sliding window of the
  last ``window`` outcomes. Once it holds ``min_samples`` (:class:`Thresholds`),
  the seed's signals (:func:`briefd.ops.rollback.signals`: error rate up more
  than 5 points, timeout rate up more than 10, any quality-gate failure, each
  over its baseline) are judged after every outcome; one crossed trips the
  breaker.
* **sequential** (open). New jobs run one stage at a time, for ``probation_s``.
* **probation** (half-open). The window starts empty; a ``trial_fraction`` of
  new jobs run parallel, and only their stages count. At ``min_samples`` trial
  outcomes with no signal crossed, back to parallel; a signal crossed at any
  point, back to sequential for another ``probation_s``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from briefd.ops.rollback import QUALITY_CODES, Signal, Thresholds, signals


class Mode(StrEnum):
    """How new jobs run."""

    PARALLEL = "parallel"
    SEQUENTIAL = "sequential"
    PROBATION = "probation"


@dataclass(frozen=True)
class Outcome:
    """One finished stage: failed (not cancelled, not refused by a budget), failed its
    quality gate, how many calls it made and how many of those timed out."""

    failed: bool = False
    quality: bool = False
    attempts: int = 1
    timeouts: int = 0


@dataclass(frozen=True)
class Transition:
    """A change of mode and why: the crossed signal (tripped) or the samples that cleared it."""

    mode: Mode
    reason: str
    signal: Signal | None = None
    samples: int = 0


class Breaker:
    """See the module docstring. Not thread-safe: one actor owns it."""

    def __init__(
        self,
        thresholds: Thresholds,
        *,
        window: int = 50,
        probation_s: float = 300.0,
        trial_fraction: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.thresholds = thresholds
        self.probation_s = probation_s
        self.trial_fraction = trial_fraction
        self._clock = clock
        self._window: deque[Outcome] = deque(maxlen=max(window, 1))
        self.mode = Mode.PARALLEL
        self.reason = ""
        self.trips = 0
        self._since = clock()
        self._credit = 0.0

    def signals(self) -> list[Signal]:
        """The signals over the current window."""
        w = self._window
        return signals(
            self.thresholds,
            failed=sum(o.failed for o in w),
            quality=sum(o.quality for o in w),
            finished=len(w),
            timeouts=sum(o.timeouts for o in w),
            attempts=sum(o.attempts for o in w),
        )

    def record(self, outcome: Outcome, *, parallel: bool) -> Transition | None:
        """Take one finished stage of a job that ran ``parallel`` (or not)."""
        if self.mode is Mode.SEQUENTIAL or (self.mode is Mode.PROBATION and not parallel):
            return None  # sequential stages say nothing about running in parallel
        self._window.append(outcome)
        crossed = [s for s in self.signals() if s.crossed]
        if crossed:
            return self._trip(crossed[0])
        if self.mode is Mode.PROBATION and len(self._window) >= self.thresholds.min_samples:
            samples = len(self._window)
            self._enter(Mode.PARALLEL, "")
            return Transition(
                Mode.PARALLEL,
                f"{samples} stages of trial jobs stayed under every threshold",
                samples=samples,
            )
        return None

    def poll(self) -> Transition | None:
        """Time-driven: sequential for ``probation_s`` becomes probation."""
        if self.mode is Mode.SEQUENTIAL and self._clock() - self._since >= self.probation_s:
            self._enter(Mode.PROBATION, f"{self.reason}; on probation")
            self._credit = 1.0 - self.trial_fraction  # the first new job is a trial
            return Transition(Mode.PROBATION, self.reason)
        return None

    def next_job_parallel(self) -> bool:
        """Whether the next job to start runs parallel (probation: one in 1/trial_fraction)."""
        if self.mode is Mode.PARALLEL:
            return True
        if self.mode is Mode.SEQUENTIAL:
            return False
        self._credit += self.trial_fraction
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False

    def _trip(self, signal: Signal) -> Transition:
        self.trips += 1
        reason = (
            f"{signal.name} rate {signal.rate:.1%} ({signal.numerator}/{signal.denominator}) "
            f"is up more than {signal.threshold:.1%} over its baseline {signal.baseline:.1%}"
        )
        self._enter(Mode.SEQUENTIAL, reason)
        return Transition(Mode.SEQUENTIAL, reason, signal=signal)

    def _enter(self, mode: Mode, reason: str) -> None:
        self.mode, self.reason, self._since = mode, reason, self._clock()
        self._window.clear()


class OutcomeTracker:
    """Stage events -> :class:`Outcome`: counts a stage's timed-out attempts until it ends.

    Cancelled stages and stages a budget refused are left out: they say nothing about
    the server.
    """

    IGNORED = frozenset({"CANCELLED", "BUDGET_EXCEEDED", "DEADLINE_EXCEEDED"})
    """Policy, not the server's health: a job's own budget or deadline refused the stage
    (running sequentially would only miss more deadlines)."""

    TIMED_OUT = frozenset({"TIMEOUT", "STALLED"})
    """A call cut by a clock: the total deadline, or a streamed answer that stopped coming
    (idle or first-token timeout): both say the server is slow, which the seed's rollback
    watches."""

    def __init__(self) -> None:
        self._timeouts: dict[tuple[str, str], int] = {}

    def retried(self, job_id: str, stage: str, code: str) -> None:
        if code in self.TIMED_OUT:
            key = (job_id, stage)
            self._timeouts[key] = self._timeouts.get(key, 0) + 1

    def ended(self, job_id: str, stage: str, attempts: int, code: str | None) -> Outcome | None:
        """The outcome of a stage that succeeded (``code`` None) or failed with ``code``."""
        timeouts = self._timeouts.pop((job_id, stage), 0) + (code in self.TIMED_OUT)
        if code in self.IGNORED:
            return None
        return Outcome(
            failed=code is not None,
            quality=code in QUALITY_CODES,
            attempts=max(attempts, 1),
            timeouts=timeouts,
        )
