"""Claims, leases and fencing on the PostgreSQL journal: several daemons, one queue.

Any daemon accepts a submission; whichever daemon has room *claims* it. A claim
is the job row's ``claimed_by``, a lease (``lease_until``, renewed by the
holder's heartbeat) and a fencing token (``fence``, from the ``briefd_fence``
sequence, so a newer claim always has a larger one):

* :meth:`PgClaims.claim` takes the live jobs nobody holds (free, or whose
  lease lapsed: their daemon died or was cut off) with ``FOR UPDATE SKIP
  LOCKED``, so racing daemons never take one job twice and never wait on each
  other. Oldest first, by the limiter's aging rule (:mod:`briefd.limits.order`);
  with several tenants, fairly across them first (:data:`_FAIR_CLAIM`).
* Every write of a run this store holds carries the fence in the same
  transaction as the write. A daemon paused past its lease (SIGSTOP, a long GC,
  a partition) wakes up holding a token a newer claim replaced, and the
  database refuses its writes (:class:`~briefd.store.base.ClaimLost`): a zombie
  never overwrites its successor. A lease proves nothing by itself (the clock
  of a paused process lies); the fence does.
* A job this store does not hold is written as on one daemon (the single-daemon
  journal, and tests that never claim, keep working).

The store remembers the fence of each claim it holds, and of those it gave up
or lost recently (:class:`Fences`): a stage result still in flight when its
claim was lost is fenced too, not written as if unclaimed.

Notifications, sent with the transaction that warrants them, so a listener
(``LISTEN``) wakes instead of polling: :data:`JOBS_CHANNEL` when jobs become
claimable, :data:`FINISHED_CHANNEL` when a job ends, :data:`CANCEL_CHANNEL`
when a cancel is asked of the daemon holding a job.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import DictRow

from briefd.limits.order import PRIORITY_AGING_S
from briefd.messages import ErrorCode, JobResult, JobState
from briefd.store.base import Claim, ClaimLost

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

Cursor = psycopg.Cursor[DictRow]

JOBS_CHANNEL = "briefd_jobs"
"""Notified (empty payload) when jobs become claimable: a new job, jobs suspended."""
FINISHED_CHANNEL = "briefd_finished"
"""Notified with the job id when a job's terminal state is committed."""
CANCEL_CHANNEL = "briefd_cancel"
"""Notified with the job id when a cancel is asked of the daemon holding the job."""
VALID_MARGIN = 0.1
"""The share of the lease a daemon does not count on: a claim renewed at ``t`` is proven here
until ``t + lease_s * (1 - VALID_MARGIN)``, a margin for clock rates and the moment between the
check and the call leaving."""
REMEMBERED = 4096
"""Claims given up or lost that a store still fences its late writes with (oldest forgotten)."""

