"""One lane per endpoint: each its own window, budgets, header pacing and 429 cool-down.

Two endpoints are two servers with two sets of limits: a 429 from one says
nothing about the other, and one's budget running dry must not hold calls that
would go to the other. So the limiter keeps a :class:`Lane` per endpoint name
(``RequestToken.endpoint``; ``''`` is the single endpoint of
``BRIEFD_BASE_URL``), each with its own :class:`~briefd.limits.pacing.Pacer`:

* **window**: AIMD between 1 and the lane's ceiling, ``min(max_concurrent, K)``;
* **budgets**: its configured ``rpm``/``tpm`` (the ``''`` lane takes
  ``BRIEFD_RPM``/``BRIEFD_TPM``), else the ones its server's headers imply
  (:mod:`briefd.limits.learn`); an endpoint nobody configured gets a lane with no
  configured budgets, so it learns them;
* **pause**: its server's ``remaining: 0``, and a 429's ``Retry-After``
  (``ReportRateLimit.endpoint``), pause that lane only.

The global ``BRIEFD_MAX_CONCURRENT`` (K) still caps the leases of all lanes
together. Stage latencies (which weigh the waiting order) are shared: a stage
is the same work whichever endpoint serves it.

Which waiting request goes next (:func:`Lanes.next_grant`): the first by
:func:`briefd.limits.fair.pick_fair` (the tenant by its fair share, then
:func:`briefd.limits.order.pick` within it) among the requests whose lane is open.
The fair share is one for all lanes (the K tokens are one budget); a cluster
keeps one per endpoint, in the row its rounds lock. When
that request's lane says "not yet" for its budget, the lane is closed for this
round, so its other requests do not pass it (a large prompt is not starved by
cheaper ones behind it), but requests for other lanes are not held back by it.
With one lane this is exactly the single queue it replaces.

Everything here is plain data inside ``LimiterState``, so a restarted limiter
keeps every lane's window, budgets, pause and cool-down.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from briefd.limits.fair import FairShare, pick_fair
from briefd.limits.order import Latencies, Waiting
from briefd.limits.pacing import Pacer


@dataclass(frozen=True)
class EndpointLimits:
    """One endpoint's own limits (``[[endpoints]]`` in ``BRIEFD_ENDPOINTS``); None: no limit.

    ``EndpointLimits(max_concurrent=8, rpm=500, tpm=200_000)``: at most 8 calls in flight
    (and never more than the global K), 500 requests and 200,000 tokens a minute.
    """

    max_concurrent: int | None = None
    rpm: float | None = None
    tpm: float | None = None


@dataclass(frozen=True)
class EndpointStats:
    """One lane's figures (``LimiterStats.endpoints``, ``/metrics`` with an ``endpoint`` label)."""

    endpoint: str
    ceiling: int  # min(max_concurrent, K)
    window: float  # W
    in_flight: int
    waiting: int
    granted_total: int
    rpm: float | None  # the requests budget in force (configured or learned), per minute
    tpm: float | None
    rpm_learned: bool  # rpm was learned from the headers, not configured
    tpm_learned: bool
    rpm_lag_s: float
    tpm_lag_s: float
    paused_for_s: float  # the server's remaining=0 until its reset
    cooling_down_for_s: float  # a 429's Retry-After
    pauses_total: int
    rate_limited_total: int


def ceiling_of(limits: EndpointLimits, capacity: int) -> int:
    """An endpoint's window ceiling: its ``max_concurrent``, never above the global K."""
    own = limits.max_concurrent
    return max(1, min(own, capacity)) if own else capacity


@dataclass
class Lane:
    """One endpoint's gates and figures."""

    name: str
    limits: EndpointLimits
    pacer: Pacer
    cooldown_until: float = 0.0  # a 429's Retry-After (the pacer's clock)
    in_flight: int = 0
    granted_total: int = 0

    def ceiling(self, capacity: int) -> int:
        """The lane's window ceiling under a global ``capacity`` (K)."""
        return ceiling_of(self.limits, capacity)

    def closed(self, now: float) -> bool:
        """Cooling down after a 429, or its window full (a timer or a release reopens it)."""
        return now < self.cooldown_until or self.in_flight >= self.pacer.window.limit

    def stats(self, capacity: int, waiting: int) -> EndpointStats:
        p, now = self.pacer, self.pacer.clock()
        window = p.window.w if p.window.adaptive else float(p.window.ceiling)
        rpm_lag, tpm_lag = p.lags()
        requests, tokens = p.requests, p.tokens
        return EndpointStats(
            endpoint=self.name,
            ceiling=self.ceiling(capacity),
            window=window,
            in_flight=self.in_flight,
            waiting=waiting,
            granted_total=self.granted_total,
            rpm=requests.per_minute if requests else None,
            tpm=tokens.per_minute if tokens else None,
            rpm_learned=p.rpm is None and requests is not None,
            tpm_learned=p.tpm is None and tokens is not None,
            rpm_lag_s=rpm_lag,
            tpm_lag_s=tpm_lag,
            paused_for_s=max(0.0, p.pause_until - now),
            cooling_down_for_s=max(0.0, self.cooldown_until - now),
            pauses_total=p.pauses,
            rate_limited_total=p.rate_limited,
        )


