"""Each job's events, durable and in order: what ``GET /v1/jobs/{id}/events`` streams and replays.

A client that reconnects must lose nothing, on any daemon of a cluster, so the
events a job's stream shows are rows of the journal, not a memory of one process:
one row per event, with ``seq`` (1, 2, ... per job: the SSE ``id:`` a client
resumes from), ``id`` (one order across every job: ``/v1/events``), the type, its
time and the event's JSON exactly as ``event.model_dump_json()`` gives it.

The journal actor writes them (:mod:`briefd.actors.journal`). An event that goes
with a write of the journal is committed *in that write's transaction*: a
:class:`StageSucceeded` row exists if and only if its document does, and the
``JobCompleted`` row is written by the store itself with the job's terminal state
(:meth:`EventLog.stage`), so a stream never announces what a crash then undid,
and a job that ended always ends its stream. How: :meth:`EventLog.staged` puts
events aside for the calling thread, and the store's ``_tx`` writes them
(:meth:`EventLog.flush`) just before it commits. Other events (a retry, progress)
are appended in a transaction of their own (:meth:`EventLog.append`).

A job's events stop at its ``JobCompleted``: anything told later (a straggler of
a cancelled run) is not appended, so a finished job's stream is final.

Ordering across transactions: SQLite has one writer. PostgreSQL has many, and a
reader following ``id > last`` must never see a later id commit before an
earlier one; every transaction that appends takes one advisory lock just before
its inserts (held until its commit, a few milliseconds), so ids commit in order.
Each append is announced with ``NOTIFY briefd_events`` (a daemon's streams wake
on any daemon's events) and to this process's listeners (:meth:`on_commit`).

Bounded: the rows live as long as their job's row (the journal keeps jobs; on
PostgreSQL a job's rows go with it, ``ON DELETE CASCADE``), and a job's
``StageProgress`` rows, many and only of interest while it runs, are deleted
when it ends (its stream then replays starts, retries, results and the end).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from briefd.messages import (
    Event,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobRestarted,
    JobStarted,
    LatencyMeasured,
    ProgressChanged,
    StageFailed,
    StageFailedOver,
    StageFellBack,
    StageProgress,
    StageRetrying,
    StageStarted,
    StageSucceeded,
)

STREAMED: tuple[type[Event], ...] = (
    JobAccepted,
    JobStarted,
    StageStarted,
    StageRetrying,
    StageProgress,
    StageSucceeded,
    StageFailed,
    StageFellBack,
    StageFailedOver,
    ProgressChanged,
    LatencyMeasured,
    JobCancelled,
    JobRestarted,
    JobCompleted,
)
"""The events of a job that its stream carries (the limiter's token traffic is not a job's)."""
TERMINAL = "JobCompleted"
EPHEMERAL = "StageProgress"
"""Deleted when the job ends: how far a call had come is of no use once it has ended."""
EVENTS_CHANNEL = "briefd_events"
"""PostgreSQL: notified (payload: the highest id) by every transaction that appends."""
ORDER_LOCK = 0x62726965_66640004
"""PostgreSQL: the advisory lock (one bigint) that makes ids commit in order."""
MAX_STAGED = 10_000
"""Events a writer holds while the store refuses writes; past it, progress is dropped first."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """One stored event: its global ``id``, the job's ``seq``, and the event's JSON."""

    id: int
    job_id: str
    seq: int
    type: str
    ts: float
    data: str


def streamed(event: Event) -> bool:
    """Whether ``event`` belongs in its job's stream."""
    return isinstance(event, STREAMED)


class _Staged(threading.local):
    """One thread's events waiting for its transaction (:meth:`EventLog.staged`)."""

    events: list[Event] | None = None
    inserted: bool = False  # the staged events are in the open transaction
    wrote: bool = False  # rows were inserted in the open transaction
    flushed: bool = False  # the staged events were committed
    rows: list[EventRow] | None = None  # inserted in the open transaction, in order


