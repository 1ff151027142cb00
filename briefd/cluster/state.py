"""What a daemon's cluster limiter knows, kept apart from the actor so a successor takes it over.

The database holds the cluster's truth (waits, leases, window, budgets); a daemon
holds what only it can know: which of its actors each of its waits and leases
belongs to, and what it could not write yet because the database was out of
reach. That last part is an ordered **outbox** of operations (enqueue a request,
release a lease, withdraw a requester, a 429's cool-down, a new ceiling): every
message becomes an operation appended to it, and the outbox is written in order
whenever the database answers. So a release made while the database is down is
neither lost nor reordered behind a later request of the same stage, and the
actor never needs a second code path for "down".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from briefd.actors.rate_limiter import LimiterStats
from briefd.cluster.records import Beat, ClusterFigures, HeldLease
from briefd.limits.lanes import EndpointStats
from briefd.messages.token import Outcome, RateLimits, RequestToken


@dataclass(frozen=True)
class Queued:
    """A request of one of this daemon's actors, and when it arrived (monotonic s)."""

    request: RequestToken
    received_at: float


@dataclass(frozen=True)
class Enqueue:
    """Queue a request for the cluster."""

    queued: Queued


@dataclass(frozen=True)
class Release:
    """End a lease with its call's outcome."""

    lease: HeldLease
    outcome: Outcome
    elapsed_s: float
    used_tokens: int | None = None
    limits: RateLimits | None = None


@dataclass(frozen=True)
class Cancel:
    """Withdraw a requester's waits and leases."""

    requester: str
    endpoints: tuple[str, ...] = ()  # those of the leases it ends (their rounds run after)


@dataclass(frozen=True)
class CoolDown:
    """A 429: no grant anywhere before ``retry_after_s`` from when it is written."""

    job_id: str
    stage: str
    retry_after_s: float
    endpoint: str = ""


@dataclass(frozen=True)
class SetCeiling:
    """A new K for the cluster."""

    capacity: int


Op = Enqueue | Release | Cancel | CoolDown | SetCeiling


@dataclass(frozen=True)
class ClusterLimiterStats(LimiterStats):
    """:class:`LimiterStats` for this daemon (``in_use``: its calls in flight, which its
    shutdown waits for), with the cluster's figures beside them. ``endpoints`` has each
    endpoint's figures as the cluster's row for it holds them (in flight and waiting:
    every daemon's), as this daemon's last round on that endpoint read them."""

    cluster_in_use: int = 0  # live leases, every daemon's
    cluster_waiting: int = 0  # requests queued, every daemon's
    daemons: int = 0  # daemons seen within lease_s
    db_problem: str | None = None  # why the database cannot be used now (None: it can)
    held: int = 0  # operations waiting for the database


