"""Job-level commands and events: submit, started, progress, latency, completed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from briefd.messages.base import Command, Event
from briefd.messages.job import JobMetrics, JobResult, JobSpec, Progress, tenant_from_key


class SubmitJob(Command):
    """Run this job."""

    type: Literal["SubmitJob"] = "SubmitJob"
    job: JobSpec


class CancelJob(Command):
    """Stop a job: stages not started never start; in-flight calls are abandoned."""

    type: Literal["CancelJob"] = "CancelJob"
    job_id: str
    reason: str = Field(default="cancelled", description="Recorded in each stage's error.")


class Tick(Command):
    """Timer -> an actor: time to look around (reap dead leases, check stage actors)."""

    type: Literal["Tick"] = "Tick"


class JobStarted(Event):
    """A coordinator took the job and spawned its stage actors."""

    type: Literal["JobStarted"] = "JobStarted"
    job_id: str
    stages: list[str] = Field(description="The pipeline's stages, in declaration order.")
    parallel: bool = Field(description="false: one stage at a time (BRIEFD_PARALLEL=false).")
    max_concurrent: int = Field(description="Execution tokens of the limiter it runs under.")


class ProgressChanged(Event):
    """Any stage changed state; ``progress`` is the job's whole picture after it."""

    type: Literal["ProgressChanged"] = "ProgressChanged"
    job_id: str
    stage: str = Field(description="The stage whose state changed.")
    progress: Progress = Field(description="Every stage's state and the weighted percent.")


class LatencyMeasured(Event):
    """The end-of-job latency table (seed step 5), one per job."""

    type: Literal["LatencyMeasured"] = "LatencyMeasured"
    job_id: str
    metrics: JobMetrics = Field(description="Per-stage and group times, total, speed-up.")


class JobCompleted(Event):
    """The job reached a terminal state; ``result`` is final."""

    type: Literal["JobCompleted"] = "JobCompleted"
    job_id: str
    result: JobResult = Field(description="The final result (documents logged as digests).")
    tenant: str = Field(default="default", description="The tenant whose job it was.")

    _tenant = model_validator(mode="before")(tenant_from_key)
