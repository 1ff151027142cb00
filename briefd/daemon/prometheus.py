"""``GET /metrics``: the daemon's figures in the Prometheus text format, by ``prometheus_client``.

The figures live in actors (the root's admission, the limiter's tokens, the
metrics actor's aggregates) and in the journal, not in process-global
counters, so each scrape asks them once and a custom collector turns the
answers into metric families. ``prometheus_client`` writes the exposition:
types, help text, label escaping, ``_total`` suffixes and the content type are
right by construction. Each daemon has its own registry (no global state), so
two daemons in one test process never share a metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from briefd.actors.admission import RootStats
from briefd.actors.metrics import Histogram, MetricsSnapshot
from briefd.actors.rate_limiter import LimiterStats
from briefd.cluster.state import ClusterLimiterStats
from briefd.limits.lanes import EndpointStats
from briefd.tenants.metrics import TenantFigures, tenant_metrics
from briefd.webhooks.metrics import WebhookFigures, webhook_metrics

__all__ = ["CONTENT_TYPE_LATEST", "DaemonFigures", "MetricsExporter"]


@dataclass(frozen=True)
class DaemonFigures:
    """Everything one scrape shows, read once from the journal and the actors."""

    jobs: dict[str, int]
    root: RootStats
    limiter: LimiterStats
    snap: MetricsSnapshot
    webhooks: WebhookFigures | None = None
    tenants: TenantFigures | None = None


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"briefd_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"briefd_{name}", doc, value=value)


def _by_label(family: GaugeMetricFamily | CounterMetricFamily, values: dict[str, int]) -> Metric:
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class _FiguresCollector(Collector):
    """A collector over a callable that reads the daemon's figures at scrape time."""

    def __init__(self, read: Callable[[], DaemonFigures]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        f = self._read()
        root, limiter, snap = f.root, f.limiter, f.snap
        yield _by_label(
            GaugeMetricFamily("briefd_jobs", "Jobs in the journal by state.", labels=["state"]),
            f.jobs,
        )
        yield _gauge("queue_depth", "Jobs waiting for a slot.", root.queued)
        yield _gauge("active_jobs", "Jobs with a coordinator.", root.active)
        yield _gauge("active_jobs_max", "max_active_jobs.", root.max_active_jobs)
        yield _counter("job_restarts", "Runs resumed after dying.", root.restarts)
        yield _gauge("tokens_in_use", "Tokens leased (calls in flight).", limiter.in_use)
        yield _gauge("tokens_capacity", "Tokens (max_concurrent).", limiter.capacity)
        yield _gauge("token_waiting", "Stages waiting for a token.", limiter.waiting)
        yield _gauge("token_window", "Adaptive window W (calls allowed in flight).", limiter.window)
        yield _gauge("calls_in_flight", "API calls in flight.", limiter.in_flight)
        yield _gauge("rpm_lag_seconds", "How far the RPM budget runs ahead.", limiter.rpm_lag_s)
        yield _gauge("tpm_lag_seconds", "How far the TPM budget runs ahead.", limiter.tpm_lag_s)
        yield _counter("limiter_pauses", "Grant pauses (429, spent budget).", limiter.pauses_total)
        yield _counter("rate_limited", "Calls answered 429 or 503.", limiter.rate_limited_total)
        yield _counter("stage_calls", "API calls by stages.", snap.stage_calls)
        yield _counter("stage_retries", "Stage retries.", snap.retries)
        yield _by_label(
            CounterMetricFamily("briefd_stage_errors", "Stage errors by code.", labels=["code"]),
            snap.errors_by_code,
        )
        yield _by_label(
            CounterMetricFamily(
                "briefd_jobs_completed", "Runs ended since start, by status.", labels=["status"]
            ),
            snap.jobs_by_status,
        )
        yield _histogram(
            "briefd_stage_duration_seconds",
            "Stage start to document (wall: token queue, backoffs and calls).",
            snap.stage_histograms,
        )
        yield from _clocks(snap)
        yield from _routes(snap)
        yield from _endpoints(limiter)
        yield from _guard_rails(root)
        yield from _cluster(root, limiter)
        if f.webhooks is not None:
            yield from webhook_metrics(f.webhooks)
        if f.tenants is not None:
            yield from tenant_metrics(f.tenants)


_CIRCUIT_STATES = ("closed", "half_open", "open")
_CLOCK_DOCS = {
    "call": "A succeeded stage's calls: the server's own measure where it gives one "
    "(llama.cpp's timings), else request sent to last byte.",
    "ttft": "A succeeded streamed stage's last call: request sent to its first token.",
    "queued": "A succeeded stage's wait for execution tokens (briefd's limiter).",
}


def _histogram(name: str, doc: str, histograms: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["stage"])
    for stage, h in sorted(histograms.items()):
        buckets = [(f"{b:g}", float(c)) for b, c in zip(h.bounds, h.counts, strict=True)]
        family.add_metric([stage], [*buckets, ("+Inf", float(h.count))], sum_value=h.sum_s)
    return family


def _clocks(snap: MetricsSnapshot) -> Iterator[Metric]:
    """Where stages' time went (:mod:`briefd.latency`): call time, time to first token and
    queue time, as histograms since start and as p50/p95 over the recent stages."""
    for clock, doc in _CLOCK_DOCS.items():
        yield _histogram(f"briefd_stage_{clock}_seconds", doc, snap.clock_histograms.get(clock, {}))
    quantiles = GaugeMetricFamily(
        "briefd_stage_latency_quantile_seconds",
        "p50 and p95 of each stage's call time, time to first token and queue time, over its "
        "last 2048 succeeded runs (clock: call, ttft, queued).",
        labels=["stage", "clock", "quantile"],
    )
    for clock in _CLOCK_DOCS:
        for stage, s in sorted(snap.clocks.get(clock, {}).items()):
            quantiles.add_metric([stage, clock, "0.5"], s.p50_ms / 1000)
            quantiles.add_metric([stage, clock, "0.95"], s.p95_ms / 1000)
    yield quantiles


def _routes(snap: MetricsSnapshot) -> Iterator[Metric]:
    """Which endpoint served what, failovers between endpoints, each breaker's state."""
    served = CounterMetricFamily(
        "briefd_documents_served",
        "Documents by the endpoint and model (as the server named it) that produced them.",
        labels=["endpoint", "model"],
    )
    for route, n in sorted(snap.served_by.items()):
        endpoint, _, model = route.partition(":")
        served.add_metric([endpoint, model], float(n))
    yield served
    moved = CounterMetricFamily(
        "briefd_stage_failovers",
        "Stages that left an endpoint for the next entry of their model alias.",
        labels=["from_endpoint", "to_endpoint"],
    )
    for (a, b), n in sorted(snap.failovers.items()):
        moved.add_metric([a, b], float(n))
    yield moved
    circuit = GaugeMetricFamily(
        "briefd_endpoint_circuit",
        "1 for each endpoint's breaker state (closed: calls go; open: skipped; half_open: probe).",
        labels=["endpoint", "state"],
    )
    for endpoint, state in sorted(snap.circuits.items()):
        for name in _CIRCUIT_STATES:
            circuit.add_metric([endpoint, name], 1.0 if name == state else 0.0)
    yield circuit


def _endpoints(limiter: LimiterStats) -> Iterator[Metric]:
    """Each endpoint's lane (``endpoint`` label; ``""`` is the single ``BRIEFD_BASE_URL``).

    The unlabelled series above stay the whole limiter's; these are per endpoint. The
    budgets in force (configured, or learned from the headers: ``learned`` says which)
    appear only for lanes that have one.
    """
    lanes = sorted(limiter.endpoints.items())
    if not lanes:
        return
    gauges: list[tuple[str, str, Callable[[EndpointStats], float]]] = [
        ("calls_in_flight", "API calls in flight.", lambda e: e.in_flight),
        ("token_waiting", "Stages waiting for a token.", lambda e: e.waiting),
        ("token_window", "Adaptive window W (calls allowed in flight).", lambda e: e.window),
        ("max_concurrent", "Its window's ceiling: min(max_concurrent, K).", lambda e: e.ceiling),
        ("rpm_lag_seconds", "How far its requests budget runs ahead.", lambda e: e.rpm_lag_s),
        ("tpm_lag_seconds", "How far its tokens budget runs ahead.", lambda e: e.tpm_lag_s),
        ("paused_seconds", "Left of a pause for remaining=0.", lambda e: e.paused_for_s),
        ("cooldown_seconds", "Left of a 429's Retry-After.", lambda e: e.cooling_down_for_s),
    ]
    for name, doc, value in gauges:
        family = GaugeMetricFamily(f"briefd_endpoint_{name}", doc, labels=["endpoint"])
        for endpoint, e in lanes:
            family.add_metric([endpoint], value(e))
        yield family
    counters: list[tuple[str, str, Callable[[EndpointStats], float]]] = [
        ("tokens_granted", "Tokens granted for calls to it.", lambda e: e.granted_total),
        ("limiter_pauses", "Its grant pauses (429, spent budget).", lambda e: e.pauses_total),
        ("rate_limited", "Its calls answered 429 or 503.", lambda e: e.rate_limited_total),
    ]
    for name, doc, value in counters:
        counter = CounterMetricFamily(f"briefd_endpoint_{name}", doc, labels=["endpoint"])
        for endpoint, e in lanes:
            counter.add_metric([endpoint], value(e))
        yield counter
    for unit, doc in (("rpm", "Requests"), ("tpm", "Tokens")):
        budget = GaugeMetricFamily(
            f"briefd_endpoint_{unit}",
            f"{doc} per minute it is paced to (configured, or learned from its headers).",
            labels=["endpoint", "learned"],
        )
        for endpoint, e in lanes:
            per_minute = e.rpm if unit == "rpm" else e.tpm
            learned = e.rpm_learned if unit == "rpm" else e.tpm_learned
            if per_minute is not None:
                budget.add_metric([endpoint, "true" if learned else "false"], per_minute)
        yield budget


def _cluster(root: RootStats, limiter: LimiterStats) -> Iterator[Metric]:
    """With PostgreSQL: the cluster's tokens and daemons, and this daemon's claims."""
    if root.cluster is None:
        return
    c = root.cluster
    if not isinstance(limiter, ClusterLimiterStats):
        return
    yield _gauge("cluster_tokens_in_use", "Tokens leased, every daemon's.", limiter.cluster_in_use)
    yield _gauge("cluster_token_waiting", "Requests waiting, all daemons.", limiter.cluster_waiting)
    yield _gauge("cluster_daemons", "Daemons heard from within the lease.", limiter.daemons)
    yield _gauge("cluster_database_up", "1 while the database answers.", limiter.db_problem is None)
    yield _gauge("claims_held", "Jobs this daemon holds a claim on.", c["claims_held"])
    yield _counter("jobs_claimed", "Jobs this daemon claimed.", c["claimed_total"])
    yield _counter("jobs_taken_over", "Claims taken from a dead daemon.", c["taken_over_total"])
    yield _counter("claims_lost", "Claims another daemon took.", c["claims_lost_total"])


def _guard_rails(root: RootStats) -> Iterator[Metric]:
    """The cost ledger, the daily budget and the automatic rollback's mode."""
    cost = CounterMetricFamily(
        "briefd_cost_usd",
        "USD spent since start (price table x reported usage), by model and stage.",
        labels=["model", "stage"],
    )
    for (model, stage), usd in sorted(root.cost_by_model_stage.items()):
        cost.add_metric([model, stage], usd)
    yield cost
    tokens = CounterMetricFamily(
        "briefd_llm_tokens",
        "Tokens the API reported since start, by model, stage and kind (input, output; "
        "cached is the part of input read from the prompt cache, reasoning the part of output "
        "the model spent thinking: do not add them to input and output).",
        labels=["model", "stage", "kind"],
    )
    for (model, stage, kind), n in sorted(root.tokens_by_model_stage.items()):
        tokens.add_metric([model, stage, kind], n)
    yield tokens
    yield _gauge("spent_today_usd", "USD spent since 00:00 UTC.", root.spent_today_usd)
    if root.daily_budget_usd is not None:
        yield _gauge("daily_budget_usd", "BRIEFD_DAILY_BUDGET_USD.", root.daily_budget_usd)
    yield _gauge(
        "budget_held", "1 while the spent daily budget holds new jobs queued.", root.budget_held
    )
    mode = GaugeMetricFamily(
        "briefd_parallel_mode",
        "1 for how new jobs run: parallel, sequential (rolled back) or probation.",
        labels=["mode", "reason"],
    )
    for name in ("parallel", "sequential", "probation"):
        mode.add_metric([name, root.mode_reason if name == root.mode else ""], name == root.mode)
    yield mode
    yield _counter("rollback_trips", "Automatic rollbacks to sequential.", root.rollback_trips)


class MetricsExporter:
    """One daemon's registry: ``render()`` is the body of ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, read: Callable[[], DaemonFigures]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_FiguresCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
