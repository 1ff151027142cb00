"""Job input, job result, progress and metrics: what a job is and what it yields."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from briefd.messages.errors import PipelineError

JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TENANT_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?$"
JOB_KEY_PATTERN = r"^(?:[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?\.)?[A-Za-z0-9_-]{1,64}$"
"""A job's key inside the daemon: its id, prefixed ``tenant.`` for a tenant other than
``default`` (docs/tenants.md); no client-given id has a dot (:data:`JOB_ID_PATTERN`)."""


def tenant_of_key(job_id: str) -> str:
    """The tenant whose job a key is (its prefix before a dot; none: ``default``)."""
    prefix, dot, _ = job_id.partition(".")
    return prefix if dot else "default"


def tenant_from_key(data: Any) -> Any:
    """A ``mode="before"`` validator's body: ``tenant`` from ``job_id`` when not given, so every
    event and status of a tenant's job carries its tenant without each sender setting it."""
    if isinstance(data, dict) and "tenant" not in data and isinstance(data.get("job_id"), str):
        return {**data, "tenant": tenant_of_key(data["job_id"])}
    return data


class Frozen(BaseModel):
    """Value objects inside messages: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class JobSpec(Frozen):
    """One job as a user submits it: pre-composed prompts, one per stage.

    ``job_id`` is used as a directory name and a log key, so it is restricted to
    a safe alphabet.
    """

    job_id: str = Field(pattern=JOB_KEY_PATTERN)
    prompts: dict[str, str]
    procurement_metrics: dict[str, Any] | list[Any] | None = None
    schemas: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per JSON stage, the JSON Schema its document must match: asked of the "
        "server (response_format) and validated. Overrides the pipeline's schema for the stage.",
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Higher is served first when calls queue for a token; a waiting job gains "
        "one level per PRIORITY_AGING_S (30 s) since its admission, so none starves.",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="The most this job may spend (USD, at the price table's prices); a stage "
        "whose estimate would pass it is not called and fails BUDGET_EXCEEDED. Unset: "
        "BRIEFD_MAX_JOB_COST_USD.",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="The most tokens (prompt + completion) this job may use; as max_cost_usd. "
        "Unset: BRIEFD_MAX_JOB_TOKENS.",
    )
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds from the job's submission: past them, stages not started, waiting "
        "for a token or in a backoff end DEADLINE_EXCEEDED (a call already made is left to "
        "finish). Unset: BRIEFD_JOB_DEADLINE_S (unset: none).",
    )
    models: dict[str, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict,
        description="Per-stage model override: stage name -> the model alias (BRIEFD_ENDPOINTS) or "
        "model name that stage uses instead of the pipeline's or BRIEFD_MODEL.",
    )
    pipeline: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The named pipeline to run (a file of BRIEFD_PIPELINES, or briefing-pack). "
        "Unset: BRIEFD_PIPELINE, else the built-in.",
    )
    tenant: str = Field(
        default="default",
        pattern=TENANT_PATTERN,
        description="The tenant whose job this is: set by the daemon from the API key that "
        "submitted it (a key may not name another tenant); 'default' for the token file.",
    )
    webhook: WebhookSpec | None = Field(
        default=None,
        description="Push this job's events to a URL (unset: BRIEFD_WEBHOOK_URL, if set).",
    )

    @model_validator(mode="after")
    def _tenant_prefix(self) -> JobSpec:
        """A dotted id is a tenant's job key: its prefix must be the job's (non-default) tenant."""
        prefix, dot, _ = self.job_id.partition(".")
        if dot and (prefix != self.tenant or prefix == "default"):
            raise ValueError(
                f"job_id: {self.job_id!r}: a '.' is reserved for a tenant's prefix "
                "(use letters, digits, '_' and '-')"
            )
        if not dot and self.tenant != "default":
            raise ValueError(
                f"job_id: {self.job_id!r}: tenant {self.tenant}'s key lacks its prefix"
            )
        return self


class WebhookSpec(Frozen):
    """Where to push a job's events (Standard Webhooks: signed, retried, at least once)."""

    url: str = Field(min_length=1, max_length=2048, description="An http(s) URL.")
    events: list[str] = Field(
        default_factory=lambda: ["JobCompleted"],
        description="Event types to deliver (default: the terminal JobCompleted only).",
    )


class SchemaSource(StrEnum):
    """Which output contract a JSON document was checked against."""

    NONE = "none"  # any JSON value that parses
    JOB = "job"  # the job's ``schemas``
    PIPELINE = "pipeline"  # the pipeline file's ``schema``/``schema_file``


