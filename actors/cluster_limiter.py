"""The rate limiter of a daemon in a cluster: the same messages, one token budget for all.

Stages and coordinators talk to it exactly as to
:class:`~briefd.actors.rate_limiter.RateLimiterActor` (``RequestToken``,
``ReleaseToken``, ``CancelTokenRequest``, ``ReportRateLimit``, ``SetCapacity``,
``Tick``; ``TokenGranted`` told to the requester, token events published), but the
tokens, the window and the budgets are the cluster's, in PostgreSQL
(:class:`~briefd.cluster.tokens.ClusterTokens`): never more than K calls in flight
across every daemon on the database.

It is woken three ways, so a grant waits for neither a poll nor a lost packet:

* a ``NOTIFY briefd_tokens`` naming this daemon (another daemon granted it a
  token): the :class:`~briefd.cluster.listen.Listener` tells it ``TokensGranted``;
* its own messages: a request, a release, a cancel each run a grant round, which
  serves every daemon's requests, not only this one's;
* timers: ``Tick`` every ``poll_s`` (the safety net: catches up after a lost
  notification, reclaims leases of dead daemons), when a budget or cool-down said
  "not yet", and ``RenewTokens`` every ``lease_s/3`` to keep its leases.

**The database out of reach.** The limiter cannot know how many calls the other
daemons have in flight, so it grants nothing. What it is told meanwhile is kept
in order in its state's outbox (:mod:`briefd.cluster.state`) and written when the
database answers again (tried at each ``Tick``); it never dies of it, and
:meth:`ClusterLimiterActor.problem` and its stats say so for ``/healthz``. Its
leases that outlive ``lease_s`` without a heartbeat are reclaimed by the others:
the cap is the cluster's, and a daemon that cannot be heard from cannot hold it.

Like the local limiter it keeps everything in a state object
(:class:`~briefd.cluster.state.ClusterLimiterState`) that a successor, started by
:class:`~briefd.actors.limiter_supervisor.LimiterSupervisor`, takes over.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import pykka
from loguru import logger

from briefd.actors.cluster_grants import GrantDelivery
from briefd.actors.succession import hand_over, take_over
from briefd.cluster.listen import Listener
from briefd.cluster.records import GrantRound
from briefd.cluster.state import (
    Cancel,
    ClusterLimiterState,
    ClusterLimiterStats,
    CoolDown,
    Enqueue,
    Op,
    Queued,
    Release,
    SetCeiling,
)
from briefd.cluster.tokens import CHANNEL, ClusterTokens
from briefd.messages import (
    CancelTokenRequest,
    RateLimitCooldown,
    ReleaseToken,
    ReportRateLimit,
    RequestToken,
    SetCapacity,
)
from briefd.messages.cluster import RenewTokens, TokensGranted
from briefd.messages.jobs import Tick
from briefd.ops.events import Observer, publish
from briefd.store.pg_setup import contended, one_line
from briefd.threads import LeanThreadingActor
from briefd.timers import Timers


def _endpoints_of(op: Op) -> tuple[str, ...]:
    """The endpoints whose rounds ``op`` calls for: a request's, a released lease's, the
    leases a cancel ended (a cool-down or a new K grants nothing more)."""
    match op:
        case Enqueue(queued=q):
            return (q.request.endpoint,)
        case Release(lease=lease):
            return (lease.endpoint,)
        case Cancel(endpoints=ended):
            return ended
    return ()


ROUNDS_PER_MESSAGE = 3
"""Grant rounds one message may run (a grant to a dead requester is released and granted on)."""
RETRY_MAX_S = 5.0
"""While the database fails, attempts back off from ``poll_s`` up to this (or ``lease_s/3``
when shorter: a daemon must try at least as often as it must heartbeat). An attempt can take
the pool's whole timeout, and the actor answers nothing meanwhile."""


RETRY_CONTENDED_S = 0.05
"""A round that waited past the lock bound (another session held the limiter row) is tried
again this soon: the row is free once PostgreSQL ends the holder's transaction."""
DEFER_MAX = 16
"""Messages whose grant round may be left to the next message, in a row."""


