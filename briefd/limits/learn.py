"""A budget nobody configured, learned from what the server's headers say about it.

A server that sends ``limit``, ``remaining`` and ``reset`` for a budget
(``x-ratelimit-{limit,remaining,reset}-requests`` and ``-tokens``; Anthropic's
``anthropic-ratelimit-*``) describes a *token bucket*: ``limit`` units when
full, ``remaining`` left now, full again in ``reset`` seconds. If the bucket
refills at a steady rate, the ``limit - remaining`` units it lacks come back in
``reset`` seconds, so

    rate = (limit - remaining) / reset        (units per second)

whatever period the provider quotes its limit in. OpenAI's ``limit`` is per
minute and its ``reset`` the time until the bucket is full again, so this gives
``limit / 60`` there (600 RPM: 10 a second); a gateway whose bucket holds 2
requests refilled at 10 a second sends ``limit: 2`` and the same formula gives
10 a second, where reading ``limit`` as per minute would give 2 RPM. Anthropic's
reset is a time (RFC 3339, whole seconds) and its buckets refill continuously:
the same formula, coarser. Groq quotes its requests budget per *day*: the
formula still gives its refill rate, and the burst (below) is the whole day's
budget, so pacing by it costs nothing. Azure sends ``remaining`` without
``limit``: nothing is learned and the older rule (``remaining: 0`` pauses until
the reset) holds, as it does for a server with fixed windows, whose answers do
not agree with one rate (each new sample then starts the estimate afresh).

``remaining`` is a whole number (the calls that may start now), so one answer
only bounds the rate: the bucket lacks more than ``limit - remaining - 1`` and
at most ``limit - remaining`` units. :class:`Refill` intersects those bounds
over answers and uses the middle (a large bucket's first answer pins the rate;
a bucket of 2 needs answers at different fill levels, and was measured within
5 % of the truth); an answer outside them means the budget changed, and starts
again from it. An
answer from a full bucket, or with no reset, says nothing of the rate.

The budget is then a GCRA (:mod:`briefd.limits.gcra`) at that rate whose burst
is the bucket's size less :data:`RESERVE` units: calls are sent when the server
should have a unit and a half left, so a call that reaches the server a little
early (network jitter, a timer firing late for the one before) still finds a
whole unit. Every answer also sets the budget's clock to the server's own
reading: the bucket is full ``reset`` seconds after the call was sent (a
server reads its bucket when a call arrives, as it admits it), plus the calls
sent after that one, which that reading did not count. (A server that reads
its bucket when it answers counts those later calls itself, but its reading is
then later by the call's duration, in which about as many units were sent at
the pace: the two errors about cancel.) So an estimate a little off, another
client spending the same budget, calls refused at the start before anything
was learned (charged here, not there) are all corrected at the next answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from briefd.limits.gcra import Gcra

RESERVE = 0.5
"""Units of the server's bucket left unspent, against calls that arrive early."""
MAX_RESET_S = 60.0
"""A reset further off than this is a daily budget (or clamped by ``BRIEFD_RETRY_AFTER_MAX_S``):
not used to learn a rate (a clamped one would overstate it); its clock reading still counts."""
_SLACK_S = 0.001  # a reset printed in whole milliseconds (rounded, or up) is up to one off
_SLACK = 0.01  # and any reset a percent, for the time the answer took to be written


@dataclass
class Refill:
    """The bounds on one budget's refill rate that the answers so far agree on."""

    limit: int = 0  # the bucket's size (0: nothing learned yet)
    lo: float = 0.0  # units per second, more than
    hi: float = math.inf  # units per second, at most

    def observe(self, limit: int | None, remaining: int | None, reset_s: float | None) -> None:
        """Narrow the bounds by one answer's ``limit``, ``remaining`` and ``reset``."""
        if not limit or remaining is None or reset_s is None:
            return
        missing = limit - remaining
        if missing <= 0 or reset_s <= 0 or reset_s > MAX_RESET_S:
            return  # a full bucket, or no time to refill in: nothing about the rate
        slack = _SLACK_S + _SLACK * reset_s
        lo = (missing - 1) / (reset_s + slack)
        hi = missing / max(reset_s - slack, 1e-6)
        if limit != self.limit or lo > self.hi or hi < self.lo:
            self.limit, self.lo, self.hi = limit, lo, hi  # a new budget: start again from here
        else:
            self.lo, self.hi = max(self.lo, lo), min(self.hi, hi)

    @property
    def rate(self) -> float | None:
        """Units per second (the middle of the bounds), None until an answer said."""
        if not self.limit or not math.isfinite(self.hi):
            return None
        return (self.lo + self.hi) / 2


def relearn(
    budget: Gcra | None,
    refill: Refill,
    *,
    limit: int | None,
    remaining: int | None,
    reset_s: float | None,
    clock: Callable[[], float],
    sent_at: float | None = None,
    later: float = 0.0,
) -> Gcra | None:
    """``budget`` after one answer: ``refill`` learns from it, the budget takes the rate and
    the bucket's size, and its clock is set to the server's reading as of ``sent_at`` (when
    the call answered was sent, on ``clock``; None: now) plus ``later`` (units charged for
    calls sent after it). None while nothing is known."""
    refill.observe(limit, remaining, reset_s)
    rate = refill.rate
    if rate is None:
        return budget
    interval = 1.0 / rate
    tat = budget.tat if budget is not None else 0.0
    if remaining is not None and reset_s is not None:
        read_at = clock() if sent_at is None else sent_at
        tat = read_at + reset_s + later * interval  # the server's bucket is full again then
    return Gcra(
        rate * 60.0,
        burst_s=max(0.0, refill.limit - RESERVE) * interval,
        clock=clock,
        tat=tat,
    )
