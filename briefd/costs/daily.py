"""The daemon's spend: per UTC day against ``BRIEFD_DAILY_BUDGET_USD``, and by model and stage.

Owned by the root actor (one thread, no lock) and fed each run's result as it
ends, so the day's spend counts jobs that ended, not calls in flight: jobs
already running when the budget is spent finish, and may pass it by their own
cost. The day is UTC, read from an injectable wall clock; the spend starts at
zero when the daemon starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from briefd.messages import DailyBudgetReleased, DailyBudgetSpent, Event, JobResult

DAY_S = 86_400


class DailyLedger:
    """Spend today and since start; whether the budget holds new jobs (:attr:`held`)."""

    def __init__(self, budget_usd: float | None, clock: Callable[[], float] = time.time) -> None:
        self.budget_usd = budget_usd
        self._clock = clock
        self.day = int(clock() // DAY_S)
        self.spent_today_usd = 0.0
        self.held = False
        self.by_model_stage: dict[tuple[str, str], float] = {}
        self.tokens_by_model_stage: dict[tuple[str, str, str], int] = {}

    def add(self, result: JobResult) -> None:
        """Count one run's spend (any run: a crashed run's calls were paid for too)."""
        self._roll()
        self.spent_today_usd = round(self.spent_today_usd + result.total_cost_usd, 6)
        for stage, usd in result.cost_usd.items():
            key = (result.model, stage)
            self.by_model_stage[key] = round(self.by_model_stage.get(key, 0.0) + usd, 6)
        for stage, usage in result.metrics.usage.items():
            for kind, n in (("input", usage.prompt_tokens), ("output", usage.completion_tokens)):
                k = (result.model, stage, kind)
                self.tokens_by_model_stage[k] = self.tokens_by_model_stage.get(k, 0) + n

    def update(self, queued: int) -> Event | None:
        """Re-judge :attr:`held` (new day, new budget, new spend); the event if it changed."""
        new_day = self._roll()
        spent = self.budget_usd is not None and self.spent_today_usd >= self.budget_usd
        if spent and not self.held:
            self.held = True
            assert self.budget_usd is not None
            return DailyBudgetSpent(
                spent_usd=self.spent_today_usd, budget_usd=self.budget_usd, queued=queued
            )
        if self.held and not spent:
            self.held = False
            return DailyBudgetReleased(
                reason="new UTC day" if new_day else "budget raised",
                spent_usd=self.spent_today_usd,
                budget_usd=self.budget_usd,
            )
        return None

    def seconds_to_reset(self) -> float:
        """Until 00:00 UTC, when the day's spend starts again at zero."""
        return round((self.day + 1) * DAY_S - self._clock(), 1)

    def _roll(self) -> bool:
        day = int(self._clock() // DAY_S)
        if day == self.day:
            return False
        self.day, self.spent_today_usd = day, 0.0
        return True