class StageState(StrEnum):
    """A stage's place in its life, as the seed's progress tracker names them."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


class JobStatus(StrEnum):
    """How a finished job ended."""

    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Progress(Frozen):
    """Per-stage states and the weighted overall percent (running counts half)."""

    stages: dict[str, StageState] = Field(description="Each stage's state.")
    percent: float = Field(description="Weighted percent: complete counts whole, running half.")


class Usage(Frozen):
    """Token counts the API reported for one stage (summed over its attempts)."""

    prompt_tokens: int = Field(default=0, description="As the API reported them.")
    completion_tokens: int = Field(default=0, description="As the API reported them.")
    cached_tokens: int = Field(
        default=0,
        description="Of prompt_tokens, those served from the provider's prompt cache "
        "(usage.prompt_tokens_details.cached_tokens), priced at cached_input.",
    )
    reasoning_tokens: int = Field(
        default=0,
        description="Of completion_tokens, the model's hidden reasoning "
        "(usage.completion_tokens_details.reasoning_tokens), priced as output.",
    )


class ServerWork(Frozen):
    """A server's own measure of calls (llama.cpp's ``timings``), summed over a stage's calls.

    ``prompt_n`` is the prompt tokens it processed (its cache's excluded), ``predicted_n`` the
    tokens it generated, each with its milliseconds; ``key`` is the endpoint:model the calls went
    to (the rates of :mod:`briefd.worktime` are learned per key); ``shared``: some call was not
    alone on its server (only then are its times re-counted at the alone rates).
    """

    key: str = Field(default="", description="endpoint:model the calls went to.")
    prompt_n: int = Field(default=0, description="Prompt tokens the server processed.")
    prompt_ms: float = Field(default=0.0, description="Its time processing them.")
    predicted_n: int = Field(default=0, description="Tokens it generated.")
    predicted_ms: float = Field(default=0.0, description="Its time generating them.")
    shared: bool = Field(
        default=False,
        description="Some call had other calls of this process in flight to the same server: "
        "its times may hold their work.",
    )


class JobMetrics(Frozen):
    """Latency figures of one job (seed step 5).

    A stage's time (``stages_ms``) is the time its calls took: each call from its
    request sent to its last byte (``call_ms``), or, where the server measured the
    calls itself (llama.cpp's ``timings``), the server's figure, which leaves out the
    time a request waited in a server that serves one at a time. Waiting for an
    execution token (``queued_ms``) and retry backoffs are not in it; the stage's
    start to end, all of that included, is ``wall_ms``.

    ``parallel_group_ms`` spans the stages with no dependencies (they may run at
    once); ``sequential_group_ms`` spans the rest (both wall time). ``speedup_ratio``
    is the sum of the stages' times over the job's wall time (``total_ms``): the
    critical-path estimate of what running one stage at a time would cost against
    what the job took. Against a server that serializes requests it reads about 1.0
    (no call's work overlapped another's); it does not count a queue as time saved. A job
    that shared tokens or a server with other jobs can read below 1.0 (it waited for them).
    """

    stages_ms: dict[str, int] = Field(
        description="Each stage's calls (all attempts), as the server measured them where it "
        "did (llama.cpp's timings), else request sent to last byte."
    )
    parallel_group_ms: int = Field(description="First start to last end of the root stages.")
    sequential_group_ms: int = Field(description="First start to last end of the other stages.")
    total_ms: int = Field(description="The whole job, wall time.")
    speedup_ratio: float = Field(
        description="Sum of work_ms / total_ms: the stages' work against the job's wall time."
    )
    usage: dict[str, Usage] = Field(description="Tokens per stage.")
    attempts: dict[str, int] = Field(description="Calls per stage.")
    wall_ms: dict[str, int] = Field(
        default_factory=dict,
        description="Each stage from its start to its end: queue, backoffs and calls.",
    )
    queued_ms: dict[str, int] = Field(
        default_factory=dict, description="Each stage's wait for execution tokens."
    )
    call_ms: dict[str, int] = Field(
        default_factory=dict,
        description="Each stage's calls (all attempts), request sent to last byte, as the "
        "client measured them (a serializing server's queue included).",
    )
    ttft_ms: dict[str, int] = Field(
        default_factory=dict, description="Each streamed stage's time to first token (last call)."
    )
    work_ms: dict[str, int] = Field(
        default_factory=dict,
        description="Each stage's sequential-equivalent work, the speed-up's numerator: its "
        "calls' tokens at the per-token times its server achieves for a call alone (llama.cpp's "
        "timings), each part at most the server's time; else stages_ms.",
    )


class JobResult(Frozen):
    """Everything a finished job produced."""

    job_id: str
    status: JobStatus = Field(description="succeeded, partial, failed or cancelled.")
    documents: dict[str, Any] = Field(description="Stage -> text or JSON; null when failed.")
    errors: list[PipelineError] = Field(description="One per failed stage.")
    fallbacks: list[str] = Field(description="Stages whose document is their fallback.")
    progress: Progress = Field(description="The final stage states and percent.")
    metrics: JobMetrics = Field(description="Latency, usage and attempts.")
    parallel: bool = Field(default=True, description="Whether stages ran in parallel.")
    checked_against: dict[str, SchemaSource] = Field(
        default_factory=dict,
        description="Per JSON stage, the schema its document was checked against: "
        "job, pipeline or none.",
    )
    model: str = Field(default="", description="The model the stages asked for.")
    cost_usd: dict[str, float] = Field(
        default_factory=dict,
        description="Per stage, USD its reported usage cost at the price table's prices.",
    )
    total_cost_usd: float = Field(default=0.0, description="The sum of cost_usd.")
    served_by: dict[str, str] = Field(
        default_factory=dict,
        description="Per stage that produced a document, endpoint:model as the server named "
        "the model (e.g. openai:gpt-4o-2024-08-06).",
    )
    pipeline: str = Field(default="", description="The pipeline the job ran, name@version.")
