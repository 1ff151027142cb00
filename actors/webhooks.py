"""The webhook actor: sends the outbox's due deliveries and records how each attempt went.

It owns no state a crash could lose: the outbox rows are the truth. Every
``poll_s`` (and when the journal adds a delivery) it claims what is due, up to
``max_in_flight`` at once, and hands each to a pooled thread
(:class:`~briefd.webhooks.send.Sender`: resolve, check, sign, POST, all bounded
by timeouts), so the actor itself never waits on a network and stays free to
take the next message. The thread tells the actor the attempt's outcome
(:class:`~briefd.messages.WebhookAttempted`); the actor writes it on the row (the
next attempt's time, or delivered, or failed), logs it, and claims more.

A claim moves the row's ``next_at`` a lease ahead: if this daemon dies
mid-attempt, the row is due again once the lease passes (at start, at once on
SQLite), and is sent again with the same ``webhook-id``: at least once. With
PostgreSQL every daemon runs one of these over the shared outbox, each attempt
claimed by exactly one (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import pykka
from loguru import logger

from briefd.messages import Tick, WebhookAttempted
from briefd.ops.events import publish
from briefd.store.base import StoreUnavailable
from briefd.threads import LeanThreadingActor
from briefd.timers import Timers
from briefd.webhooks.outbox import Due

POLL_S = 1.0
"""How often due deliveries are looked for (a delivery added here wakes the actor at once)."""
LEASE_S = 60.0
"""How long a claimed delivery is this daemon's: well above an attempt's bound."""
MAX_IN_FLIGHT = 8
"""Attempts at once (the sender's threads)."""


class DeliveryOutbox(Protocol):
    """What the actor needs of an outbox (:mod:`briefd.webhooks.outbox`, ``pg_outbox``)."""

    def claim(self, owner: str, limit: int, lease_s: float) -> list[Due]: ...
    def record(self, attempt: WebhookAttempted) -> None: ...


class Attempter(Protocol):
    """What the actor needs of a sender: one attempt, never raising."""

    def attempt(self, due: Due) -> WebhookAttempted: ...


@dataclass(frozen=True)
class WebhookStats:
    """This daemon's attempts since start, by outcome, and those in flight now."""

    attempts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0


class WebhookActor(LeanThreadingActor):
    """Sends due webhook deliveries on pooled threads; never blocks on one."""

    def __init__(
        self,
        outbox: DeliveryOutbox,
        sender: Attempter,
        *,
        owner: str,
        poll_s: float = POLL_S,
        lease_s: float = LEASE_S,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        super().__init__()
        self._outbox = outbox
        self._sender = sender
        self._owner = owner
        self._poll_s = poll_s
        self._lease_s = lease_s
        self._max = max_in_flight
        self._in_flight = 0
        self._attempts: Counter[str] = Counter()
        self._timers = Timers()
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="briefd-webhook")

    def on_start(self) -> None:
        self._timers.every(self.actor_ref, self._poll_s, Tick())
        self.actor_ref.tell(Tick())

    def on_stop(self) -> None:
        self._timers.close()
        # Attempts on the wire are let go: their rows are claimed, and due again after the lease.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def on_failure(self, *_: Any) -> None:
        self.on_stop()

    def stats(self) -> WebhookStats:
        """Attempts by outcome since start, and in flight (``ask``ed by ``/metrics``)."""
        return WebhookStats(attempts=dict(self._attempts), in_flight=self._in_flight)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, WebhookAttempted):
            self._in_flight -= 1
            self._attempts[message.outcome] += 1
            try:
                self._outbox.record(message)
            except StoreUnavailable as err:  # the claim lapses and the attempt is made again
                logger.warning("webhook {}: outcome not recorded: {}", message.delivery_id, err)
            except Exception as err:
                logger.opt(exception=err).error("webhook {}: {!r}", message.delivery_id, err)
            with contextlib.suppress(Exception):  # logging must not take the sender down
                publish(message)
        self._claim()
        return None

    def _claim(self) -> None:
        free = self._max - self._in_flight
        if free <= 0:
            return
        try:
            due = self._outbox.claim(self._owner, free, self._lease_s)
        except StoreUnavailable as err:
            logger.debug("webhooks: cannot claim now: {}", err)
            return
        except Exception as err:  # a bug: keep the actor, try at the next poll
            logger.opt(exception=err).error("webhooks: claim failed: {!r}", err)
            return
        for row in due:
            self._in_flight += 1
            try:
                self._pool.submit(self._attempt, row)
            except RuntimeError:  # stopping: the row's claim lapses
                self._in_flight -= 1

    def _attempt(self, due: Due) -> None:
        """On a pooled thread: one attempt, its outcome told to the actor."""
        result = self._sender.attempt(due)
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(result)