class EventLog:
    """The event rows of one store: staging, appending, reading; the backends write SQL.

    The store's ``_tx`` calls :meth:`begin` after it opens a transaction, :meth:`flush`
    just before it commits, and :meth:`committed` after the commit; a transaction rolled
    back leaves the staged events staged, for the caller's next try. Thread-safe.
    Subclasses implement :meth:`_insert` (inside an open transaction), :meth:`append`
    (a transaction of its own), :meth:`read` and :meth:`last_id`.
    """

    def __init__(self) -> None:
        self._staged = _Staged()
        self._listeners: list[Callable[[Sequence[EventRow]], None]] = []

    # -- writing with the store's transactions -------------------------------------------

    @contextlib.contextmanager
    def staged(self, events: Sequence[Event]) -> Iterator[_Staged]:
        """Write ``events`` with the next transaction this thread commits on the store.

        The handle's ``flushed`` says whether that happened (a write that found nothing to
        do may commit no transaction: the caller keeps its events then).
        """
        state = self._staged
        state.events, state.flushed = list(events), False
        try:
            yield state
        finally:
            state.events = None

    def begin(self) -> None:
        """A transaction opened (the store's ``_tx``)."""
        self._staged.inserted = self._staged.wrote = False
        self._staged.rows = []

    def flush(self, conn: Any) -> None:
        """Insert what this thread staged, once per transaction (before its commit)."""
        state = self._staged
        if state.events and not state.inserted:
            self._keep(self._insert(conn, state.events))
            state.inserted = True

    def insert_now(self, conn: Any, events: Sequence[Event]) -> None:
        """Insert ``events`` in the open transaction, after what is staged (the store's own
        ``JobCompleted``, written with the terminal state)."""
        self.flush(conn)
        self._keep(self._insert(conn, events))

    def _keep(self, rows: list[EventRow]) -> None:
        state = self._staged
        state.wrote = True
        state.rows = [*(state.rows or []), *rows]

    def committed(self) -> None:
        """The transaction committed: the staged events are written; wake the listeners."""
        state = self._staged
        if state.inserted:
            state.events, state.flushed = [], True
        wrote, rows = state.wrote, state.rows or []
        state.inserted, state.wrote, state.rows = False, False, []
        if wrote:
            for listener in list(self._listeners):
                listener(rows)

    def on_commit(self, listener: Callable[[Sequence[EventRow]], None]) -> None:
        """Call ``listener(rows)`` (quick, any thread) after every commit that wrote events,
        with the rows it wrote (a listener must not rely on them alone: commits of other
        threads and daemons may come between)."""
        self._listeners.append(listener)

    # -- the backends ------------------------------------------------------------------

    def _insert(self, conn: Any, events: Sequence[Event]) -> list[EventRow]:
        """Insert ``events`` in the open transaction; the rows written, with their ids."""
        raise NotImplementedError

    def append(self, events: Sequence[Event]) -> None:
        """Append ``events`` in a transaction of their own (StoreUnavailable: nothing was)."""
        raise NotImplementedError

    def read(self, job_id: str | None, after: int, limit: int = 500) -> list[EventRow]:
        """A job's events with ``seq > after`` (``job_id`` None: every job's, ``id > after``)."""
        raise NotImplementedError

    def last_id(self) -> int:
        """The highest ``id`` committed (0: none)."""
        raise NotImplementedError


def by_job(events: Sequence[Event]) -> dict[str, list[Event]]:
    """``events`` grouped by job, each job's in the order given."""
    jobs: dict[str, list[Event]] = {}
    for event in events:
        jobs.setdefault(str(getattr(event, "job_id", "")), []).append(event)
    return jobs


def cap_staged(events: list[Event]) -> list[Event]:
    """At most :data:`MAX_STAGED` events: progress reports go first, then the oldest."""
    if len(events) <= MAX_STAGED:
        return events
    kept = [e for e in events if not isinstance(e, StageProgress)]
    return kept[-MAX_STAGED:]


def numbered(
    last: Callable[[str], tuple[int, str | None]], events: Sequence[Event]
) -> list[tuple[str, int, str, float, str]]:
    """``(job_id, seq, type, ts, json)`` rows for ``events`` in the order given, each job's
    numbered after its last stored ``(seq, type)``; nothing after a job's ``JobCompleted``."""
    seen: dict[str, tuple[int, str | None]] = {}
    rows = []
    for event in events:
        job_id = str(getattr(event, "job_id", ""))
        if job_id not in seen:
            seen[job_id] = last(job_id)
        seq, kind = seen[job_id]
        if kind == TERMINAL:
            continue
        seen[job_id] = (seq + 1, event.type)
        rows.append((job_id, seq + 1, event.type, event.ts, event.model_dump_json()))
    return rows


def ended(rows: Sequence[tuple[str, int, str, float, str]]) -> list[str]:
    """The jobs ``rows`` end (their progress rows are deleted)."""
    return [job_id for job_id, _, kind, _, _ in rows if kind == TERMINAL]


class SqliteEvents(EventLog):
    """The ``events`` table of the SQLite journal (its lock, its connection, its ``_tx``)."""

    def __init__(self, journal: Any) -> None:
        super().__init__()
        self._journal = journal

    def _insert(self, conn: Any, events: Sequence[Event]) -> list[EventRow]:
        def last(job_id: str) -> tuple[int, str | None]:
            row = conn.execute(
                "SELECT seq, type FROM events WHERE job_id=? ORDER BY seq DESC LIMIT 1", (job_id,)
            ).fetchone()
            return (0, None) if row is None else (int(row[0]), str(row[1]))

        rows = numbered(last, events)
        written = []
        for row in rows:
            cur = conn.execute(
                "INSERT INTO events (job_id, seq, type, ts, data) VALUES (?, ?, ?, ?, ?)", row
            )
            written.append(EventRow(int(cur.lastrowid), *row))
        for job_id in ended(rows):
            conn.execute("DELETE FROM events WHERE job_id=? AND type=?", (job_id, EPHEMERAL))
        return written

    def append(self, events: Sequence[Event]) -> None:
        if events:
            with self._journal._tx() as db:
                self.insert_now(db, events)

    def read(self, job_id: str | None, after: int, limit: int = 500) -> list[EventRow]:
        with self._journal._lock:
            db = self._journal._db
            if job_id is None:
                cur = db.execute(
                    "SELECT id, job_id, seq, type, ts, data FROM events WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (after, limit),
                )
            else:
                cur = db.execute(
                    "SELECT id, job_id, seq, type, ts, data FROM events "
                    "WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (job_id, after, limit),
                )
            return [EventRow(*tuple(r)) for r in cur.fetchall()]

    def last_id(self) -> int:
        with self._journal._lock:
            row = self._journal._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        return int(row[0])


def staged_events(store: Any, events: Sequence[Event]) -> contextlib.AbstractContextManager[Any]:
    """:meth:`EventLog.staged` on ``store``'s event log (nothing if it keeps none)."""
    log = getattr(store, "event_log", None)
    return log.staged(events) if isinstance(log, EventLog) else contextlib.nullcontext()
