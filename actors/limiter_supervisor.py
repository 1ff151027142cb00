"""The owner's handle on its rate limiter: pykka has no supervision, so this is it.

The ``Pipeline`` and the daemon hold a :class:`LimiterSupervisor` in place of a
bare ``ActorRef``. A ``tell`` to a dead limiter starts a successor first, and
the owner's watch loop calls :meth:`LimiterSupervisor.check`, so a death is
noticed even when nobody tells. The successor takes over the predecessor's
:class:`~briefd.actors.rate_limiter.LimiterState` (leases of calls still in
flight, waiting requests, the window and budgets), so the token cap holds
across a restart; why this and not re-registration is in
:mod:`briefd.actors.rate_limiter`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import pykka
from loguru import logger

from briefd.actors.rate_limiter import RESTARTS_PER_MINUTE, LimiterState, RateLimiterActor
from briefd.ops.events import Observer


class LimiterSupervisor:
    """The owner's handle on its limiter: restarts a dead one, with its state, on first need.

    pykka has no supervision, so this is it. Thread-safe: stages ``tell`` from
    their threads, the owner calls :meth:`check` from its watch loop and
    :meth:`proxy` for figures. After :meth:`stop` nothing is restarted.
    """

    def __init__(
        self,
        capacity: int,
        observers: Sequence[Observer] = (),
        *,
        adaptive: bool = True,
        rpm: float | None = None,
        tpm: float | None = None,
    ) -> None:
        self._observers = tuple(observers)
        self._state = LimiterState(capacity=capacity, adaptive=adaptive, rpm=rpm, tpm=tpm)
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
