"""Who is calling the HTTP API: a bearer key to a tenant and its scopes, checked fast.

* The token file is the built-in ``admin`` key of the ``default`` tenant
  (compared in constant time, no database): a single user sees no change.
* Any other bearer must be a key of :mod:`briefd.tenants.keys`. A key is checked
  against its row once, then served from a cache of *verified* keys for
  ``key_cache_s`` (at most 5 s): a request pays a SHA-256 and a dict lookup, and
  a revoked key is refused by every daemon of a cluster within that time (each
  daemon's cache lapses on its own; no message between daemons is needed). The
  cache is keyed by the key's SHA-256, so the keys themselves are not held.
* Abuse limits, per daemon: each key's request rate (a GCRA bucket,
  :class:`~briefd.limits.gcra.Gcra`: ``api_rate_per_key`` per second, bursts of
  ``api_burst_per_key``; 429 with ``Retry-After``), and failed authentications
  per client address (``auth_failures_per_minute``; 429 once spent, before any
  key is even looked at). The token file is not rate-limited (the operator's).
  Failures are logged with the address and the key's public id when it has
  one, never the key.

Scopes are enforced per route (:func:`required_scope`); :class:`Principal` is
put in the ASGI scope (``scope["briefd.principal"]``) for the routes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from briefd.limits.gcra import Gcra
from briefd.tenants import keys
from briefd.tenants.ids import DEFAULT_TENANT

PRINCIPAL = "briefd.principal"
BUILTIN_KEY_ID = "token"
MAX_TRACKED = 10_000
"""Buckets kept per kind before idle ones are dropped (bounded memory under a flood)."""


@dataclass(frozen=True)
class Principal:
    """The caller: its tenant, its key's public id (``token`` for the token file), scopes."""

    tenant: str
    key_id: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


BUILTIN = Principal(DEFAULT_TENANT, BUILTIN_KEY_ID, frozenset(keys.SCOPES))


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: rendered by the API as its one error shape."""

    status: int
    code: str
    message: str
    field: str | None = None
    retry_after: int | None = None


def required_scope(method: str, path: str) -> str:
    """The scope a route needs: ``/metrics`` admin, POST submit, DELETE cancel, else read.

    A stream token (``POST /v1/jobs/{id}/stream-token``) is a way to read a job's events,
    so it needs ``read``, as the stream does: a read-only dashboard key can give its page one.
    """
    if path == "/metrics":
        return "admin"
    if method == "POST" and path.endswith("/stream-token"):
        return "read"
    if method == "POST":
        return "submit"
    if method == "DELETE":
        return "cancel"
    return "read"


class KeyLookup:
    """What the authenticator needs of the store (a :class:`~briefd.tenants.store.TenantStore`)."""

    def secret(self) -> bytes:
        raise NotImplementedError

    def find_key(self, key_id: str) -> Any:
        raise NotImplementedError


class Buckets:
    """One GCRA bucket per name (a key, an address), idle ones dropped past :data:`MAX_TRACKED`."""

    def __init__(
        self, per_s: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_s = per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, Gcra] = {}
        self._lock = threading.Lock()

    def _bucket(self, name: str) -> Gcra:
        b = self._buckets.get(name)
        if b is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._buckets = {k: v for k, v in self._buckets.items() if v.lag() > 0}
            # ``burst`` units at once: n calls fit while n intervals <= the tolerance
            b = Gcra(self.per_s * 60, self.burst / self.per_s, self._clock)
            self._buckets[name] = b
        return b

    def take(self, name: str) -> float:
        """Spend one unit of ``name``'s bucket if it has one (0.0), else the seconds to wait."""
        if self.per_s <= 0:
            return 0.0
        with self._lock:
            b = self._bucket(name)
            wait = b.wait(1)
            if wait <= 0:
                b.take(1)
            return wait

    def wait(self, name: str) -> float:
        """Seconds before ``name`` may spend a unit (nothing spent)."""
        if self.per_s <= 0:
            return 0.0
        with self._lock:
            b = self._buckets.get(name)
            return b.wait(1) if b is not None else 0.0


