"""An endpoint's ``briefd_limiter_endpoints`` row as the limiter's own pure policies, and back.

Each endpoint has one row, as each has one lane in a daemon's own limiter
(:mod:`briefd.limits.lanes`): its window (AIMD with epochs, ceiling
``min(max_concurrent, K)``), its RPM/TPM budgets (GCRA), its server's pause and
its 429 cool-down are :class:`~briefd.limits.pacing.Pacer`'s, and its tenants'
fair share :class:`~briefd.limits.fair.FairShare` (``fair_share``, JSON), exactly as one
daemon runs them; the cluster only keeps them in a row instead of in memory. So
every transaction that decides on them does the same three steps: :func:`load`
the endpoint's row under its lock (``FOR UPDATE``, which serialises every
daemon's decisions on that endpoint, and only on it), let the ``Pacer`` decide,
:func:`save` it back. The cluster's K is the one ``briefd_limiter`` row's
(:func:`create_global`); it is kept by the slots (:mod:`briefd.cluster.slots`),
not by a lock on that row. Nothing here re-implements AIMD or GCRA, so a change
to those policies is a change for the cluster too.

The clock the policies read is the database's (``clock_timestamp()`` in epoch
seconds), read once per transaction and advanced by this process's monotonic
clock while the transaction runs: one clock for every daemon, no round trip per
reading. All times stored in the row (``rpm_tat``, ``pause_until``,
``cooldown_until``) are on that clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from briefd.limits.fair import FairShare
from briefd.limits.gcra import Gcra
from briefd.limits.lanes import EndpointLimits, ceiling_of
from briefd.limits.order import Latencies
from briefd.limits.pacing import Pacer
from briefd.limits.window import Window

_COLUMNS = (
    "endpoint, max_concurrent, starved, ceiling, adaptive, w, epoch, cuts, rpm, tpm, "
    "rpm_tat, tpm_tat, pause_until, "
    "cooldown_until, pauses, rate_limited, granted_total, reclaimed_total, latencies, set_by, "
    "fair_share"
)


@dataclass
class Shared:
    """An endpoint's row, loaded: the pacer plus what the cluster keeps beside it."""

    endpoint: str
    pacer: Pacer
    cooldown_until: float  # a 429's Retry-After, epoch s on the database's clock
    granted_total: int
    reclaimed_total: int
    set_by: str | None  # the daemon that last set the ceiling or the budgets
    max_concurrent: int | None = None  # the endpoint's own cap (None: K)
    k: int = 0  # the cluster's K as this transaction read it (0: unknown)
    starved: bool = False  # its last round stopped for want of a free slot
    share: FairShare = field(default_factory=FairShare)  # the tenants' tags on this endpoint

    @property
    def clock(self) -> Callable[[], float]:
        """The database's clock (epoch s) for this transaction."""
        return self.pacer.clock

    @property
    def window(self) -> Window:
        return self.pacer.window


def db_clock(db_now: float) -> Callable[[], float]:
    """A clock that reads ``db_now`` now and runs on with this process's monotonic clock."""
    start = time.monotonic()
    return lambda: db_now + (time.monotonic() - start)


def load(db: Any, endpoint: str, *, lock: bool = True) -> Shared | None:
    """``endpoint``'s row, locked (``FOR UPDATE``) unless ``lock`` is false; None if no
    daemon has used that endpoint yet. The cluster's K is read beside it, unlocked."""
    tail = " FOR UPDATE OF e" if lock else ""
    row = db.execute(
        f"SELECT {_COLUMNS}, extract(epoch from clock_timestamp())::float8 AS now, "
        "(SELECT ceiling FROM briefd_limiter WHERE id = 1) AS k "
        f"FROM briefd_limiter_endpoints e WHERE endpoint = %s{tail}",
        (endpoint,),
    ).fetchone()
    if row is None:
        return None
    clock = db_clock(float(row["now"]))
    window = Window(
        ceiling=int(row["ceiling"]),
        adaptive=bool(row["adaptive"]),
        w=float(row["w"]),
        epoch=int(row["epoch"]),
        cuts=int(row["cuts"]),
    )
    rpm = Gcra(float(row["rpm"]), clock=clock, tat=float(row["rpm_tat"])) if row["rpm"] else None
    tpm = Gcra(float(row["tpm"]), clock=clock, tat=float(row["tpm_tat"])) if row["tpm"] else None
    pacer = Pacer(
        window=window,
        rpm=rpm,
        tpm=tpm,
        latencies=Latencies(_latencies(row["latencies"])),
        clock=clock,
        pause_until=float(row["pause_until"]),
        pauses=int(row["pauses"]),
        rate_limited=int(row["rate_limited"]),
    )
    return Shared(
        endpoint=row["endpoint"],
        pacer=pacer,
        cooldown_until=float(row["cooldown_until"]),
        granted_total=int(row["granted_total"]),
        reclaimed_total=int(row["reclaimed_total"]),
        set_by=row["set_by"],
        max_concurrent=row["max_concurrent"],
        k=int(row["k"] or 0),
        starved=bool(row["starved"]),
        share=FairShare.from_json(row["fair_share"]),
    )


