"""Stage commands and events: start, retrying, ok, fail, fell back."""

from __future__ import annotations

from typing import Any, Literal

from briefd.messages.base import Command, Event
from briefd.messages.errors import PipelineError
from briefd.messages.job import Usage


class StartStage(Command):
    """Coordinator -> stage actor: your dependencies are done, begin."""

    type: Literal["StartStage"] = "StartStage"
    job_id: str
    stage: str


class ResumeStage(Command):
    """Stage actor -> itself, from a timer: the retry backoff is over."""

    type: Literal["ResumeStage"] = "ResumeStage"
    job_id: str
    stage: str
    attempt: int


class StageStarted(Event):
    """A stage holds a token and its HTTP call (attempt ``attempt``) is in flight."""

    type: Literal["StageStarted"] = "StageStarted"
    job_id: str
    stage: str
    attempt: int


class StageRetrying(Event):
    """A transient failure; the stage waits ``wait_s`` without a token, then tries again."""

    type: Literal["StageRetrying"] = "StageRetrying"
    job_id: str
    stage: str
    attempt: int
    wait_s: float
    reason: PipelineError


class StageSucceeded(Event):
    """A stage produced its document (text for markdown, parsed JSON for json)."""

    type: Literal["StageSucceeded"] = "StageSucceeded"
    job_id: str
    stage: str
    document: Any
    elapsed_ms: int
    attempts: int
    usage: Usage = Usage()


class StageFailed(Event):
    """A stage gave up; the error says why. Other stages go on."""

    type: Literal["StageFailed"] = "StageFailed"
    job_id: str
    stage: str
    error: PipelineError
    elapsed_ms: int = 0
    attempts: int = 0
    usage: Usage = Usage()


class StageFellBack(Event):
    """A failed stage's document was replaced by its fallback (the job field named)."""

    type: Literal["StageFellBack"] = "StageFellBack"
    job_id: str
    stage: str
    source: str
