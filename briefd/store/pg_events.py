"""The event rows on PostgreSQL (``briefd_events``): the queries of :mod:`briefd.store.events`.

Ids must commit in their own order, or a daemon following ``id > last`` could
step over a row that commits a moment later with a smaller id. So every
transaction that inserts events first takes one advisory lock
(:data:`~briefd.store.events.ORDER_LOCK`), held to its commit: the inserts of
the cluster are serialised for the few milliseconds between them and the commit.
It is always the last lock a transaction takes (the events are flushed just
before the commit, after every row the transaction locks), so it adds no
deadlock; the table has no foreign key for the same reason (a key check would
lock the job's row after it). Each insert notifies
:data:`~briefd.store.events.EVENTS_CHANNEL` with the highest id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from briefd.messages import Event
from briefd.store.events import (
    EPHEMERAL,
    EVENTS_CHANNEL,
    ORDER_LOCK,
    EventLog,
    EventRow,
    ended,
    numbered,
)
from briefd.store.pg_claims import notify

_COLUMNS = "id, job_id, seq, type, ts, data"


class PgEvents(EventLog):
    """``briefd_events`` through the store's pool and ``_tx``."""

    def __init__(self, store: Any) -> None:
        super().__init__()
        self._store = store

    def _insert(self, conn: Any, events: Sequence[Event]) -> list[EventRow]:
        cur = conn
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (ORDER_LOCK,))

        def last(job_id: str) -> tuple[int, str | None]:
            cur.execute(
                "SELECT seq, type FROM briefd_events WHERE job_id = %s ORDER BY seq DESC LIMIT 1",
                (job_id,),
            )
            row = cur.fetchone()
            return (0, None) if row is None else (int(row["seq"]), str(row["type"]))

        rows = numbered(last, events)
        if not rows:
            return []
        cur.execute(
            "INSERT INTO briefd_events (job_id, seq, type, ts, data) "
            "SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::float8[], %s::text[]) "
            "RETURNING id, job_id, seq",
            tuple(list(col) for col in zip(*rows, strict=True)),
        )
        ids = {(r["job_id"], int(r["seq"])): int(r["id"]) for r in cur.fetchall()}
        written = sorted(
            (
                EventRow(ids[(job, seq)], job, seq, kind, ts, data)
                for job, seq, kind, ts, data in rows
            ),
            key=lambda r: r.id,
        )
        top = written[-1].id
        for job_id in ended(rows):
            cur.execute(
                "DELETE FROM briefd_events WHERE job_id = %s AND type = %s", (job_id, EPHEMERAL)
            )
        notify(cur, EVENTS_CHANNEL, str(top))
        return written

    def append(self, events: Sequence[Event]) -> None:
        if events:
            with self._store._tx() as cur:
                self.insert_now(cur, events)

    def read(self, job_id: str | None, after: int, limit: int = 500) -> list[EventRow]:
        with self._store._tx(write=False) as cur:
            if job_id is None:
                cur.execute(
                    f"SELECT {_COLUMNS} FROM briefd_events WHERE id > %s ORDER BY id LIMIT %s",
                    (after, limit),
                )
            else:
                cur.execute(
                    f"SELECT {_COLUMNS} FROM briefd_events WHERE job_id = %s AND seq > %s "
                    "ORDER BY seq LIMIT %s",
                    (job_id, after, limit),
                )
            return [
                EventRow(
                    int(r["id"]), r["job_id"], int(r["seq"]), r["type"], float(r["ts"]), r["data"]
                )
                for r in cur.fetchall()
            ]

    def last_id(self) -> int:
        with self._store._tx(write=False) as cur:
            cur.execute("SELECT coalesce(max(id), 0) AS top FROM briefd_events")
            row = cur.fetchone()
        return int(row["top"]) if row else 0