@dataclass
class ClusterLimiterState:
    """Only the live cluster limiter touches it; ``vacated`` is set when its owner has left."""

    capacity: int
    gate: Callable[[str], bool] | None = None  # job -> its claim is provable now (None: all are)
    waiting: dict[int, Queued] = field(default_factory=dict)  # wait_id -> request
    parked: list[Queued] = field(default_factory=list)  # requests of jobs whose claim is unproven
    leases: dict[int, HeldLease] = field(default_factory=dict)  # delivered, not yet released
    outbox: list[Op] = field(default_factory=list)  # not written yet, in order
    lanes: dict[str, ClusterFigures] = field(default_factory=dict)  # each endpoint, as last seen
    lanes_at: dict[str, float] = field(default_factory=dict)  # monotonic s when
    daemons: int = 0
    problem: str | None = None  # the database's last failure (None: it answered)
    beat_at: float = 0.0  # monotonic s: when the last heartbeat that went through was sent
    failures: int = 0  # attempts failed in a row (the retry backoff)
    retry_at: float = 0.0  # monotonic s: while it fails, no attempt before
    granted_total: int = 0  # this daemon's
    reclaimed_total: int = 0
    restarts: int = 0
    wake_at: float = 0.0  # a timer will Tick the limiter then
    wake_pending: threading.Event = field(default_factory=threading.Event)
    unread: list[Any] = field(default_factory=list)  # envelopes a dead limiter never read
    retired: bool = False  # its owner stopped it on purpose: nothing to hand over
    vacated: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.vacated.set()  # nobody holds a fresh state

    def pending(self) -> int:
        """Requests of this daemon not granted yet (queued in the database or held here)."""
        queued = sum(isinstance(op, Enqueue) for op in self.outbox)
        return len(self.waiting) + queued + len(self.parked)

    def health(self, lease_s: float) -> str | None:
        """Why this daemon cannot take part in the token budget now (None: it can); from
        memory, for ``/healthz``: the database failed, or no heartbeat went through for
        longer than the lease (the cluster may have reclaimed this daemon's tokens)."""
        if self.problem is not None:
            return f"the database is not answering: {self.problem}"
        late = time.monotonic() - self.beat_at
        if self.beat_at and late > lease_s:
            return f"its token leases were not renewed for {late:.1f}s (lease {lease_s:g}s)"
        return None

    def may_call(self, job_id: str) -> bool:
        """Whether a call of ``job_id`` may start now: its claim is provable (:attr:`gate`)."""
        return self.gate is None or self.gate(job_id)

    def forget(self, requester: str) -> list[HeldLease]:
        """Drop ``requester``'s requests (held or queued) and leases; the leases it held."""
        self.outbox = [
            op
            for op in self.outbox
            if not (isinstance(op, Enqueue) and op.queued.request.requester == requester)
        ]
        self.waiting = {k: q for k, q in self.waiting.items() if q.request.requester != requester}
        self.parked = [q for q in self.parked if q.request.requester != requester]
        held = [x for x in self.leases.values() if x.requester == requester]
        for lease in held:
            del self.leases[lease.lease_id]
        return held

    def reconcile(self, beat: Beat) -> tuple[int, int]:
        """After a heartbeat: requests the cluster reaped (this daemon was not heard from for
        ``lease_s``) go back to the outbox to be queued again. Returns (requests queued
        again, leases of calls in flight the cluster reclaimed)."""
        self.daemons = beat.daemons
        lost = [w for w in self.waiting if w not in beat.waits and w not in beat.granted_waits]
        for wait_id in lost:
            self.outbox.append(Enqueue(self.waiting.pop(wait_id)))
        return len(lost), sum(1 for x in self.leases if x not in beat.leases)

    @property
    def figures(self) -> ClusterFigures | None:
        """The endpoint seen last (its cluster-wide counts are the newest)."""
        if not self.lanes:
            return None
        return self.lanes[max(self.lanes_at, key=lambda e: self.lanes_at[e])]

    def seen(self, fig: ClusterFigures) -> None:
        """Keep an endpoint's figures, as a round just read them."""
        self.lanes[fig.endpoint] = fig
        self.lanes_at[fig.endpoint] = time.monotonic()
        self.capacity = fig.capacity

    def endpoint_stats(self) -> dict[str, EndpointStats]:
        """Each endpoint's figures as last seen (times aged since then): the cluster's, every
        daemon's leases and requests on it, as its row in the database holds them."""
        now = time.monotonic()
        out = {}
        for name, fig in sorted(self.lanes.items()):
            ago = now - self.lanes_at[name]
            out[name] = EndpointStats(
                endpoint=name,
                ceiling=fig.ceiling or fig.capacity,
                window=fig.window,
                in_flight=fig.in_use,
                waiting=fig.waiting,
                granted_total=fig.granted_total,
                rpm=fig.rpm,
                tpm=fig.tpm,
                rpm_learned=False,  # the cluster's rows keep no learned budget
                tpm_learned=False,
                rpm_lag_s=max(0.0, fig.rpm_lag_s - ago),
                tpm_lag_s=max(0.0, fig.tpm_lag_s - ago),
                paused_for_s=max(0.0, fig.paused_for_s - ago),
                cooling_down_for_s=max(0.0, fig.cooling_for_s - ago),
                pauses_total=fig.pauses,
                rate_limited_total=fig.rate_limited,
            )
        return out

    def stats(self) -> ClusterLimiterStats:
        """This daemon's figures and the cluster's as last seen (times aged since then); the
        whole limiter's as the local limiter sums its lanes (window: summed, at most K;
        waits and lags: the longest endpoint's)."""
        fig = self.figures
        each = self.endpoint_stats()
        lanes = each.values()
        return ClusterLimiterStats(
            capacity=self.capacity,
            in_use=len(self.leases),
            waiting=self.pending(),
            granted_total=self.granted_total,
            reclaimed_total=self.reclaimed_total,
            cooling_down_for_s=max((x.cooling_down_for_s for x in lanes), default=0.0),
            restarts=self.restarts,
            window=min(float(self.capacity), sum(x.window for x in lanes))
            if each
            else float(self.capacity),
            in_flight=len(self.leases),
            rpm_lag_s=max((x.rpm_lag_s for x in lanes), default=0.0),
            tpm_lag_s=max((x.tpm_lag_s for x in lanes), default=0.0),
            paused_for_s=max((x.paused_for_s for x in lanes), default=0.0),
            pauses_total=sum(x.pauses_total for x in lanes),
            rate_limited_total=sum(x.rate_limited_total for x in lanes),
            endpoints=each,
            cluster_in_use=fig.cluster_in_use if fig else 0,
            cluster_waiting=fig.cluster_waiting if fig else 0,
            daemons=self.daemons,
            db_problem=self.problem,
            held=len(self.outbox),
        )