LIVE = f"('{JobState.QUEUED.value}', '{JobState.RUNNING.value}')"
FREE = "claimed_by = NULL, lease_until = NULL"
"""SET clause that frees a job's claim (the fence stays: it is the last claim's)."""
LEASED = "(claimed_by IS NOT NULL AND lease_until > now())"
"""A live claim: someone holds the job and its lease has not lapsed."""
_CLAIM = f"""
WITH picked AS (
    SELECT seq, claimed_by AS prev,
           priority + floor(extract(epoch FROM now() - submitted_at) / %(aging)s) AS eff
    FROM briefd_jobs
    WHERE state IN {LIVE} AND NOT {LEASED} AND (NOT %(lapsed)s OR claimed_by IS NOT NULL)
      AND NOT (CASE WHEN strpos(job_id, '.') > 0 THEN split_part(job_id, '.', 1)
               ELSE 'default' END = ANY(%(held)s::text[]))
    ORDER BY eff DESC, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE briefd_jobs j
SET claimed_by = %(owner)s, claimed_at = now(),
    lease_until = now() + make_interval(secs => %(lease)s), fence = nextval('briefd_fence')
FROM picked p
WHERE j.seq = p.seq
RETURNING j.job_id, j.fence, extract(epoch FROM j.submitted_at)::float8 AS submitted_at,
          p.prev, j.cancel_requested, p.eff, j.seq
"""
TENANT_OF = "CASE WHEN strpos(job_id, '.') > 0 THEN split_part(job_id, '.', 1) ELSE 'default' END"
"""A job's tenant in SQL: the prefix of its key (:func:`briefd.tenants.ids.tenant_of`)."""
SKIP_SLACK = 64
"""Jobs ranked past ``limit`` in each tenant's order that the fair claim still considers: a
tenant's jobs beyond its first ``limit`` cannot be among the ``limit`` claimed, unless rows
ahead of them are being claimed by another daemon right now (skipped, not waited for)."""
_FAIR_CLAIM = f"""
WITH cand AS (
    SELECT seq, tenant,
           priority + floor(extract(epoch FROM now() - submitted_at) / %(aging)s) AS eff
    FROM (SELECT seq, priority, submitted_at, {TENANT_OF} AS tenant
          FROM briefd_jobs
          WHERE state IN {LIVE} AND NOT {LEASED}) c
    WHERE NOT (tenant = ANY(%(held)s::text[]))
), nth AS (
    SELECT * FROM (
        SELECT seq, tenant, eff,
               row_number() OVER (PARTITION BY tenant ORDER BY eff DESC, seq) AS nth
        FROM cand) n
    WHERE nth <= %(limit)s + {SKIP_SLACK}
), busy AS (
    SELECT {TENANT_OF} AS tenant, count(*) AS n
    FROM briefd_jobs WHERE state IN {LIVE} AND {LEASED} GROUP BY 1
), ranked AS (
    SELECT c.seq, c.eff,
           (coalesce(b.n, 0) + c.nth) / (CASE WHEN w.weight > 0 THEN w.weight ELSE 1 END) AS tag
    FROM nth c
    LEFT JOIN busy b USING (tenant)
    LEFT JOIN unnest(%(tenants)s::text[], %(weights)s::float8[]) AS w(tenant, weight)
        USING (tenant)
    WHERE NOT %(newcomers)s OR b.n IS NULL
), picked AS (
    SELECT j.seq, j.claimed_by AS prev, r.eff, r.tag
    FROM briefd_jobs j JOIN ranked r ON j.seq = r.seq
    WHERE j.state IN {LIVE} AND NOT (j.claimed_by IS NOT NULL AND j.lease_until > now())
    ORDER BY r.tag, r.eff DESC, r.seq
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
UPDATE briefd_jobs j
SET claimed_by = %(owner)s, claimed_at = now(),
    lease_until = now() + make_interval(secs => %(lease)s), fence = nextval('briefd_fence')
FROM picked p
WHERE j.seq = p.seq
RETURNING j.job_id, j.fence, extract(epoch FROM j.submitted_at)::float8 AS submitted_at,
          p.prev, j.cancel_requested, p.eff, j.seq, p.tag
"""
"""The claim across tenants: each job's tag is its place in its tenant's order (priority
with aging, then oldest) plus the tenant's jobs claimed now anywhere in the cluster, over
the tenant's weight; the least tags go first (ties: today's order). A tenant with nothing
running goes before another tenant's Nth job, and claimed places follow the weights.
``newcomers``: only the jobs of tenants with nothing claimed anywhere. The
order is read without locks, then the rows are locked in that order, skipping those
another daemon is claiming (checked again once locked)."""
_RENEW = f"""
UPDATE briefd_jobs j SET lease_until = now() + make_interval(secs => %(lease)s)
FROM unnest(%(ids)s::text[], %(fences)s::bigint[]) AS h(job_id, fence)
WHERE j.job_id = h.job_id AND j.fence = h.fence AND j.claimed_by = %(owner)s
  AND j.state IN {LIVE}
RETURNING j.job_id
"""
"""One statement, run as its own transaction: the rows it extends are locked only while it
runs (never across a pause of this process), so another daemon's claim skips them for
milliseconds, not for a paused daemon's whole transaction."""


