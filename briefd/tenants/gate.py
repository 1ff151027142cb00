"""Per-tenant guard rails in admission: each tenant's daily budget and queue cap.

Owned by the root actor (one thread, no lock), beside the daemon-wide
:class:`~briefd.costs.daily.DailyLedger`, and built the same way: the store's
results are the memory (every daemon's spend on PostgreSQL, read again every
:data:`~briefd.costs.daily.SYNC_S`), this daemon's own count of runs as they end
keeps it current in between, the larger wins.

* A tenant whose day's spend reached its ``daily_budget_usd`` is *held*: its
  queued jobs wait (the root skips them; in a cluster the claim skips them),
  other tenants' jobs are admitted as before. Its running jobs finish.
* A tenant with ``max_queued`` jobs already waiting has its next submission
  refused (429 for it only).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from briefd.costs.daily import DAY_S, SYNC_S
from briefd.messages import JobResult, JobSpec
from briefd.store.base import StoreUnavailable
from briefd.tenants.ids import tenant_of
from briefd.tenants.store import Tenant, TenantStore
from briefd.tenants.weights import set_weights


class TenantGate:
    """Which tenants are held by their budget; whether a tenant's queue is full."""

    def __init__(self, store: TenantStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self.tenants: dict[str, Tenant] = {}
        self.day = int(clock() // DAY_S)
        self.spent_today: dict[str, float] = {}
        self.held: frozenset[str] = frozenset()
        self.tokens: dict[tuple[str, str], int] = {}
        self.cost_total: dict[str, float] = {}
        self._next_sync = 0.0

    def sync(self, *, now: bool = False) -> None:
        """Read tenants and today's spend again (at most every SYNC_S unless ``now``)."""
        mono = time.monotonic()
        if not now and mono < self._next_sync:
            return
        self._next_sync = mono + SYNC_S
        self._roll()
        with contextlib.suppress(StoreUnavailable):
            self.tenants = self.store.tenants()
            set_weights({t.name: t.weight for t in self.tenants.values()})
            spent = self.store.spent_since(float(self.day * DAY_S))
            for t, usd in spent.items():
                self.spent_today[t] = max(self.spent_today.get(t, 0.0), usd)
        self._judge()

    def add(self, result: JobResult) -> None:
        """Count one run's spend and tokens for its tenant."""
        self._roll()
        t = tenant_of(result.job_id)
        self.spent_today[t] = round(self.spent_today.get(t, 0.0) + result.total_cost_usd, 6)
        self.cost_total[t] = round(self.cost_total.get(t, 0.0) + result.total_cost_usd, 6)
        for usage in result.metrics.usage.values():
            for kind, n in (("input", usage.prompt_tokens), ("output", usage.completion_tokens)):
                self.tokens[(t, kind)] = self.tokens.get((t, kind), 0) + n
        self._judge()

    def is_held(self, job_id: str) -> bool:
        return tenant_of(job_id) in self.held

    def queue_full(self, job: JobSpec) -> bool:
        """Whether ``job``'s tenant already has its ``max_queued`` jobs waiting (its cap read
        afresh: a submission writes anyway, and a changed cap applies at once)."""
        try:
            tenant = self.store.tenant(job.tenant)
            if tenant is None or tenant.max_queued is None:
                return False
            return self.store.queued(job.tenant) >= tenant.max_queued
        except StoreUnavailable:
            return False  # the global bound still holds; the write itself will say

    def stats(self) -> dict[str, Any]:
        """For ``/metrics``: spend today, budgets, held, tokens and cost since start."""
        return {
            "spent_today": dict(self.spent_today),
            "budgets": {n: t.daily_budget_usd for n, t in self.tenants.items()},
            "held": sorted(self.held),
            "tokens": dict(self.tokens),
            "cost_total": dict(self.cost_total),
        }

    def _judge(self) -> None:
        held = frozenset(
            n
            for n, t in self.tenants.items()
            if t.daily_budget_usd is not None and self.spent_today.get(n, 0.0) >= t.daily_budget_usd
        )
        for n in sorted(held - self.held):
            logger.warning("tenant {}: daily budget spent; its new jobs wait queued", n)
        for n in sorted(self.held - held):
            logger.info("tenant {}: budget released; its queued jobs start", n)
        self.held = held

    def _roll(self) -> None:
        day = int(self._clock() // DAY_S)
        if day != self.day:
            self.day, self.spent_today = day, {}
