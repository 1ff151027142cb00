"""A provider budget (requests or tokens per minute) as GCRA: one timestamp, no buckets.

The generic cell rate algorithm keeps a *theoretical arrival time* (TAT): the
moment the budget would be fully spent if every unit already taken had been
spent at the steady rate. With emission interval ``T = 60 s / per_minute`` and
burst tolerance ``tau`` seconds, a call of cost ``c`` may go now when
``max(TAT, now) + c·T - now <= tau``; it then moves ``TAT`` to
``max(TAT, now) + c·T``. A weighted call (a prompt of 3,000 tokens) costs no
more to check than a unit one, and the whole state is one float, which the
limiter keeps in its ``LimiterState`` so a restarted limiter keeps its pace.

A call costlier than the whole burst would never fit; it is let through when
the budget is idle (``TAT ≤ now``) rather than blocked forever, and its cost
pushes the next call back as far as it should.

Token costs are estimated before the call (prompt characters / 4 plus
``max_tokens``: the provider charges ``max_tokens`` on arrival too) and
settled when the server reports ``usage``: :meth:`Gcra.settle` moves TAT
forward by what was under-estimated, or back (never before now) by what was
over-estimated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_BURST_S = 10.0
"""Burst tolerance: up to ten seconds' worth of the budget at once (Azure checks RPM over 1-10 s
windows, so a whole minute's burst would be refused)."""


@dataclass
class Gcra:
    """One budget of ``per_minute`` units; ``clock`` is injectable (monotonic seconds)."""

    per_minute: float
    burst_s: float = DEFAULT_BURST_S
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    tat: float = 0.0

    @property
    def interval(self) -> float:
        """Seconds of budget one unit costs (T)."""
        return 60.0 / self.per_minute

    def wait(self, cost: float) -> float:
        """Seconds until a call of ``cost`` units may go (0: now)."""
        now = self.clock()
        start = max(self.tat, now)
        over = start + cost * self.interval - now - self.burst_s
        if over <= 0:
            return 0.0
        if cost * self.interval > self.burst_s:  # larger than any burst: wait for idle
            return max(0.0, self.tat - now)
        return over

    def take(self, cost: float) -> None:
        """Spend ``cost`` units (call after :meth:`wait` said 0)."""
        self.tat = max(self.tat, self.clock()) + cost * self.interval

    def settle(self, estimated: float, actual: float) -> None:
        """The call cost ``actual``, not ``estimated``: charge or refund the difference."""
        self.tat += (actual - estimated) * self.interval
        self.tat = max(self.tat, self.clock()) if actual < estimated else self.tat

    def lag(self) -> float:
        """How far TAT runs ahead of now (s): 0 for an idle budget, up to ``burst_s`` or more."""
        return max(0.0, self.tat - self.clock())


def estimate_tokens(prompt_chars: int, max_tokens: int | None) -> int:
    """A call's token cost before it is made: characters / 4 (English averages about four
    per token) plus ``max_tokens``, which providers reserve on arrival."""
    return prompt_chars // 4 + (max_tokens or 0)
