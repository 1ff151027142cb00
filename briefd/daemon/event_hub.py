"""One tail of the event table per daemon, fanned out to its SSE streams.

Every open stream (``GET /v1/jobs/{id}/events``, ``GET /v1/events``) wants the
rows the moment they commit. Instead of each stream querying the journal, one
thread follows the table (``id > last``) and hands each new batch to the HTTP
server's event loop, which puts the rows in the queues of the streams that want
them. The thread is woken, not polling: by this process's journal commits
(:meth:`~briefd.store.events.EventLog.on_commit`) and, in a cluster, by every
daemon's ``NOTIFY briefd_events`` (:meth:`EventHub.wake`); ``poll_s`` is only
the safety net for a notification lost while the listener reconnected.

Bounded: each stream's queue holds at most ``buffer`` rows. A stream whose
queue is full (its client reads slower than events come) is marked
``overflowed`` and its queue emptied at once; the stream then drops its client,
who resumes with ``Last-Event-ID`` from the table. Nothing a slow client does
delays the tail or the other streams: the fan-out never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence

from loguru import logger

from briefd.store.base import StoreUnavailable
from briefd.store.events import EventLog, EventRow

BATCH = 1000
"""Rows the tail reads at once."""
RETRY_S = 0.5
"""After a read the store refused, the tail tries again this soon."""


class Subscription:
    """One stream's view of the tail: its queue of rows, and whether it overflowed."""

    __slots__ = ("_wake", "closed", "job_id", "overflowed", "queue")

    def __init__(self, job_id: str | None, buffer: int) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[EventRow] = asyncio.Queue(maxsize=buffer)
        self.overflowed = False
        self.closed = False  # the daemon is stopping: the stream ends (its client comes back)
        self._wake = asyncio.Event()

    def offer(self, row: EventRow) -> None:
        """In the loop: queue ``row``, or mark the stream overflowed (never waits)."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(row)
        except asyncio.QueueFull:
            self.overflowed = True
            while not self.queue.empty():  # its memory goes now, not when the client does
                self.queue.get_nowait()
            self._wake.set()

    def close(self) -> None:
        """In the loop: end the stream (the server is stopping)."""
        self.closed = True
        self._wake.set()

    def reset(self) -> None:
        """Start over (the stream reads the table itself): an empty queue, not overflowed."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.overflowed = False
        self._wake.clear()

    async def next(self, timeout_s: float) -> EventRow | None:
        """The next row, or None after ``timeout_s``, on overflow or once closed."""
        if self.overflowed or self.closed:
            return None
        if not self.queue.empty():
            return self.queue.get_nowait()
        getter = asyncio.ensure_future(self.queue.get())
        woke = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({getter, woke}, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            woke.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None


class EventHub:
    """Follows ``log`` from a thread of its own; streams :meth:`subscribe` in the loop."""

    def __init__(self, log: EventLog, *, poll_s: float | None = None, buffer: int = 256) -> None:
        self._log = log
        self._poll_s = poll_s
        self.buffer = buffer
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[str | None, set[Subscription]] = {}
        self._thread = threading.Thread(target=self._run, name="briefd-events", daemon=True)
        self.last_id = 0
        log.on_commit(self.wake)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the table from its end now, delivering into ``loop``."""
        self._loop = loop
        with contextlib.suppress(StoreUnavailable):
            self.last_id = self._log.last_id()
        self._thread.start()

    def stop(self) -> None:
        """Stop following, and end every stream (their clients reconnect elsewhere or later)."""
        self._stopping.set()
        self._wake.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._close_all)

    def _close_all(self) -> None:
        for subs in list(self._subs.values()):
            for sub in subs:
                sub.close()

    def wake(self) -> None:
        """New rows were committed (any thread; quick)."""
        self._wake.set()

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, job_id: str | None) -> Subscription:
        """In the loop: a subscription to ``job_id``'s rows (None: every job's)."""
        sub = Subscription(job_id, self.buffer)
        self._subs.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.job_id]

    def _deliver(self, rows: Sequence[EventRow]) -> None:
        """In the loop: each row to the streams of its job and to the all-jobs streams."""
        everyone = self._subs.get(None, ())
        for row in rows:
            for sub in (*self._subs.get(row.job_id, ()), *everyone):
                sub.offer(row)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                while True:
                    rows = self._log.read(None, self.last_id, BATCH)
                    if not rows:
                        break
                    self.last_id = rows[-1].id
                    loop = self._loop
                    if loop is None or loop.is_closed():
                        return
                    loop.call_soon_threadsafe(self._deliver, rows)
                    if len(rows) < BATCH:
                        break
            except StoreUnavailable as err:
                logger.debug("event stream tail: {}", err)
                self._stopping.wait(RETRY_S)
                self._wake.set()
            except Exception as err:  # keep following: one bad read must not end every stream
                logger.opt(exception=err).error("event stream tail: {!r}", err)
                self._stopping.wait(RETRY_S)
                self._wake.set()
