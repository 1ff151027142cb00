"""The metrics actor: timings and counts across every job this process ran.

Coordinators publish events; this actor is one of their observers (``tell``)
and keeps running aggregates: stage latencies, group and total times,
speed-ups, retries, timeouts and errors by code, tokens in use. Readers
outside the actor system ``ask`` for :meth:`MetricsActor.snapshot` with a
timeout.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from briefd.latency import work_ms
from briefd.messages import (
    EndpointCircuitChanged,
    ErrorCode,
    Event,
    JobCompleted,
    StageFailed,
    StageFailedOver,
    StageRetrying,
    StageSucceeded,
    TokenGranted,
    TokenReleased,
)
from briefd.threads import LeanThreadingActor

AGGREGATED = (
    StageSucceeded,
    StageFailed,
    StageRetrying,
    TokenGranted,
    TokenReleased,
    JobCompleted,
    StageFailedOver,
    EndpointCircuitChanged,
)
"""The events :class:`MetricsActor` counts; the rest it would only read and drop."""
SAMPLES = 2048
STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds of the stage-latency histogram (seconds), as ``/metrics`` exposes it."""
SHORT_BUCKETS_S = (0.005, 0.01, 0.025, *STAGE_BUCKETS_S)
"""The same, finer at the start: time to first token and queue time are often short."""
CLOCKS = ("call", "ttft", "queued")
"""The clocks kept per stage besides its wall time (:mod:`briefd.latency`): ``call`` is the
stage's calls as the server measured them where it did (``JobMetrics.stages_ms``), ``ttft``
its last call's time to first token (streamed), ``queued`` its wait for execution tokens."""


