"""The daemon's spend: per UTC day against ``BRIEFD_DAILY_BUDGET_USD``, and by model and stage.

Owned by the root actor (one thread, no lock) and fed each run's result as it
ends, so the day's spend counts jobs that ended, not calls in flight: jobs
already running when the budget is spent finish, and may pass it by their own
cost. The day is UTC, read from an injectable wall clock.

The journal is the ledger's memory: at start, and every few seconds after,
:meth:`DailyLedger.sync` takes the day's spend from the store's results
(:meth:`~briefd.store.base.Store.spent_since`), so a restart does not forget
what was spent, and with the PostgreSQL store every daemon sees the spend of
all of them. The larger of the two figures wins: this daemon's own count
also holds runs that crashed (paid, but never a result in the journal).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from briefd.messages import DailyBudgetReleased, DailyBudgetSpent, Event, JobResult
from briefd.store.base import Store, StoreUnavailable

DAY_S = 86_400
SYNC_S = 5.0
"""How often the day's spend is read again from the journal (every daemon's, on PostgreSQL)."""


class DailyLedger:
    """Spend today and since start; whether the budget holds new jobs (:attr:`held`)."""

    def __init__(self, budget_usd: float | None, clock: Callable[[], float] = time.time) -> None:
        self.budget_usd = budget_usd
        self._clock = clock
        self.day = int(clock() // DAY_S)
        self.spent_today_usd = 0.0
        self.held = False
        self._next_sync = 0.0
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
            for kind, n in (
                ("input", usage.prompt_tokens),
                ("output", usage.completion_tokens),
                ("cached", usage.cached_tokens),  # of input
                ("reasoning", usage.reasoning_tokens),  # of output
            ):
                k = (result.model, stage, kind)
                self.tokens_by_model_stage[k] = self.tokens_by_model_stage.get(k, 0) + n

    def day_start(self) -> float:
        """00:00 UTC today, as a Unix time."""
        self._roll()
        return float(self.day * DAY_S)

    def sync(self, spent_in_store: float) -> None:
        """Take the store's figure for today's spend if it is larger than this daemon's own."""
        self._roll()
        self.spent_today_usd = max(self.spent_today_usd, round(spent_in_store, 6))

    def sync_from(self, store: Store, *, now: bool = False) -> None:
        """:meth:`sync` from ``store`` at most every :data:`SYNC_S` (at once with ``now``).

        Only with a budget set (nothing to hold otherwise). A store that cannot be
        read says so on ``/healthz``; this daemon's own count holds meanwhile.
        """
        mono = time.monotonic()
        if self.budget_usd is None or (not now and mono < self._next_sync):
            return
        self._next_sync = mono + SYNC_S
        with contextlib.suppress(StoreUnavailable):
            self.sync(store.spent_since(self.day_start()))

    def stats_fields(self) -> dict[str, Any]:
        """The ledger's part of the root's figures (``RootStats``)."""
        return {
            "spent_today_usd": self.spent_today_usd,
            "daily_budget_usd": self.budget_usd,
            "budget_held": self.held,
            "budget_resets_in_s": self.seconds_to_reset(),
            "cost_by_model_stage": dict(self.by_model_stage),
            "tokens_by_model_stage": dict(self.tokens_by_model_stage),
        }

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
