"""When to retry a call and how long to wait: tenacity decides, the actor waits.

tenacity's ``Retrying`` usually sleeps in the calling thread. A stage actor
must not: it must give its token back and stay responsive during a backoff.
So the stage drives ``Retrying.iter`` itself: after each attempt it records
the outcome and asks tenacity for the next step (``DoSleep`` -> schedule a
timer; a result -> done; an exception -> give up).

A 429 does not spend the stage's retry budget (``BRIEFD_MAX_RETRIES``): it says
the server is busy, not that this call is bad, and the limiter already slows
everyone down for it. So 429s are counted apart, against a larger bound
(``BRIEFD_MAX_RATE_LIMITED``, 20 by default), so that a server that answers 429
forever still ends the stage (RATE_LIMITED) instead of holding its job for ever:
with ``max_rate_limited = N`` a stage makes at most N + 1 calls that are answered 429.
"""

from __future__ import annotations

from typing import Any

import tenacity
from tenacity import RetryCallState

from briefd.config import Settings
from briefd.llm.errors import CallError, StatusError, StreamError, TransportError
from briefd.messages import ErrorCode
from briefd.messages.token import Outcome


def is_transient(exc: BaseException) -> bool:
    """Timeouts, stalled streams, connection errors, 429, 500/502/503/504 and an error
    sent mid-stream are worth another try."""
    return isinstance(exc, CallError) and exc.retryable


class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """The server's ``Retry-After`` when it sent one, else exponential backoff with jitter."""

    def __init__(self, settings: Settings) -> None:
        self._backoff = tenacity.wait_exponential(
            multiplier=settings.backoff_initial_s, max=settings.backoff_max_s
        ) + tenacity.wait_random(0, settings.backoff_initial_s / 4)

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, StatusError) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(retry_state))


def is_rate_limited(exc: BaseException | None) -> bool:
    """A 429 (the server's rate limit, not a quota that waiting never refills)."""
    return isinstance(exc, StatusError) and exc.code is ErrorCode.RATE_LIMITED


class _StopAfter(tenacity.stop.stop_base):
    """Stop after ``attempts`` calls that were not 429s, or once more than ``rate_limited``
    calls were 429s (``rate_limited`` retries of a 429, ``BRIEFD_MAX_RATE_LIMITED``).

    tenacity asks once per failed attempt; each attempt is counted once (by its number).
    """

    def __init__(self, attempts: int, rate_limited: int) -> None:
        self._attempts = attempts
        self._rate_limited = rate_limited
        self._seen: dict[int, bool] = {}  # attempt number -> was it a 429

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        self._seen[retry_state.attempt_number] = is_rate_limited(exc)
        limited = sum(self._seen.values())
        return len(self._seen) - limited >= self._attempts or limited > self._rate_limited


def make_retrying(settings: Settings) -> tenacity.Retrying:
    """The retry policy for one stage, from settings (``BRIEFD_RETRY_ENABLED``, ...)."""
    if settings.retry_enabled:
        stop: tenacity.stop.stop_base = _StopAfter(
            settings.max_retries + 1, settings.max_rate_limited
        )
    else:
        stop = tenacity.stop_after_attempt(1)
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=stop,
        wait=_WaitRetryAfterOrBackoff(settings),
        reraise=True,
    )


class RetryDriver:
    """One stage's run through the policy, step by step, without sleeping."""

    def __init__(self, retrying: tenacity.Retrying) -> None:
        # tenacity keeps its per-run state in thread-locals: build the driver in
        # the thread that will use it (the stage actor's), never in its creator's.
        self._retrying = retrying
        retrying.begin()
        self._state = RetryCallState(retrying, fn=None, args=(), kwargs={})
        first = retrying.iter(self._state)
        assert isinstance(first, tenacity.DoAttempt)

    @property
    def attempt(self) -> int:
        return self._state.attempt_number

    def failed(self, exc: BaseException) -> float:
        """Record a failure: the seconds to wait before the next attempt.

        Re-raises ``exc`` when the policy says to give up.
        """
        self._state.set_exception((type(exc), exc, exc.__traceback__))
        action: Any = self._retrying.iter(self._state)
        if isinstance(action, tenacity.DoSleep):
            self._state.prepare_for_next_attempt()
            return float(action)
        raise exc  # not reached: iter re-raises (reraise=True)


def outcome_of(exc: BaseException) -> Outcome:
    """How a failed call ended, for the limiter's window (see :mod:`briefd.limits.window`)."""
    if isinstance(exc, StatusError) and exc.status == 503:
        return "rate_limited"  # "overloaded, come back later": a refusal like 429
    if isinstance(exc, StatusError) and exc.status == 429:
        return "rate_limited" if exc.code is ErrorCode.RATE_LIMITED else "other"  # not a quota
    if isinstance(exc, StatusError) and exc.status >= 500:
        return "overloaded"
    if isinstance(exc, StreamError) and exc.code is ErrorCode.SERVER_ERROR:
        return "overloaded"  # a 5xx that came after the 200, in the stream
    if isinstance(exc, TransportError) and exc.code in (ErrorCode.TIMEOUT, ErrorCode.STALLED):
        return "overloaded"  # a stalled stream: a timeout that was seen sooner
    return "other"
