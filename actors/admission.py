"""What the root actor answers those who ask it: a submission's admission, its figures.

Plain frozen values, kept beside the root (:mod:`briefd.actors.root`) so the
HTTP API, ``/metrics`` and the watchdog can read them without the actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from briefd.messages import JobState


@dataclass(frozen=True)
class Admission:
    """The answer to a submission. ``refused`` is ``queue_full`` or ``stopping``, else None."""

    job_id: str
    state: JobState
    created: bool
    refused: str | None = None
    retry_after_s: int = 0


@dataclass(frozen=True)
class RootStats:
    """Admission figures, for ``/metrics``, ``/healthz`` and the watchdog."""

    active: int
    queued: int
    draining: bool
    restarts: int
    resumed: int
    max_active_jobs: int
    max_queued_jobs: int
    spent_today_usd: float = 0.0
    daily_budget_usd: float | None = None
    budget_held: bool = False
    budget_resets_in_s: float = 0.0
    cost_by_model_stage: dict[tuple[str, str], float] = field(default_factory=dict)
    tokens_by_model_stage: dict[tuple[str, str, str], int] = field(default_factory=dict)
    mode: str = "parallel"  # parallel, sequential or probation (automatic rollback)
    mode_reason: str = ""
    rollback_trips: int = 0
    auto_rollback: bool = False
    cluster: dict[str, Any] | None = None  # with PostgreSQL: this daemon's id and claims
    tenants: dict[str, Any] | None = None  # per-tenant spend, budgets, held (TenantGate.stats)

    def healthz_fields(self) -> dict[str, Any]:
        """What ``/healthz`` adds: the daily budget and the parallel mode, when configured.

        A daemon that holds jobs by policy (budget spent, rolled back to sequential)
        is healthy: these say why. Only what is configured appears, so the default
        body is unchanged.
        """
        details: dict[str, Any] = {}
        if self.daily_budget_usd is not None or self.budget_held:
            details["budget"] = {
                "held": self.budget_held,
                "spent_today_usd": self.spent_today_usd,
                "daily_budget_usd": self.daily_budget_usd,
                "resets_in_s": self.budget_resets_in_s,
                "queued": self.queued,
            }
        if self.auto_rollback:
            details["mode"] = {"mode": self.mode, "reason": self.mode_reason}
        if self.cluster is not None:
            details["cluster"] = dict(self.cluster)
        return details
