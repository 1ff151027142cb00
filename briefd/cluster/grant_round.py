"""The grant round: how one endpoint's waiting requests become leases, in one transaction.

Split from :mod:`briefd.cluster.tokens` (the rest of the cluster limiter's SQL) because
the round is the one piece with a policy in it: it reaps expired leases and the waits of
daemons gone silent, then, while the endpoint's window, pause, cool-down and budgets
allow, picks the next request by :func:`briefd.limits.fair.pick_fair` (the rule one
daemon uses: the tenant by the fair share in the endpoint's row, charged here by the
call's estimate and settled at its release, then :func:`briefd.limits.order.pick`) and
turns it into a lease holding one of the K slots (:mod:`briefd.cluster.slots`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from briefd.cluster import slots
from briefd.cluster.records import Grant, GrantRound
from briefd.cluster.rows import LEASE_COLUMNS, QueuedRow, figures_of, grant_of, read_waits
from briefd.cluster.shared import Shared, save
from briefd.limits.fair import pick_fair

CHANNEL = "briefd_tokens"
"""Notified with a daemon's id when that daemon received a grant."""
MAX_GRANTS_PER_ROUND = 256
"""A bound on one transaction's work (the ceiling is at most 256 anyway)."""


class GrantRounds:
    """:class:`~briefd.cluster.tokens.ClusterTokens`' grant rounds (a mixin: it provides
    ``daemon_id``, ``lease_s``, ``_tx`` and ``_lane``)."""

    daemon_id: str
    lease_s: float

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _lane(self, db: Any, endpoint: str) -> Shared | None:
        raise NotImplementedError

    def grant(self, endpoint: str = "") -> GrantRound:
        """Hand out every token ``endpoint`` may now; this daemon's grants come back delivered.

        Only ``endpoint``'s row is locked: rounds for other endpoints run meanwhile, and the
        global K is kept by the slots each lease takes (:mod:`briefd.cluster.slots`). Other
        daemons' grants wait for them (``delivered`` false) and are announced on
        :data:`CHANNEL`. ``wake_in_s`` says when a pause, cool-down or budget that stopped
        the round lifts (None: nothing is held back by time); ``starved`` that it stopped
        with requests waiting because every slot was taken.
        """
        with self._tx() as db:
            shared = self._lane(db, endpoint)
            if shared is None:
                return GrantRound(mine=(), others={}, wake_in_s=None, figures=None)
            # One snapshot: the live count still sees what it deletes. SKIP LOCKED: a row
            # another session holds (a paused daemon's heartbeat, mid-transaction) is not
            # waited for; it counts as live until a later round reaps it.
            reap = db.execute(
                """WITH gone AS (DELETE FROM briefd_tokens WHERE lease_id IN (
                        SELECT lease_id FROM briefd_tokens WHERE endpoint = %s
                        AND expires_at < clock_timestamp() FOR UPDATE SKIP LOCKED)
                    RETURNING 1)
                SELECT n.reaped, t.live - n.reaped AS live, t.all_live - n.reaped AS all_live,
                    (SELECT count(*) FROM briefd_token_waits) AS all_waiting
                FROM (SELECT count(*) AS reaped FROM gone) AS n,
                    (SELECT count(*) FILTER (WHERE endpoint = %s) AS live, count(*) AS all_live
                    FROM briefd_tokens) AS t""",
                (endpoint, endpoint),
            )
            db.execute(
                """DELETE FROM briefd_token_waits WHERE wait_id IN (
                    SELECT wait_id FROM briefd_token_waits w WHERE endpoint = %s AND NOT EXISTS (
                        SELECT 1 FROM briefd_daemons d WHERE d.daemon_id = w.daemon_id
                        AND d.seen_at >= clock_timestamp() - make_interval(secs => %s))
                    FOR UPDATE SKIP LOCKED)""",
                (endpoint, self.lease_s),
            )
            waits = read_waits(db, endpoint)
            counts = reap.fetchone()
            shared.reclaimed_total += int(counts["reaped"])
            live, before = int(counts["live"]), len(waits)
            mine: list[Grant] = []
            others: dict[str, int] = {}
            wake: float | None = None
            starved = False
            now = shared.clock()
            cooling = now < shared.cooldown_until
            if cooling:
                wake = shared.cooldown_until - now
            while (
                waits
                and not cooling
                and live < shared.window.limit
                and len(mine) < MAX_GRANTS_PER_ROUND
            ):
                i = pick_fair([w.waiting for w in waits], now, shared.pacer.latencies, shared.share)
                head = waits.pop(i)
                req = head.waiting.request
                delay = shared.pacer.delay(req.est_tokens)
                if delay > 0:
                    wake = delay  # the head waits; nobody passes it
                    waits.insert(i, head)
                    break
                slot, grant = self._lease(db, head, shared, now)
                if slot is None:  # K calls in flight, every endpoint's: the head waits
                    starved = True
                    waits.insert(i, head)
                    break
                if grant is None:
                    continue  # withdrawn meanwhile (its slot stays free)
                shared.pacer.spend(req.est_tokens)
                shared.share.charge(req.tenant, req.weight, shared.share.cost(req.est_tokens), now)
                shared.granted_total += 1
                live += 1
                if head.daemon_id == self.daemon_id:
                    mine.append(grant)
                else:
                    others[head.daemon_id] = others.get(head.daemon_id, 0) + 1
            shared.starved = starved
            save(db, shared)
            for daemon in others:
                db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, daemon))
            granted = before - len(waits)
            figures = figures_of(
                shared,
                live,
                len(waits),
                int(counts["all_live"]) + granted,
                max(0, int(counts["all_waiting"]) - granted),
            )
        return GrantRound(
            mine=tuple(mine),
            others=others,
            wake_in_s=wake,
            figures=figures,
            starved=starved,
        )

    def _lease(
        self, db: Any, head: QueuedRow, shared: Shared, now: float
    ) -> tuple[int | None, Grant | None]:
        """Turn ``head`` into a lease holding a free slot, in one statement: (the slot, the
        grant). No slot: K leases are live (or the free ones are being taken by other rounds
        right now). A slot and no grant: the request was withdrawn meanwhile; the slot stays
        free (this transaction's lock on it lets its next lease take it again)."""
        w = head.waiting
        req = w.request
        mine = head.daemon_id == self.daemon_id
        row = db.execute(  # no lease when the wait was deleted (a cancel), or is being
            f"""WITH free AS ({slots.TAKE}),
            gone AS (DELETE FROM briefd_token_waits WHERE wait_id = (
                SELECT wait_id FROM briefd_token_waits WHERE wait_id = %s
                FOR UPDATE SKIP LOCKED) AND EXISTS (SELECT 1 FROM free) RETURNING 1),
            lease AS (INSERT INTO briefd_tokens (lease_id, wait_id, daemon_id, requester,
                job_id, stage, endpoint, epoch, est_tokens, waited_ms, delivered, expires_at,
                slot, tenant, weight, charged)
            SELECT nextval('briefd_token_fence'), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                clock_timestamp() + make_interval(secs => %s), (SELECT slot FROM free), %s, %s,
                %s
            FROM gone RETURNING *),
            held AS (UPDATE briefd_token_slots SET lease_id = (SELECT lease_id FROM lease)
                WHERE slot = (SELECT slot FROM lease))
            SELECT (SELECT slot FROM free) AS free_slot, {LEASE_COLUMNS}
            FROM (SELECT 1) AS one LEFT JOIN lease ON true""",
            (
                w.seq,
                w.seq,
                head.daemon_id,
                req.requester,
                req.job_id,
                req.stage,
                shared.endpoint,
                shared.window.epoch,
                req.est_tokens,
                max(0, int((now - w.queued_at) * 1000)),
                mine,
                self.lease_s,
                req.tenant,
                req.weight,
                shared.share.cost(req.est_tokens),
            ),
        ).fetchone()
        if row is None or row["free_slot"] is None:
            return None, None
        return int(row["free_slot"]), None if row["lease_id"] is None else grant_of(row)
