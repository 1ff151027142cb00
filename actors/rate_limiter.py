"""The rate limiter: a sack of execution tokens, handed out by message.

It never blocks. ``RequestToken`` joins a queue; ``TokenGranted`` is told to
the requester when a token is free. Waiting requests are served longest
remaining DAG path first (so the critical path is never held up by a stage
nothing waits for), then in arrival order.

A token is a lease: if its holder dies without ``ReleaseToken``, a periodic
check reclaims it. A 429 from the API (``ReportRateLimit``) pauses all grants
until the server's ``Retry-After`` has passed: the limit is the server's, not
one stage's.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pykka
from loguru import logger

from briefd.messages import (
    CancelTokenRequest,
    RateLimitCooldown,
    ReleaseToken,
    ReportRateLimit,
    RequestToken,
    SetCapacity,
    TokenGranted,
    TokenReleased,
)
from briefd.messages.jobs import Tick
from briefd.ops.events import Observer, publish
from briefd.timers import Timers

REAP_PERIOD_S = 0.5


@dataclass(frozen=True)
class Lease:
    """One token on loan."""

    lease_id: int
    job_id: str
    stage: str
    requester: str
    granted_at: float


@dataclass(frozen=True)
class LimiterStats:
    """A snapshot for ``ask``-ers outside the actor system (tests, /metrics)."""

    capacity: int
    in_use: int
    waiting: int
    granted_total: int
    reclaimed_total: int
    cooling_down_for_s: float


class RateLimiterActor(pykka.ThreadingActor):
    """Hands out ``capacity`` execution tokens (default 2)."""

    def __init__(self, capacity: int = 2, observers: Sequence[Observer] = ()) -> None:
        super().__init__()
        self._capacity = capacity
        self._observers = tuple(observers)
        self._leases: dict[int, Lease] = {}
        self._waiting: list[tuple[int, int, RequestToken, float]] = []
        self._seq = itertools.count()
        self._lease_ids = itertools.count(1)
        self._cooldown_until = 0.0
        self._granted_total = 0
        self._reclaimed_total = 0
        self._timers = Timers()

    def on_start(self) -> None:
        self._timers.every(self.actor_ref, REAP_PERIOD_S, Tick())

    def on_stop(self) -> None:
        self._timers.close()

    def on_receive(self, message: object) -> object:
        match message:
            case RequestToken():
                heapq.heappush(
                    self._waiting,
                    (-message.priority, next(self._seq), message, time.monotonic()),
                )
            case ReleaseToken(lease_id=lease_id):
                lease = self._leases.pop(lease_id, None)
                if lease is not None:
                    self._released(lease, reclaimed=False)
            case CancelTokenRequest(requester=urn):
                self._waiting = [w for w in self._waiting if w[2].requester != urn]
                heapq.heapify(self._waiting)
                for lease in [x for x in self._leases.values() if x.requester == urn]:
                    del self._leases[lease.lease_id]
                    self._released(lease, reclaimed=False)
            case ReportRateLimit():
                self._cool_down(message)
            case SetCapacity(capacity=c):
                logger.info("token capacity {} -> {}", self._capacity, c)
                self._capacity = c
            case Tick():
                self._reap()
            case _:
                logger.warning("rate limiter: unexpected message {!r}", type(message).__name__)
        self._grant()
        return None

    def stats(self) -> LimiterStats:
        """Current figures (call through ``proxy()`` from outside, with a timeout)."""
        return LimiterStats(
            capacity=self._capacity,
            in_use=len(self._leases),
            waiting=len(self._waiting),
            granted_total=self._granted_total,
            reclaimed_total=self._reclaimed_total,
            cooling_down_for_s=max(0.0, self._cooldown_until - time.monotonic()),
        )

    def _grant(self) -> None:
        if time.monotonic() < self._cooldown_until:
            return
        while self._waiting and len(self._leases) < self._capacity:
            _, _, req, queued_at = heapq.heappop(self._waiting)
            ref = pykka.ActorRegistry.get_by_urn(req.requester)
            if ref is None:
                continue  # the requester died while waiting
            lease = Lease(
                next(self._lease_ids), req.job_id, req.stage, req.requester, time.monotonic()
            )
            self._leases[lease.lease_id] = lease
            self._granted_total += 1
            granted = TokenGranted(
                job_id=req.job_id,
                stage=req.stage,
                lease_id=lease.lease_id,
                in_use=len(self._leases),
                capacity=self._capacity,
                waiting=len(self._waiting),
                waited_ms=int((lease.granted_at - queued_at) * 1000),
            )
            try:
                ref.tell(granted)
            except pykka.ActorDeadError:
                del self._leases[lease.lease_id]
                continue
            publish(granted, self._observers)

    def _released(self, lease: Lease, *, reclaimed: bool) -> None:
        if reclaimed:
            self._reclaimed_total += 1
        publish(
            TokenReleased(
                job_id=lease.job_id,
                stage=lease.stage,
                lease_id=lease.lease_id,
                in_use=len(self._leases),
                capacity=self._capacity,
                waiting=len(self._waiting),
                reclaimed=reclaimed,
            ),
            self._observers,
        )

    def _reap(self) -> None:
        for lease in list(self._leases.values()):
            if pykka.ActorRegistry.get_by_urn(lease.requester) is None:
                del self._leases[lease.lease_id]
                self._released(lease, reclaimed=True)

    def _cool_down(self, msg: ReportRateLimit) -> None:
        until = time.monotonic() + msg.retry_after_s
        if until <= self._cooldown_until:
            return
        self._cooldown_until = until
        publish(
            RateLimitCooldown(
                job_id=msg.job_id,
                stage=msg.stage,
                retry_after_s=msg.retry_after_s,
                until=time.time() + msg.retry_after_s,
            ),
            self._observers,
        )
        self._timers.tell_later(self.actor_ref, msg.retry_after_s, Tick())
