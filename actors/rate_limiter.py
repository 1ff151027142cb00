"""The rate limiter: a sack of execution tokens, handed out by message, and its supervisor.

It never blocks. ``RequestToken`` joins a queue; ``TokenGranted`` is told to
the requester when a token is free. Waiting requests are served longest
remaining DAG path first (so the critical path is never held up by a stage
nothing waits for), then in arrival order.

A token is a lease: if its holder dies without ``ReleaseToken``, a periodic
check reclaims it. A 429 from the API (``ReportRateLimit``) pauses all grants
until the server's ``Retry-After`` has passed: the limit is the server's, not
one stage's.

Surviving its own death. One limiter serves every job of a process, so if it
died every stage waiting for a token would wait forever. Two walls:

* At its edge, :meth:`RateLimiterActor.on_receive` catches what a handler
  raises (a bug, a bad message): logged, the message dropped, the limiter
  goes on. A bad message cannot kill it.
* A real death (stopped by mistake, or a ``BaseException``) is noticed by its
  owner through :class:`LimiterSupervisor`, which the owner (``Pipeline``, the
  daemon) holds in place of a bare ``ActorRef``: every ``tell`` to a dead
  limiter starts a successor first, and the owner's watch loop calls
  :meth:`LimiterSupervisor.check` so a death is noticed even when nobody tells.

The successor takes over the predecessor's :class:`LimiterState`: the leases
(calls still in flight), the waiting requests, the cool-down, and the messages
left unread in the dead inbox. We chose this over asking stages to re-register
because a stage holding a token is blocked in its HTTP call and could not
answer until the call ended, so a successor that started empty would hand out
``capacity`` fresh tokens while the old calls were still in flight, breaking
the cap the API is paid by. Leases are the limiter's own records; keeping them
means the cap holds across a restart by construction, and a lease whose holder
died is reaped as before. The state is never shared by two live limiters: the
successor waits (briefly, bounded) until the predecessor has left it. One gap
remains, in pykka itself: a ``tell`` that found the limiter alive but landed
after its inbox was handed over is lost; a stage whose request it was would wait
until its job is cancelled. Its window is a few instructions wide.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
TAKEOVER_WAIT_S = 5.0
"""How long a successor waits for a dying predecessor to leave the state (it takes micro-
seconds: the predecessor's ``on_stop`` moving its unread messages)."""
RESTARTS_PER_MINUTE = 5
"""A limiter that dies more often than this is left dead (a loop of restarts helps nobody)."""


class LimiterRef(Protocol):
    """What stages and coordinators need of a limiter: somewhere to ``tell`` token messages.

    A limiter's ``ActorRef`` is one; so is :class:`LimiterSupervisor`.
    """

    def tell(self, message: Any) -> None: ...


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
    restarts: int = 0


@dataclass
class LimiterState:
    """Everything a limiter knows, apart from the actor so that a successor can take it over.

    Only the live limiter touches it; ``vacated`` is set when its owner has left it.
    """

    capacity: int
    leases: dict[int, Lease] = field(default_factory=dict)
    waiting: list[tuple[int, int, RequestToken, float]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    lease_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    cooldown_until: float = 0.0
    granted_total: int = 0
    reclaimed_total: int = 0
    restarts: int = 0
    unread: list[Any] = field(default_factory=list)  # envelopes a dead limiter never read
    retired: bool = False  # its owner stopped it on purpose: nothing to hand over
    vacated: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.vacated.set()  # nobody holds a fresh state


class RateLimiterActor(pykka.ThreadingActor):
    """Hands out ``capacity`` execution tokens (default 2)."""

    def __init__(
        self,
        capacity: int = 2,
        observers: Sequence[Observer] = (),
        state: LimiterState | None = None,
    ) -> None:
        super().__init__()
        self._s = state if state is not None else LimiterState(capacity=capacity)
        self._observers = tuple(observers)
        self._timers = Timers()

    def on_start(self) -> None:
        s = self._s
        if not s.vacated.wait(TAKEOVER_WAIT_S):
            logger.error("rate limiter: the previous limiter did not leave its state; taking it")
        s.vacated = threading.Event()
        try:
            unread, s.unread = s.unread, []
            for envelope in unread:  # in the order they were sent to the dead one
                self.actor_inbox.put(envelope)
            self._timers.every(self.actor_ref, REAP_PERIOD_S, Tick())
        except BaseException:  # pykka calls no on_stop after a failed on_start
            s.vacated.set()
            raise

    def on_stop(self) -> None:
        self._leave()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._leave()

    def _leave(self) -> None:
        """Close the timers and hand what is left in the inbox to a successor."""
        self._timers.close()
        s = self._s
        if not s.retired:
            while not self.actor_inbox.empty():
                s.unread.append(self.actor_inbox.get())
        s.vacated.set()

    def on_receive(self, message: object) -> object:
        try:
            self._handle(message)
        except Exception as err:  # the edge: a bad message must not take every job down
            logger.opt(exception=err).error(
                "rate limiter: dropped {} after {!r}", type(message).__name__, err
            )
        try:
            self._grant()
        except Exception as err:
            logger.opt(exception=err).error("rate limiter: granting failed: {!r}", err)
        return None

    def _handle(self, message: object) -> None:
        s = self._s
        match message:
            case RequestToken():
                heapq.heappush(
                    s.waiting, (-message.priority, next(s.seq), message, time.monotonic())
                )
            case ReleaseToken(lease_id=lease_id):
                lease = s.leases.pop(lease_id, None)
                if lease is not None:
                    self._released(lease, reclaimed=False)
            case CancelTokenRequest(requester=urn):
                s.waiting = [w for w in s.waiting if w[2].requester != urn]
                heapq.heapify(s.waiting)
                for lease in [x for x in s.leases.values() if x.requester == urn]:
                    del s.leases[lease.lease_id]
                    self._released(lease, reclaimed=False)
            case ReportRateLimit():
                self._cool_down(message)
            case SetCapacity(capacity=c):
                logger.info("token capacity {} -> {}", s.capacity, c)
                s.capacity = c
            case Tick():
                self._reap()
            case _:
                logger.warning("rate limiter: unexpected message {!r}", type(message).__name__)

    def stats(self) -> LimiterStats:
        """Current figures (call through ``proxy()`` from outside, with a timeout)."""
        s = self._s
        return LimiterStats(
            capacity=s.capacity,
            in_use=len(s.leases),
            waiting=len(s.waiting),
            granted_total=s.granted_total,
            reclaimed_total=s.reclaimed_total,
            cooling_down_for_s=max(0.0, s.cooldown_until - time.monotonic()),
            restarts=s.restarts,
        )

    def _grant(self) -> None:
        s = self._s
        if time.monotonic() < s.cooldown_until:
            return
        while s.waiting and len(s.leases) < s.capacity:
            _, _, req, queued_at = heapq.heappop(s.waiting)
            ref = pykka.ActorRegistry.get_by_urn(req.requester)
            if ref is None:
                continue  # the requester died while waiting
            lease = Lease(next(s.lease_ids), req.job_id, req.stage, req.requester, time.monotonic())
            s.leases[lease.lease_id] = lease
            s.granted_total += 1
            granted = TokenGranted(
                job_id=req.job_id,
                stage=req.stage,
                lease_id=lease.lease_id,
                in_use=len(s.leases),
                capacity=s.capacity,
                waiting=len(s.waiting),
                waited_ms=int((lease.granted_at - queued_at) * 1000),
            )
            try:
                ref.tell(granted)
            except pykka.ActorDeadError:
                del s.leases[lease.lease_id]
                continue
            publish(granted, self._observers)

    def _released(self, lease: Lease, *, reclaimed: bool) -> None:
        s = self._s
        if reclaimed:
            s.reclaimed_total += 1
        publish(
            TokenReleased(
                job_id=lease.job_id,
                stage=lease.stage,
                lease_id=lease.lease_id,
                in_use=len(s.leases),
                capacity=s.capacity,
                waiting=len(s.waiting),
                reclaimed=reclaimed,
            ),
            self._observers,
        )

    def _reap(self) -> None:
        for lease in list(self._s.leases.values()):
            if pykka.ActorRegistry.get_by_urn(lease.requester) is None:
                del self._s.leases[lease.lease_id]
                self._released(lease, reclaimed=True)

    def _cool_down(self, msg: ReportRateLimit) -> None:
        until = time.monotonic() + msg.retry_after_s
        if until <= self._s.cooldown_until:
            return
        self._s.cooldown_until = until
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


class LimiterSupervisor:
    """The owner's handle on its limiter: restarts a dead one, with its state, on first need.

    pykka has no supervision, so this is it. Thread-safe: stages ``tell`` from
    their threads, the owner calls :meth:`check` from its watch loop and
    :meth:`proxy` for figures. After :meth:`stop` nothing is restarted.
    """

    def __init__(self, capacity: int, observers: Sequence[Observer] = ()) -> None:
        self._observers = tuple(observers)
        self._state = LimiterState(capacity=capacity)
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()
        self._stopped = False
        self._ref: pykka.ActorRef[RateLimiterActor] = RateLimiterActor.start(
            observers=self._observers, state=self._state
        )

    @property
    def ref(self) -> pykka.ActorRef[RateLimiterActor]:
        """The current limiter (may be dead until the next :meth:`check` or ``tell``)."""
        return self._ref

    def tell(self, message: Any) -> None:
        """Tell the limiter, starting a successor first if it died (ActorDeadError if stopped)."""
        ref = self._ref
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            self._revive(ref).tell(message)

    def proxy(self) -> pykka.ActorProxy[RateLimiterActor]:
        """The live limiter's proxy, for ``stats()`` with a timeout."""
        ref = self._ref
        if not ref.is_alive():
            ref = self._revive(ref)
        return ref.proxy()

    def check(self) -> bool:
        """The owner's watch: restart a dead limiter. True if it is alive afterwards."""
        ref = self._ref
        if ref.is_alive():
            return True
        with contextlib.suppress(pykka.ActorDeadError):
            return self._revive(ref).is_alive()
        return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop for good (no successor), waiting up to ``timeout_s``."""
        with self._lock:
            self._stopped = True
            self._state.retired = True
            ref = self._ref
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            ref.stop(block=True, timeout=timeout_s)

    def _revive(self, dead: pykka.ActorRef[RateLimiterActor]) -> pykka.ActorRef[RateLimiterActor]:
        with self._lock:
            if self._ref is not dead:  # another thread got there first
                return self._ref
            if self._stopped:
                raise pykka.ActorDeadError("the rate limiter was stopped")
            now = time.monotonic()
            while self._recent and now - self._recent[0] > 60.0:
                self._recent.popleft()
            if len(self._recent) >= RESTARTS_PER_MINUTE:
                raise pykka.ActorDeadError("the rate limiter keeps dying; not restarted")
            self._recent.append(now)
            self._state.restarts += 1
            s = self._state
            logger.error(
                "rate limiter died; restarting it with its {} lease(s) and {} waiting request(s)",
                len(s.leases),
                len(s.waiting),
            )
            self._ref = RateLimiterActor.start(observers=self._observers, state=self._state)
            return self._ref
