"""The error shape a stage failure is reported in, as in the seed's ``PipelineError``."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ErrorCode(StrEnum):
    """Why a stage failed. Transient codes are retried before they are reported."""

    TIMEOUT = "TIMEOUT"
    CONNECTION = "CONNECTION"
    RATE_LIMITED = "RATE_LIMITED"
    SERVER_ERROR = "SERVER_ERROR"
    HTTP_ERROR = "HTTP_ERROR"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    TLS_ERROR = "TLS_ERROR"
    BAD_RESPONSE = "BAD_RESPONSE"
    TRUNCATED = "TRUNCATED"
    INVALID_JSON = "INVALID_JSON"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"
    OUTPUT_ERROR = "OUTPUT_ERROR"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"  # not called: the job's budget would be passed
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # the job's deadline_s passed before it ended
    STALLED = "STALLED"  # a streamed answer stopped coming (idle or first-token timeout)
    UPSTREAM_FAILED = "UPSTREAM_FAILED"  # not called: a stage its prompt reads failed


class PipelineError(BaseModel):
    """One stage's failure: where, what kind, what happened, and what to try."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str = Field(description="The stage that failed ('*' for the job itself).")
    code: ErrorCode = Field(description="What kind of failure.")
    message: str = Field(description="What happened, in one line.")
    hint: str = Field(default="", description="What to try.")
