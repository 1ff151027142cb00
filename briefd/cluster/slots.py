"""The global K across endpoints without a global lock: K rows of ``briefd_token_slots``.

Each endpoint's grant round locks only that endpoint's limiter row, so two rounds
for two endpoints run at once and neither can count the other's uncommitted
leases. The cap is kept by the slots instead: a lease holds one (``lease_id``
on the slot, ``slot`` on the lease, both unique), and a round takes a free one
with ``FOR UPDATE SKIP LOCKED LIMIT 1``: two rounds at once take different slots
and never wait for each other, and a round that finds none grants nothing more.
With K slots there are never more than K leases, whichever endpoints they are
for. The slot row itself carries its occupancy, so PostgreSQL re-checks
``lease_id IS NULL`` on the row it locks (a slot taken and committed by another
round meanwhile is not taken twice).

Every way a lease ends frees its slot in the same transaction, by the trigger
``briefd_free_slot`` (schema 3 in :mod:`briefd.store.pg_setup`). A lower K with
more leases live than slots wanted marks the extra occupied slots ``doomed``:
each goes with its lease, and a slot freed while a doomed one still holds a call
goes in its place, so no grant is made until fewer than the new K are in
flight, as with one daemon.
"""

from __future__ import annotations

from typing import Any

TAKE = """SELECT slot FROM briefd_token_slots WHERE lease_id IS NULL AND NOT doomed
    ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED"""
"""A free slot, locked by the transaction until it commits (no row: K leases are live, or
the other free slots are being taken by other rounds right now): the first step of a
grant's one statement (``ClusterTokens._lease``). SKIP LOCKED skips only other sessions'
locks, so a slot this transaction locked and left free is found again."""


def resize(db: Any, k: int) -> None:
    """Make the slots K: undo dooms or add slots when K grows; when it falls, drop free slots
    and doom as many occupied ones as there are still too many.

    The table is locked (``EXCLUSIVE``: rounds wait for it, at most the session's lock
    bound, and take no slot meanwhile) so the counts are exact; this runs at a daemon's
    start and on SIGHUP, never in a grant round.
    """
    k = max(1, k)
    db.execute("LOCK TABLE briefd_token_slots IN EXCLUSIVE MODE")
    row = db.execute(
        """SELECT count(*) FILTER (WHERE NOT doomed) AS kept,
            count(*) FILTER (WHERE doomed) AS doomed,
            coalesce(max(slot), 0) AS top FROM briefd_token_slots"""
    ).fetchone()
    kept, doomed, top = int(row["kept"]), int(row["doomed"]), int(row["top"])
    if k > kept:
        more = k - kept
        db.execute(
            """UPDATE briefd_token_slots SET doomed = false WHERE slot IN (
                SELECT slot FROM briefd_token_slots WHERE doomed ORDER BY slot LIMIT %s)""",
            (more,),
        )
        more -= min(more, doomed)
        if more:
            db.execute(
                """INSERT INTO briefd_token_slots (slot)
                SELECT s FROM generate_series(%s::integer, %s::integer) AS s""",
                (top + 1, top + more),
            )
    elif k < kept:
        fewer = k - kept
        gone = db.execute(
            """DELETE FROM briefd_token_slots WHERE slot IN (
                SELECT slot FROM briefd_token_slots WHERE lease_id IS NULL AND NOT doomed
                ORDER BY slot DESC LIMIT %s) RETURNING slot""",
            (-fewer,),
        ).fetchall()
        left = -fewer - len(gone)
        if left:
            db.execute(
                """UPDATE briefd_token_slots SET doomed = true WHERE slot IN (
                    SELECT slot FROM briefd_token_slots WHERE NOT doomed
                    ORDER BY slot DESC LIMIT %s)""",
                (left,),
            )
