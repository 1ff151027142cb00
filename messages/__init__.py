"""Typed messages between briefd's actors; serialised, they are the event log.

Every message is a frozen pydantic model with a literal ``type`` field, and
:data:`AnyMessage` is their discriminated union, so a log line parses back into
the message that made it (:func:`parse_message`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter

from briefd.messages.base import Command, Event, Message
from briefd.messages.cluster import (
    CheckCancels,
    ClaimJobs,
    JobClaimed,
    JobClaimLost,
    RenewTokens,
    TokensGranted,
)
from briefd.messages.daemon import (
    CheckCoordinator,
    CloseJob,
    CoordinatorDone,
    DaemonReloading,
    DaemonStarted,
    DaemonStopping,
    DailyBudgetReleased,
    DailyBudgetSpent,
    FinishJob,
    JobAccepted,
    JobCancelled,
    JobInfo,
    JobLoaded,
    JobRestarted,
    JobState,
    LoadJob,
    RollbackCleared,
    RollbackProbation,
    RollbackTripped,
    SuspendJobs,
)
from briefd.messages.endpoint import EndpointCircuitChanged, StageFailedOver
from briefd.messages.errors import ErrorCode, PipelineError
from briefd.messages.job import (
    JOB_ID_PATTERN,
    JOB_KEY_PATTERN,
    TENANT_PATTERN,
    JobMetrics,
    JobResult,
    JobSpec,
    JobStatus,
    Progress,
    SchemaSource,
    ServerWork,
    StageState,
    Usage,
    WebhookSpec,
)
from briefd.messages.jobs import (
    CancelJob,
    JobCompleted,
    JobStarted,
    LatencyMeasured,
    ProgressChanged,
    SubmitJob,
    Tick,
)
from briefd.messages.stage import (
    ResumeStage,
    StageActorStopped,
    StageFailed,
    StageFellBack,
    StageHedged,
    StageProgress,
    StagePromptRendered,
    StageRetrying,
    StageStarted,
    StageSucceeded,
    StartStage,
)
from briefd.messages.token import (
    CancelTokenRequest,
    RateLimitCooldown,
    ReleaseToken,
    ReportRateLimit,
    RequestToken,
    SetCapacity,
    TokenGranted,
    TokenReleased,
)
from briefd.messages.webhook import WEBHOOK_EVENTS, WebhookAttempted, WebhookDelivery

AnyMessage = Annotated[
    SubmitJob
    | CancelJob
    | Tick
    | JobStarted
    | ProgressChanged
    | LatencyMeasured
    | JobCompleted
    | StartStage
    | ResumeStage
    | StageStarted
    | StageRetrying
    | StageSucceeded
    | StageFailed
    | StageActorStopped
    | StageFellBack
    | StageProgress
    | StagePromptRendered
    | StageHedged
    | StageFailedOver
    | EndpointCircuitChanged
    | RequestToken
    | TokenGranted
    | ReleaseToken
    | CancelTokenRequest
    | TokenReleased
    | ReportRateLimit
    | RateLimitCooldown
    | SetCapacity
    | JobAccepted
    | JobCancelled
    | JobRestarted
    | DaemonStarted
    | DaemonReloading
    | DaemonStopping
    | DailyBudgetSpent
    | DailyBudgetReleased
    | RollbackTripped
    | RollbackProbation
    | RollbackCleared
    | LoadJob
    | JobLoaded
    | CoordinatorDone
    | CheckCoordinator
    | FinishJob
    | CloseJob
    | SuspendJobs
    | JobClaimed
    | JobClaimLost
    | ClaimJobs
    | CheckCancels
    | TokensGranted
    | RenewTokens
    | WebhookAttempted,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[AnyMessage] = TypeAdapter(AnyMessage)


def parse_message(data: str | bytes | dict[str, object]) -> Message:
    """Turn a serialised message (JSON text or a dict) back into its model."""
    if isinstance(data, dict):
        return _ADAPTER.validate_python(data)
    return _ADAPTER.validate_json(data)


__all__ = [
    "JOB_ID_PATTERN",
    "JOB_KEY_PATTERN",
    "TENANT_PATTERN",
    "WEBHOOK_EVENTS",
    "AnyMessage",
    "CancelJob",
    "CancelTokenRequest",
    "CheckCancels",
    "CheckCoordinator",
    "ClaimJobs",
    "CloseJob",
    "Command",
    "CoordinatorDone",
    "DaemonReloading",
    "DaemonStarted",
    "DaemonStopping",
    "DailyBudgetReleased",
    "DailyBudgetSpent",
    "EndpointCircuitChanged",
    "ErrorCode",
    "Event",
    "FinishJob",
    "JobAccepted",
    "JobCancelled",
    "JobClaimLost",
    "JobClaimed",
    "JobCompleted",
    "JobInfo",
    "JobLoaded",
    "JobMetrics",
    "JobRestarted",
    "JobResult",
    "JobSpec",
    "JobStarted",
    "JobState",
    "JobStatus",
    "LatencyMeasured",
    "LoadJob",
    "Message",
    "PipelineError",
    "Progress",
    "ProgressChanged",
    "RateLimitCooldown",
    "ReleaseToken",
    "RenewTokens",
    "ReportRateLimit",
    "RequestToken",
    "ResumeStage",
    "RollbackCleared",
    "RollbackProbation",
    "RollbackTripped",
    "SchemaSource",
    "ServerWork",
    "SetCapacity",
    "StageActorStopped",
    "StageFailed",
    "StageFailedOver",
    "StageFellBack",
    "StageHedged",
    "StageProgress",
    "StagePromptRendered",
    "StageRetrying",
    "StageStarted",
    "StageState",
    "StageSucceeded",
    "StartStage",
    "SubmitJob",
    "SuspendJobs",
    "Tick",
    "TokenGranted",
    "TokenReleased",
    "TokensGranted",
    "Usage",
    "WebhookAttempted",
    "WebhookDelivery",
    "WebhookSpec",
    "parse_message",
]