class ClusterLimiterActor(GrantDelivery, LeanThreadingActor):
    """Hands out the cluster's tokens to this daemon's actors (see the module's docstring)."""

    def __init__(
        self,
        tokens: ClusterTokens,
        state: ClusterLimiterState,
        observers: Sequence[Observer] = (),
        *,
        poll_s: float = 2.0,
        lease_s: float = 15.0,
        listen: bool = True,
    ) -> None:
        super().__init__()
        self._tokens = tokens
        self._s = state
        self._observers = tuple(observers)
        self._poll_s = poll_s
        self._lease_s = lease_s
        self._timers = Timers()
        self._listener: Listener | None = None
        self._listen = listen
        self._deferred = 0  # rounds left to a later message in a row (see _defer)

    # -- life --------------------------------------------------------------------------

    def on_start(self) -> None:
        s = self._s
        take_over(self, s, "cluster limiter")
        s.wake_at = 0.0  # the predecessor's timers died with it
        s.wake_pending.clear()
        try:
            self._timers.every(self.actor_ref, self._poll_s, Tick())
            self._timers.every(self.actor_ref, max(0.1, self._lease_s / 3), RenewTokens())
            if self._listen:
                self._listener = Listener(
                    self._tokens.url,
                    {CHANNEL: self._notified},
                    on_connect=self._caught_up,
                    name="briefd-listen-tokens",
                    bound_s=self._tokens.bound_s,
                ).start()
            self.actor_ref.tell(RenewTokens())  # a successor renews its leases first
        except BaseException:  # pykka calls no on_stop after a failed on_start
            self._timers.close()
            s.vacated.set()
            raise

    def on_stop(self) -> None:
        self._leave()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._leave()

    def _leave(self) -> None:
        """Close timers and the listener; hand unread messages on, or, retired, leave the
        cluster (held releases written, this daemon's waits and leases deleted)."""
        self._timers.close()
        if self._listener is not None:
            self._listener.stop(1.0)
        s = self._s
        if s.retired:
            try:  # with the database gone, its lease_s does it: a shutdown must not wait
                if s.problem is None:
                    self._flush()
                    self._tokens.leave()
            except psycopg.Error as err:
                logger.warning("cluster limiter: could not leave the cluster: {}", one_line(err))
            self._tokens.close()
        hand_over(self, s)

    def _notified(self, payload: str) -> None:
        """In the listener's thread: a grant for this daemon, told once until it is read."""
        if payload == self._tokens.daemon_id and not self._s.wake_pending.is_set():
            self._s.wake_pending.set()
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(TokensGranted())

    def _caught_up(self) -> None:
        """In the listener's thread, after each (re)connect: what was notified while it was
        not listening is read at the next Tick, told now."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(Tick())

    # -- messages ----------------------------------------------------------------------

    def on_receive(self, message: object) -> object:
        try:
            self._handle(message)
        except Exception as err:  # the edge: a bad message must not take every job down
            logger.opt(exception=err).error(
                "cluster limiter: dropped {} after {!r}", type(message).__name__, err
            )
        try:
            self._sync(message)
        except Exception as err:
            logger.opt(exception=err).error("cluster limiter: {!r}", err)
        return None

    def _handle(self, message: object) -> None:
        """Record what ``message`` asks for (no database here: that is :meth:`_sync`)."""
        s = self._s
        now = time.monotonic()
        match message:
            case RequestToken():
                queued = Queued(message, now)
                if s.may_call(message.job_id):
                    s.outbox.append(Enqueue(queued))
                else:  # no token for a claim this daemon cannot prove: held here
                    s.parked.append(queued)
            case ReleaseToken(lease_id=lease_id):
                lease = s.leases.pop(lease_id, None)
                if lease is not None:
                    s.outbox.append(
                        Release(
                            lease,
                            message.outcome,
                            now - lease.granted_at,
                            message.used_tokens,
                            message.limits,
                        )
                    )
                    self._released(lease, reclaimed=False)
            case CancelTokenRequest(requester=urn):
                ended = s.forget(urn)
                for lease in ended:
                    self._released(lease, reclaimed=False)
                s.outbox.append(Cancel(urn, tuple(sorted({x.endpoint for x in ended}))))
            case ReportRateLimit():
                s.outbox.append(
                    CoolDown(message.job_id, message.stage, message.retry_after_s, message.endpoint)
                )
                self._timers.tell_later(self.actor_ref, message.retry_after_s, Tick())
            case SetCapacity(capacity=c):
                s.capacity = c
                s.outbox.append(SetCeiling(c))
            case Tick():
                self._reap()
                self._unpark()
            case TokensGranted():
                s.wake_pending.clear()
            case RenewTokens():
                self._unpark()
            case _:
                logger.warning("cluster limiter: unexpected message {!r}", type(message).__name__)

    def _sync(self, message: object) -> None:
        """Write the outbox, then grant and deliver as ``message`` calls for. While the
        database is out of reach only a timer's ``Tick`` or ``RenewTokens`` tries it again,
        with a backoff, so a burst of messages does not wait for a dead server once each."""
        s = self._s
        if s.problem is not None and (
            not isinstance(message, Tick | RenewTokens) or time.monotonic() < s.retry_at
        ):
            return
        try:
            if s.problem is not None:
                self._tokens.reconnect()
            if isinstance(message, RenewTokens):
                self._flush()
                self._beat()
            elif isinstance(message, TokensGranted):
                self._flush()
                self._take()
            elif isinstance(message, ReportRateLimit):
                self._flush()
            elif isinstance(message, Tick):
                self._rounds(take=True, every=True)
            elif not self._defer():
                self._rounds(take=False)
        except psycopg.Error as err:
            if contended(err) and s.problem is None:
                # Another session held the limiter row past the bound (a paused daemon, until
                # PostgreSQL ends its transaction): not an outage; the round is tried again.
                logger.debug("cluster limiter: {}; trying again", one_line(err))
                self._wake(RETRY_CONTENDED_S)
                return
            if s.problem is None:
                logger.warning(
                    "cluster limiter: database {} out of reach ({}): no grants until it is back;"
                    " {} operation(s) held",
                    self._tokens.where,
                    one_line(err),
                    len(s.outbox),
                )
            s.problem = one_line(err)
            cap = min(RETRY_MAX_S, max(self._poll_s, self._lease_s / 3))
            s.retry_at = time.monotonic() + min(cap, self._poll_s * 2.0 ** min(s.failures, 10))
            s.failures += 1
            return
        if s.problem is not None:
            logger.info("cluster limiter: database {} is back", self._tokens.where)
            s.problem, s.failures = None, 0

    def _defer(self) -> bool:
        """Whether to leave this message's round to the next one: more messages are waiting
        (a burst: releases and the requests they free), and one round after them serves all.
        Each round is a transaction on the cluster's one limiter row; a round per message was
        most of this actor's time under load. At most :data:`DEFER_MAX` in a row."""
        if self._deferred < DEFER_MAX and not self.actor_inbox.empty():
            self._deferred += 1
            return True
        self._deferred = 0
        return False

    def _rounds(self, *, take: bool, every: bool = False) -> None:
        """Flush, grant, deliver; again while delivering released something (a dead requester).

        A round is per endpoint (:meth:`ClusterTokens.grant`): those the outbox's requests,
        releases and cancels are for, and with ``every`` (the safety-net ``Tick``) every
        endpoint with requests waiting or leases to reap. When all of it concerns one
        endpoint, the outbox, its round and the grants read are one transaction (one commit
        on its row); otherwise each is its own, so no transaction holds two endpoints' rows
        (two daemons locking them in opposite orders would deadlock).
        """
        s = self._s
        for _ in range(ROUNDS_PER_MESSAGE):
            ops = s.outbox[: len(s.outbox)]
            lanes = {e for op in ops for e in _endpoints_of(op)}
            every = every or any(isinstance(op, SetCeiling) for op in ops)  # K moved: all may
            todo = sorted(lanes | set(self._tokens.busy_endpoints(due=True))) if every else lanes
            freed = any(isinstance(op, Release | Cancel) for op in ops)
            known = set(s.waiting)
            sent = time.monotonic()
            if len(todo) <= 1 and not any(isinstance(op, CoolDown | SetCeiling) for op in ops):
                try:  # the outbox, the round and the grants read: one transaction, one commit
                    with self._tokens.batch():
                        for op in ops:
                            self._apply(op)
                        rounds = [self._tokens.grant(e) for e in sorted(todo)]
                        taken = self._tokens.take_grants() if take else []
                except BaseException:
                    for wait_id in set(s.waiting) - known:  # their rows were rolled back
                        del s.waiting[wait_id]
                    raise
                del s.outbox[: len(ops)]
            else:
                self._flush()
                rounds = [self._tokens.grant(e) for e in sorted(todo)]
                taken = self._tokens.take_grants() if take else []
            for round_ in rounds:
                self._seen(round_)
            self._deliver([g for r in rounds for g in r.mine] + taken, sent)  # before all else
            if freed or any(r.starved for r in rounds):
                self._starved()
            take = every = False
            if not s.outbox:
                return

    def _starved(self) -> None:
        """Rounds for the endpoints that stopped for want of a slot while one is free now: a
        slot this daemon freed (its commit is done) serves another endpoint's requests, and
        a round of its own that found none is tried again if one was freed meanwhile."""
        sent = time.monotonic()
        rounds = [self._tokens.grant(e) for e in self._tokens.starved_endpoints()]
        for round_ in rounds:
            self._seen(round_)
        self._deliver([g for r in rounds for g in r.mine], sent)

    def _flush(self) -> None:
        """Write the outbox in order; stops at the first failure (raised), keeping the rest."""
        s = self._s
        while s.outbox:
            self._apply(s.outbox[0])
            s.outbox.pop(0)

    def _apply(self, op: Op) -> None:
        s, tokens = self._s, self._tokens
        match op:
            case Enqueue(queued=q):
                req = q.request
                age = time.time() - req.admitted_at if req.admitted_at > 0 else None
                s.waiting[tokens.enqueue(req, age_s=age)] = q
            case Release():
                tokens.release(
                    op.lease,
                    outcome=op.outcome,
                    elapsed_s=op.elapsed_s,
                    used_tokens=op.used_tokens,
                    limits=op.limits,
                )
            case Cancel(requester=urn):
                tokens.cancel(urn)
            case CoolDown():
                if tokens.cool_down(op.retry_after_s, op.endpoint):
                    publish(
                        RateLimitCooldown(
                            job_id=op.job_id,
                            stage=op.stage,
                            endpoint=op.endpoint,
                            retry_after_s=op.retry_after_s,
                            until=time.time() + op.retry_after_s,
                        ),
                        self._observers,
                    )
            case SetCeiling(capacity=c):
                tokens.set_ceiling(c)

    def _seen(self, round_: GrantRound) -> None:
        if round_.figures is not None:
            self._s.seen(round_.figures)
        if round_.wake_in_s is not None:
            self._wake(round_.wake_in_s)

    def _take(self) -> None:
        """Read and deliver the grants other daemons made for this one."""
        sent = time.monotonic()
        self._deliver(self._tokens.take_grants(), sent)

    def _beat(self) -> None:
        """Renew; make again the requests the cluster reaped while it could not hear us."""
        sent = time.monotonic()
        lost, gone = self._s.reconcile(self._tokens.heartbeat(held=self._s.leases.keys()))
        self._s.beat_at = sent
        if lost:
            logger.warning("cluster limiter: {} request(s) were reaped; queued again", lost)
        if gone:
            logger.warning(
                "cluster limiter: {} lease(s) of calls in flight were reclaimed by the cluster "
                "(this daemon was not heard from for {:g}s)",
                gone,
                self._lease_s,
            )
        self._rounds(take=True)

    def _wake(self, delay_s: float) -> None:
        """Tick the limiter in ``delay_s`` unless a timer already will by then."""
        s = self._s
        now = time.monotonic()
        due = now + delay_s
        if s.wake_at > now and s.wake_at <= due + 0.001:
            return
        s.wake_at = due
        self._timers.tell_later(self.actor_ref, delay_s, Tick())

    # -- figures -----------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why this daemon cannot take part in the cluster's budget now (None: it can)."""
        if self._s.problem is not None:
            return f"database out of reach: {self._s.problem}"
        return None

    def stats(self) -> ClusterLimiterStats:
        """This daemon's figures and the cluster's as last seen (no database call, so an
        ``ask`` from /healthz answers at once even when the database does not)."""
        return self._s.stats()