class Authenticator:
    """Bearer to :class:`Principal`; the per-key and per-address limits. Thread-safe."""

    def __init__(
        self,
        token: str,
        store: KeyLookup | None = None,
        *,
        cache_s: float = 2.0,
        rate_per_s: float = 50.0,
        burst: float = 100.0,
        failures_per_minute: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token.encode()
        self._store = store
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        self.requests = Buckets(rate_per_s, burst, clock)
        self.failures = Buckets(failures_per_minute / 60.0, max(1.0, failures_per_minute), clock)

    def builtin(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def cached(self, given: str) -> Principal | None:
        """The principal of a key verified less than ``cache_s`` ago (no I/O), else None."""
        if self.builtin(given):
            return BUILTIN
        return self.cached_key(given)

    def cached_key(self, given: str) -> Principal | None:
        """As :meth:`cached`, for API keys only (the token file is not compared)."""
        digest = hashlib.sha256(given.encode()).digest()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        return None

    def verify(self, given: str, *, builtin: bool = True) -> Principal | None:
        """Check ``given`` against the store (blocking: run it off the event loop); None if it
        is no live key (nor, with ``builtin``, the token file's). StoreUnavailable if the
        store cannot say."""
        hit = self.cached(given) if builtin else self.cached_key(given)
        if hit is not None:
            return hit
        key_id = keys.key_id_of(given)
        if key_id is None or self._store is None:
            return None
        row = self._store.find_key(key_id)
        if row is None or row.revoked_at is not None:
            return None
        if not keys.matches(self._store.secret(), given, row.digest):
            return None
        principal = Principal(row.tenant, row.key_id, frozenset(row.scopes))
        now = self._clock()
        with self._lock:
            if len(self._cache) >= MAX_TRACKED:
                self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            self._cache[hashlib.sha256(given.encode()).digest()] = (principal, now + self._cache_s)
        return principal

    def locked_out(self, address: str) -> Refusal | None:
        """A refusal while ``address`` has spent its failed attempts (checked before a key)."""
        wait = self.failures.wait(address)
        if wait <= 0:
            return None
        return Refusal(
            429,
            "too_many_failures",
            "too many failed authentications from this address; try again later",
            "Authorization",
            max(1, math.ceil(wait)),
        )

    def failed(self, address: str, given: str) -> Refusal:
        """Count a failed authentication of ``address``; log it without the key; the 401."""
        self.failures.take(address)
        key_id = keys.key_id_of(given)
        what = "missing" if not given else "wrong"
        logger.warning(
            "auth: {} bearer from {}{}",
            what,
            address,
            f" (key {key_id}: unknown or revoked)" if key_id else "",
        )
        return Refusal(401, "unauthorized", f"Authorization: bearer token {what}", "Authorization")

    def admit(self, principal: Principal, method: str, path: str) -> Refusal | None:
        """Scope and rate: None, or why the request is refused."""
        needed = required_scope(method, path)
        if needed not in principal.scopes and not principal.admin:
            return Refusal(403, "forbidden", f"this key lacks the {needed!r} scope")
        if principal is BUILTIN:  # the operator's own token is not throttled
            return None
        wait = self.requests.take(principal.key_id)
        if wait > 0:
            return Refusal(
                429,
                "rate_limited",
                "this key's request rate is over api_rate_per_key; slow down",
                retry_after=max(1, math.ceil(wait)),
            )
        return None


def authenticator(settings: Any, token: str, daemon: Any) -> Authenticator:
    """The daemon's authenticator from its settings (``daemon.tenants``: the key store)."""
    return Authenticator(
        token,
        daemon.tenants,
        cache_s=settings.key_cache_s,
        rate_per_s=settings.api_rate_per_key,
        burst=settings.api_burst_per_key,
        failures_per_minute=settings.auth_failures_per_minute,
    )
