"""The owner's handle on its rate limiter: pykka has no supervision, so this is it.

The ``Pipeline`` and the daemon hold a :class:`LimiterSupervisor` in place of a
bare ``ActorRef``. A ``tell`` to a dead limiter starts a successor first, and
the owner's watch loop calls :meth:`LimiterSupervisor.check`, so a death is
noticed even when nobody tells. The successor takes over the predecessor's
:class:`~briefd.actors.rate_limiter.LimiterState` (leases of calls still in
flight, waiting requests, the window and budgets), so the token cap holds
across a restart; why this and not re-registration is in
:mod:`briefd.actors.rate_limiter`.

The same supervision serves the cluster's limiter
(:class:`~briefd.actors.cluster_limiter.ClusterLimiterActor`, one token budget for
every daemon on a PostgreSQL database): :func:`cluster_limiter` builds one with a
``start`` that starts that actor on its own state.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any, Protocol

import pykka
from loguru import logger

from briefd.actors.rate_limiter import RESTARTS_PER_MINUTE, LimiterState, RateLimiterActor
from briefd.limits.lanes import EndpointLimits
from briefd.ops.events import Observer

if TYPE_CHECKING:
    from briefd.config import Settings

CLUSTER_TIMEOUT_S = 2.0
"""How long the cluster limiter waits for a database connection: while the database is out
of reach each retry can block the limiter's thread this long (it answers nothing meanwhile)."""


class SupervisedState(Protocol):
    """What the supervisor needs of a limiter's state (``LimiterState`` and
    ``ClusterLimiterState`` both have it)."""

    retired: bool
    restarts: int

    @property
    def leases(self) -> Sized: ...

    @property
    def waiting(self) -> Sized: ...


class LimiterSupervisor:
    """The owner's handle on its limiter: restarts a dead one, with its state, on first need.

    pykka has no supervision, so this is it. Thread-safe: stages ``tell`` from
    their threads, the owner calls :meth:`check` from its watch loop and
    :meth:`proxy` for figures. After :meth:`stop` nothing is restarted.

    By default it supervises a :class:`RateLimiterActor` of ``capacity`` tokens (``endpoints``:
    each endpoint's own limits, :mod:`briefd.limits.lanes`). Given
    ``state`` and ``start`` (a function that starts a limiter actor on that state), it
    supervises that limiter instead, and the other arguments are unused.
    """

    def __init__(
        self,
        capacity: int,
        observers: Sequence[Observer] = (),
        *,
        adaptive: bool = True,
        rpm: float | None = None,
        tpm: float | None = None,
        endpoints: Mapping[str, EndpointLimits] | None = None,
        state: SupervisedState | None = None,
        start: Callable[[], pykka.ActorRef[Any]] | None = None,
    ) -> None:
        if (state is None) != (start is None):
            raise ValueError("give both state and start, or neither")
        self._observers = tuple(observers)
        if state is None or start is None:
            local = LimiterState(
                capacity=capacity, adaptive=adaptive, rpm=rpm, tpm=tpm, endpoints=endpoints
            )
            observed = self._observers
            self._state: SupervisedState = local
            self._start: Callable[[], pykka.ActorRef[Any]] = lambda: RateLimiterActor.start(
                observers=observed, state=local
            )
        else:
            self._state, self._start = state, start
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()
        self._stopped = False
        self._ref: pykka.ActorRef[Any] = self._start()

    @property
    def state(self) -> SupervisedState:
        """The state the limiter keeps (read it for figures that must not wait on the actor)."""
        return self._state

    @property
    def ref(self) -> pykka.ActorRef[Any]:
        """The current limiter (may be dead until the next :meth:`check` or ``tell``)."""
        return self._ref

    def tell(self, message: Any) -> None:
        """Tell the limiter, starting a successor first if it died (ActorDeadError if stopped)."""
        ref = self._ref
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            self._revive(ref).tell(message)

    def proxy(self) -> pykka.ActorProxy[Any]:
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

    def _revive(self, dead: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
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
            self._ref = self._start()
            return self._ref


def cluster_limiter(
    settings: Settings,
    daemon_id: str,
    observers: Sequence[Observer] = (),
    gate: Callable[[str], bool] | None = None,
    endpoints: Mapping[str, EndpointLimits] | None = None,
) -> LimiterSupervisor:
    """The limiter of a daemon sharing one token budget with every daemon on
    ``settings.database_url``, supervised like the local one.

    Connects (ConfigError, one line and the URL redacted, if it cannot), makes the
    schema if needed, registers ``daemon_id`` and sets this daemon's K, adaptive,
    RPM and TPM as the cluster's (logged when they change another daemon's). Needs
    the ``postgres`` extra, imported only here. ``gate(job_id)``: whether this daemon can
    prove its claim on the job now; no token is handed out for a job it cannot.
    ``endpoints``: each endpoint's own cap and budgets (``Routing.limits()``), set as the
    cluster's for that endpoint's row.
    """
    from briefd.actors.cluster_limiter import ClusterLimiterActor
    from briefd.cluster.state import ClusterLimiterState
    from briefd.cluster.tokens import ClusterTokens

    if not settings.database_url:
        raise ValueError("cluster_limiter needs settings.database_url")
    tokens = ClusterTokens(
        settings.database_url,
        daemon_id,
        lease_s=settings.lease_s,
        timeout_s=CLUSTER_TIMEOUT_S,
        bound_s=settings.db_timeout,
    )
    try:
        tokens.register()
        tokens.configure(
            settings.max_concurrent,
            adaptive=settings.adaptive,
            rpm=settings.rpm,
            tpm=settings.tpm,
            endpoints=endpoints,
        )
    except BaseException:
        tokens.close()
        raise
    state = ClusterLimiterState(capacity=settings.max_concurrent, gate=gate)
    observed = tuple(observers)

    def start() -> pykka.ActorRef[Any]:
        return ClusterLimiterActor.start(
            tokens, state, observed, poll_s=settings.poll_s, lease_s=settings.lease_s
        )

    return LimiterSupervisor(settings.max_concurrent, observed, state=state, start=start)
