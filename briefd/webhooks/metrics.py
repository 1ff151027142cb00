"""Webhook figures for ``/metrics``: deliveries by state, attempts by outcome."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

OUTCOMES = ("delivered", "retry", "gave_up", "expired")


@dataclass(frozen=True)
class WebhookFigures:
    """Deliveries by state (the journal's: the cluster's with PostgreSQL) and attempts by
    outcome (this daemon's since start)."""

    deliveries: dict[str, int]
    attempts: dict[str, int]


def webhook_metrics(f: WebhookFigures) -> Iterator[Metric]:
    """``briefd_webhook_deliveries{state}`` and ``briefd_webhook_attempts_total{outcome}``."""
    states = GaugeMetricFamily(
        "briefd_webhook_deliveries",
        "Webhook deliveries in the outbox by state (pending: not yet accepted, retried; "
        "failed: given up after 410 or BRIEFD_WEBHOOK_RETRY_FOR_S).",
        labels=["state"],
    )
    for state, n in sorted(f.deliveries.items()):
        states.add_metric([state], n)
    yield states
    attempts = CounterMetricFamily(
        "briefd_webhook_attempts",
        "Webhook delivery attempts by this daemon, by outcome.",
        labels=["outcome"],
    )
    for outcome in OUTCOMES:
        attempts.add_metric([outcome], f.attempts.get(outcome, 0))
    yield attempts
