"""What an attempt's answer means for its delivery, and when the next one is due.

2xx: delivered. 410 Gone: the receiver asked for no more (given up at once,
as Standard Webhooks receivers expect). Anything else (another status, a refused
or reset connection, a timeout, an address refused at the attempt) is retried
after an exponential backoff with full jitter, between ``initial_s`` and
``max_s``, honouring a ``Retry-After`` within that bound, until ``retry_for_s``
after the delivery was written (24 h by default; the last attempt falls on that
moment): then it is failed. The jitter
keeps a receiver that comes back from being hit by every waiting delivery at
the same instant; the time bound (not a count) is what receivers plan for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Outcome = Literal["delivered", "retry", "gave_up", "expired"]


@dataclass(frozen=True)
class RetryPolicy:
    """The schedule (``BRIEFD_WEBHOOK_RETRY_INITIAL_S``, ``_MAX_S``, ``_FOR_S``)."""

    initial_s: float = 5.0
    max_s: float = 3600.0
    retry_for_s: float = 86_400.0

    def delay(
        self, attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds before the attempt after ``attempt`` (1-based): ``initial * 2^(attempt-1)``
        capped at ``max_s``, drawn in its upper half (never sooner than half the step), or
        the receiver's ``Retry-After`` when it asks for longer (capped at ``max_s`` too)."""
        step: float = min(self.initial_s * 2 ** min(attempt - 1, 40), self.max_s)
        wait = step * (0.5 + (rng or random).random() / 2)
        if retry_after_s is not None and retry_after_s > wait:
            wait = min(retry_after_s, self.max_s)
        return wait

    def decide(
        self,
        status: int | None,
        attempt: int,
        age_s: float,
        retry_after_s: float | None = None,
    ) -> tuple[Outcome, float | None]:
        """``(outcome, seconds to the next attempt or None)`` after an attempt that got
        ``status`` (None: no answer), ``age_s`` after its delivery was written."""
        if status is not None and 200 <= status < 300:
            return "delivered", None
        if status == 410:
            return "gave_up", None
        if age_s >= self.retry_for_s:
            return "expired", None
        # The last attempt falls on retry_for_s itself: retried for that long, at least.
        return "retry", min(self.delay(attempt, retry_after_s), self.retry_for_s - age_s)


def retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (the delta-seconds form; a date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
