"""Timers that tell an actor a message later, so no actor ever sleeps.

A retry backoff, a rate-limit cool-down and a health check are all "tell me
this in N seconds". One scheduler thread serves the whole process (a heap of
deadlines under a condition variable): a thread per timer cost a thread per
job for the coordinator's health ``Tick`` alone, and waking hundreds of
tickers twice a second cost 10-15 % of a CPU while their jobs only waited.

Each actor owns one :class:`Timers` handle and closes it when it stops, which
cancels that actor's entries, so no timer fires into a dead actor for long.
The scheduler starts on first use (a daemon thread, restarted if a fork left
it behind), and firing is only ``ref.tell``: it never blocks on an actor.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pykka
from loguru import logger

from briefd.messages import Message, Tick

COMPACT_EVERY = 256
"""Schedules between looks for cancelled entries to drop (a call's watchdog is cancelled
long before its deadline, so without it they would sit in the heap until then)."""


class _Target(Protocol):
    """What a timer tells: a pykka ``ActorRef`` (or anything with its ``tell``)."""

    def tell(self, message: Any) -> None: ...


@dataclass(eq=False)
class TimerHandle:
    """One scheduled tell; :meth:`cancel` it before it fires to drop it.

    Ordered by deadline, then by scheduling order (the heap's key); hashed by identity.
    """

    due: float
    seq: int
    ref: _Target
    message: Message
    period_s: float | None = None
    owner: Timers | None = field(default=None, repr=False)
    cancelled: bool = False

    def __lt__(self, other: TimerHandle) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)

    def cancel(self) -> None:
        """Drop this timer (a no-op once fired or already cancelled)."""
        self.cancelled = True  # the scheduler skips it when it reaches the top of the heap
        if self.owner is not None:
            self.owner._forget(self)


class _Scheduler:
    """The process's one timer thread: sleeps until the earliest deadline, then tells."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[TimerHandle] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(
        self, ref: _Target, delay_s: float, message: Message, period_s: float | None
    ) -> TimerHandle:
        due = time.monotonic() + max(delay_s, 0.0)
        with self._cond:
            seq = next(self._seq)
            if seq % COMPACT_EVERY == 0:
                self._compact()
            entry = TimerHandle(due, seq, ref, message, period_s)
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="briefd-timers", daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:  # a new earliest deadline: wake the thread early
                self._cond.notify()
        return entry

    def _compact(self) -> None:
        """Drop cancelled entries when they are most of the heap (called holding the lock)."""
        live = [e for e in self._heap if not e.cancelled]
        if len(live) * 2 < len(self._heap):
            heapq.heapify(live)
            self._heap = live

    def pending(self) -> int:
        """Entries in the heap, cancelled ones not yet reached included (for tests)."""
        with self._cond:
            return len(self._heap)

    def _next_due(self) -> TimerHandle:
        """Wait for the earliest live entry to fall due and pop it (called holding the lock)."""
        while True:
            if not self._heap:
                self._cond.wait()
                continue
            first = self._heap[0]
            if first.cancelled:
                heapq.heappop(self._heap)
                continue
            wait = first.due - time.monotonic()
            if wait > 0:
                self._cond.wait(wait)
                continue
            return heapq.heappop(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                entry = self._next_due()
            self._fire(entry)

    def _fire(self, entry: TimerHandle) -> None:
        try:
            entry.ref.tell(entry.message)
        except pykka.ActorDeadError:
            entry.cancel()
            return
        except Exception as err:  # the one timer thread must outlive any target
            logger.opt(exception=err).error("timer tell failed: {!r}", err)
        if entry.period_s is None or entry.cancelled:
            entry.cancel()  # a one-shot leaves its owner's set
            return
        now = time.monotonic()
        # The next beat keeps the rhythm, but a late one does not fire again to catch up.
        entry.due = max(entry.due + entry.period_s, now)
        entry.seq = next(self._seq)
        with self._cond:
            if not entry.cancelled:
                heapq.heappush(self._heap, entry)

    def _after_fork(self) -> None:
        """A forked child has none of the parent's threads, and maybe a held lock."""
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None


_SCHEDULER = _Scheduler()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SCHEDULER._after_fork)


def scheduler_pending() -> int:
    """How many entries the process's scheduler holds (a test's window onto it)."""
    return _SCHEDULER.pending()


class _Call:
    """A timer target that calls a function (the HTTP call's watchdog) instead of telling."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn

    def tell(self, message: Any) -> None:
        self._fn()


_FIRE = Tick()


def call_later(delay_s: float, fn: Callable[[], object]) -> TimerHandle:
    """Call ``fn()`` on the timer thread after ``delay_s``; :meth:`TimerHandle.cancel` drops it.

    For work that needs no actor and must not block (a call's deadline watchdog
    shuts a socket): it runs on the one scheduler thread, so it must be quick.
    """
    return _SCHEDULER.schedule(_Call(fn), delay_s, _FIRE, None)


class Timers:
    """One actor's one-shot and repeating ``tell``-later timers; :meth:`close` cancels them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: set[TimerHandle] = set()
        self._closed = False

    def tell_later(
        self, ref: pykka.ActorRef[Any] | _Target, delay_s: float, message: Message
    ) -> TimerHandle | None:
        """Tell ``message`` to ``ref`` after ``delay_s`` seconds (if still alive).

        Returns the timer's handle, or None when this ``Timers`` is already closed.
        """
        return self._add(ref, delay_s, message, None)

    def every(
        self, ref: pykka.ActorRef[Any] | _Target, period_s: float, message: Message
    ) -> TimerHandle | None:
        """Tell ``message`` to ``ref`` every ``period_s`` seconds until closed or dead."""
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, not {period_s}")
        return self._add(ref, period_s, message, period_s)

    def close(self) -> None:
        """Cancel every pending timer of this handle; later calls schedule nothing."""
        with self._lock:
            self._closed = True
            entries, self._entries = self._entries, set()
        for entry in entries:
            entry.owner = None
            entry.cancel()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _add(
        self, ref: _Target, delay_s: float, message: Message, period_s: float | None
    ) -> TimerHandle | None:
        with self._lock:
            if self._closed:
                return None
            entry = _SCHEDULER.schedule(ref, delay_s, message, period_s)
            entry.owner = self
            self._entries.add(entry)
            if entry.cancelled:  # fired (and gone) before it was registered here
                self._entries.discard(entry)
        return entry

    def _forget(self, entry: TimerHandle) -> None:
        with contextlib.suppress(KeyError), self._lock:
            self._entries.remove(entry)