class Fences:
    """The fencing tokens of the claims a store holds, and of those it gave up or lost; and,
    for each claim held, until when this process can *prove* it (its own monotonic clock).

    A claim confirmed by a statement sent at ``t`` holds in the database until at least
    ``t + lease_s`` (the database extends it after receiving the statement), so this
    process may count on it until ``t + lease_s - margin``; past that, another daemon may
    have taken the job over and only the database can say. A claim found lost (a write
    refused by the fence) is remembered as lost until :meth:`take_lost` reports it, so the
    root stops the run instead of letting it go on, stage after stage, refused and paid.

    Thread-safe: the journal actor writes while the root claims and renews, and the
    limiter and ``/healthz`` ask :meth:`valid` and :meth:`unproven` from their threads.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._held: dict[str, int] = {}
        self._valid: dict[str, float] = {}  # held job -> proven until (monotonic s)
        self._gone: OrderedDict[str, int] = OrderedDict()
        self._lost: dict[str, None] = {}  # lost, not yet reported (ordered)

    def hold(self, job_id: str, fence: int, valid_until: float = math.inf) -> None:
        """This store now holds ``job_id`` under ``fence``, proven until ``valid_until``."""
        with self._lock:
            self._gone.pop(job_id, None)
            self._lost.pop(job_id, None)
            self._held[job_id] = fence
            self._valid[job_id] = valid_until

    def confirm(self, job_ids: list[str], valid_until: float) -> None:
        """A renewal confirmed these claims: proven until ``valid_until``."""
        with self._lock:
            for job_id in job_ids:
                if job_id in self._held:
                    self._valid[job_id] = max(self._valid.get(job_id, 0.0), valid_until)

    def valid(self, job_id: str) -> bool:
        """Whether this store holds ``job_id`` and can prove it now."""
        now = self._clock()
        with self._lock:
            return job_id in self._held and self._valid.get(job_id, 0.0) > now

    def unproven(self) -> tuple[int, float]:
        """``(claims held that cannot be proven now, seconds since the oldest stopped being)``."""
        now = self._clock()
        with self._lock:
            late = [now - v for v in self._valid.values() if v <= now]
        return len(late), max(late, default=0.0)

    def of(self, job_id: str) -> int | None:
        """The fence this store's writes for ``job_id`` carry; None: it never claimed it."""
        with self._lock:
            held = self._held.get(job_id)
            return held if held is not None else self._gone.get(job_id)

    def held(self) -> dict[str, int]:
        """Job -> fence of every claim held (a copy)."""
        with self._lock:
            return dict(self._held)

    def release(self, job_ids: list[str], *, only: dict[str, int] | None = None) -> list[str]:
        """Stop holding ``job_ids`` (those still held with the fence in ``only``, if given);
        their fences are kept a while, so late writes stay fenced. The ids released."""
        released = []
        with self._lock:
            for job_id in job_ids:
                fence = self._held.get(job_id)
                if fence is None or (only is not None and only.get(job_id) != fence):
                    continue
                del self._held[job_id]
                self._valid.pop(job_id, None)
                self._gone[job_id] = fence
                released.append(job_id)
            while len(self._gone) > REMEMBERED:
                self._gone.popitem(last=False)
        return released

    def lose(self, job_ids: list[str]) -> None:
        """A write found these claims replaced: released, and kept to be reported."""
        for job_id in self.release(job_ids):
            with self._lock:
                self._lost[job_id] = None

    def lose_again(self, job_id: str) -> None:
        """A loss taken but not reported after all (the renewal failed): report it later."""
        with self._lock:
            if job_id not in self._held:
                self._lost[job_id] = None

    def now(self) -> float:
        """The clock validity is counted on (monotonic s)."""
        return self._clock()

    def take_lost(self) -> list[str]:
        """The claims found lost since the last call (each reported once)."""
        with self._lock:
            lost, self._lost = list(self._lost), {}
        return lost


