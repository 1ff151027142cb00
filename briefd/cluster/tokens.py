"""One token budget for every daemon on a database: the SQL of the cluster's rate limiter.

Two daemons with K=2 each would make four calls where the provider account allows
two, so the tokens, the adaptive window and the RPM/TPM budgets are kept in
PostgreSQL and every decision on them is one short transaction:

* a request is a row of ``briefd_token_waits``, with its endpoint (any daemon may
  grant it);
* a **grant round is per endpoint**: it locks that endpoint's one
  ``briefd_limiter_endpoints`` row (``FOR UPDATE``: every daemon's grants and releases
  on that endpoint are serialised by it, so the endpoint's check-and-reserve is one
  atomic step and its count of live leases is never raced; rounds for other endpoints
  run meanwhile), reclaims its leases past their ``expires_at`` and its requests of
  daemons not seen for ``lease_s``, then, while requests wait, its live leases < W and
  its pause, cool-down and budgets allow, picks the next request by
  :func:`briefd.limits.fair.pick_fair` (the very rule one daemon uses: the tenant by its
  fair share, kept in the row; within it priority with aging, oldest job, longest path,
  arrival), turns it into a ``briefd_tokens`` row numbered
  from ``briefd_token_fence`` (the fence) holding one of the K slots
  (:mod:`briefd.cluster.slots`: the global K without a global lock; no free slot, the
  round stops and its endpoint is marked ``starved``), and
  ``pg_notify('briefd_tokens', daemon_id)`` wakes each daemon that got one;
* a **release** deletes the lease (its slot freed by a trigger), settles its tenant's
  fair share by the tokens the call used, and applies the call's outcome to its
  endpoint's window with the lease's epoch (:meth:`Pacer.ended`), so one daemon's cut
  is every daemon's, and the 429s of one burst, from any number of
  daemons, cut once.

Leases expire unless their daemon's heartbeat extends them: a daemon that dies
(or loses the database for longer than ``lease_s``) gives its tokens back to the
others by itself. Times are the database's clock, one clock for every daemon.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

import briefd
from briefd.cluster import settings
from briefd.cluster.grant_round import CHANNEL as CHANNEL  # re-exported: the actor listens
from briefd.cluster.grant_round import GrantRounds
from briefd.cluster.records import Beat, ClusterFigures, Grant, HeldLease
from briefd.cluster.rows import (
    LEASE_COLUMNS,
    figures_of,
    grant_of,
)
from briefd.cluster.settings import own_limits
from briefd.cluster.shared import Shared, load, save
from briefd.config import ConfigError
from briefd.limits.lanes import EndpointLimits
from briefd.messages.token import Outcome, RateLimits, RequestToken
from briefd.store.pg_setup import open_pool, open_schema_pool, redact_url


class ClusterTokens(GrantRounds):
    """The cluster limiter's transactions, for one daemon (``daemon_id``). Thread-safe.

    It holds its own small pool (not the journal's): a grant must not wait behind a
    journal write, nor the journal behind a grant. Every method raises
    ``psycopg.Error`` when the database cannot be reached; the actor holds on to
    what it could not write and tries again.
    """

    def __init__(
        self,
        url: str,
        daemon_id: str,
        *,
        lease_s: float = 15.0,
        pool_size: int = 2,
        timeout_s: float = 5.0,
        bound_s: float | None = None,
    ) -> None:
        self.url = url
        self.daemon_id = daemon_id
        self.lease_s = lease_s
        self.where = redact_url(url)
        self._pool_size, self._timeout_s = pool_size, timeout_s
        self.bound_s = bound_s if bound_s is not None else lease_s / 2
        self._pool = open_schema_pool(
            url, max_size=pool_size, timeout_s=timeout_s, bound_s=self.bound_s
        )
        self._batch: Any = None  # the connection of an open batch(), else None
        self._limits: dict[str, EndpointLimits] = {}  # this daemon's endpoints (configure)
        self._adaptive: bool | None = None

    def close(self) -> None:
        """Close the pool (a bounded wait for connections in use)."""
        self._pool.close(timeout=2.0)

    def reconnect(self) -> None:
        """Replace the pool with a fresh one, connected now (OperationalError if it cannot be).

        psycopg_pool retries a lost server with a backoff that doubles up to minutes, so
        after a long outage its next attempt may come long after the server is back; a
        daemon that lost the database calls this at its own pace instead. Call it only
        from the thread that uses this object.
        """
        try:
            pool = open_pool(
                self.url, max_size=self._pool_size, timeout_s=self._timeout_s, bound_s=self.bound_s
            )
        except ConfigError as err:
            raise psycopg.OperationalError(str(err)) from None
        old, self._pool = self._pool, pool
        old.close(timeout=0.5)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every call inside is one transaction, committed at the end or not at all: the
        limiter writes a burst of requests and releases and runs its grant round with one
        commit on the cluster's limiter row instead of one each."""
        with self._tx() as db:
            self._batch = db
            try:
                yield
            finally:
                self._batch = None

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction (inside :meth:`batch`, the batch's). Not in pipeline mode: there
        no Sync reaches the server between statements, so a daemon paused in the middle
        of a round left its session ``active`` and PostgreSQL never armed
        ``idle_in_transaction_session_timeout``: the limiter row stayed locked for as long
        as the pause (86.8 s in the issue's test). Each ``execute`` has a cursor of its
        own, so results are read in any order."""
        if self._batch is not None:
            yield self._batch
            return
        with self._pool.connection() as conn:
            conn.row_factory = dict_row  # type: ignore[assignment]  # our pool: no one else's
            with conn.transaction():
                yield conn

    # -- this daemon -----------------------------------------------------------------

    def register(self) -> None:
        """Say this daemon is alive (``briefd_daemons``): its requests are not reaped."""
        with self._tx() as db:
            self._seen(db)

    def _seen(self, db: Any) -> None:
        db.execute(
            """INSERT INTO briefd_daemons (daemon_id, host, pid, version)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (daemon_id) DO UPDATE SET seen_at = clock_timestamp()""",
            (self.daemon_id, socket.gethostname(), os.getpid(), briefd.__version__),
        )

    def heartbeat(self, held: Collection[int] | None = None) -> Beat:
        """Renew this daemon's presence and leases; what the database still holds of it.

        ``held``: the delivered leases this daemon's limiter holds. Only those (and grants
        not delivered yet) are renewed; a delivered lease it does not hold is deleted (its
        slot freed). Such a lease is one it released but the database lost the release of
        (a server restarted without its last commits, a failover to a replica behind), and
        renewing it would keep a token of K forever. ``None`` renews every lease (tests).

        Waits are read before leases, so a request granted in between shows in one of
        the two: a request in neither was reaped (this daemon was unseen for
        ``lease_s``) and must be made again.
        """
        with self._tx() as db:
            self._seen(db)
            if held is None:
                db.execute(
                    """UPDATE briefd_tokens SET expires_at = clock_timestamp()
                        + make_interval(secs => %s) WHERE daemon_id = %s""",
                    (self.lease_s, self.daemon_id),
                )
            else:
                ids = sorted(held)
                db.execute(
                    """UPDATE briefd_tokens SET expires_at = clock_timestamp()
                        + make_interval(secs => %s)
                    WHERE daemon_id = %s AND (NOT delivered OR lease_id = ANY(%s))""",
                    (self.lease_s, self.daemon_id, ids),
                )
                db.execute(
                    """DELETE FROM briefd_tokens
                    WHERE daemon_id = %s AND delivered AND NOT (lease_id = ANY(%s))""",
                    (self.daemon_id, ids),
                )
            waits = db.execute(
                "SELECT wait_id FROM briefd_token_waits WHERE daemon_id = %s", (self.daemon_id,)
            ).fetchall()
            leases = db.execute(
                "SELECT lease_id, wait_id FROM briefd_tokens WHERE daemon_id = %s",
                (self.daemon_id,),
            ).fetchall()
            alive = db.execute(
                """SELECT count(*) AS n FROM briefd_daemons
                WHERE seen_at >= clock_timestamp() - make_interval(secs => %s)""",
                (self.lease_s,),
            ).fetchone()
        return Beat(
            waits=frozenset(int(r["wait_id"]) for r in waits),
            leases=frozenset(int(r["lease_id"]) for r in leases),
            granted_waits=frozenset(int(r["wait_id"]) for r in leases),
            daemons=int(alive["n"]) if alive else 0,
        )

    def leave(self) -> None:
        """This daemon stops: its requests, its leases and its row go (others need not wait
        ``lease_s`` for them)."""
        with self._tx() as db:
            for table in ("briefd_token_waits", "briefd_tokens", "briefd_daemons"):
                db.execute(f"DELETE FROM {table} WHERE daemon_id = %s", (self.daemon_id,))

    # -- settings ----------------------------------------------------------------------

    def configure(
        self,
        ceiling: int,
        *,
        adaptive: bool = True,
        rpm: float | None = None,
        tpm: float | None = None,
        endpoints: Mapping[str, EndpointLimits] | None = None,
    ) -> None:
        """This daemon's settings become the cluster's (at start): K, adaptive, and each of its
        endpoints' cap and budgets (``endpoints``, ``Routing.limits()``; ``rpm``/``tpm`` are
        the ``''`` endpoint's, as in :meth:`briefd.limits.lanes.Lanes.new`). As for K, the
        last daemon to configure an endpoint sets it, with a warning when it changes what
        another daemon set (:mod:`briefd.cluster.settings`)."""
        self._limits = own_limits(endpoints, rpm, tpm)
        self._adaptive = adaptive
        with self._tx() as db:
            settings.configure(db, self._who, ceiling, adaptive, self._limits)

    def set_ceiling(self, ceiling: int) -> None:
        """A new K for the cluster (SIGHUP's ``SetCapacity``): the slots follow it, and each
        endpoint's window ceiling, ``min(max_concurrent, K)``, with W clamped under it."""
        with self._tx() as db:
            settings.set_ceiling(db, self._who, ceiling)

    @property
    def _who(self) -> settings.Who:
        return settings.Who(self.daemon_id, self.where)

    def _lane(self, db: Any, endpoint: str) -> Shared | None:
        """``endpoint``'s row, locked; made on its first use with this daemon's limits for it
        (:func:`briefd.cluster.settings.lane`)."""
        return settings.lane(db, self.daemon_id, endpoint, self._limits, self._adaptive)

    # -- requests ----------------------------------------------------------------------

    def enqueue(self, request: RequestToken, *, age_s: float | None) -> int:
        """Queue ``request`` for the cluster; its wait id. ``age_s``: how long ago its job was
        admitted (None: unknown), turned into the database's clock for every daemon's order."""
        with self._tx() as db:
            row = db.execute(
                """INSERT INTO briefd_token_waits (daemon_id, requester, job_id, stage, endpoint,
                    job_priority, admitted_at, priority, downstream, est_tokens, tenant, weight)
                VALUES (%s, %s, %s, %s, %s, %s,
                    CASE WHEN %s::float8 IS NULL THEN 0
                         ELSE extract(epoch from clock_timestamp()) - %s::float8 END,
                    %s, %s, %s, %s, %s)
                RETURNING wait_id""",
                (
                    self.daemon_id,
                    request.requester,
                    request.job_id,
                    request.stage,
                    request.endpoint,
                    request.job_priority,
                    age_s,
                    age_s,
                    request.priority,
                    json.dumps(request.downstream),
                    request.est_tokens,
                    request.tenant,
                    request.weight,
                ),
            ).fetchone()
        return int(row["wait_id"])

    def cancel(self, requester: str) -> list[int]:
        """Withdraw ``requester``'s waits and leases (this daemon's); the lease ids ended."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM briefd_token_waits WHERE daemon_id = %s AND requester = %s",
                (self.daemon_id, requester),
            )
            rows = db.execute(
                """DELETE FROM briefd_tokens WHERE daemon_id = %s AND requester = %s
                RETURNING lease_id""",
                (self.daemon_id, requester),
            ).fetchall()
        return [int(r["lease_id"]) for r in rows]

    # -- grants: GrantRounds (briefd/cluster/grant_round.py) ----------------------------

    def busy_endpoints(self, *, due: bool = False) -> list[str]:
        """Endpoints with requests waiting (and, ``due``, with leases past their expiry, to be
        reaped by their round), sorted: the rounds a safety-net ``Tick`` runs."""
        with self._tx() as db:
            rows = db.execute(
                """SELECT DISTINCT endpoint FROM briefd_token_waits
                UNION SELECT DISTINCT endpoint FROM briefd_tokens
                    WHERE %s AND expires_at < clock_timestamp()
                ORDER BY 1""",
                (due,),
            ).fetchall()
        return [r["endpoint"] for r in rows]

    def starved_endpoints(self) -> list[str]:
        """Endpoints whose last round stopped for want of a slot while one is free now: a
        round of theirs may grant. Read after a commit that freed slots (or after a round of
        one's own starved), so a round that starved as this daemon freed a slot is seen by
        one of the two: either it sees the slot free, or this read sees it starved."""
        with self._tx() as db:
            rows = db.execute(
                """SELECT endpoint FROM briefd_limiter_endpoints
                WHERE starved AND EXISTS (SELECT 1 FROM briefd_token_slots
                    WHERE lease_id IS NULL AND NOT doomed)
                ORDER BY 1"""
            ).fetchall()
        return [r["endpoint"] for r in rows]

    def take_grants(self) -> list[Grant]:
        """This daemon's grants made by other daemons, marked delivered as they are read."""
        with self._tx() as db:
            rows = db.execute(
                f"""UPDATE briefd_tokens SET delivered = true
                WHERE daemon_id = %s AND NOT delivered RETURNING {LEASE_COLUMNS}""",
                (self.daemon_id,),
            ).fetchall()
        return sorted((grant_of(r) for r in rows), key=lambda g: g.lease_id)

    # -- outcomes ------------------------------------------------------------------------

    def release(
        self,
        lease: HeldLease,
        *,
        outcome: Outcome,
        elapsed_s: float,
        used_tokens: int | None = None,
        limits: RateLimits | None = None,
    ) -> bool:
        """End ``lease`` and learn from its call (window, latency, TPM, the server's headers);
        False if the lease had already been reclaimed (its outcome still counts)."""
        with self._tx() as db:
            shared = load(db, lease.endpoint)
            counts = db.execute(
                """WITH gone AS (DELETE FROM briefd_tokens WHERE lease_id = %s AND daemon_id = %s
                    RETURNING tenant, weight, est_tokens, charged)
                SELECT (SELECT count(*) FROM gone) AS gone, (SELECT tenant FROM gone) AS tenant,
                    (SELECT weight FROM gone) AS weight, (SELECT est_tokens FROM gone) AS est,
                    (SELECT charged FROM gone) AS charged,
                    (SELECT count(*) FROM briefd_tokens WHERE endpoint = %s) AS live""",
                (lease.lease_id, self.daemon_id, lease.endpoint),
            ).fetchone()  # one snapshot: "live" still counts the lease it deletes
            if shared is not None:
                shared.pacer.ended(
                    stage=lease.stage,
                    outcome=outcome,
                    epoch=lease.epoch,
                    in_flight=int(counts["live"]) + (0 if counts["gone"] else 1),
                    elapsed_s=elapsed_s,
                    est_tokens=lease.est_tokens,
                    used_tokens=used_tokens,
                    limits=limits,
                )
                if counts["gone"]:  # the tenant pays what the call used (fair share)
                    shared.share.settle(
                        counts["tenant"],
                        float(counts["weight"]),
                        float(counts["charged"]),
                        used_tokens,
                        shared.clock(),
                        est_tokens=int(counts["est"]) if used_tokens else 0,
                    )
                save(db, shared)
        return bool(counts["gone"])

    def cool_down(self, retry_after_s: float, endpoint: str = "") -> bool:
        """A 429's ``Retry-After`` from ``endpoint``: no grant for it, from any daemon, before
        it has passed (other endpoints grant on). True if it moved the cool-down later."""
        with self._tx() as db:
            shared = self._lane(db, endpoint)
            if shared is None:
                return False
            until = shared.clock() + retry_after_s
            if until <= shared.cooldown_until:
                return False
            shared.cooldown_until = until
            shared.pacer.pauses += 1
            save(db, shared)
        return True

    def figures(self, endpoint: str = "") -> ClusterFigures | None:
        """``endpoint`` and the cluster as they are now (no lock taken); None before any
        daemon used the endpoint."""
        with self._tx() as db:
            shared = load(db, endpoint, lock=False)
            if shared is None:
                return None
            row = db.execute(
                """SELECT (SELECT count(*) FROM briefd_tokens WHERE endpoint = %s) AS live,
                    (SELECT count(*) FROM briefd_token_waits WHERE endpoint = %s) AS waiting,
                    (SELECT count(*) FROM briefd_tokens) AS all_live,
                    (SELECT count(*) FROM briefd_token_waits) AS all_waiting""",
                (endpoint, endpoint),
            ).fetchone()
            return figures_of(
                shared,
                int(row["live"]),
                int(row["waiting"]),
                int(row["all_live"]),
                int(row["all_waiting"]),
            )
