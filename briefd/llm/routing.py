"""Routing: which endpoint and model a stage calls, when it moves on, and each endpoint's breaker.

A stage names a model alias (its pipeline's ``model``, the job's ``models``, or
``BRIEFD_MODEL``); the alias lists ``endpoint:model`` routes in failover order
(:mod:`briefd.config.endpoints`). The stage calls the first route whose
endpoint's breaker lets it, and moves to the next at once when the failure is
one another endpoint could fix (:func:`fails_over`): there is no point waiting
out an endpoint that refuses connections or has run out of quota.

Breakers are per endpoint and per process, shared by every stage, the way the
connection pools are: a stage reads and updates one under a lock for a few
instructions, never waiting on another actor. The state machine is the one the
automatic rollback uses (:mod:`briefd.ops.breaker`: closed, open, half-open)
but its signal is simpler: ``BRIEFD_BREAKER_FAILURES`` failures in a row open
it, one probe after ``BRIEFD_BREAKER_COOLDOWN_S`` tries it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from briefd.config import ConfigError, Settings
from briefd.config.endpoints import DEFAULT_ALIAS, DEFAULT_ENDPOINT, EndpointSpec, Route
from briefd.limits.lanes import EndpointLimits
from briefd.llm.errors import CallError, StatusError
from briefd.messages import EndpointCircuitChanged, ErrorCode

CircuitState = Literal["closed", "open", "half_open"]
_FAILOVER_CODES = frozenset({ErrorCode.CONNECTION, ErrorCode.TLS_ERROR, ErrorCode.QUOTA_EXCEEDED})
_FAILOVER_STATUSES = frozenset({401, 403, 404})
_AFTER_RETRIES_CODES = frozenset({ErrorCode.SERVER_ERROR, ErrorCode.TIMEOUT, ErrorCode.STALLED})
"""Moved on from once this endpoint's retries are spent: a stall is a timeout that came sooner."""


def fails_over(err: CallError, failover_after_s: float) -> bool:
    """Whether another endpoint could fix ``err`` now, without retrying this one.

    Connection refused or reset, TLS, an exhausted quota, 401/403/404 (this
    endpoint's key or model), and a 429 asking to wait longer than
    ``BRIEFD_FAILOVER_AFTER_S``. A 400 is the request's fault, and invalid
    output the model's: another endpoint would be refused or wrong the same way.
    """
    if err.code in _FAILOVER_CODES:
        return True
    if isinstance(err, StatusError):
        if err.status in _FAILOVER_STATUSES:
            return True
        if err.code is ErrorCode.RATE_LIMITED:
            return (err.retry_after or 0.0) > failover_after_s
    return False


def fails_over_after_retries(err: CallError) -> bool:
    """Whether ``err``, once this endpoint's retries are spent, moves the stage on (5xx,
    timeouts, stalled streams)."""
    return err.code in _AFTER_RETRIES_CODES


def counts_against(err: CallError) -> bool:
    """Whether ``err`` is the endpoint's fault (its breaker counts it)."""
    return (
        err.code in _FAILOVER_CODES
        or err.code in _AFTER_RETRIES_CODES
        or (isinstance(err, StatusError) and err.status in _FAILOVER_STATUSES)
    )


@dataclass
class _Breaker:
    failures: int = 0
    state: CircuitState = "closed"
    retry_at: float = 0.0  # monotonic
    probing: bool = False


