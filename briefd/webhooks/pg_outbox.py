"""The outbox in PostgreSQL: the same rows as :mod:`briefd.webhooks.outbox`, shared by a cluster.

Every daemon sends deliveries, whichever daemon ran the job: a claim takes due
rows with ``FOR UPDATE SKIP LOCKED`` and moves their ``next_at`` a lease ahead
in the same statement, so two daemons claiming at once take different rows and
each attempt is made by exactly one daemon. A daemon killed mid-attempt leaves
its rows to whoever claims after the lease. Times are the database's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from briefd.messages import Event, WebhookAttempted, WebhookDelivery
from briefd.webhooks.outbox import STATES, Due, Outbox, body_of, delivery_id, delivery_view

if TYPE_CHECKING:
    from briefd.store.postgres import PostgresStore

_VIEW = (
    "id, job_id, event, url, state, attempts, last_status, last_error, "
    "extract(epoch FROM next_at)::float8 AS next_at, "
    "extract(epoch FROM delivered_at)::float8 AS delivered_at, "
    "extract(epoch FROM created_at)::float8 AS created_at"
)


class PgOutbox(Outbox):
    """The outbox in the cluster's database."""

    def __init__(
        self,
        store: PostgresStore,
        default_url: str | None,
        on_added: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(default_url, on_added)
        self._store = store

    def add(self, db: Any, job_id: str, event: Event) -> int:
        """Write the deliveries ``event`` makes, in the caller's transaction (cursor ``db``)."""
        db.execute(
            "SELECT (spec::json -> 'webhook')::text AS webhook FROM briefd_jobs WHERE job_id = %s",
            (job_id,),
        )
        row = db.fetchone()
        urls = self.urls_for(None if row is None else row["webhook"], event.type)
        if not urls:
            return 0
        body = body_of(event)
        db.executemany(
            "INSERT INTO briefd_webhooks (id, job_id, event, payload, url) "
            "VALUES (%s, %s, %s, %s, %s)",
            [(delivery_id(), job_id, event.type, body, url) for url in urls],
        )
        return self._added(len(urls))

    def claim(self, owner: str, limit: int, lease_s: float) -> list[Due]:
        """Up to ``limit`` due deliveries nobody else is claiming, each held ``lease_s``."""
        with self._store._tx(one=True) as cur:
            cur.execute(
                "UPDATE briefd_webhooks w SET next_at = now() + make_interval(secs => %s), "
                "claimed_by = %s FROM (SELECT id FROM briefd_webhooks "
                "WHERE state = 'pending' AND next_at <= now() ORDER BY next_at LIMIT %s "
                "FOR UPDATE SKIP LOCKED) d WHERE w.id = d.id "
                "RETURNING w.id, w.job_id, w.event, w.payload, w.url, w.attempts, "
                "extract(epoch FROM now() - w.created_at)::float8 AS age_s",
                (lease_s, owner, limit),
            )
            rows = cur.fetchall()
        return [
            Due(
                r["id"],
                r["job_id"],
                r["event"],
                r["payload"],
                r["url"],
                int(r["attempts"]),
                max(0.0, float(r["age_s"])),
            )
            for r in rows
        ]

    def record(self, attempt: WebhookAttempted) -> None:
        """Write an attempt's outcome on its delivery (a delivery no longer pending is left)."""
        state = {"delivered": "delivered", "retry": "pending"}.get(attempt.outcome, "failed")
        with self._store._tx(one=True) as cur:
            cur.execute(
                "UPDATE briefd_webhooks SET state = %s, attempts = attempts + 1, "
                "next_at = now() + make_interval(secs => %s), claimed_by = NULL, "
                "last_status = %s, last_error = %s, "
                "delivered_at = CASE WHEN %s = 'delivered' THEN now() END "
                "WHERE id = %s AND state = 'pending'",
                (
                    state,
                    attempt.retry_in_s or 0.0,
                    attempt.status,
                    attempt.error or None,
                    state,
                    attempt.delivery_id,
                ),
            )

    def release(self, owner: str) -> int:
        """At start: deliveries this data dir's dead predecessor held are due now.

        Daemon ids end in ``:<node>`` (the host and the data dir; see
        :meth:`~briefd.store.pg_claims.PgClaims.release_predecessors`): a claim under this
        node but another id is a killed predecessor's. Other daemons' claims lapse with
        their lease.
        """
        node = owner.rsplit(":", 1)[-1]
        pattern = "%:" + node.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._store._tx(one=True) as cur:
            cur.execute(
                "UPDATE briefd_webhooks SET next_at = now(), claimed_by = NULL "
                "WHERE state = 'pending' AND claimed_by LIKE %s AND claimed_by <> %s",
                (pattern, owner),
            )
            return cur.rowcount

    def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        """The job's deliveries, oldest first."""
        with self._store._tx(write=False) as cur:
            cur.execute(
                f"SELECT {_VIEW} FROM briefd_webhooks WHERE job_id = %s ORDER BY created_at, id",
                (job_id,),
            )
            return [delivery_view(r) for r in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """Deliveries by state, the cluster's (every state present)."""
        with self._store._tx(write=False) as cur:
            cur.execute("SELECT state, count(*) AS n FROM briefd_webhooks GROUP BY state")
            found = {r["state"]: int(r["n"]) for r in cur.fetchall()}
        return {s: found.get(s, 0) for s in STATES}
