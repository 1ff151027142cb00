"""A call's work as it would have cost alone: the speed-up's numerator on batching servers.

llama.cpp's server (the embedded engine, issue 19) decodes its slots together
(continuous batching). Each request's ``timings`` (``prompt_ms``, ``predicted_ms``)
then run from its first to its last token, and on a CPU-bound machine every step
of the shared batch is slower: two requests decoded together take about as long
as one after the other, yet each one's server time counts the other's share. A
speed-up summed from those times reads 1.37x where the stages saved 3 %.

The cure is a rate, not a clock. A call's *sequential-equivalent* work is its
tokens at the per-token times the same server achieves for a call that has it to
itself: ``prompt_n x prompt rate + predicted_n x decode rate``, each part capped at
what the server measured for the call (a rate never makes a call cost more than it
took). A call that had the server to itself counts its own times as they are.
:class:`WorkBook` learns the two rates per ``endpoint:model`` (process-wide)
from the last :data:`WINDOW` calls that had no other call of this process in
flight to the same endpoint and model from start to end, as token-weighted means
(sum of ms / sum of tokens: a one-token prompt cannot swing it). Until such a call
is seen, a call's work is the server's time for it, then the client's. On a server
with real parallel capacity, a call's rates are the alone rates, so its work is its
server time and the figure is what it was; on a serializing server, a queued call
is not in its ``timings`` at all.

What it cannot see: another process's calls to the same server (they slow an
"alone" call down, so the rates learned are slow and the figure drifts back towards
the servers' times, never above them) and a server whose pace differs between
stages (a grammar-constrained JSON answer may decode slower than free text: the
rates are the key's, over all its stages).
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from briefd.messages import ServerWork

WINDOW = 16
"""Alone calls kept per endpoint:model: enough to smooth one odd call, few enough to follow
a server whose load changes."""


def key_of(endpoint: str, model: str, base_url: str) -> str:
    """The book's key for a route: ``endpoint:model@host:port`` (the URL's host and port
    only, never its user part), so two servers under one endpoint name stay apart."""
    try:
        parts = urlsplit(base_url)
        where = parts.hostname or ""
        where += f":{parts.port}" if parts.port else ""
    except ValueError:
        where = ""
    return f"{endpoint}:{model}@{where}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < 1e9 else None


def timing_of(data: Any) -> ServerWork | None:
    """llama.cpp's ``timings`` of an answer (or a stream's last chunk), else None.

    ``prompt_n`` is the prompt tokens the server processed (its cache's excluded),
    ``predicted_n`` the tokens it generated; both times in milliseconds.
    """
    timings = data.get("timings") if isinstance(data, dict) else None
    if not isinstance(timings, dict):
        return None
    values = [_number(timings.get(k)) for k in ("prompt_n", "prompt_ms", "predicted_n")]
    predicted_ms = _number(timings.get("predicted_ms"))
    if predicted_ms is None or any(v is None for v in values):
        return None
    prompt_n, prompt_ms, predicted_n = (v or 0.0 for v in values)
    return ServerWork(
        prompt_n=int(prompt_n),
        prompt_ms=prompt_ms,
        predicted_n=int(predicted_n),
        predicted_ms=predicted_ms,
    )


def add(a: ServerWork | None, b: ServerWork) -> ServerWork:
    """Two calls' timings summed (a stage's attempts)."""
    if a is None:
        return b
    return ServerWork(
        prompt_n=a.prompt_n + b.prompt_n,
        prompt_ms=a.prompt_ms + b.prompt_ms,
        predicted_n=a.predicted_n + b.predicted_n,
        predicted_ms=a.predicted_ms + b.predicted_ms,
        shared=a.shared or b.shared,
    )


@dataclass(frozen=True)
class Rates:
    """Milliseconds per token of a server working on one call alone (None: not seen yet)."""

    prompt_ms: float | None
    predicted_ms: float | None


def sequential_ms(work: ServerWork, rates: Rates | None) -> int:
    """The calls' work as it would have cost alone: for calls that shared the server,
    tokens x alone rates, each part capped at what the server measured (without a rate,
    the server's measure of that part); for calls that had it alone, their own times."""

    def part(n: int, ms: float, rate: float | None) -> float:
        return ms if rate is None else min(ms, n * rate)

    if rates is None or not work.shared:  # alone, its times are its own work
        return round(work.prompt_ms + work.predicted_ms)
    return round(
        part(work.prompt_n, work.prompt_ms, rates.prompt_ms)
        + part(work.predicted_n, work.predicted_ms, rates.predicted_ms)
    )


@dataclass
class _Learned:
    samples: deque[ServerWork]
    in_flight: set[int]
    overlapped: set[int]


class WorkBook:
    """Per endpoint:model: which calls are in flight, and the rates of those that were alone.

    Thread-safe (stage actors call it from their own threads); ``started`` before a
    call is sent, ``ended`` once it is over, whatever its outcome.
    """

    def __init__(self, window: int = WINDOW) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._keys: dict[str, _Learned] = {}
        self._ids = itertools.count(1)

    def _learned(self, key: str) -> _Learned:
        learned = self._keys.get(key)
        if learned is None:
            learned = self._keys[key] = _Learned(deque(maxlen=self._window), set(), set())
        return learned

    def started(self, key: str) -> tuple[str, int]:
        """A call to ``key`` is about to be sent; its ticket for :meth:`ended`."""
        with self._lock:
            learned = self._learned(key)
            call = next(self._ids)
            learned.in_flight.add(call)
            if len(learned.in_flight) > 1:  # every call in flight now shares the server
                learned.overlapped |= learned.in_flight
            return key, call

    def ended(self, ticket: tuple[str, int], work: ServerWork | None) -> bool:
        """The call is over; True if no other call to its key was in flight meanwhile.
        An alone call's ``work`` (its server's timings) teaches the key's rates. A second
        ``ended`` of the same ticket does nothing."""
        key, call = ticket
        with self._lock:
            learned = self._learned(key)
            if call not in learned.in_flight:  # ended before: once is enough
                return False
            learned.in_flight.discard(call)
            alone = call not in learned.overlapped
            learned.overlapped.discard(call)
            if alone and work is not None:
                learned.samples.append(work)
            return alone

    def rates(self, key: str) -> Rates | None:
        """Token-weighted ms per token of the key's recent alone calls; None if none yet."""
        with self._lock:
            learned = self._keys.get(key)
            samples = list(learned.samples) if learned is not None else []
        if not samples:
            return None

        def per_token(n: float, ms: float) -> float | None:
            return ms / n if n > 0 else None

        return Rates(
            prompt_ms=per_token(
                sum(s.prompt_n for s in samples), sum(s.prompt_ms for s in samples)
            ),
            predicted_ms=per_token(
                sum(s.predicted_n for s in samples), sum(s.predicted_ms for s in samples)
            ),
        )

    def reset(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._keys.clear()


BOOK = WorkBook()
"""The process's book: every stage of every pipeline in this process learns into it."""

RatesOf = Callable[[str], Rates | None]
