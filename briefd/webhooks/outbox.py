"""The outbox: deliveries written with the event they report, in the journal's transaction.

A delivery exists exactly when its event was committed: :meth:`Outbox.add` runs
inside the journal's own write (a stage's document, a job's terminal state), so
a crash either keeps both or neither. Each row then carries its ``webhook-id``
for life (every attempt sends the same one, so receivers de-duplicate), and the
sender claims due rows by moving their ``next_at`` a lease ahead: a daemon that
dies mid-attempt leaves the row to be claimed again once the lease passes
(at least once). This module holds what both backends share and the SQLite
queries; :mod:`briefd.webhooks.pg_outbox` the PostgreSQL ones.

A job's deliveries come from its own ``webhook`` (its events), else from
``BRIEFD_WEBHOOK_URL`` (its terminal ``JobCompleted`` only), read from the job's
row in the same transaction. The body is Standard Webhooks' shape,
``{"type", "timestamp", "data"}`` with the event's whole JSON (documents
included) as ``data``, stored as sent so that every attempt signs the same bytes.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from briefd.messages import Event, WebhookAttempted, WebhookDelivery, WebhookSpec

if TYPE_CHECKING:
    from briefd.store.sqlite import Journal

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id           TEXT PRIMARY KEY,            -- the webhook-id, the same on every attempt
    job_id       TEXT NOT NULL,
    event        TEXT NOT NULL,
    payload      TEXT NOT NULL,               -- the body, exactly as sent
    url          TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',  -- pending, delivered, failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,               -- due (or, while claimed, when the claim lapses)
    claimed_by   TEXT,
    last_status  INTEGER,
    last_error   TEXT,                        -- one line, redacted
    delivered_at REAL,
    created_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (state, next_at);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_job ON webhook_outbox (job_id, created_at);
"""
STATES = ("pending", "delivered", "failed")


class TxOutbox(Protocol):
    """What a store calls inside its write transaction (``db``: its connection or cursor)."""

    def add(self, db: Any, job_id: str, event: Event) -> int: ...


@dataclass(frozen=True)
class Due:
    """A delivery claimed for one attempt."""

    id: str
    job_id: str
    event: str
    payload: str
    url: str
    attempts: int
    """Attempts made before this one."""
    age_s: float
    """Seconds since the delivery was written (by the store's clock)."""


def delivery_id() -> str:
    """A new ``webhook-id``: unique, opaque, safe in a header."""
    return f"msg_{uuid.uuid4().hex}"


def body_of(event: Event) -> str:
    """The delivery's body: ``{"type", "timestamp", "data"}``, ``data`` the event's JSON
    (pydantic's, in which a NaN is ``null``: the body is always valid JSON)."""
    stamp = datetime.fromtimestamp(event.ts, UTC).isoformat().replace("+00:00", "Z")
    return f'{{"type":"{event.type}","timestamp":"{stamp}","data":{event.model_dump_json()}}}'


class Outbox:
    """Which deliveries an event makes (shared by both backends' outboxes)."""

    def __init__(self, default_url: str | None, on_added: Callable[[], None] | None = None) -> None:
        self.default_url = default_url
        self.on_added = on_added
        """Called after rows were added (wakes the sender; the row may not be committed yet,
        so the sender's poll is the safety net)."""

    def urls_for(self, webhook_json: str | None, event_type: str) -> list[str]:
        """Where ``event_type`` of a job whose spec's ``webhook`` is ``webhook_json`` goes."""
        if webhook_json and webhook_json != "null":
            spec = WebhookSpec.model_validate_json(webhook_json)
            return [spec.url] if event_type in spec.events else []
        if self.default_url and event_type == "JobCompleted":
            return [self.default_url]
        return []

    def _added(self, n: int) -> int:
        if n and self.on_added is not None:
            self.on_added()
        return n