class PgClaims:
    """The claim half of :class:`~briefd.store.postgres.PostgresStore` (a mixin).

    The store provides ``_tx`` (one transaction), ``_close_locked`` (end a locked
    live job without a run's result) and ``_on_finished``.
    """

    _fences: Fences
    _on_finished: Callable[[str], None] | None

    def _tx(
        self, *, write: bool = True, one: bool = False, within_s: float | None = None
    ) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _close_locked(
        self, cur: Cursor, job_id: str, state: JobState, error: tuple[ErrorCode, str, str]
    ) -> JobResult | None:
        raise NotImplementedError

    # -- claiming --------------------------------------------------------------------

    def claim(
        self,
        owner: str,
        limit: int,
        lease_s: float,
        *,
        lapsed_only: bool = False,
        held: list[str] | None = None,
        weights: Mapping[str, float] | None = None,
        newcomers: bool = False,
    ) -> list[Claim]:
        """Claim up to ``limit`` live jobs nobody holds, oldest first; held until the lease
        (``lease_s`` from now, by the database's clock) lapses unless :meth:`renew` extends it.

        Claimable: ``queued`` or ``running`` jobs with no claim or a lapsed one. Order:
        the higher effective priority (``priority`` + one level per
        :data:`~briefd.limits.order.PRIORITY_AGING_S` since submission), then
        submission order. Rows another daemon is claiming right now are skipped, not
        waited for. A job whose claim lapsed is ``taken_over``, whether it was running
        there (its run died, or is a zombie whose writes the new fence now refuses) or
        still waiting in that daemon's queue: a claim is freed when its holder lets go,
        so a lapsed one means the holder died or was cut off. ``lapsed_only``:
        only jobs whose claim lapsed (a dead daemon's), to take them over at once.
        ``held``: tenants whose jobs are not claimed (their daily budget is spent).
        ``weights`` (tenant -> weight, a tenant not named weighs 1): claim fairly across
        tenants (:data:`_FAIR_CLAIM`: fewest claimed per weight first, today's order within
        a tenant); None (one tenant): today's order alone, the cheaper query.
        ``newcomers`` (with ``weights``): only jobs of tenants with nothing claimed in the
        cluster (a full daemon takes such a job past its window).
        """
        if limit <= 0:
            return []
        sent = self._fences.now()
        with self._tx(one=True) as cur:  # one statement: its row locks end with it
            fair = weights is not None and not lapsed_only
            names = sorted(weights or {})
            cur.execute(
                _FAIR_CLAIM if fair else _CLAIM,
                {
                    "aging": PRIORITY_AGING_S,
                    "limit": limit,
                    "owner": owner,
                    "lease": lease_s,
                    "lapsed": lapsed_only,
                    "held": held or [],
                    "tenants": names,
                    "weights": [float((weights or {})[n]) for n in names],
                    "newcomers": newcomers,
                },
            )
            rows = sorted(
                cur.fetchall(),
                key=lambda r: (float(r["tag"]) if fair else 0.0, -float(r["eff"]), int(r["seq"])),
            )
        claims = [
            Claim(
                job_id=r["job_id"],
                fence=int(r["fence"]),
                submitted_at=float(r["submitted_at"]),
                taken_over=r["prev"] is not None,
                previous_owner=r["prev"],
                cancel=r["cancel_requested"],
            )
            for r in rows
        ]
        until = sent + lease_s * (1 - VALID_MARGIN)
        for c in claims:
            self._fences.hold(c.job_id, c.fence, until)
        return claims

    def queue_depth(self) -> int:
        """Jobs queued in the cluster (one index scan: a submission's bound check pays this,
        not a count of every job ever kept)."""
        with self._tx(write=False) as cur:
            cur.execute(
                "SELECT count(*) AS n FROM briefd_jobs WHERE state = %s", (JobState.QUEUED.value,)
            )
            row = cur.fetchone()
        return int(row["n"]) if row else 0

    def release_predecessors(self, owner: str, node: str) -> int:
        """Lapse now the claims and token leases of this data dir's earlier daemons.

        Daemon ids end in ``:<node>``, a digest of the host and the data dir, and a
        data dir is locked by one live daemon at a time: a claim under the same node
        but another id is a dead predecessor's (kill -9, a crash). Lapsing it at start
        lets a restarted daemon resume its own jobs at once instead of after the
        lease. The number of jobs whose claims were lapsed.
        """
        pattern = "%:" + node.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._tx() as cur:
            cur.execute(
                "UPDATE briefd_jobs SET lease_until = now() WHERE claimed_by LIKE %s "
                f"AND claimed_by <> %s AND state IN {LIVE} AND lease_until > now()",
                (pattern, owner),
            )
            jobs = cur.rowcount
            cur.execute(
                "UPDATE briefd_tokens SET expires_at = now() "
                "WHERE daemon_id LIKE %s AND daemon_id <> %s AND expires_at > now()",
                (pattern, owner),
            )
            cur.execute(
                "DELETE FROM briefd_token_waits WHERE daemon_id LIKE %s AND daemon_id <> %s",
                (pattern, owner),
            )
        return max(jobs, 0)

    def held(self) -> dict[str, int]:
        """Job -> fencing token of every claim this store holds."""
        return self._fences.held()

    def renew(self, owner: str, lease_s: float) -> list[str]:
        """Extend every held claim's lease to ``lease_s`` from now; the jobs lost.

        A claim is extended only where the row still names ``owner`` and its fence:
        one that was taken over (it lapsed first) or ended elsewhere is lost, and
        its later writes raise ClaimLost. The claims a write found lost since the
        last renewal are reported here too, once. Each claim extended is proven
        (:meth:`claim_valid`) until ``lease_s`` minus a margin after the statement was
        sent. StoreUnavailable: nothing extended, nothing proven anew; retry.
        """
        held = self._fences.held()
        lost = self._fences.take_lost()
        if not held:
            return lost
        ids = sorted(held)
        sent = self._fences.now()
        try:
            with self._tx(one=True) as cur:  # one statement: no row stays locked past it
                cur.execute(
                    _RENEW,
                    {
                        "ids": ids,
                        "fences": [held[j] for j in ids],
                        "owner": owner,
                        "lease": lease_s,
                    },
                )
                kept = [r["job_id"] for r in cur.fetchall()]
        except BaseException:
            for job_id in lost:  # not reported after all: the next renewal does
                self._fences.lose_again(job_id)
            raise
        self._fences.confirm(kept, sent + lease_s * (1 - VALID_MARGIN))
        gone = set(kept)
        released = self._fences.release([j for j in ids if j not in gone], only=held)
        return list(dict.fromkeys([*lost, *released]))

    def claim_valid(self, job_id: str) -> bool:
        """Whether this store holds ``job_id`` under a claim it can prove now: confirmed by
        the database less than ``lease_s`` minus a margin ago (this process's clock). No call
        may start for a job without it (the cluster limiter asks before each grant)."""
        return self._fences.valid(job_id)

    def claims_problem(self) -> str | None:
        """Why this daemon cannot prove some of its claims now (None: it can prove all);
        from memory, no database call (``/healthz``)."""
        n, late_s = self._fences.unproven()
        if n == 0:
            return None
        return (
            f"cannot prove its claim on {n} job(s): no renewal confirmed for "
            f"{late_s:.1f}s past the margin (its calls are held)"
        )

    def _locked(self, cur: Cursor, job_id: str, *, share: bool = False) -> DictRow | None:
        """Lock the job's row (FOR UPDATE, or FOR SHARE) and return it (``state``, ``runs``,
        ``spec``, ``submitted_at`` epoch s, ``leased``: a live claim on it); None if unknown.

        ClaimLost if this store claimed the job and a newer claim replaced it.
        """
        mode = "SHARE" if share else "UPDATE"
        cur.execute(
            f"SELECT state, runs, spec, fence, {LEASED} AS leased, "
            "extract(epoch FROM submitted_at)::float8 AS submitted_at "
            f"FROM briefd_jobs WHERE job_id = %s FOR {mode}",
            (job_id,),
        )
        row = cur.fetchone()
        self._check_fence(job_id, None if row is None else int(row["fence"]))
        return row

    def _check_fence(self, job_id: str, found: int | None) -> None:
        """ClaimLost if this store claimed ``job_id`` and the row's fence is no longer its own."""
        mine = self._fences.of(job_id)
        if mine is not None and found != mine:
            self._fences.lose([job_id])  # reported by the next renew(): the run stops
            raise ClaimLost([job_id])

    def _ended(self, job_id: str) -> None:
        """After a committed terminal state: the claim is given up, the owner told."""
        self._fences.release([job_id])
        if self._on_finished is not None:
            self._on_finished(job_id)

    # -- cancelling across daemons ---------------------------------------------------

    def cancel_anywhere(self, job_id: str, reason: str) -> tuple[JobState | None, JobResult | None]:
        """Cancel a job wherever it is: ``(state after, result if it ended now)``.

        A live job nobody holds (free, or its claim lapsed) is closed now:
        ``(CANCELLED, result)``. A job under a live claim (another daemon's, or this
        store's own) is asked to stop: ``cancel_requested`` is set (the first reason
        kept) and :data:`CANCEL_CHANNEL` notified; the holder finds it in
        :meth:`cancels` and ends it: ``(RUNNING, None)``. A terminal job:
        ``(its state, None)``; an unknown one: ``(None, None)``.
        """
        with self._tx() as cur:
            cur.execute(
                f"SELECT state, {LEASED} AS leased FROM briefd_jobs WHERE job_id = %s FOR UPDATE",
                (job_id,),
            )
            row = cur.fetchone()
            if row is None:
                return None, None
            state = JobState(row["state"])
            if state.terminal:
                return state, None
            if row["leased"]:
                cur.execute(
                    "UPDATE briefd_jobs SET cancel_requested = coalesce(cancel_requested, %s) "
                    "WHERE job_id = %s",
                    (reason, job_id),
                )
                notify(cur, CANCEL_CHANNEL, job_id)
                return JobState.RUNNING, None
            error = (ErrorCode.CANCELLED, reason, "")
            result = self._close_locked(cur, job_id, JobState.CANCELLED, error)
        if result is None:
            return state, None
        self._ended(job_id)
        return JobState.CANCELLED, result

    def cancels(self, owner: str) -> list[tuple[str, str]]:
        """``(job_id, reason)`` of the jobs this store holds for ``owner`` that another daemon
        asked to cancel (:meth:`cancel_anywhere`), oldest first."""
        held = self._fences.held()
        if not held:
            return []
        with self._tx(write=False) as cur:
            cur.execute(
                "SELECT job_id, fence, cancel_requested FROM briefd_jobs "
                "WHERE job_id = ANY(%s::text[]) AND claimed_by = %s "
                f"AND cancel_requested IS NOT NULL AND state IN {LIVE} ORDER BY seq",
                (sorted(held), owner),
            )
            rows = cur.fetchall()
        return [
            (r["job_id"], r["cancel_requested"]) for r in rows if held[r["job_id"]] == r["fence"]
        ]


def notify(cur: Cursor, channel: str, payload: str = "") -> None:
    """Notify ``channel`` when the transaction commits (nothing if it rolls back)."""
    cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))