def save(db: Any, shared: Shared) -> None:
    """Write ``shared`` back to the row (the caller holds its lock)."""
    p, w = shared.pacer, shared.pacer.window
    db.execute(
        """UPDATE briefd_limiter_endpoints SET ceiling = %s, adaptive = %s, w = %s, epoch = %s,
            cuts = %s, rpm = %s, tpm = %s, rpm_tat = %s, tpm_tat = %s, pause_until = %s,
            cooldown_until = %s, pauses = %s, rate_limited = %s, granted_total = %s,
            reclaimed_total = %s, latencies = %s, set_by = %s, max_concurrent = %s,
            starved = %s, fair_share = %s
        WHERE endpoint = %s""",
        (
            w.ceiling,
            w.adaptive,
            w.w,
            w.epoch,
            w.cuts,
            p.rpm.per_minute if p.rpm else None,
            p.tpm.per_minute if p.tpm else None,
            p.rpm.tat if p.rpm else 0.0,
            p.tpm.tat if p.tpm else 0.0,
            p.pause_until,
            shared.cooldown_until,
            p.pauses,
            p.rate_limited,
            shared.granted_total,
            shared.reclaimed_total,
            json.dumps(p.latencies.seconds),
            shared.set_by,
            shared.max_concurrent,
            shared.starved,
            shared.share.to_json(),
            shared.endpoint,
        ),
    )


def create_global(db: Any, ceiling: int, adaptive: bool, daemon_id: str) -> bool:
    """Make the cluster's settings row (K) if no daemon has; True if this call made it."""
    row = db.execute(
        """INSERT INTO briefd_limiter (id, ceiling, adaptive, w, set_by)
        VALUES (1, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id""",
        (max(1, ceiling), adaptive, float(max(1, ceiling)), daemon_id),
    ).fetchone()
    return row is not None


def read_global(db: Any, *, lock: bool = False) -> tuple[int, bool, str | None] | None:
    """The cluster's (K, adaptive, set_by); None before any daemon configured it."""
    tail = " FOR UPDATE" if lock else ""
    row = db.execute(
        f"SELECT ceiling, adaptive, set_by FROM briefd_limiter WHERE id = 1{tail}"
    ).fetchone()
    return None if row is None else (int(row["ceiling"]), bool(row["adaptive"]), row["set_by"])


def write_global(db: Any, ceiling: int, adaptive: bool, daemon_id: str) -> None:
    """Set the cluster's K and adaptive (the row exists and is locked)."""
    db.execute(
        "UPDATE briefd_limiter SET ceiling = %s, adaptive = %s, set_by = %s WHERE id = 1",
        (max(1, ceiling), adaptive, daemon_id),
    )


def create(
    db: Any,
    endpoint: str,
    *,
    k: int,
    adaptive: bool,
    daemon_id: str,
    limits: EndpointLimits,
) -> None:
    """Make ``endpoint``'s row on its first use, with this daemon's limits for it (a row
    another daemon made first is left as it is: :func:`configure_lane` sets limits)."""
    ceiling = ceiling_of(limits, max(1, k))
    db.execute(
        """INSERT INTO briefd_limiter_endpoints (endpoint, ceiling, max_concurrent, adaptive, w,
            rpm, tpm, set_by)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (endpoint) DO NOTHING""",
        (
            endpoint,
            ceiling,
            limits.max_concurrent,
            adaptive,
            float(ceiling),
            limits.rpm or None,
            limits.tpm or None,
            daemon_id,
        ),
    )


def configure_lane(shared: Shared, k: int, adaptive: bool, limits: EndpointLimits) -> None:
    """Give a loaded row these limits under K (the TATs of budgets that only change rate kept)."""
    shared.max_concurrent = limits.max_concurrent
    shared.window.adaptive = adaptive
    shared.window.set_ceiling(ceiling_of(limits, max(1, k)))
    set_budgets(shared, limits.rpm, limits.tpm)


def lane_names(db: Any) -> set[str]:
    """Every endpoint that has a row."""
    return {r["endpoint"] for r in db.execute("SELECT endpoint FROM briefd_limiter_endpoints")}


def set_budgets(shared: Shared, rpm: float | None, tpm: float | None) -> None:
    """Give the pacer these budgets, keeping each one's TAT when it only changes its rate."""
    p = shared.pacer
    p.rpm = _budget(p.rpm, rpm, p.clock)
    p.tpm = _budget(p.tpm, tpm, p.clock)


def _budget(old: Gcra | None, per_minute: float | None, clock: Callable[[], float]) -> Gcra | None:
    if not per_minute:
        return None
    if old is None:
        return Gcra(per_minute, clock=clock)
    return Gcra(per_minute, burst_s=old.burst_s, clock=clock, tat=old.tat)


def _latencies(text: str | None) -> dict[str, float]:
    """Learned stage latencies from the row's JSON; a damaged value is forgotten, not fatal."""
    try:
        raw = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}
