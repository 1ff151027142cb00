"""Which waiting request gets the next token: oldest job first, critical path within a job.

Under a backlog, serving requests by DAG path length across jobs starts new
jobs' first stages ahead of old jobs' last ones, so every job finishes late.
Serving the *oldest admitted job* first leaves the makespan unchanged and
roughly halves mean job latency (100 jobs, 2 tokens, the seed DAG: 6.4 s
against 12.0 s). The rule, in order:

1. the higher *effective priority*: the job's ``priority`` (JobSpec, default 0)
   plus one level per :data:`PRIORITY_AGING_S` since the job was admitted.
   **No starvation:** every job gains levels at the same rate, so a job admitted
   ``PRIORITY_AGING_S x d`` seconds before another outranks it even if its
   priority is ``d`` lower: a low-priority job waits at most about
   ``PRIORITY_AGING_S x (priority gap + 1)`` behind later arrivals;
2. the job admitted earliest;
3. within a job, the stage with the longest remaining path, each stage on it
   weighted by its learned latency (:class:`Latencies`; the pipeline's
   unweighted path length when nothing is known);
4. arrival order.

The limiter scans its waiting list (at most a few stages per active job) on
each grant: the key depends on the clock, so a heap could not hold it. The scan
compares only the cheap part of the key (effective priority, admission time);
the latency-weighted path is walked only for the requests tied on it, the
stages of one job. Walking it for every waiting request was the limiter's
largest cost (17 % of briefd's CPU at 100 jobs, K=16), on the one thread every
grant waits for.

Admission times are wall-clock (Unix) seconds of the job's *submission*, so a
job resumed after a restart keeps its place, and ``now`` is on the same clock
(``time.time()``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from briefd.messages.token import RequestToken

PRIORITY_AGING_S = 30.0
LATENCY_ALPHA = 0.2
"""Weight of the newest sample in a stage's latency moving average."""


@dataclass
class Latencies:
    """An exponential moving average of call latency per stage name, across jobs."""

    seconds: dict[str, float] = field(default_factory=dict)

    def observe(self, stage: str, seconds: float) -> None:
        old = self.seconds.get(stage)
        self.seconds[stage] = seconds if old is None else old + LATENCY_ALPHA * (seconds - old)

    def of(self, stage: str) -> float:
        """A stage's latency; unknown stages weigh the mean of the known, or 1.0."""
        if stage in self.seconds:
            return self.seconds[stage]
        if self.seconds:
            return sum(self.seconds.values()) / len(self.seconds)
        return 1.0

    def remaining(self, stage: str, downstream: dict[str, list[str]]) -> float:
        """The longest latency-weighted path from ``stage`` to its job's end, itself included."""
        memo: dict[str, float] = {}

        def walk(name: str, depth: int) -> float:
            if name in memo:
                return memo[name]
            if depth > len(downstream) + 1:  # a cycle: a bad message, not worth a recursion
                return 0.0
            after = [walk(n, depth + 1) for n in downstream.get(name, [])]
            memo[name] = self.of(name) + max(after, default=0.0)
            return memo[name]

        return walk(stage, 0)


@dataclass(frozen=True)
class Waiting:
    """One queued request and when it was queued (monotonic s, unlike ``admitted_at``)."""

    seq: int
    request: RequestToken
    queued_at: float


def _job_key(req: RequestToken, now: float) -> tuple[float, float]:
    """The first two parts of :func:`rank`: the effective priority (negated) and admission."""
    age = max(0.0, now - req.admitted_at) if req.admitted_at > 0 else 0.0
    return (-(req.job_priority + math.floor(age / PRIORITY_AGING_S)), req.admitted_at)


def rank(w: Waiting, now: float, latencies: Latencies) -> tuple[float, ...]:
    """The sort key (smallest is served first); ``now`` is Unix time, as ``admitted_at``."""
    req = w.request
    # Without a graph (an older sender), the stage's unweighted path length.
    path = latencies.remaining(req.stage, req.downstream) if req.downstream else float(req.priority)
    return (*_job_key(req, now), -path, w.seq)


def pick(waiting: list[Waiting], now: float, latencies: Latencies) -> int:
    """The index in ``waiting`` (non-empty) of the request to serve next: the least
    :func:`rank`, with the path walked only among the requests tied on the job's part."""
    best: tuple[float, float] | None = None
    tied: list[int] = []
    for i, w in enumerate(waiting):
        key = _job_key(w.request, now)
        if best is None or key < best:
            best, tied = key, [i]
        elif key == best:
            tied.append(i)
    if len(tied) == 1:
        return tied[0]
    return min(tied, key=lambda i: rank(waiting[i], now, latencies))


def downstream_graph(depends_on: Mapping[str, Sequence[str]], stage: str) -> dict[str, list[str]]:
    """``stage`` and every stage after it, each with its direct dependents (from each stage's
    ``depends_on``): what a ``RequestToken`` carries so the limiter can weigh the path."""
    dependents: dict[str, list[str]] = {n: [] for n in depends_on}
    for name, deps in depends_on.items():
        for d in deps:
            dependents.setdefault(d, []).append(name)
    out: dict[str, list[str]] = {}
    todo = [stage]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = list(dependents.get(name, []))
        todo.extend(out[name])
    return out
