"""The root actor's share of a cluster: when to claim jobs, renew the claims, look for cancels.

With PostgreSQL several daemons share one queue. The root actor does not own
a queue of its own any more: it *claims* ready jobs from the database when it
has room (:meth:`PostgresStore.claim`, ``FOR UPDATE SKIP LOCKED``), renews its
claims every ``lease_s / 3`` and stops a run whose claim another daemon took.
This object keeps the when, so the root's handlers stay short:

* **No busy polling.** A claim is tried when something says there may be work:
  a submission anywhere (``NOTIFY briefd_jobs``, told to the root as
  ``ClaimJobs``), a slot freed here, the safety-net poll every ``poll_s``.
  An idle cluster costs each daemon one query per ``poll_s`` and one renewal
  per ``lease_s / 3``.
* **Renewal is the heartbeat.** A daemon killed with kill -9 stops renewing;
  its jobs are free for others once ``lease_until`` passes. Each poll also
  *rescues* such jobs (:meth:`ClaimKeeper.rescue`): their claims are taken at
  once, even with no room to run them yet, so they are taken over within one
  lease plus one poll and wait, claimed, at the head of the root's queue (they
  are the oldest) instead of trickling out as slots free anywhere.
* **Cancels reach the holder.** A cancel asked through another daemon is a flag
  on the job's row (``NOTIFY briefd_cancel``); the holder reads its flagged
  jobs at each renewal and on each notification.

Every call here is a short transaction in the root's own thread; a database
that cannot be reached raises ``StoreUnavailable``, which the root treats as
"not now" (it grants and claims nothing, and tries again at the next tick).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from briefd.messages import JobClaimed, JobClaimLost
from briefd.ops.events import publish

if TYPE_CHECKING:
    from briefd.store.base import Claim, ClaimStore


def node_of(data_dir: Path) -> str:
    """A digest of the host and the data dir: the part of a daemon's id its restarts share."""
    where = f"{socket.gethostname()}:{os.path.realpath(data_dir)}"
    return hashlib.sha256(where.encode()).hexdigest()[:8]


def new_daemon_id(data_dir: Path) -> str:
    """``host:pid:node``: unique among live daemons (a data dir is locked by one), readable
    in a log line, and telling a restarted daemon which claims were its predecessor's."""
    return f"{socket.gethostname()}:{os.getpid()}:{node_of(data_dir)}"


NEWCOMER_EVERY_S = 0.25
"""A full daemon looks for a newcomer tenant's job at most this often."""


class ClaimKeeper:
    """When the root claims, renews and checks cancels; the calls themselves go to the store."""

    def __init__(
        self,
        store: ClaimStore,
        daemon_id: str,
        *,
        lease_s: float,
        poll_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.daemon_id = daemon_id
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._clock = clock
        self._wanted = True  # claim at the first chance
        self._next_poll = 0.0
        self._next_rescue = 0.0
        self._next_newcomer = 0.0
        self._next_renew = clock() + lease_s / 3
        self.claimed_total = 0
        self.taken_over_total = 0
        self.lost_total = 0

    def want(self) -> None:
        """Something says there may be work (a notification, a freed slot): claim when room."""
        self._wanted = True

    def claim(
        self,
        room: int,
        *,
        held: Collection[str] = (),
        weights: Mapping[str, float] | None = None,
    ) -> list[Claim]:
        """Claim up to ``room`` jobs if wanted or the poll is due (StoreUnavailable: not now);
        none of the ``held`` tenants' (their daily budget is spent). ``weights`` (tenant ->
        weight; None: one tenant): claim fairly across tenants (:meth:`PgClaims.claim`)."""
        now = self._clock()
        if room <= 0 or not (self._wanted or now >= self._next_poll):
            return []
        self._next_poll = now + self.poll_s
        claims = self.store.claim(
            self.daemon_id, room, self.lease_s, held=list(held), weights=weights
        )
        # Fewer than asked: the queue is empty, wait to be told. As many: there may be more.
        self._wanted = len(claims) >= room
        return self._claimed(claims)

    def claim_newcomer(
        self, *, held: Collection[str] = (), weights: Mapping[str, float]
    ) -> list[Claim]:
        """With no room: claim one job of a tenant with nothing claimed in the cluster, past
        this daemon's window (as :func:`~briefd.limits.fair.next_to_admit` on one daemon), so
        a newcomer's job reaches the limiter's fair share at once instead of after a place
        frees. Tried when a claim would be, at most every :data:`NEWCOMER_EVERY_S` (a burst
        of submissions wakes every full daemon)."""
        now = self._clock()
        if not (self._wanted or now >= self._next_poll) or now < self._next_newcomer:
            return []
        self._next_poll = now + self.poll_s
        self._next_newcomer = now + NEWCOMER_EVERY_S
        claims = self.store.claim(
            self.daemon_id, 1, self.lease_s, held=list(held), weights=weights, newcomers=True
        )
        self._wanted = bool(claims)  # one taken: another tenant's may be waiting too
        return self._claimed(claims)

    def _claimed(self, claims: list[Claim]) -> list[Claim]:
        """Count and announce new claims (``JobClaimed``)."""
        self.claimed_total += len(claims)
        self.taken_over_total += sum(1 for c in claims if c.taken_over)
        wall = time.time()
        for c in claims:
            publish(
                JobClaimed(
                    job_id=c.job_id,
                    daemon=self.daemon_id,
                    fence=c.fence,
                    taken_over=c.taken_over,
                    previous_owner=c.previous_owner,
                    waited_s=round(max(0.0, wall - c.submitted_at), 3),
                )
            )
        return claims

    def rescue(self, room: int) -> list[Claim]:
        """Every ``poll_s``: claim up to ``room`` jobs whose claim lapsed (a dead daemon's), to
        queue here; StoreUnavailable: not now."""
        now = self._clock()
        if room <= 0 or now < self._next_rescue:
            return []
        self._next_rescue = now + self.poll_s
        return self._claimed(self.store.claim(self.daemon_id, room, self.lease_s, lapsed_only=True))

    def renew_due(self) -> bool:
        return self._clock() >= self._next_renew

    def renew(self) -> list[str]:
        """Extend every claim held; the jobs lost (StoreUnavailable: try at the next tick)."""
        lost = self.store.renew(self.daemon_id, self.lease_s)
        self._next_renew = self._clock() + self.lease_s / 3
        self.lost_total += len(lost)
        for job_id in lost:
            publish(JobClaimLost(job_id=job_id, daemon=self.daemon_id))
        return lost

    def cancels(self) -> list[tuple[str, str]]:
        """``(job_id, reason)`` of held jobs that someone asked, elsewhere, to cancel."""
        return self.store.cancels(self.daemon_id)

    def stats_fields(self) -> dict[str, object]:
        return {
            "daemon_id": self.daemon_id,
            "claimed_total": self.claimed_total,
            "taken_over_total": self.taken_over_total,
            "claims_lost_total": self.lost_total,
            "claims_held": len(self.store.held()),
        }
