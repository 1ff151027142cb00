"""Timers that tell an actor a message later, so no actor ever sleeps.

A retry backoff, a rate-limit cool-down and a health check are all "tell me
this in N seconds". Each actor owns one :class:`Timers` and cancels it when it
stops, so no timer fires into a dead actor for long.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pykka

from briefd.messages import Message


class Timers:
    """One-shot and repeating ``tell``-later timers for one actor."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timers: set[threading.Timer] = set()
        self._stops: list[threading.Event] = []
        self._closed = False

    def tell_later(self, ref: pykka.ActorRef[Any], delay_s: float, message: Message) -> None:
        """Tell ``message`` to ``ref`` after ``delay_s`` seconds (if still alive)."""
        timer: threading.Timer

        def fire() -> None:
            with self._lock:
                self._timers.discard(timer)
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(message)

        timer = threading.Timer(max(delay_s, 0.0), fire)
        timer.daemon = True
        with self._lock:
            if self._closed:
                return
            self._timers.add(timer)
        timer.start()

    def every(self, ref: pykka.ActorRef[Any], period_s: float, message: Message) -> None:
        """Tell ``message`` to ``ref`` every ``period_s`` seconds until closed or dead."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(period_s):
                with self._lock:
                    if self._closed:
                        return
                try:
                    ref.tell(message)
                except pykka.ActorDeadError:
                    return

        thread = threading.Thread(target=loop, name="briefd-ticker", daemon=True)
        with self._lock:
            if self._closed:
                return
            self._stops.append(stop)
        thread.start()

    def close(self) -> None:
        """Cancel every pending timer and ticker."""
        with self._lock:
            self._closed = True
            timers, self._timers = self._timers, set()
            stops, self._stops = self._stops, []
        for t in timers:
            t.cancel()
        for s in stops:
            s.set()
