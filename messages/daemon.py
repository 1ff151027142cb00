"""The daemon's messages: job states, its lifecycle events, and root <-> journal commands.

The events (``JobAccepted`` ... ``DaemonStopping``) are published to the event
log like every other event. The commands are how the root actor, the journal
actor and the coordinators talk inside ``briefd serve``; they carry job ids
and documents, never a secret.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from briefd.messages.base import Command, Event
from briefd.messages.errors import ErrorCode, PipelineError
from briefd.messages.job import Frozen, JobResult, JobSpec, StageState
from briefd.messages.webhook import WebhookDelivery


class JobState(StrEnum):
    """Where a daemon job is: waiting, running, or one of the four terminal states."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the job has its result and will never run again."""
        return self not in (JobState.QUEUED, JobState.RUNNING)


class JobInfo(Frozen):
    """A job as ``GET /v1/jobs/{id}`` reports it (read from the journal)."""

    job_id: str
    status: JobState
    stages: dict[str, StageState] = Field(description="Each stage's state, in pipeline order.")
    progress: float = Field(description="Weighted percent done (a running stage counts half).")
    submitted_at: float = Field(description="Unix time the job was accepted.")
    started_at: float | None = Field(default=None, description="Unix time of its first run.")
    finished_at: float | None = Field(default=None, description="Unix time it ended.")
    restarts: int = Field(default=0, description="Runs that died and were resumed.")
    errors: list[PipelineError] = Field(default_factory=list, description="Once terminal.")
    webhooks: list[WebhookDelivery] = Field(
        default_factory=list, description="Its webhook deliveries and their last status."
    )


# -- events (logged) --------------------------------------------------------------------


class JobAccepted(Event):
    """A submission was written to the journal and acknowledged."""

    type: Literal["JobAccepted"] = "JobAccepted"
    job_id: str
    status: JobState = Field(description="queued, or running when a slot was free.")
    queued: int = Field(description="Jobs waiting for a slot after this one was accepted.")


class JobCancelled(Event):
    """A cancel request reached a job that had not ended."""

    type: Literal["JobCancelled"] = "JobCancelled"
    job_id: str
    reason: str = Field(description="Why, as the canceller gave it.")
    was: JobState = Field(description="queued: it never ran; running: its calls are abandoned.")


class JobRestarted(Event):
    """A job's run died (its coordinator, or the whole daemon) and the job is run again.

    Completed stages are not called again; ``runs`` counts the runs that died.
    """

    type: Literal["JobRestarted"] = "JobRestarted"
    job_id: str
    runs: int = Field(description="Runs of this job that died since it last ended cleanly.")
    reason: str = Field(description="How the last run died.")


class DaemonStarted(Event):
    """``briefd serve`` is listening and has queued every unfinished job of the journal."""

    type: Literal["DaemonStarted"] = "DaemonStarted"
    url: str = Field(description="The HTTP API's base URL (loopback).")
    pid: int = Field(description="The daemon's process id.")
    version: str = Field(description="briefd's version.")
    resumed: int = Field(description="Unfinished jobs found in the journal and queued again.")
    max_active_jobs: int = Field(description="Jobs that may have a coordinator at once.")
    max_queued_jobs: int = Field(description="Jobs that may wait; a submission beyond gets 429.")
    max_concurrent: int = Field(description="Execution tokens, daemon-wide.")
    daemon_id: str | None = Field(
        default=None,
        description="With PostgreSQL: this daemon's id in the cluster (host:pid:random).",
    )


class DaemonReloading(Event):
    """SIGHUP: settings re-read; ``changed`` were applied, ``needs_restart`` were not."""

    type: Literal["DaemonReloading"] = "DaemonReloading"
    changed: dict[str, str] = Field(description="Setting -> 'old -> new', live ones only.")
    needs_restart: list[str] = Field(description="Settings that differ but need a restart.")


class DaemonStopping(Event):
    """SIGTERM/SIGINT: no new jobs; in-flight calls get ``grace_s`` to finish."""

    type: Literal["DaemonStopping"] = "DaemonStopping"
    signal: str = Field(description="The signal's name (SIGTERM, SIGINT).")
    grace_s: float = Field(description="Seconds calls in flight get to finish.")
    active: int = Field(description="Jobs running; their unfinished stages resume at next start.")
    queued: int = Field(description="Jobs waiting; they stay queued in the journal.")


class DailyBudgetSpent(Event):
    """The day's spend reached ``BRIEFD_DAILY_BUDGET_USD``: new jobs are accepted but wait.

    Jobs already running finish. Held jobs start at the next UTC day, or when a
    SIGHUP raises the budget.
    """

    type: Literal["DailyBudgetSpent"] = "DailyBudgetSpent"
    spent_usd: float = Field(description="Spent since 00:00 UTC, by jobs that ended.")
    budget_usd: float = Field(description="BRIEFD_DAILY_BUDGET_USD.")
    queued: int = Field(description="Jobs waiting when it was spent.")


