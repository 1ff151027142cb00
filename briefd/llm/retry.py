"""When to retry a call and how long to wait: tenacity decides, the actor waits.

tenacity's ``Retrying`` usually sleeps in the calling thread. A stage actor
must not: it must give its token back and stay responsive during a backoff.
So the stage drives ``Retrying.iter`` itself: after each attempt it records
the outcome and asks tenacity for the next step (``DoSleep`` -> schedule a
timer; a result -> done; an exception -> give up).
"""

from __future__ import annotations

from typing import Any

import tenacity
from tenacity import RetryCallState

from briefd.config import Settings
from briefd.llm.errors import CallError, StatusError


def is_transient(exc: BaseException) -> bool:
    """Timeouts, connection errors, 429 and 500/502/503/504 are worth another try."""
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


def make_retrying(settings: Settings) -> tenacity.Retrying:
    """The retry policy for one stage, from settings (``BRIEFD_RETRY_ENABLED``, ...)."""
    attempts = settings.max_retries + 1 if settings.retry_enabled else 1
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts),
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
