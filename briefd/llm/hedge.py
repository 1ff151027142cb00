"""Hedging: the policy (when, how often) and the race between a call and its second copy.

A few calls in a hundred wait far longer for their first token than the rest (a
cold replica, a long queue on one server); a job waits for its slowest stage, so
this tail, not the median, sets its latency. ``BRIEFD_HEDGE_AFTER_MS`` (off by
default) sends a second copy of a call that has no first token after that many
ms, or after the p95 of recent first tokens (``p95``); the first of the two to
write a token wins and the other is cut. Hedges are at most :data:`HEDGE_SHARE` of
the process's calls (:class:`HedgeBudget`), so a server that is slow for everyone
is not sent twice the load.

This module holds what needs no actor: :class:`HedgePolicy` (the delay and the cap)
and :class:`Race` (who wrote first, cutting the other). The second copy is made by
a hedge actor (:mod:`briefd.actors.hedge`) that asks the rate limiter for a token
of its own, so K still bounds the calls in flight.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

from briefd.config import ConfigError
from briefd.llm.abort import CallAbort
from briefd.llm.answer import Completion
from briefd.llm.errors import CallError
from briefd.messages import Usage

HEDGE_SHARE = 0.10
"""At most this share of calls get a second copy."""
P95_SAMPLES = 200
"""Recent first tokens the ``p95`` delay is taken from."""
P95_MIN_SAMPLES = 20
"""Fewer first tokens than this seen: ``p95`` does not hedge yet (no estimate)."""

Side = Literal["primary", "hedge"]


def parse_hedge_after(value: str | None) -> float | Literal["p95"] | None:
    """``BRIEFD_HEDGE_AFTER_MS``: None (off), ``p95``, or a delay in seconds (> 0)."""
    if value is None or not value.strip():
        return None
    text = value.strip().lower()
    if text == "p95":
        return "p95"
    try:
        ms = float(text)
    except ValueError:
        ms = -1.0
    if not ms > 0 or ms != ms or ms == float("inf"):
        raise ConfigError(
            f"BRIEFD_HEDGE_AFTER_MS: a number of milliseconds > 0 or 'p95' (got {value!r})"
        )
    return ms / 1000


class HedgeBudget:
    """Calls and hedges of the process: a hedge is allowed while hedges + 1 <= share x calls.

    Thread-safe; shared by every stage of the process (:data:`BUDGET`), like the
    connection pools and the breakers, because the cap is on the load sent upstream.
    """

    def __init__(self, share: float = HEDGE_SHARE) -> None:
        self.share = share
        self._lock = threading.Lock()
        self.calls = 0
        self.hedges = 0
        self._ttfts: deque[float] = deque(maxlen=P95_SAMPLES)

    def called(self) -> None:
        with self._lock:
            self.calls += 1

    def take(self) -> bool:
        """One hedge, if the cap allows it now; counted if so."""
        with self._lock:
            if self.hedges + 1 > self.share * self.calls:
                return False
            self.hedges += 1
            return True

    def saw_first_token(self, seconds: float) -> None:
        with self._lock:
            self._ttfts.append(seconds)

    def p95(self) -> float | None:
        """The p95 of recent first tokens (nearest rank), or None with too few."""
        with self._lock:
            values = sorted(self._ttfts)
        if len(values) < P95_MIN_SAMPLES:
            return None
        return values[min(len(values) - 1, max(0, -(-95 * len(values) // 100) - 1))]

    def reset(self) -> None:
        with self._lock:
            self.calls = self.hedges = 0
            self._ttfts.clear()


BUDGET = HedgeBudget()
"""The process's hedge budget."""


@dataclass(frozen=True)
class HedgePolicy:
    """When a call is hedged: after ``after`` (seconds, or the budget's p95), within the cap."""

    after: float | Literal["p95"]
    budget: HedgeBudget = BUDGET

    def delay_s(self) -> float | None:
        return self.budget.p95() if self.after == "p95" else self.after


class Race:
    """A call and its hedge: the first to write a token wins; the other is cut.

    ``primary`` is the abort the primary call's connection registers with (the
    stage's); :meth:`CallAbort.cut` ends that call without refusing the stage's
    later ones. The hedge has an abort of its own (``hedge_abort``).
    """

    def __init__(self, primary: CallAbort) -> None:
        self._lock = threading.Lock()
        self._primary = primary
        self.hedge_abort = CallAbort()
        self.winner: Side | None = None
        self.launched = False
        self.hedge_done = threading.Event()  # the hedge ended (answered, failed, cut, refused)
        self.hedge_result: Completion | None = None
        self.hedge_error: CallError | None = None
        self.hedge_usage = Usage()  # what the hedge's server reported, whoever won

    def open(self) -> bool:
        """No one has written yet (a hedge may still be launched)."""
        return self.winner is None

    def first(self, side: Side) -> bool:
        """``side`` wrote a token (or answered whole): True if it is the first, which cuts
        the other side's call."""
        with self._lock:
            if self.winner is not None:
                return self.winner == side
            self.winner = side
            launched = self.launched
        if side == "hedge":
            self._primary.cut()
        elif launched:
            self.hedge_abort.abort()
        return True

    def launch(self) -> bool:
        """Mark the hedge launched, if no one has written yet."""
        with self._lock:
            if self.winner is not None:
                return False
            self.launched = True
            return True

    def hedge_ended(
        self, result: Completion | None, error: CallError | None, usage: Usage | None
    ) -> None:
        self.hedge_result, self.hedge_error = result, error
        if usage is not None:
            self.hedge_usage = usage
        self.hedge_done.set()

    def give_up(self) -> None:
        """The primary ended (answered or failed): the hedge has nothing left to win."""
        with self._lock:
            if self.winner is None:
                self.winner = "primary"
            launched = self.launched
        if launched:
            self.hedge_abort.abort()