class DailyBudgetReleased(Event):
    """Held jobs may start again: a new UTC day began, or the budget was raised or unset."""

    type: Literal["DailyBudgetReleased"] = "DailyBudgetReleased"
    reason: str = Field(description="'new UTC day' or 'budget raised'.")
    spent_usd: float = Field(description="Spent today so far.")
    budget_usd: float | None = Field(description="The budget now (null: none).")


class RollbackTripped(Event):
    """Automatic rollback: a signal crossed its threshold; new jobs run sequentially."""

    type: Literal["RollbackTripped"] = "RollbackTripped"
    signal: str = Field(description="error, timeout or quality.")
    rate: float = Field(description="The signal's rate over the window of recent stages.")
    threshold: float = Field(description="How far over the baseline the rate may be.")
    baseline: float = Field(description="The baseline rate (BRIEFD_ROLLBACK_BASELINE, or 0).")
    samples: int = Field(description="Stages (attempts, for timeouts) the rate is of.")
    probation_s: float = Field(description="Seconds before parallel is tried again.")
    reason: str = Field(description="One line for people.")


class RollbackProbation(Event):
    """The rollback's probation began: a share of new jobs run parallel as trials."""

    type: Literal["RollbackProbation"] = "RollbackProbation"
    trial_fraction: float = Field(description="Share of new jobs started parallel.")
    reason: str = Field(description="The trip this probation follows.")


class RollbackCleared(Event):
    """The trial jobs stayed under every threshold: new jobs run parallel again."""

    type: Literal["RollbackCleared"] = "RollbackCleared"
    samples: int = Field(description="Trial stages judged.")
    reason: str = Field(description="One line for people.")


# -- commands (inside the daemon) -------------------------------------------------------


class LoadJob(Command):
    """Root -> journal actor: mark the job running and send back what a run needs.

    Going through the journal actor (not reading SQLite directly) puts the load
    after every stage result already told to the journal, so a restart never
    misses a document and pays for it twice.
    """

    type: Literal["LoadJob"] = "LoadJob"
    job_id: str
    generation: int = Field(description="The root's run number for this job, echoed back.")
    reply_to: str = Field(description="URN of the actor to tell ``JobLoaded``.")


class JobLoaded(Command):
    """Journal actor -> root: start (or refuse) this run of the job."""

    type: Literal["JobLoaded"] = "JobLoaded"
    job_id: str
    generation: int
    job: JobSpec | None = Field(description="None when the job is gone or already terminal.")
    done_stages: dict[str, Any] = Field(description="Stage -> document, never called again.")
    failed_stages: dict[str, PipelineError] = Field(
        default_factory=dict,
        description="Stage -> the error it ended with after its retries; never called again.",
    )
    runs_died: int = Field(description="Earlier runs of this job that ended without a result.")
    submitted_at: float = Field(
        default=0.0,
        description="Epoch seconds of the job's submission: a resumed job keeps its place "
        "(oldest first), whichever daemon runs it.",
    )
    pipeline: str = Field(
        default="",
        description="The pipeline the job was accepted with (its snapshot, JSON); '' if none "
        "was kept: the registry's current one of its name.",
    )
    prompts: dict[str, str] = Field(
        default_factory=dict, description="Stage -> the prompt rendered for it, sent again as is."
    )


class CoordinatorDone(Command):
    """A coordinator's ``on_done`` -> root: this run of the job produced ``result``."""

    type: Literal["CoordinatorDone"] = "CoordinatorDone"
    job_id: str
    generation: int
    result: JobResult


class CheckCoordinator(Command):
    """Root -> itself: a coordinator looked dead; act if no ``CoordinatorDone`` came first."""

    type: Literal["CheckCoordinator"] = "CheckCoordinator"
    job_id: str
    generation: int


class FinishJob(Command):
    """Root -> journal actor: write the result files and the terminal state."""

    type: Literal["FinishJob"] = "FinishJob"
    result: JobResult


class CloseJob(Command):
    """Root -> journal actor: end a job that has no coordinator result (budget spent)."""

    type: Literal["CloseJob"] = "CloseJob"
    job_id: str
    status: JobState
    code: ErrorCode
    message: str
    hint: str = ""


class SuspendJobs(Command):
    """Root -> journal actor at shutdown: these runs stop cleanly and resume at next start."""

    type: Literal["SuspendJobs"] = "SuspendJobs"
    job_ids: list[str]