class Breakers:
    """Every endpoint's circuit breaker, for one process. Thread-safe; never blocks long.

    ``on_change`` hears each :class:`EndpointCircuitChanged` (the log, the metrics),
    called outside the lock.
    """

    def __init__(
        self,
        failures: int = 3,
        cooldown_s: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[EndpointCircuitChanged], None] | None = None,
    ) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, _Breaker] = {}

    def state(self, endpoint: str) -> CircuitState:
        with self._lock:
            return self._state.get(endpoint, _Breaker()).state

    def states(self) -> dict[str, CircuitState]:
        with self._lock:
            return {name: b.state for name, b in self._state.items()}

    def is_open(self, endpoint: str) -> bool:
        """Open and still cooling down (no probe due yet); reads, changes nothing."""
        with self._lock:
            b = self._state.get(endpoint)
            return b is not None and b.state == "open" and self._clock() < b.retry_at

    def allow(self, endpoint: str) -> bool:
        """May a call go to ``endpoint`` now? Open: no, until its cool-down has passed;
        then one caller (the probe) is let through, half-open, and the rest wait on its word."""
        changed = None
        with self._lock:
            b = self._state.setdefault(endpoint, _Breaker())
            if b.state == "closed":
                return True
            if b.state == "open" and self._clock() >= b.retry_at:
                b.state, b.probing = "half_open", True
                changed = self._event(endpoint, b, "cool-down over: one probe call")
            elif b.state == "half_open" and not b.probing:
                b.probing = True
                return True
            else:
                return False
        self._tell(changed)
        return True

    def succeeded(self, endpoint: str) -> None:
        changed = None
        with self._lock:
            b = self._state.setdefault(endpoint, _Breaker())
            was = b.state
            b.failures, b.state, b.probing = 0, "closed", False
            if was != "closed":
                changed = self._event(endpoint, b, "a call succeeded")
        self._tell(changed)

    def failed(self, endpoint: str, reason: str) -> None:
        """A failure the endpoint is to blame for (:func:`counts_against`)."""
        changed = None
        with self._lock:
            b = self._state.setdefault(endpoint, _Breaker())
            b.failures += 1
            b.probing = False
            if b.state == "half_open" or (b.state == "closed" and b.failures >= self.failures):
                b.state, b.retry_at = "open", self._clock() + self.cooldown_s
                changed = self._event(endpoint, b, reason)
            elif b.state == "open":
                b.retry_at = max(b.retry_at, self._clock() + self.cooldown_s)
        self._tell(changed)

    def released(self, endpoint: str) -> None:
        """A probe that ended without a verdict (cancelled, a 400): let another probe go."""
        with self._lock:
            b = self._state.get(endpoint)
            if b is not None and b.state == "half_open":
                b.probing = False

    def _event(self, endpoint: str, b: _Breaker, reason: str) -> EndpointCircuitChanged:
        retry_at = None
        if b.state == "open":
            retry_at = round(time.time() + max(b.retry_at - self._clock(), 0.0), 3)
        return EndpointCircuitChanged(
            endpoint=endpoint, state=b.state, failures=b.failures, reason=reason, retry_at=retry_at
        )

    def _tell(self, event: EndpointCircuitChanged | None) -> None:
        if event is not None and self.on_change is not None:
            self.on_change(event)


@dataclass
class Routing:
    """The endpoints a process calls, its model aliases, the keys and the breakers.

    Built once at start (:func:`briefd.local.provider.open_provider`); read by
    every stage. Keys are held here, read from their variables at start, and
    never printed (each is a registered secret).
    """

    endpoints: Mapping[str, EndpointSpec]
    aliases: Mapping[str, tuple[Route, ...]]
    default_alias: str = DEFAULT_ALIAS
    keys: Mapping[str, str | None] = field(default_factory=dict, repr=False)
    breakers: Breakers = field(default_factory=Breakers)
    declared: bool = False  # aliases come from BRIEFD_ENDPOINTS (else one endpoint, any name)

    def routes(self, alias: str | None) -> tuple[Route, ...]:
        """The routes of ``alias`` (None: the default), in failover order.

        ``endpoint:model`` names one route directly. Without an endpoints file, a name
        that is not an alias is a model name on the one endpoint.
        """
        name = alias or self.default_alias
        if name in self.aliases:
            return self.aliases[name]
        endpoint, sep, model = name.partition(":")
        if sep and model and endpoint in self.endpoints:
            return (Route(endpoint, model),)
        if not self.declared and len(self.endpoints) == 1:
            return (Route(next(iter(self.endpoints)), name),)
        known = ", ".join(sorted(self.aliases)) or "none"
        raise ConfigError(f"model {name!r}: not a model alias of BRIEFD_ENDPOINTS ({known})")

    def check(self, alias: str | None, where: str) -> None:
        """Raise :class:`ConfigError` naming ``where`` if ``alias`` names no route."""
        try:
            self.routes(alias)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    def key(self, endpoint: str) -> str | None:
        return self.keys.get(endpoint)

    def limits(self) -> dict[str, EndpointLimits]:
        """Each endpoint's own cap and budgets, for its lane in the rate limiter."""
        return {
            e.name: EndpointLimits(max_concurrent=e.max_concurrent, rpm=e.rpm, tpm=e.tpm)
            for e in self.endpoints.values()
        }

    @classmethod
    def single(
        cls,
        endpoint: EndpointSpec,
        model: str,
        key: str | None = None,
        *,
        breakers: Breakers | None = None,
    ) -> Routing:
        """One endpoint, one model: ``BRIEFD_BASE_URL`` (or the embedded model) as before."""
        return cls(
            endpoints={endpoint.name: endpoint},
            aliases={DEFAULT_ALIAS: (Route(endpoint.name, model),)},
            keys={endpoint.name: key},
            breakers=breakers if breakers is not None else Breakers(),
        )

    @classmethod
    def for_url(cls, settings: Settings, base_url: str) -> Routing:
        """One ``compatible`` endpoint at ``base_url`` with ``BRIEFD_MODEL``: what a stage or
        coordinator built without a routing (by a test, by older code) calls, as before."""
        spec = EndpointSpec(name=DEFAULT_ENDPOINT, kind="compatible", base_url=base_url.rstrip("/"))
        return cls.single(spec, settings.model, settings.api_key_value())