@dataclass
class Lanes:
    """Every endpoint's lane, made on first use; ``capacity`` is the global K."""

    capacity: int
    adaptive: bool = True
    configured: Mapping[str, EndpointLimits] = field(default_factory=dict)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    latencies: Latencies = field(default_factory=Latencies)
    by_name: dict[str, Lane] = field(default_factory=dict)
    share: FairShare = field(default_factory=FairShare)  # the tenants' fair share, all lanes'

    @classmethod
    def new(
        cls,
        capacity: int,
        endpoints: Mapping[str, EndpointLimits] | None = None,
        *,
        adaptive: bool = True,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Lanes:
        """The lanes of ``endpoints``, and the ``''`` lane with ``rpm``/``tpm`` (the settings'
        BRIEFD_RPM/TPM, unless ``endpoints`` names ``''`` with budgets of its own)."""
        configured = dict(endpoints or {})
        default = configured.get("", EndpointLimits())
        configured[""] = EndpointLimits(
            max_concurrent=default.max_concurrent,
            rpm=default.rpm if default.rpm is not None else rpm,
            tpm=default.tpm if default.tpm is not None else tpm,
        )
        lanes = cls(capacity=capacity, adaptive=adaptive, configured=configured, clock=clock)
        for name in configured:
            lanes.get(name)
        return lanes

    def get(self, name: str) -> Lane:
        """The lane of endpoint ``name``, made now if it is the first call to it."""
        lane = self.by_name.get(name)
        if lane is None:
            limits = self.configured.get(name, EndpointLimits())
            pacer = Pacer.new(
                ceiling_of(limits, self.capacity),
                adaptive=self.adaptive,
                rpm=limits.rpm,
                tpm=limits.tpm,
                clock=self.clock,
                learn=True,
                latencies=self.latencies,
            )
            lane = self.by_name[name] = Lane(name, limits, pacer)
        return lane

    def set_capacity(self, capacity: int) -> None:
        """A new K (SIGHUP's ``SetCapacity``): every lane's ceiling follows it."""
        self.capacity = capacity
        for lane in self.by_name.values():
            lane.pacer.window.set_ceiling(lane.ceiling(capacity))

    def next_grant(
        self, waiting: list[Waiting], in_use: int, wall: float
    ) -> tuple[int | None, float]:
        """The index in ``waiting`` of the request to grant now (None: none may go), and the
        seconds until a lane's budget opens (``inf``: no budget is what holds anything back).

        ``in_use`` counts the leases of every lane (the global K); ``wall`` is Unix time, the
        clock of ``admitted_at``.
        """
        wake = math.inf
        if in_use >= self.capacity or not waiting:
            return None, wake
        now = self.clock()
        shut = {name for name, lane in self.by_name.items() if lane.closed(now)}
        while True:
            if shut:
                open_ = [i for i, w in enumerate(waiting) if w.request.endpoint not in shut]
                if not open_:
                    return None, wake
                i = open_[pick_fair([waiting[j] for j in open_], wall, self.latencies, self.share)]
            else:
                i = pick_fair(waiting, wall, self.latencies, self.share)
            req = waiting[i].request
            lane = self.get(req.endpoint)
            if lane.closed(now):  # a lane made just now for an unknown endpoint is open
                shut.add(lane.name)
                continue
            delay = lane.pacer.delay(req.est_tokens)
            if delay <= 0:
                return i, wake
            wake = min(wake, delay)  # it waits for its budget; nobody of its lane passes it
            shut.add(lane.name)

    def stats(self, waiting: list[Waiting]) -> dict[str, EndpointStats]:
        """Every lane's figures, by endpoint name."""
        counts: dict[str, int] = {}
        for w in waiting:
            counts[w.request.endpoint] = counts.get(w.request.endpoint, 0) + 1
        return {
            name: lane.stats(self.capacity, counts.get(name, 0))
            for name, lane in sorted(self.by_name.items())
        }