def percentile(values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class LatencySummary:
    """p50/p95/max of one series, in milliseconds."""

    count: int
    p50_ms: float
    p95_ms: float
    max_ms: float

    @classmethod
    def of(cls, values: list[int]) -> LatencySummary:
        if not values:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(len(values), percentile(values, 50), percentile(values, 95), float(max(values)))


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts since start (Prometheus style): ``counts[i]`` is samples <= ``bounds[i]``.

    Unlike the percentiles, which cover the last :data:`SAMPLES` values, these
    only ever grow, so a scraper can compute rates.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum_s: float


class _HistogramCounter:
    """The mutable twin of :class:`Histogram`, owned by the metrics actor."""

    def __init__(self, bounds: tuple[float, ...] = STAGE_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.sum_s += seconds
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.counts[i] += 1

    def freeze(self) -> Histogram:
        return Histogram(self.bounds, tuple(self.counts), self.count, round(self.sum_s, 6))


@dataclass(frozen=True)
class MetricsSnapshot:
    """Aggregates at one moment."""

    jobs_by_status: dict[str, int]
    stage_latency: dict[str, LatencySummary]
    parallel_group: LatencySummary
    sequential_group: LatencySummary
    total: LatencySummary
    mean_speedup: float
    stage_calls: int
    retries: int
    timeouts: int
    errors_by_code: dict[str, int]
    tokens_in_use: int
    usage_tokens: dict[str, int] = field(default_factory=dict)
    stage_histograms: dict[str, Histogram] = field(default_factory=dict)
    served_by: dict[str, int] = field(default_factory=dict)
    """Documents per ``endpoint:model`` that produced them."""
    failovers: dict[tuple[str, str], int] = field(default_factory=dict)
    """Stages moved from one endpoint to another: ``(from, to)`` -> count."""
    circuits: dict[str, str] = field(default_factory=dict)
    """Each endpoint's breaker state, as last changed (absent: never opened: closed)."""
    clocks: dict[str, dict[str, LatencySummary]] = field(default_factory=dict)
    """Per clock of :data:`CLOCKS`, per stage: p50/p95/max of succeeded stages (the last
    :data:`SAMPLES`). ``stage_latency`` above stays each stage's wall time."""
    clock_histograms: dict[str, dict[str, Histogram]] = field(default_factory=dict)
    """Per clock of :data:`CLOCKS`, per stage: cumulative histograms since start."""


class MetricsActor(LeanThreadingActor):
    """Aggregates the events it is told."""

    def __init__(self) -> None:
        super().__init__()
        self._stage_ms: dict[str, deque[int]] = defaultdict(lambda: deque(maxlen=SAMPLES))
        self._parallel: deque[int] = deque(maxlen=SAMPLES)
        self._sequential: deque[int] = deque(maxlen=SAMPLES)
        self._total: deque[int] = deque(maxlen=SAMPLES)
        self._speedups: deque[float] = deque(maxlen=SAMPLES)
        self._jobs: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._usage: Counter[str] = Counter()
        self._calls = 0
        self._retries = 0
        self._tokens_in_use = 0
        self._histograms: dict[str, _HistogramCounter] = defaultdict(_HistogramCounter)
        self._served: Counter[str] = Counter()
        self._failovers: Counter[tuple[str, str]] = Counter()
        self._circuits: dict[str, str] = {}
        self._clocks: dict[str, dict[str, deque[int]]] = {c: {} for c in CLOCKS}
        self._clock_hists: dict[str, dict[str, _HistogramCounter]] = {c: {} for c in CLOCKS}

    def on_receive(self, message: Any) -> Any:
        match message:
            case StageSucceeded(stage=stage, elapsed_ms=ms, attempts=n, usage=u):
                self._stage_ms[stage].append(ms)
                self._histograms[stage].observe(ms / 1000)
                self._calls += n
                self._usage["prompt_tokens"] += u.prompt_tokens
                self._usage["completion_tokens"] += u.completion_tokens
                self._usage["cached_tokens"] += u.cached_tokens
                self._usage["reasoning_tokens"] += u.reasoning_tokens
                if message.served_by:
                    self._served[message.served_by] += 1
                self._clock(stage, "call", work_ms(message.call_ms, message.server_ms))
                self._clock(stage, "ttft", message.ttft_ms)
                self._clock(stage, "queued", message.queued_ms)
            case StageFailedOver(from_route=a, to_route=b):
                self._failovers[(a.partition(":")[0], b.partition(":")[0])] += 1
            case EndpointCircuitChanged(endpoint=endpoint, state=state):
                self._circuits[endpoint] = state
            case StageFailed(error=e, attempts=n):
                self._errors[e.code.value] += 1
                self._calls += n
            case StageRetrying(reason=r):
                self._retries += 1
                self._errors[r.code.value] += 1
            case TokenGranted(in_use=n) | TokenReleased(in_use=n):
                self._tokens_in_use = n
            case JobCompleted(result=r):
                self._jobs[r.status.value] += 1
                self._parallel.append(r.metrics.parallel_group_ms)
                self._sequential.append(r.metrics.sequential_group_ms)
                self._total.append(r.metrics.total_ms)
                self._speedups.append(r.metrics.speedup_ratio)
        return None

    def _clock(self, stage: str, clock: str, ms: int | None) -> None:
        if ms is None:
            return
        series = self._clocks[clock].setdefault(stage, deque(maxlen=SAMPLES))
        series.append(ms)
        hists = self._clock_hists[clock]
        hists.setdefault(stage, _HistogramCounter(SHORT_BUCKETS_S)).observe(ms / 1000)

    def snapshot(self) -> MetricsSnapshot:
        """The aggregates now (``ask`` it through a proxy, with a timeout)."""
        return MetricsSnapshot(
            jobs_by_status=dict(self._jobs),
            stage_latency={k: LatencySummary.of(list(v)) for k, v in self._stage_ms.items()},
            parallel_group=LatencySummary.of(list(self._parallel)),
            sequential_group=LatencySummary.of(list(self._sequential)),
            total=LatencySummary.of(list(self._total)),
            mean_speedup=round(sum(self._speedups) / len(self._speedups), 3)
            if self._speedups
            else 0.0,
            stage_calls=self._calls,
            retries=self._retries,
            timeouts=self._errors.get(ErrorCode.TIMEOUT.value, 0),
            errors_by_code=dict(self._errors),
            tokens_in_use=self._tokens_in_use,
            usage_tokens=dict(self._usage),
            stage_histograms={k: v.freeze() for k, v in self._histograms.items()},
            served_by=dict(self._served),
            failovers=dict(self._failovers),
            circuits=dict(self._circuits),
            clocks={
                c: {k: LatencySummary.of(list(v)) for k, v in by_stage.items()}
                for c, by_stage in self._clocks.items()
            },
            clock_histograms={
                c: {k: h.freeze() for k, h in by_stage.items()}
                for c, by_stage in self._clock_hists.items()
            },
        )


def metrics_observer(ref: pykka.ActorRef[Any]) -> Callable[[Event], None]:
    """An observer that tells ``ref`` only the events it aggregates (:data:`AGGREGATED`).

    Every other event (stage starts, progress, job starts, latency tables: about
    half of what a job publishes) cost the publisher a tell and the metrics
    actor a wake-up, for nothing.
    """

    def observe(event: Event) -> None:
        if isinstance(event, AGGREGATED):
            ref.tell(event)

    return observe
