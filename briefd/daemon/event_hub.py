"""One tail of the event table per daemon, fanned out to its SSE streams.

Every open stream (``GET /v1/jobs/{id}/events``, ``GET /v1/events``) wants the
rows the moment they commit. Instead of each stream querying the journal, one
thread follows the table (``id > last``) and hands each new batch to the HTTP
server's event loop, which puts the rows in the queues of the streams that want
them. Rows this process commits are handed over by the committing thread when they
follow the last row delivered (no read at all); otherwise the thread is woken, not
polling: by this process's journal commits
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
from collections import deque
from collections.abc import Sequence

from loguru import logger

from briefd.store.base import StoreUnavailable
from briefd.store.events import EventLog, EventRow
from briefd.tenants.ids import tenant_of

BATCH = 1000
"""Rows the tail reads at once."""
RETRY_S = 0.5
"""After a read the store refused, the tail tries again this soon."""


class Subscription:
    """One stream's view of the tail: its rows waiting (at most ``buffer``), and whether it
    overflowed or was closed. Lives in the loop; an idle one holds one future, no task."""

    __slots__ = ("_waiter", "buffer", "closed", "job_id", "overflowed", "rows", "tenant")

    def __init__(self, job_id: str | None, buffer: int, tenant: str | None = None) -> None:
        self.job_id = job_id
        self.tenant = tenant  # every job's stream of one tenant (None: every tenant's)
        self.buffer = buffer
        self.rows: deque[EventRow] = deque()
        self.overflowed = False
        self.closed = False  # the daemon is stopping: the stream ends (its client comes back)
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, row: EventRow) -> None:
        """In the loop: queue ``row``, or mark the stream overflowed (never waits)."""
        if self.overflowed or self.closed:
            return
        if len(self.rows) >= self.buffer:
            self.overflowed = True
            self.rows.clear()  # its memory goes now, not when the client does
        else:
            self.rows.append(row)
        self._notify()

    def close(self) -> None:
        """In the loop: end the stream (the server is stopping)."""
        self.closed = True
        self._notify()

    def reset(self) -> None:
        """Start over (the stream reads the table itself): nothing queued, not overflowed."""
        self.rows.clear()
        self.overflowed = False

    async def next(self) -> EventRow | None:
        """The next row; None on overflow or once closed."""
        while not (self.overflowed or self.closed):
            if self.rows:
                return self.rows.popleft()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return None

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


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
        self._lock = threading.Lock()  # last_id and the order of deliveries; no I/O under it
        self.last_id = 0
        log.on_commit(self.committed)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the table from its end now, delivering into ``loop``."""
        with contextlib.suppress(StoreUnavailable):
            top = self._log.last_id()
            with self._lock:
                self.last_id = max(self.last_id, top)
        self._loop = loop
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

    def committed(self, rows: Sequence[EventRow]) -> None:
        """This process committed ``rows`` (the committing thread): delivered at once when
        they follow the last row delivered, else the tail reads the table."""
        with self._lock:
            loop = self._loop
            if (
                rows
                and loop is not None
                and rows[0].id == self.last_id + 1
                and rows[-1].id == self.last_id + len(rows)
            ):
                self.last_id = rows[-1].id
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                    loop.call_soon_threadsafe(self._deliver, list(rows))
                return
        self._wake.set()

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, job_id: str | None, tenant: str | None = None) -> Subscription:
        """In the loop: a subscription to ``job_id``'s rows (None: every job's, or with
        ``tenant`` every job of that tenant's: another tenant's rows never reach its queue,
        so they neither fill it nor wake it)."""
        sub = Subscription(job_id, self.buffer, tenant)
        self._subs.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.job_id]

    def _deliver(self, rows: Sequence[EventRow]) -> None:
        """In the loop: each row to the streams of its job and to the all-jobs streams
        (of its tenant's, :func:`~briefd.tenants.ids.tenant_of`: a string split per row)."""
        everyone = self._subs.get(None, ())
        for row in rows:
            for sub in self._subs.get(row.job_id, ()):
                sub.offer(row)
            if everyone:
                tenant = tenant_of(row.job_id)
                for sub in everyone:
                    if sub.tenant is None or sub.tenant == tenant:
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
                    with self._lock:  # committed() may have delivered some meanwhile
                        fresh = [r for r in rows if r.id > self.last_id]
                        if fresh:
                            self.last_id = fresh[-1].id
                            loop = self._loop
                            if loop is None or loop.is_closed():
                                return
                            loop.call_soon_threadsafe(self._deliver, fresh)
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
