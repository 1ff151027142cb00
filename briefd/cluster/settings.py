"""The cluster's settings: K and each endpoint's cap and budgets, as daemons set them.

A daemon's settings become the cluster's when it starts (``configure``) and when
SIGHUP gives it a new K (``set_ceiling``); the last daemon to set something sets
it, with a warning when it changes what another daemon set, for K as for an
endpoint's ``max_concurrent``/``rpm``/``tpm``. An endpoint's row is made on its
first use (:func:`lane`) with the limits the daemon that first used it has for
it (none: ceiling K, no budgets).

Locks are taken in one order everywhere: the cluster's row, then endpoint rows
by name, then the slots (:mod:`briefd.cluster.slots`), as grant rounds do (their
endpoint's row, then a slot), so none of these transactions can deadlock with a
round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from briefd.cluster import slots
from briefd.cluster.rows import describe
from briefd.cluster.shared import (
    Shared,
    configure_lane,
    create,
    create_global,
    lane_names,
    load,
    read_global,
    save,
    write_global,
)
from briefd.limits.lanes import EndpointLimits, ceiling_of


@dataclass(frozen=True)
class Who:
    """The daemon setting something, and the database it sets it in (for the log lines)."""

    daemon_id: str
    where: str


def own_limits(
    endpoints: Mapping[str, EndpointLimits] | None, rpm: float | None, tpm: float | None
) -> dict[str, EndpointLimits]:
    """A daemon's endpoints' limits, with ``rpm``/``tpm`` (BRIEFD_RPM/TPM) as the ``''``
    endpoint's unless it names its own (as :meth:`briefd.limits.lanes.Lanes.new`)."""
    limits = dict(endpoints or {})
    own = limits.get("", EndpointLimits())
    limits[""] = EndpointLimits(
        max_concurrent=own.max_concurrent,
        rpm=own.rpm if own.rpm is not None else rpm,
        tpm=own.tpm if own.tpm is not None else tpm,
    )
    return limits


def configure(
    db: Any, who: Who, ceiling: int, adaptive: bool, limits: Mapping[str, EndpointLimits]
) -> None:
    """K and adaptive for the cluster, ``limits`` for these endpoints (their rows made if
    new); every other endpoint's ceiling follows K."""
    set_k(db, who, ceiling, adaptive)
    for name in sorted(set(limits) | lane_names(db)):  # one lock order for all
        if name in limits:
            create(db, name, k=ceiling, adaptive=adaptive, daemon_id=who.daemon_id,
                   limits=limits[name])  # fmt: skip
        shared = load(db, name)
        assert shared is not None  # made just above, or listed
        before = describe(shared)
        if name in limits:
            configure_lane(shared, ceiling, adaptive, limits[name])
            changed(who, shared, before)
        else:
            kept = EndpointLimits(max_concurrent=shared.max_concurrent)
            shared.window.set_ceiling(ceiling_of(kept, ceiling))
        save(db, shared)


def set_ceiling(db: Any, who: Who, ceiling: int) -> None:
    """A new K: the slots and every endpoint's window ceiling follow it."""
    set_k(db, who, ceiling, None)
    for name in sorted(lane_names(db)):
        shared = load(db, name)
        if shared is None:
            continue
        kept = EndpointLimits(max_concurrent=shared.max_concurrent)
        shared.window.set_ceiling(ceiling_of(kept, ceiling))
        save(db, shared)


def set_k(db: Any, who: Who, ceiling: int, adaptive: bool | None) -> None:
    """K (and adaptive, unless None) in the cluster's row, and as many slots. The row is
    locked first, then (after the endpoints' rows, by the caller) the slots."""
    create_global(db, ceiling, True if adaptive is None else adaptive, who.daemon_id)
    found = read_global(db, lock=True)
    assert found is not None  # made just above
    k, was_adaptive, set_by = found
    adaptive = was_adaptive if adaptive is None else adaptive
    before, after = f"K={k} adaptive={was_adaptive}", f"K={ceiling} adaptive={adaptive}"
    if after != before and set_by not in (None, who.daemon_id):
        logger.warning(
            "cluster tokens on {}: {} changes {} set by daemon {} to {}",
            who.where, who.daemon_id, before, set_by, after,
        )  # fmt: skip
    elif after != before:
        logger.info("cluster tokens: {} -> {}", before, after)
    write_global(db, ceiling, adaptive, who.daemon_id)
    slots.resize(db, ceiling)


def changed(who: Who, shared: Shared, before: str) -> None:
    """Log an endpoint's settings changed (a warning when another daemon had set them)."""
    after = describe(shared)
    if after != before and shared.set_by not in (None, who.daemon_id):
        logger.warning(
            "cluster tokens on {}: {} changes {} set by daemon {} to {}",
            who.where, who.daemon_id, before, shared.set_by, after,
        )  # fmt: skip
    elif after != before:
        logger.info("cluster tokens: {} -> {}", before, after)
    shared.set_by = who.daemon_id


def lane(
    db: Any,
    daemon_id: str,
    endpoint: str,
    limits: Mapping[str, EndpointLimits],
    adaptive: bool | None,
) -> Shared | None:
    """``endpoint``'s row, locked; made on its first use with ``limits`` for it (none
    configured: the window's ceiling is K, no budgets). None before any daemon configured
    the cluster."""
    shared = load(db, endpoint)
    if shared is not None:
        return shared
    found = read_global(db)
    if found is None:
        return None
    k, cluster_adaptive, _ = found
    create(
        db,
        endpoint,
        k=k,
        adaptive=cluster_adaptive if adaptive is None else adaptive,
        daemon_id=daemon_id,
        limits=limits.get(endpoint, EndpointLimits()),
    )
    return load(db, endpoint)
