"""What the operations view hands out: a frozen :class:`Snapshot` of rows and figures.

Kept apart from :mod:`briefd.ops.view` (which folds records into running
state) so the console, the report and their tests can read the shapes alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from briefd.actors.metrics import LatencySummary
from briefd.ops.rollback import Signal


@dataclass
class JobRow:
    """One job as shown: state, overall percent and each stage's indicator state.

    The view updates its rows in place; a snapshot holds copies.
    """

    job_id: str
    since: float
    state: str = "queued"
    stages: dict[str, str] = field(default_factory=dict)
    percent: float = 0.0
    parallel: bool = True
    ended: float | None = None
    total_ms: int | None = None
    cost_usd: float | None = None
    owner: str | None = None
    """The log (source) of the daemon running the job; in a snapshot, that daemon's name,
    and None when only one log is followed."""

    def copy(self, names: dict[str, str] | None = None) -> JobRow:
        """A copy to hand out, its ``owner`` shown by ``names`` (None without them)."""
        owner = names.get(self.owner or "", self.owner) if names else None
        return replace(self, stages=dict(self.stages), owner=owner)


@dataclass(frozen=True)
class ErrorRow:
    """A recent error: a retried attempt (``final`` False) or a stage that gave up."""

    ts: float
    job_id: str
    stage: str
    code: str
    message: str
    hint: str
    final: bool


@dataclass(frozen=True)
class Snapshot:
    """Everything the console shows at one moment; :meth:`to_json` is ``report --json``."""

    as_of: float
    daemon: dict[str, Any] | None
    jobs_by_status: dict[str, int]
    active: list[JobRow]
    recent: list[JobRow]
    queued: int
    stages_running: int
    peak_stages_running: int
    tokens: dict[str, Any]
    latency_jobs: int
    stage_latency: dict[str, LatencySummary]
    parallel_group: LatencySummary
    sequential_group: LatencySummary
    total: LatencySummary
    mean_speedup: float
    totals: dict[str, int]
    signals: list[Signal]
    errors: list[ErrorRow]
    window_s: float | None
    stage_ttft: dict[str, LatencySummary] = field(default_factory=dict)
    """Per stage: its last call's time to first token (streamed calls only)."""
    stage_queued: dict[str, LatencySummary] = field(default_factory=dict)
    """Per stage: its wait for execution tokens (apart from ``stage_latency``, its calls)."""
    spend: dict[str, Any] = field(default_factory=dict)
    """``total_usd``, ``last_minute_usd``, ``by_model``, ``by_stage``: from jobs' results."""
    guard: dict[str, Any] = field(default_factory=dict)
    """The daemon's guard rails as its events last said: ``budget`` (held, spent, budget) and
    ``mode`` (parallel, sequential, probation, with the reason)."""
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per endpoint seen: documents ``served``, stages that ``failed_over`` from it or
    ``skipped`` it (its breaker open), its breaker's ``state`` and next probe ``retry_at``."""
    sources: list[dict[str, Any]] = field(default_factory=list)
    """With several logs (a cluster), one entry per log: its daemon's ``name``, ``log``,
    ``status``, ``pid``, ``url``, ``tokens`` and ``active_jobs``; empty for a single log,
    whose daemon is :attr:`daemon`."""
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Finished jobs per pipeline (:mod:`briefd.ops.by_pipeline`); empty for logs from before."""

    @property
    def warnings(self) -> list[Signal]:
        """The signals past their threshold."""
        return [s for s in self.signals if s.crossed]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data, with ``rates`` in the shape ``--baseline`` reads back."""
        data = asdict(self)
        if not self.sources:  # a single log's report, exactly as before there were several
            del data["sources"]
            for job in (*data["active"], *data["recent"]):
                del job["owner"]
        data["rates"] = {f"{s.name}_rate": s.rate for s in self.signals}
        data["warnings"] = [s.name for s in self.warnings]
        return data