def delivery_view(row: dict[str, Any]) -> WebhookDelivery:
    """A row (either backend's, times as epoch seconds) as the API shows it."""
    from briefd.webhooks.urls import redact_url

    pending = row["state"] == "pending"
    return WebhookDelivery(
        id=row["id"],
        event=row["event"],
        url=redact_url(row["url"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        last_status=row["last_status"],
        last_error=row["last_error"],
        next_at=float(row["next_at"]) if pending else None,
        delivered_at=row["delivered_at"],
        created_at=float(row["created_at"]),
    )


class SqliteOutbox(Outbox):
    """The outbox in the SQLite journal (one daemon: its claims are only against a crash)."""

    def __init__(
        self,
        journal: Journal,
        default_url: str | None,
        on_added: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(default_url, on_added)
        self._journal = journal

    def add(self, db: sqlite3.Connection, job_id: str, event: Event) -> int:
        """Write the deliveries ``event`` makes, in the caller's transaction ``db``."""
        row = db.execute(
            "SELECT json_extract(spec, '$.webhook') AS webhook FROM jobs WHERE job_id=?",
            (job_id,),
        ).fetchone()
        urls = self.urls_for(None if row is None else row[0], event.type)
        if not urls:
            return 0
        now, body = time.time(), body_of(event)
        db.executemany(
            "INSERT INTO webhook_outbox (id, job_id, event, payload, url, next_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(delivery_id(), job_id, event.type, body, url, now, now) for url in urls],
        )
        return self._added(len(urls))

    def claim(self, owner: str, limit: int, lease_s: float) -> list[Due]:
        """Up to ``limit`` due deliveries, oldest due first, each held ``lease_s`` for ``owner``."""
        now = time.time()
        with self._journal._tx() as db:
            rows = db.execute(
                "UPDATE webhook_outbox SET next_at=?, claimed_by=? WHERE id IN ("
                "SELECT id FROM webhook_outbox WHERE state='pending' AND next_at<=? "
                "ORDER BY next_at LIMIT ?) "
                "RETURNING id, job_id, event, payload, url, attempts, created_at",
                (now + lease_s, owner, now, limit),
            ).fetchall()
        return [
            Due(r[0], r[1], r[2], r[3], r[4], int(r[5]), max(0.0, now - float(r[6]))) for r in rows
        ]

    def record(self, attempt: WebhookAttempted) -> None:
        """Write an attempt's outcome on its delivery (a delivery no longer pending is left)."""
        now = time.time()
        state = {"delivered": "delivered", "retry": "pending"}.get(attempt.outcome, "failed")
        with self._journal._tx() as db:
            db.execute(
                "UPDATE webhook_outbox SET state=?, attempts=attempts+1, next_at=?, "
                "claimed_by=NULL, last_status=?, last_error=?, delivered_at=? "
                "WHERE id=? AND state='pending'",
                (
                    state,
                    now + (attempt.retry_in_s or 0.0),
                    attempt.status,
                    attempt.error or None,
                    now if state == "delivered" else None,
                    attempt.delivery_id,
                ),
            )

    def release(self, owner: str) -> int:
        """At start: deliveries a dead predecessor held are due now (the data dir is locked,
        so nobody else holds them; ``owner`` is this daemon)."""
        with self._journal._tx() as db:
            cur = db.execute(
                "UPDATE webhook_outbox SET next_at=?, claimed_by=NULL "
                "WHERE state='pending' AND claimed_by IS NOT NULL",
                (time.time(),),
            )
            return cur.rowcount

    def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """The job's deliveries, oldest first."""
        with self._journal._lock:
            rows = self._journal._db.execute(
                "SELECT * FROM webhook_outbox WHERE job_id=? ORDER BY created_at, id", (job_id,)
            ).fetchall()
        return [delivery_view(dict(r)) for r in rows]

    def counts(self) -> dict[str, int]:
        """Deliveries by state (every state present)."""
        with self._journal._lock:
            rows = self._journal._db.execute(
                "SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state"
            ).fetchall()
        found = {r[0]: int(r[1]) for r in rows}
        return {s: found.get(s, 0) for s in STATES}
