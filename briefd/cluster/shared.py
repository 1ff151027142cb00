"""The cluster's one ``briefd_limiter`` row as the limiter's own pure policies, and back.

The window (AIMD with epochs), the RPM/TPM budgets (GCRA) and the server's pause
are :class:`~briefd.limits.pacing.Pacer`'s, exactly as one daemon runs them; the
cluster only keeps them in a row instead of in memory. So every transaction that
decides on them does the same three steps: :func:`load` the row under its lock
(``FOR UPDATE``, which serialises every daemon's decisions), let the ``Pacer``
decide, :func:`save` it back. Nothing here re-implements AIMD or GCRA, so a change
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
from dataclasses import dataclass
from typing import Any

from briefd.limits.gcra import Gcra
from briefd.limits.order import Latencies
from briefd.limits.pacing import Pacer
from briefd.limits.window import Window

_COLUMNS = (
    "ceiling, adaptive, w, epoch, cuts, rpm, tpm, rpm_tat, tpm_tat, pause_until, "
    "cooldown_until, pauses, rate_limited, granted_total, reclaimed_total, latencies, set_by"
)


@dataclass
class Shared:
    """The row, loaded: the pacer plus what the cluster keeps beside it."""

    pacer: Pacer
    cooldown_until: float  # a 429's Retry-After, epoch s on the database's clock
    granted_total: int
    reclaimed_total: int
    set_by: str | None  # the daemon that last set the ceiling or the budgets

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


def load(db: Any, *, lock: bool = True) -> Shared | None:
    """The limiter row, locked (``FOR UPDATE``) unless ``lock`` is false; None if no daemon
    has configured the cluster yet."""
    tail = " FOR UPDATE" if lock else ""
    row = db.execute(
        f"SELECT {_COLUMNS}, extract(epoch from clock_timestamp())::float8 AS now "
        f"FROM briefd_limiter WHERE id = 1{tail}"
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
        pacer=pacer,
        cooldown_until=float(row["cooldown_until"]),
        granted_total=int(row["granted_total"]),
        reclaimed_total=int(row["reclaimed_total"]),
        set_by=row["set_by"],
    )


def save(db: Any, shared: Shared) -> None:
    """Write ``shared`` back to the row (the caller holds its lock)."""
    p, w = shared.pacer, shared.pacer.window
    db.execute(
        """UPDATE briefd_limiter SET ceiling = %s, adaptive = %s, w = %s, epoch = %s, cuts = %s,
            rpm = %s, tpm = %s, rpm_tat = %s, tpm_tat = %s, pause_until = %s,
            cooldown_until = %s, pauses = %s, rate_limited = %s, granted_total = %s,
            reclaimed_total = %s, latencies = %s, set_by = %s
        WHERE id = 1""",
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
        ),
    )


def create(db: Any, ceiling: int, adaptive: bool, daemon_id: str) -> None:
    """Make the row if no daemon has (the first daemon's settings win; later ones set theirs)."""
    db.execute(
        """INSERT INTO briefd_limiter (id, ceiling, adaptive, w, set_by)
        VALUES (1, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING""",
        (max(1, ceiling), adaptive, float(max(1, ceiling)), daemon_id),
    )


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
