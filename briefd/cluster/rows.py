"""Rows of the cluster limiter's tables read into records (no transactions here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from briefd.cluster.records import ClusterFigures, Grant
from briefd.cluster.shared import Shared
from briefd.limits.order import Waiting
from briefd.messages.token import RequestToken

LEASE_COLUMNS = (
    "lease_id, wait_id, requester, job_id, stage, endpoint, epoch, est_tokens, waited_ms, "
    "extract(epoch FROM expires_at - clock_timestamp())::float8 AS left_s"
)
"""The columns of ``briefd_tokens`` a :class:`Grant` is read from (and how long it has left)."""


@dataclass(frozen=True)
class QueuedRow:
    """One row of ``briefd_token_waits`` and the request it stands for (for ``pick``)."""

    daemon_id: str
    waiting: Waiting


def read_waits(db: Any, endpoint: str) -> list[QueuedRow]:
    """Every daemon's waiting requests for ``endpoint``, rebuilt as the ``RequestToken`` each
    stands for, so :func:`briefd.limits.order.pick` ranks them exactly as one daemon's limiter would
    (``admitted_at`` and ``queued_at`` are on the database's clock, the same for all)."""
    rows = db.execute(
        """SELECT wait_id, daemon_id, requester, job_id, stage, job_priority, admitted_at,
            priority, downstream, est_tokens, tenant, weight,
            extract(epoch from requested_at)::float8 AS requested
        FROM briefd_token_waits WHERE endpoint = %s""",
        (endpoint,),
    ).fetchall()
    out = []
    for r in rows:
        request = RequestToken.model_construct(  # our own rows: no second validation
            job_id=r["job_id"],
            stage=r["stage"],
            endpoint=endpoint,
            requester=r["requester"],
            priority=int(r["priority"]),
            admitted_at=float(r["admitted_at"]),
            job_priority=int(r["job_priority"]),
            downstream=downstream_of(r["downstream"]),
            est_tokens=int(r["est_tokens"]),
            tenant=r["tenant"],
            weight=float(r["weight"]),
        )
        waiting = Waiting(int(r["wait_id"]), request, float(r["requested"]))
        out.append(QueuedRow(r["daemon_id"], waiting))
    return out


def count_rows(db: Any, table: str) -> int:
    """Rows in ``table`` (as this statement's snapshot sees them)."""
    row = db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()
    return int(row["n"]) if row else 0


def grant_of(row: Any) -> Grant:
    """A ``briefd_tokens`` row (:data:`LEASE_COLUMNS`) as a :class:`Grant`."""
    return Grant(
        lease_id=int(row["lease_id"]),
        wait_id=int(row["wait_id"]),
        requester=row["requester"],
        job_id=row["job_id"],
        stage=row["stage"],
        epoch=int(row["epoch"]),
        est_tokens=int(row["est_tokens"]),
        waited_ms=int(row["waited_ms"]),
        left_s=float(row["left_s"]),
        endpoint=row["endpoint"],
    )


def figures_of(
    shared: Shared, live: int, waiting: int, cluster_live: int, cluster_waiting: int
) -> ClusterFigures:
    """An endpoint's figures from its loaded row, its two counts and the cluster's."""
    now = shared.clock()
    rpm_lag, tpm_lag = shared.pacer.lags()
    w = shared.window
    p = shared.pacer
    return ClusterFigures(
        capacity=shared.k or w.ceiling,
        window=w.w if w.adaptive else float(w.ceiling),
        limit=w.limit,
        in_use=live,
        waiting=waiting,
        granted_total=shared.granted_total,
        reclaimed_total=shared.reclaimed_total,
        cooling_for_s=max(0.0, shared.cooldown_until - now),
        paused_for_s=max(0.0, shared.pacer.pause_until - now),
        rpm_lag_s=rpm_lag,
        tpm_lag_s=tpm_lag,
        pauses=shared.pacer.pauses,
        rate_limited=shared.pacer.rate_limited,
        epoch=w.epoch,
        cuts=w.cuts,
        endpoint=shared.endpoint,
        ceiling=w.ceiling,
        rpm=p.rpm.per_minute if p.rpm else None,
        tpm=p.tpm.per_minute if p.tpm else None,
        cluster_in_use=cluster_live,
        cluster_waiting=cluster_waiting,
    )


def describe(shared: Shared) -> str:
    """The settings daemons set, for the log line that says one changed another's."""
    p = shared.pacer
    rpm = p.rpm.per_minute if p.rpm else None
    tpm = p.tpm.per_minute if p.tpm else None
    return (
        f"endpoint {shared.endpoint!r}: ceiling={p.window.ceiling} adaptive={p.window.adaptive} "
        f"rpm={rpm} tpm={tpm}"
    )


def downstream_of(text: str | None) -> dict[str, list[str]]:
    """A request's stage graph from its JSON column; a damaged one weighs nothing."""
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): [str(x) for x in v] for k, v in raw.items() if isinstance(v, list)}
