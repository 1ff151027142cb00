"""Plain records the cluster limiter's transactions hand back: data, no connections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grant:
    """A lease the database granted, as read by the daemon whose request it was."""

    lease_id: int  # from briefd_token_fence: the grant's fencing token
    wait_id: int  # the request it answers
    requester: str
    job_id: str
    stage: str
    epoch: int  # the window's epoch when it was granted
    est_tokens: int
    waited_ms: int
    left_s: float = float("inf")  # until its expires_at, on the database's clock when read
    endpoint: str = ""  # the endpoint whose row granted it


@dataclass(frozen=True)
class HeldLease:
    """A lease this daemon delivered to one of its actors, as it keeps it (for the release)."""

    lease_id: int
    wait_id: int
    requester: str
    job_id: str
    stage: str
    epoch: int
    est_tokens: int
    granted_at: float  # this process's monotonic clock: the call's elapsed time
    endpoint: str = ""  # whose row its release updates


@dataclass(frozen=True)
class ClusterFigures:
    """One endpoint's row of the cluster's limiter as one transaction saw it (times in seconds
    from then), and the cluster's counts beside it."""

    capacity: int  # K, the cluster's
    window: float  # W, the endpoint's
    limit: int  # calls allowed in flight now on the endpoint
    in_use: int  # live leases on the endpoint, every daemon's
    waiting: int  # requests queued for the endpoint, every daemon's
    granted_total: int
    reclaimed_total: int
    cooling_for_s: float
    paused_for_s: float
    rpm_lag_s: float
    tpm_lag_s: float
    pauses: int
    rate_limited: int
    epoch: int
    cuts: int
    endpoint: str = ""
    ceiling: int = 0  # the endpoint's window ceiling, min(max_concurrent, K)
    rpm: float | None = None  # its budgets, per minute
    tpm: float | None = None
    cluster_in_use: int = 0  # live leases, every endpoint's
    cluster_waiting: int = 0  # requests queued, every endpoint's


@dataclass(frozen=True)
class GrantRound:
    """What one grant transaction did."""

    mine: tuple[Grant, ...]  # this daemon's grants, already marked delivered
    others: dict[str, int]  # grants per other daemon (each was notified)
    wake_in_s: float | None  # a pause, cool-down or budget lifts then (None: none held back)
    figures: ClusterFigures | None  # None: no daemon has configured the cluster
    starved: bool = False  # it stopped with requests waiting and no free slot (K reached)


@dataclass(frozen=True)
class Beat:
    """What a heartbeat found the database holding of this daemon."""

    waits: frozenset[int]  # its wait ids still queued
    leases: frozenset[int]  # its live lease ids
    granted_waits: frozenset[int]  # the wait ids those leases answer
    daemons: int  # daemons seen within lease_s, this one included
