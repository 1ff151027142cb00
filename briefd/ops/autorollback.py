"""The daemon's automatic rollback, as the root actor runs it: hear stages, announce changes.

:class:`~briefd.ops.breaker.Breaker` is the pure state machine (parallel ->
sequential -> probation); this wraps it with what the root needs: turning
stage events into outcomes (a stage's retries count with its end) and
publishing each change of mode as an event the log, console and metrics see.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from briefd.config import ConfigError, Settings
from briefd.messages import (
    RollbackCleared,
    RollbackProbation,
    RollbackTripped,
    StageFailed,
    StageRetrying,
    StageSucceeded,
)
from briefd.ops.breaker import Breaker, Mode, OutcomeTracker, Transition
from briefd.ops.events import publish
from briefd.ops.rollback import Thresholds


class RollbackWatch:
    """A breaker fed by stage events; every transition is published once."""

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker
        self._outcomes = OutcomeTracker()

    @property
    def mode(self) -> Mode:
        return self.breaker.mode

    @property
    def reason(self) -> str:
        return self.breaker.reason

    @property
    def trips(self) -> int:
        return self.breaker.trips

    def stats_fields(self) -> dict[str, Any]:
        """The rollback's part of the root's figures (``RootStats``)."""
        return {
            "mode": self.breaker.mode.value,
            "mode_reason": self.breaker.reason,
            "rollback_trips": self.breaker.trips,
            "auto_rollback": True,
        }

    def next_job_parallel(self) -> bool:
        """Whether the next job starts parallel (probation tries a fraction)."""
        return self.breaker.next_job_parallel()

    def hear(self, event: StageRetrying | StageSucceeded | StageFailed, *, parallel: bool) -> None:
        """A stage event of a job that ran parallel or not."""
        if isinstance(event, StageRetrying):
            self._outcomes.retried(event.job_id, event.stage, event.reason.code.value)
            return
        code = event.error.code.value if isinstance(event, StageFailed) else None
        outcome = self._outcomes.ended(event.job_id, event.stage, event.attempts, code)
        if outcome is not None:
            self._announce(self.breaker.record(outcome, parallel=parallel))

    def poll(self) -> None:
        """Time passes: probation may begin or end."""
        self._announce(self.breaker.poll())

    def _announce(self, change: Transition | None) -> None:
        if change is None:
            return
        logger.warning("automatic rollback: {}: {}", change.mode.value, change.reason)
        if change.mode is Mode.SEQUENTIAL and change.signal is not None:
            s = change.signal
            publish(
                RollbackTripped(
                    signal=s.name,
                    rate=s.rate,
                    threshold=s.threshold,
                    baseline=s.baseline,
                    samples=s.denominator,
                    probation_s=self.breaker.probation_s,
                    reason=change.reason,
                )
            )
        elif change.mode is Mode.PROBATION:
            publish(
                RollbackProbation(trial_fraction=self.breaker.trial_fraction, reason=change.reason)
            )
        elif change.mode is Mode.PARALLEL:
            publish(RollbackCleared(samples=change.samples, reason=change.reason))


def breaker_from_settings(s: Settings) -> Breaker | None:
    """The automatic rollback's breaker (``BRIEFD_AUTO_ROLLBACK``), or None; ConfigError if
    ``BRIEFD_ROLLBACK_BASELINE`` cannot be read as a ``briefd report --json``."""
    if not s.auto_rollback:
        return None
    thresholds = Thresholds(min_samples=s.rollback_min_samples)
    if s.rollback_baseline is not None:
        try:
            thresholds = thresholds.with_baseline(s.rollback_baseline)
        except (OSError, ValueError) as err:
            why = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise ConfigError(f"BRIEFD_ROLLBACK_BASELINE {s.rollback_baseline}: {why}") from None
    return Breaker(
        thresholds,
        window=s.rollback_window,
        probation_s=s.rollback_probation_s,
        trial_fraction=s.rollback_trial_fraction,
    )
