"""What a server says about its rate limits, from its response headers.

OpenAI and most compatible gateways send ``x-ratelimit-limit-requests``/``-tokens``
(the budget's size), ``x-ratelimit-remaining-requests``,
``x-ratelimit-remaining-tokens`` and ``x-ratelimit-reset-requests``/``-tokens``
as Go-style durations (``6m0s``, ``1s``, ``12ms``, ``1h2m3.5s``); on a 429,
``retry-after-ms`` (Azure, OpenAI) and ``retry-after`` (seconds or an HTTP
date). Anthropic sends ``anthropic-ratelimit-requests-limit``/``-remaining``, the
same for ``-tokens-``, and ``-reset`` as RFC 3339 times. Everything becomes
seconds from now in one :class:`~briefd.messages.token.RateLimits`, so the
limiter need not know who sent it.

Garbage is ignored field by field (a header that does not parse is as if it
were absent): a gateway's odd header must never fail a call that was paid
for. Waits are clamped to ``maximum`` (``BRIEFD_RETRY_AFTER_MAX_S``).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TypeVar

from briefd.messages.token import RateLimits

_T = TypeVar("_T")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str | None) -> float | None:
    """Seconds from a Go duration (``1h2m3.5s``, ``12ms``) or a bare number of seconds."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                return None
            seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_http_wait(value: str | None, *, now: float) -> float | None:
    """Seconds from ``Retry-After``: a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def parse_rfc3339_wait(value: str | None, *, now: float) -> float | None:
    """Seconds until an RFC 3339 time (``2025-08-21T12:40:59Z``), 0 if it has passed."""
    if value is None or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


def _clamp(seconds: float | None, maximum: float) -> float | None:
    return None if seconds is None else min(seconds, maximum)


def parse_rate_limits(
    headers: Mapping[str, str], *, maximum: float, now: float | None = None
) -> RateLimits:
    """The limits in ``headers`` (any case), waits in seconds from ``now`` (Unix time)."""
    h = {k.lower(): v for k, v in headers.items()}
    at = time.time() if now is None else now
    retry_ms = parse_duration(h.get("retry-after-ms") or h.get("x-ms-retry-after-ms"))
    retry = (
        retry_ms / 1000 if retry_ms is not None else parse_http_wait(h.get("retry-after"), now=at)
    )
    anthropic_reset = parse_rfc3339_wait(h.get("anthropic-ratelimit-requests-reset"), now=at)
    anthropic_tokens_reset = parse_rfc3339_wait(h.get("anthropic-ratelimit-tokens-reset"), now=at)
    return RateLimits(
        limit_requests=_first(
            _count(h.get("x-ratelimit-limit-requests")),
            _count(h.get("anthropic-ratelimit-requests-limit")),
        ),
        limit_tokens=_first(
            _count(h.get("x-ratelimit-limit-tokens")),
            _count(h.get("anthropic-ratelimit-tokens-limit")),
        ),
        remaining_requests=_first(
            _count(h.get("x-ratelimit-remaining-requests")),
            _count(h.get("anthropic-ratelimit-requests-remaining")),
        ),
        remaining_tokens=_first(
            _count(h.get("x-ratelimit-remaining-tokens")),
            _count(h.get("anthropic-ratelimit-tokens-remaining")),
        ),
        reset_requests_s=_clamp(
            _first(parse_duration(h.get("x-ratelimit-reset-requests")), anthropic_reset), maximum
        ),
        reset_tokens_s=_clamp(
            _first(parse_duration(h.get("x-ratelimit-reset-tokens")), anthropic_tokens_reset),
            maximum,
        ),
        retry_after_s=_clamp(retry, maximum),
    )


def _first(*values: _T | None) -> _T | None:
    return next((v for v in values if v is not None), None)
