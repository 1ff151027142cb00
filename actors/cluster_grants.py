"""The cluster limiter's grants on this side: told to their requesters, or given back.

Split from :mod:`briefd.actors.cluster_limiter` (the actor's life and its rounds): a grant
read from the database is told to its stage only while it provably holds, and a lease
or request of an actor that died is given back to the cluster. A mixin of
:class:`~briefd.actors.cluster_limiter.ClusterLimiterActor`, in its thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pykka

from briefd.cluster.records import Grant, HeldLease
from briefd.cluster.state import Cancel, ClusterLimiterState, Enqueue, Release
from briefd.messages import TokenGranted, TokenReleased
from briefd.ops.events import Observer, publish
from briefd.store.pg_claims import VALID_MARGIN


class GrantDelivery:
    """Delivering grants and reaping the dead (the actor provides ``_s``, ``_lease_s`` and
    ``_observers``)."""

    _s: ClusterLimiterState
    _lease_s: float
    _observers: Sequence[Observer]

    def _deliver(self, grants: list[Grant], sent: float) -> None:
        """Tell each grant to its requester; one that is gone is released at once.

        ``sent``: when the transaction that read them began (this process's clock). A
        grant is told only while it provably holds (its lease, read at ``sent``, has more
        than the margin left now) and its job's claim is provable (:attr:`gate`): a daemon
        paused or cut off between the grant and now starts no call for a job another
        daemon may have taken over. Such a grant is given back and its request held here.
        """
        s = self._s
        margin = self._lease_s * VALID_MARGIN
        for g in grants:
            if g.lease_id in s.leases:
                continue
            queued = s.waiting.pop(g.wait_id, None)
            if queued is not None and (
                time.monotonic() >= sent + g.left_s - margin or not s.may_call(g.job_id)
            ):
                s.outbox.append(Release(self._held(g), "unknown", 0.0))
                s.parked.append(queued)
                continue
            lease = self._held(g)
            ref = pykka.ActorRegistry.get_by_urn(g.requester) if queued is not None else None
            if ref is None:  # withdrawn, or the requester died while it waited
                s.outbox.append(Release(lease, "unknown", 0.0))
                continue
            s.leases[g.lease_id] = lease
            s.granted_total += 1
            fig = s.lanes.get(g.endpoint)
            granted = TokenGranted(
                job_id=g.job_id,
                stage=g.stage,
                endpoint=g.endpoint,
                lease_id=g.lease_id,
                in_use=len(s.leases),
                capacity=fig.capacity if fig else s.capacity,
                waiting=s.pending(),
                waited_ms=g.waited_ms,
                window=fig.limit if fig else None,
            )
            try:
                ref.tell(granted)
            except pykka.ActorDeadError:
                del s.leases[g.lease_id]
                s.granted_total -= 1
                s.outbox.append(Release(lease, "unknown", 0.0))
                continue
            publish(granted, self._observers)

    @staticmethod
    def _held(g: Grant) -> HeldLease:
        return HeldLease(
            g.lease_id, g.wait_id, g.requester, g.job_id, g.stage, g.epoch, g.est_tokens,
            time.monotonic(), g.endpoint,
        )  # fmt: skip

    def _unpark(self) -> None:
        """Requests held for an unproven claim: queued once it is proven again, dropped when
        their requester is gone (the root stopped a run whose claim was lost)."""
        s = self._s
        if not s.parked:
            return
        keep = []
        for q in s.parked:
            if pykka.ActorRegistry.get_by_urn(q.request.requester) is None:
                continue
            if s.may_call(q.request.job_id):
                s.outbox.append(Enqueue(q))
            else:
                keep.append(q)
        s.parked = keep

    def _reap(self) -> None:
        """Release the leases, and withdraw the requests, of this daemon's dead actors."""
        s = self._s
        for lease in list(s.leases.values()):
            if pykka.ActorRegistry.get_by_urn(lease.requester) is None:
                del s.leases[lease.lease_id]
                s.outbox.append(Release(lease, "unknown", time.monotonic() - lease.granted_at))
                self._released(lease, reclaimed=True)
        dead = {
            q.request.requester
            for q in s.waiting.values()
            if pykka.ActorRegistry.get_by_urn(q.request.requester) is None
        }
        for urn in dead:
            s.forget(urn)
            s.outbox.append(Cancel(urn))

    def _released(self, lease: HeldLease, *, reclaimed: bool) -> None:
        s = self._s
        if reclaimed:
            s.reclaimed_total += 1
        fig = s.lanes.get(lease.endpoint)
        publish(
            TokenReleased(
                job_id=lease.job_id,
                stage=lease.stage,
                lease_id=lease.lease_id,
                in_use=len(s.leases),
                capacity=fig.capacity if fig else s.capacity,
                waiting=s.pending(),
                reclaimed=reclaimed,
                window=fig.limit if fig else None,
            ),
            self._observers,
        )
