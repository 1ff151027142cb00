"""Rate limits as OpenAI states and enforces them: token buckets and ``x-ratelimit-*``.

OpenAI sends, on every answer, ``x-ratelimit-limit-requests`` (the bucket's size),
``x-ratelimit-remaining-requests`` and ``x-ratelimit-reset-requests`` (a Go-style
duration until the bucket is full again: ``1s``, ``6m0s``, ``120ms``), and the same
three for ``-tokens``; a refused request gets 429 with ``retry-after`` and
``retry-after-ms``. A client can learn the refill rate from them
((limit - remaining) / reset), which is what briefd's limiter does, so the simulator
keeps real buckets: ``rps`` with ``burst`` for requests, ``tpm`` for tokens. A bucket
that is not configured still reports (a large nominal budget) but never refuses.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

NOMINAL_RPM = 10_000
NOMINAL_TPM = 30_000_000
_EPSILON = 1e-9  # refills are float sums: 0.1 s at 10/s must make one whole request


def format_duration(seconds: float) -> str:
    """A Go duration as OpenAI writes them: ``120ms``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        ms = math.ceil(seconds * 1000)
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{round(secs, 3):g}s"
    if minutes or hours:
        text = f"{int(minutes)}m{text}"
    if hours:
        text = f"{int(hours)}h{text}"
    return text


class TokenBucket:
    """``capacity`` units refilled at ``rate`` per second; ``enforced`` decides refusals."""

    def __init__(self, capacity: float, rate: float, *, enforced: bool, now: float) -> None:
        if capacity <= 0 or rate <= 0:
            raise ValueError("a bucket needs a positive capacity and rate")
        self.capacity = capacity
        self.rate = rate
        self.enforced = enforced
        self._level = capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` is available (0 if now, or if not enforced)."""
        self._refill(now)
        if not self.enforced or self._level + _EPSILON >= amount:
            return 0.0
        return (min(amount, self.capacity) - self._level) / self.rate

    def take(self, amount: float) -> None:
        self._level = max(0.0, self._level - amount) if self.enforced else self._level - amount

    def headers(self, kind: str, now: float) -> dict[str, str]:
        self._refill(now)
        level = max(0.0, self._level)
        return {
            f"x-ratelimit-limit-{kind}": str(int(self.capacity)),
            f"x-ratelimit-remaining-{kind}": str(int(level)),
            f"x-ratelimit-reset-{kind}": format_duration((self.capacity - level) / self.rate),
        }


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's verdict on one request, with the headers its answer carries."""

    allowed: bool
    headers: dict[str, str]
    retry_after_s: float = 0.0
    exhausted: str = ""  # "requests" or "tokens" when refused
    limit: int = 0
    used: int = 0


class SimRateLimits:
    """The request and token buckets of one simulated organisation, behind one lock."""

    def __init__(
        self,
        rps: float | None = None,
        burst: int | None = None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        if rps is not None:
            cap = float(burst if burst is not None else max(1, math.ceil(rps)))
            self.requests = TokenBucket(cap, rps, enforced=True, now=now)
        else:
            self.requests = TokenBucket(NOMINAL_RPM, NOMINAL_RPM / 60, enforced=False, now=now)
        if tpm is not None:
            self.tokens = TokenBucket(tpm, tpm / 60, enforced=True, now=now)
        else:
            self.tokens = TokenBucket(NOMINAL_TPM, NOMINAL_TPM / 60, enforced=False, now=now)
        self.enforced = rps is not None or tpm is not None

    def _headers(self, now: float) -> dict[str, str]:
        return {**self.requests.headers("requests", now), **self.tokens.headers("tokens", now)}

    def peek(self) -> dict[str, str]:
        """The headers of an answer that took nothing from the buckets (a refusal)."""
        with self._lock:
            return self._headers(self._clock())

    def admit(self, tokens: int) -> Admission:
        """Take one request and ``tokens`` from the buckets, or say how long to wait."""
        with self._lock:
            now = self._clock()
            wait_r = self.requests.wait_for(1, now)
            wait_t = self.tokens.wait_for(tokens, now)
            if wait_r or wait_t:
                bucket, kind = (
                    (self.requests, "requests") if wait_r >= wait_t else (self.tokens, "tokens")
                )
                headers = self._headers(now)
                wait = max(wait_r, wait_t)
                remaining = int(headers[f"x-ratelimit-remaining-{kind}"])
                headers["retry-after"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                limit = int(bucket.capacity)
                return Admission(False, headers, wait, kind, limit, limit - remaining)
            self.requests.take(1)
            self.tokens.take(tokens)
            return Admission(True, self._headers(now))


def rate_limited_message(model: str, admission: Admission, requested: int) -> str:
    """OpenAI's 429 wording for an exhausted bucket."""
    unit = "requests per min (RPM)" if admission.exhausted == "requests" else "tokens per min (TPM)"
    return (
        f"Rate limit reached for {model} in organization org-sim on {unit}: "
        f"Limit {admission.limit}, Used {admission.used}, Requested {requested}. "
        f"Please try again in {format_duration(admission.retry_after_s)}. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )
