"""``/metrics`` by tenant: spend, tokens, jobs by state, queue wait p50/p95.

Jobs by state, today's spend and the queue waits are read from the journal
(every daemon's, on PostgreSQL) at scrape time; tokens and cost since start are
this daemon's counters (the root's :class:`~briefd.tenants.gate.TenantGate`).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from briefd.costs.daily import DAY_S
from briefd.store.base import StoreUnavailable
from briefd.tenants.store import TenantStore


@dataclass(frozen=True)
class TenantFigures:
    jobs: dict[str, dict[str, int]] = field(default_factory=dict)
    spent_today: dict[str, float] = field(default_factory=dict)
    budgets: dict[str, float | None] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    tokens: dict[tuple[str, str], int] = field(default_factory=dict)
    cost_total: dict[str, float] = field(default_factory=dict)
    waits: dict[str, tuple[float, float]] = field(default_factory=dict)  # p50, p95 (s)


def tenant_figures(store: TenantStore, gate: dict[str, Any] | None, now: float) -> TenantFigures:
    """Read the journal's per-tenant figures and merge the root's (``RootStats.tenants``)."""
    gate = gate or {}
    jobs: dict[str, dict[str, int]] = {}
    spent: dict[str, float] = dict(gate.get("spent_today", {}))
    waits: dict[str, tuple[float, float]] = {}
    with contextlib.suppress(StoreUnavailable):
        jobs = store.counts()
        for t, usd in store.spent_since(float(int(now // DAY_S) * DAY_S)).items():
            spent[t] = max(spent.get(t, 0.0), usd)
        for t, ws in store.queue_waits().items():
            waits[t] = _p50_p95(ws)
    return TenantFigures(
        jobs=jobs,
        spent_today=spent,
        budgets=dict(gate.get("budgets", {})),
        held=list(gate.get("held", [])),
        tokens=dict(gate.get("tokens", {})),
        cost_total=dict(gate.get("cost_total", {})),
        waits=waits,
    )


def _p50_p95(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values), q[18]


def tenant_metrics(f: TenantFigures) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "briefd_tenant_jobs", "Jobs in the journal by tenant and state.", labels=["tenant", "state"]
    )
    for t, states in sorted(f.jobs.items()):
        for state, n in sorted(states.items()):
            jobs.add_metric([t, state], n)
    yield jobs
    spent = GaugeMetricFamily(
        "briefd_tenant_spent_today_usd", "USD spent today (UTC) by tenant.", labels=["tenant"]
    )
    for t, usd in sorted(f.spent_today.items()):
        spent.add_metric([t], usd)
    yield spent
    budget = GaugeMetricFamily(
        "briefd_tenant_daily_budget_usd", "A tenant's daily budget (set only).", labels=["tenant"]
    )
    held = GaugeMetricFamily(
        "briefd_tenant_budget_held", "1 while its budget holds its jobs.", labels=["tenant"]
    )
    for t, cap in sorted(f.budgets.items()):
        if cap is not None:
            budget.add_metric([t], cap)
            held.add_metric([t], 1.0 if t in f.held else 0.0)
    yield budget
    yield held
    tokens = CounterMetricFamily(
        "briefd_tenant_tokens",
        "Tokens used by tenant's runs ended on this daemon since start.",
        labels=["tenant", "kind"],
    )
    for (t, kind), n in sorted(f.tokens.items()):
        tokens.add_metric([t, kind], n)
    yield tokens
    cost = CounterMetricFamily(
        "briefd_tenant_cost_usd", "USD of runs ended on this daemon since start.", labels=["tenant"]
    )
    for t, usd in sorted(f.cost_total.items()):
        cost.add_metric([t], usd)
    yield cost
    wait = GaugeMetricFamily(
        "briefd_tenant_queue_wait_seconds",
        "Submission to first run, over the last 1000 started jobs.",
        labels=["tenant", "quantile"],
    )
    for t, (p50, p95) in sorted(f.waits.items()):
        wait.add_metric([t, "0.5"], p50)
        wait.add_metric([t, "0.95"], p95)
    yield wait
