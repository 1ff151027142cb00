"""The rate limiter: a sack of execution tokens, handed out by message.

It never blocks. ``RequestToken`` joins a queue; ``TokenGranted`` is told to
the requester when every gate of its endpoint's *lane* is open
(:mod:`briefd.limits.lanes`; one lane per endpoint, ``''`` for the single
``BRIEFD_BASE_URL``), and fewer than K (``BRIEFD_MAX_CONCURRENT``) calls of all
lanes are in flight. A lane's gates, in this order:

* **pause**: a 429 (``ReportRateLimit``) pauses the lane's grants until the
  server's ``Retry-After`` (the limit is the server's, not one stage's); a
  server that says a budget's ``remaining`` is 0 pauses them until its reset;
* **window**: at most W calls in flight, W adapted between 1 and the lane's
  ceiling (its ``max_concurrent``, at most K) from each call's outcome
  (:mod:`briefd.limits.window`);
* **budgets**: its RPM/TPM as GCRA (:mod:`briefd.limits.gcra`), configured or
  learned from the headers (:mod:`briefd.limits.learn`); when one says
  "not yet" a timer wakes the limiter then (it never sleeps).

Which waiting request goes first: the tenant with the least start tag of the
weighted fair share, charged in tokens (``est_tokens`` at the grant, settled by
``used_tokens`` at the release: :mod:`briefd.limits.fair`); within it the oldest
admitted job (after its priority, which ages), then the stage with the longest
latency-weighted path to its job's end (:mod:`briefd.limits.order`), among the
requests whose lane is open.
The request picked waits for its lane's budget rather than letting a cheaper
one of the same lane pass it, so a large prompt is not starved; requests for
other endpoints go meanwhile.

A token is a lease: if its holder dies without ``ReleaseToken``, a periodic
check reclaims it. ``ReleaseToken`` says how the call ended (``outcome``), what
it cost (``used_tokens``) and what the server's headers said (``limits``).

Surviving its own death. One limiter serves every job of a process, so if it
died every stage waiting for a token would wait forever. Two walls:

* At its edge, :meth:`RateLimiterActor.on_receive` catches what a handler
  raises (a bug, a bad message): logged, the message dropped, the limiter
  goes on. A bad message cannot kill it.
* A real death (stopped by mistake, or a ``BaseException``) is noticed by its
  owner through a ``LimiterSupervisor`` (:mod:`briefd.actors.limiter_supervisor`),
  held in place of a bare ``ActorRef``: every ``tell`` to a dead limiter starts a
  successor first, and the owner's watch calls :meth:`LimiterSupervisor.check`.

The successor takes over the predecessor's :class:`LimiterState`: the leases
(calls still in flight), the waiting requests, every lane (window, budgets,
cool-down), the messages left unread. Stages are not asked to re-register: one
holding a token is blocked in its HTTP call, so a successor that started empty
would hand out ``capacity`` fresh tokens beside the old calls, breaking the cap
the API is paid by. The state is never shared by two live limiters (the
successor waits, bounded, until the predecessor has left it). One gap remains,
in pykka: a ``tell`` that found the limiter alive but landed after its inbox was
handed over is lost (its stage waits until its job is cancelled); its window is
a few instructions wide.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pykka
from loguru import logger

from briefd.actors.succession import hand_over, take_over
from briefd.limits.lanes import EndpointLimits, EndpointStats, Lane, Lanes
from briefd.limits.order import Waiting
from briefd.messages import (
    CancelTokenRequest,
    Event,
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
from briefd.threads import LeanThreadingActor
from briefd.timers import Timers

REAP_PERIOD_S = 0.5
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
    epoch: int = 0  # the lane's window's epoch when the call started
    est_tokens: int = 0  # charged to the token budget at the grant
    endpoint: str = ""  # its lane
    tenant: str = "default"  # charged in the fair share at the grant, settled at release
    weight: float = 1.0
    charged: float = 0.0  # what the fair share charged (FairShare.cost of est_tokens)


@dataclass(frozen=True)
class LimiterStats:
    """A snapshot for ``ask``-ers outside the actor system (tests, /metrics).

    The figures before ``endpoints`` are the whole limiter's: counts are summed over the
    lanes, waits and lags are the longest lane's, ``window`` is the lanes' windows summed
    (at most ``capacity``). ``endpoints`` has each lane's own.
    """

    capacity: int
    in_use: int
    waiting: int
    granted_total: int
    reclaimed_total: int
    cooling_down_for_s: float
    restarts: int = 0
    window: float = 0.0  # W (calls allowed in flight is W rounded down, at least 1)
    in_flight: int = 0
    rpm_lag_s: float = 0.0  # how far each budget's GCRA clock runs ahead of now
    tpm_lag_s: float = 0.0
    paused_for_s: float = 0.0  # a server's remaining=0 until its reset
    pauses_total: int = 0
    rate_limited_total: int = 0
    endpoints: Mapping[str, EndpointStats] = field(default_factory=dict)


@dataclass
class LimiterState:
    """Everything a limiter knows, apart from the actor so that a successor can take it over.

    Only the live limiter touches it; ``vacated`` is set when its owner has left it.
    """

    capacity: int
    adaptive: bool = True
    rpm: float | None = None  # the '' lane's (BRIEFD_RPM)
    tpm: float | None = None
    endpoints: Mapping[str, EndpointLimits] | None = None
    leases: dict[int, Lease] = field(default_factory=dict)
    waiting: list[Waiting] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    lease_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    granted_total: int = 0
    reclaimed_total: int = 0
    restarts: int = 0
    wake_at: float = 0.0  # a timer will Tick the limiter then
    lanes: Lanes = field(init=False)  # per endpoint: the window, budgets, pause, cool-down
    unread: list[Any] = field(default_factory=list)  # envelopes a dead limiter never read
    retired: bool = False  # its owner stopped it on purpose: nothing to hand over
    vacated: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.vacated.set()  # nobody holds a fresh state
        self.lanes = Lanes.new(
            self.capacity, self.endpoints, adaptive=self.adaptive, rpm=self.rpm, tpm=self.tpm
        )


class RateLimiterActor(LeanThreadingActor):
    """Hands out up to ``capacity`` execution tokens (default 2), across every endpoint.

    ``endpoints`` gives endpoints their own limits (:class:`EndpointLimits`); ``rpm`` and
    ``tpm`` are the ``''`` endpoint's. None: one lane, ``''``, as with a single endpoint.
    """

    def __init__(
        self,
        capacity: int = 2,
        observers: Sequence[Observer] = (),
        state: LimiterState | None = None,
        *,
        adaptive: bool = True,
        rpm: float | None = None,
        tpm: float | None = None,
        endpoints: Mapping[str, EndpointLimits] | None = None,
    ) -> None:
        super().__init__()
        if state is None:
            state = LimiterState(
                capacity=capacity, adaptive=adaptive, rpm=rpm, tpm=tpm, endpoints=endpoints
            )
        self._s = state
        self._observers = tuple(observers)
        self._timers = Timers()
        # Requesters' refs by URN: the registry scans every actor of the process under a
        # lock for a URN (hundreds with 64 jobs running), on every grant and reap.
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._events: list[Event] = []  # published once a message's grants are told

    def on_start(self) -> None:
        s = self._s
        take_over(self, s, "rate limiter")
        s.wake_at = 0.0  # the predecessor's timers died with it
        try:
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
        hand_over(self, self._s)

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
        finally:  # the grants are told: now what they and the message published
            events, self._events = self._events, []
            for event in events:
                publish(event, self._observers)
        return None

    def _emit(self, event: Event) -> None:
        """Publish ``event`` once this message is handled, after the grants it allows: the
        next call waits for a grant, not for log lines or the metrics actor's wake-up.
        Published in the order they happened, so observers see the same sequence."""
        self._events.append(event)

    def _handle(self, message: object) -> None:
        s = self._s
        match message:
            case RequestToken():
                s.waiting.append(Waiting(next(s.seq), message, time.monotonic()))
            case ReleaseToken(lease_id=lease_id):
                lease = self._drop(lease_id)
                if lease is not None:
                    self._settle(lease, message)
                    self._released(lease, reclaimed=False)
            case CancelTokenRequest(requester=urn):
                s.waiting = [w for w in s.waiting if w.request.requester != urn]
                for lease in [x for x in s.leases.values() if x.requester == urn]:
                    self._drop(lease.lease_id)
                    self._released(lease, reclaimed=False)
            case ReportRateLimit():
                self._cool_down(message)
            case SetCapacity(capacity=c):
                logger.info("token capacity {} -> {}", s.capacity, c)
                s.capacity = c
                s.lanes.set_capacity(c)
            case Tick():
                self._reap()
            case _:
                logger.warning("rate limiter: unexpected message {!r}", type(message).__name__)

    def stats(self) -> LimiterStats:
        """Current figures (call through ``proxy()`` from outside, with a timeout)."""
        s = self._s
        lanes = s.lanes.stats(s.waiting)
        each = lanes.values()
        return LimiterStats(
            capacity=s.capacity,
            in_use=len(s.leases),
            waiting=len(s.waiting),
            granted_total=s.granted_total,
            reclaimed_total=s.reclaimed_total,
            cooling_down_for_s=max(x.cooling_down_for_s for x in each),
            restarts=s.restarts,
            window=min(float(s.capacity), sum(x.window for x in each)),
            in_flight=len(s.leases),
            rpm_lag_s=max(x.rpm_lag_s for x in each),
            tpm_lag_s=max(x.tpm_lag_s for x in each),
            paused_for_s=max(x.paused_for_s for x in each),
            pauses_total=sum(x.pauses_total for x in each),
            rate_limited_total=sum(x.rate_limited_total for x in each),
            endpoints=lanes,
        )

    def _grant(self) -> None:
        s = self._s
        wall = time.time()  # the clock of admitted_at (order.rank)
        while True:
            i, wake = s.lanes.next_grant(s.waiting, len(s.leases), wall)
            if i is None:
                if wake < float("inf"):
                    self._wake(wake)  # a lane's head waits for its budget; nobody passes it
                return
            req, queued_at = s.waiting[i].request, s.waiting[i].queued_at
            ref = self._requester(req.requester)
            del s.waiting[i]
            if ref is None:
                continue  # the requester died while waiting
            lane = s.lanes.get(req.endpoint)
            lease = Lease(
                next(s.lease_ids),
                req.job_id,
                req.stage,
                req.requester,
                time.monotonic(),
                epoch=lane.pacer.window.epoch,
                est_tokens=req.est_tokens,
                endpoint=req.endpoint,
                tenant=req.tenant,
                weight=req.weight,
                charged=s.lanes.share.cost(req.est_tokens),
            )
            s.leases[lease.lease_id] = lease
            lane.in_flight += 1
            lane.pacer.spend(lease.est_tokens)
            s.lanes.share.charge(req.tenant, req.weight, lease.charged, lease.granted_at)
            granted = TokenGranted(
                job_id=req.job_id,
                stage=req.stage,
                endpoint=req.endpoint,
                lease_id=lease.lease_id,
                in_use=len(s.leases),
                capacity=s.capacity,
                waiting=len(s.waiting),
                waited_ms=int((lease.granted_at - queued_at) * 1000),
                window=lane.pacer.window.limit,
            )
            try:
                ref.tell(granted)
            except pykka.ActorDeadError:
                self._drop(lease.lease_id)
                lane.pacer.refund(lease.est_tokens)
                self._settle_share(lease, 0)
                continue
            s.granted_total += 1
            lane.granted_total += 1
            self._emit(granted)

    def _drop(self, lease_id: int) -> Lease | None:
        """End lease ``lease_id`` (None if there is none): it no longer counts in its lane."""
        lease = self._s.leases.pop(lease_id, None)
        if lease is not None:
            lane = self._s.lanes.get(lease.endpoint)
            lane.in_flight = max(0, lane.in_flight - 1)
        return lease

    def _lane(self, endpoint: str) -> Lane:
        return self._s.lanes.get(endpoint)

    def _wake(self, delay_s: float) -> None:
        """Tick the limiter in ``delay_s`` unless a timer already will by then."""
        s = self._s
        now = time.monotonic()
        due = now + delay_s
        if s.wake_at > now and s.wake_at <= due + 0.001:
            return
        s.wake_at = due
        self._timers.tell_later(self.actor_ref, delay_s, Tick())

    def _settle(self, lease: Lease, msg: ReleaseToken) -> None:
        """Learn from how the call ended (its lane's window and budgets, the stage's latency,
        the headers)."""
        self._settle_share(lease, msg.used_tokens)
        lane = self._lane(lease.endpoint)
        later_calls = later_tokens = 0
        if msg.limits is not None:  # the calls its server may not have counted in its headers
            for other in self._s.leases.values():
                if other.endpoint == lease.endpoint and other.lease_id > lease.lease_id:
                    later_calls += 1
                    later_tokens += other.est_tokens
        lane.pacer.ended(
            stage=lease.stage,
            outcome=msg.outcome,
            epoch=lease.epoch,
            in_flight=lane.in_flight + 1,
            elapsed_s=time.monotonic() - lease.granted_at,
            est_tokens=lease.est_tokens,
            used_tokens=msg.used_tokens,
            limits=msg.limits,
            later_calls=later_calls,
            later_tokens=later_tokens,
        )

    def _settle_share(self, lease: Lease, used: int | None) -> None:
        """The tenant's fair share pays for what the call used (None: its estimate stays)."""
        self._s.lanes.share.settle(
            lease.tenant,
            lease.weight,
            lease.charged,
            used,
            time.monotonic(),
            est_tokens=lease.est_tokens if used else 0,  # a refund teaches nothing
        )

    def _released(self, lease: Lease, *, reclaimed: bool) -> None:
        s = self._s
        if reclaimed:
            s.reclaimed_total += 1
        self._emit(
            TokenReleased(
                job_id=lease.job_id,
                stage=lease.stage,
                lease_id=lease.lease_id,
                in_use=len(s.leases),
                capacity=s.capacity,
                waiting=len(s.waiting),
                reclaimed=reclaimed,
                window=self._lane(lease.endpoint).pacer.window.limit,
            )
        )

    def _reap(self) -> None:
        for lease in list(self._s.leases.values()):
            if self._requester(lease.requester) is None:
                self._drop(lease.lease_id)
                self._released(lease, reclaimed=True)
        self._refs = {urn: ref for urn, ref in self._refs.items() if ref.is_alive()}

    def _requester(self, urn: str) -> pykka.ActorRef[Any] | None:
        """The live actor named ``urn``, or None (cached: see ``_refs``)."""
        ref = self._refs.get(urn) or pykka.ActorRegistry.get_by_urn(urn)
        if ref is None or not ref.is_alive():
            self._refs.pop(urn, None)
            return None
        self._refs[urn] = ref
        return ref

    def _cool_down(self, msg: ReportRateLimit) -> None:
        """A 429 from ``msg.endpoint``: pause that lane, and only it, for its Retry-After."""
        lane = self._lane(msg.endpoint)
        until = time.monotonic() + msg.retry_after_s
        if until <= lane.cooldown_until:
            return
        lane.cooldown_until = until
        lane.pacer.pauses += 1
        self._emit(
            RateLimitCooldown(
                job_id=msg.job_id,
                stage=msg.stage,
                endpoint=msg.endpoint,
                retry_after_s=msg.retry_after_s,
                until=time.time() + msg.retry_after_s,
            )
        )
        self._timers.tell_later(self.actor_ref, msg.retry_after_s, Tick())
