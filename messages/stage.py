"""Stage commands and events: start, retrying, ok, fail, fell back."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from briefd.messages.base import Command, Event
from briefd.messages.errors import PipelineError
from briefd.messages.job import ServerWork, Usage


class StartStage(Command):
    """Coordinator -> stage actor: your dependencies are done, begin."""

    type: Literal["StartStage"] = "StartStage"
    job_id: str
    stage: str
    prompt: str | None = Field(
        default=None, description="The prompt rendered from upstream documents (None: as spawned)."
    )


class ResumeStage(Command):
    """Stage actor -> itself, from a timer: the retry backoff is over."""

    type: Literal["ResumeStage"] = "ResumeStage"
    job_id: str
    stage: str
    attempt: int


class StageActorStopped(Event):
    """Stage actor -> its coordinator, from the actor's thread as it leaves: the actor is
    gone, however it went (stopped, failed, or dead in ``on_start``). A stage still running
    when this arrives died without reporting; its own last report, if any, came first."""

    type: Literal["StageActorStopped"] = "StageActorStopped"
    job_id: str
    stage: str


class StageStarted(Event):
    """A stage holds a token and its HTTP call (attempt ``attempt``) is in flight."""

    type: Literal["StageStarted"] = "StageStarted"
    job_id: str
    stage: str
    attempt: int = Field(description="1 for the first call, 2 for the first retry, ...")
    endpoint: str = Field(default="", description="The endpoint called ('' = the only one).")
    model: str = Field(default="", description="The model (Azure: deployment) asked for.")
    queued_ms: int = Field(
        default=0, description="This attempt's wait for its execution token (the limiter's queue)."
    )


class StageRetrying(Event):
    """A transient failure; the stage waits ``wait_s`` without a token, then tries again."""

    type: Literal["StageRetrying"] = "StageRetrying"
    job_id: str
    stage: str
    attempt: int = Field(description="The attempt that failed.")
    wait_s: float = Field(description="Seconds until the next attempt (Retry-After or backoff).")
    reason: PipelineError = Field(description="Why the attempt failed.")
    call_ms: int = Field(default=0, description="The failed attempt's call, sent to last byte.")
    ttft_ms: int | None = Field(
        default=None, description="The failed attempt's time to its first token (streamed)."
    )


class StageEnded(Event):
    """What a stage's end reports, however it ended: its calls, tokens and clocks.

    The base of :class:`StageSucceeded` and :class:`StageFailed` (never sent itself), so
    both carry the same figures under the same names, in the same order after ``job_id``.
    """

    job_id: str
    stage: str
    elapsed_ms: int = Field(default=0, description="From the stage's start to its end.")
    attempts: int = Field(default=0, description="Calls made.")
    usage: Usage = Field(default=Usage(), description="Tokens the API reported, all attempts.")
    queued_ms: int = Field(
        default=0, description="All attempts: waiting for an execution token (the limiter's queue)."
    )
    call_ms: int = Field(
        default=0, description="All attempts: the calls themselves, request sent to last byte."
    )
    ttft_ms: int | None = Field(
        default=None, description="The last attempt's time to first token (streamed calls only)."
    )
    backoff_ms: int = Field(default=0, description="All attempts: waiting out retry backoffs.")
    server_ms: int | None = Field(
        default=None,
        description="All attempts: the calls' time as the server measured it (llama.cpp's "
        "timings: prompt_ms + predicted_ms, its queue excluded), when it said so for every "
        "call; else None.",
    )
    server_work: ServerWork | None = Field(
        default=None,
        description="All attempts: the server's timings' tokens and times (as server_ms), "
        "for the speed-up's sequential-equivalent work (JobMetrics.work_ms); else None.",
    )


class StageSucceeded(StageEnded):
    """A stage produced its document (text for markdown, parsed JSON for json)."""

    type: Literal["StageSucceeded"] = "StageSucceeded"
    document: Any = Field(description="Markdown text, or the parsed JSON value.")
    served_by: str = Field(
        default="", description="endpoint:model that produced it, the model as the server named it."
    )


class StageFailed(StageEnded):
    """A stage gave up; the error says why. Other stages go on."""

    type: Literal["StageFailed"] = "StageFailed"
    error: PipelineError = Field(description="The last attempt's error.")


class StageProgress(Event):
    """A streamed call is being written: how far it has come (coalesced, a few a second)."""

    type: Literal["StageProgress"] = "StageProgress"
    job_id: str
    stage: str
    attempt: int = Field(description="The attempt being streamed.")
    completion_tokens: int = Field(description="Tokens received so far (chunks, or usage).")
    fraction: float = Field(
        ge=0, le=1, description="completion_tokens / the stage's max_tokens, capped below 1."
    )
    preview: str = Field(
        default="", description="The text's last line so far, one line, escaped, cut short."
    )


class StagePromptRendered(Event):
    """A stage's templated prompt was rendered from its upstream documents, as it started.

    Journaled: a resumed run sends the same text, never a new rendering."""

    type: Literal["StagePromptRendered"] = "StagePromptRendered"
    job_id: str
    stage: str
    prompt: str = Field(description="The prompt as sent (logged as its size and SHA-256).")


class StageHedged(Event):
    """A call had no first token after ``after_ms``: a second copy was sent
    (BRIEFD_HEDGE_AFTER_MS); the first to write a token won and the other was cut."""

    type: Literal["StageHedged"] = "StageHedged"
    job_id: str
    stage: str
    attempt: int = Field(description="The attempt that was hedged.")
    after_ms: int = Field(description="How long it had waited for a first token.")
    route: str = Field(description="endpoint:model the second copy went to.")
    winner: Literal["primary", "hedge", "neither"] = Field(
        description="The copy that wrote first and was kept; neither: both failed or were cut."
    )
    usage: Usage = Field(
        default=Usage(),
        description="What the losing copy's server reported (often nothing: it was cut); "
        "counted in the stage's usage and cost.",
    )


class StageFellBack(Event):
    """A failed stage's document was replaced by its fallback (the job field named)."""

    type: Literal["StageFellBack"] = "StageFellBack"
    job_id: str
    stage: str
    source: str = Field(description="The job field whose value became the document.")
