"""One job as the in-process ``Pipeline`` sees it: queued, running, or settled once.

The pipeline keeps what each job's coordinator published (stage starts and
ends, documents, errors, fallbacks) so that it can still end the job with an
honest result if the coordinator dies without reporting, and so that a job
cancelled while queued ends without ever starting. :meth:`JobRun.settle` makes
sure each future resolves exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from briefd.config import PipelineSpec
from briefd.messages import (
    ErrorCode,
    Event,
    JobResult,
    JobSpec,
    JobState,
    JobStatus,
    PipelineError,
    StageFailed,
    StageFellBack,
    StageStarted,
    StageState,
    StageSucceeded,
)
from briefd.ops.events import Observer
from briefd.progress import StageRecord, job_metrics, progress
from briefd.store.base import StageRow, closing_result


@dataclass
class JobRun:
    """One submitted job as the pipeline sees it: enough to end it if its coordinator dies."""

    job: JobSpec
    pipeline: PipelineSpec | None = None  # the one it runs (None: the Pipeline's default)
    ref: pykka.ActorRef[Any] | None = None
    started: float = field(default_factory=time.monotonic)
    submitted_at: float = field(default_factory=time.time)  # Unix s: its place in the queue
    records: dict[str, StageRecord] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)
    errors: list[PipelineError] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    observers: tuple[Observer, ...] = ()
    deliver: Callable[[JobResult], None] = lambda result: None  # once settled
    start: Callable[[], pykka.ActorRef[Any]] = field(default=lambda: no_coordinator())
    admitted: bool = False  # has (or had) a coordinator; else waiting in the queue
    seen_dead: bool = False
    settled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, event: Event) -> None:
        """Keep what the coordinator published (it runs in the coordinator's thread)."""
        match event:
            case StageStarted(stage=stage):
                rec = self.records.setdefault(stage, StageRecord())
                rec.state = StageState.RUNNING
                rec.started_at = rec.started_at or time.monotonic()
            case StageSucceeded(stage=stage, document=doc):
                self._end(stage, StageState.COMPLETE)
                self.documents[stage] = doc
            case StageFailed(stage=stage, error=error):
                self._end(stage, StageState.FAILED)
                self.errors.append(error)
            case StageFellBack(stage=stage, source=source):
                self.fallbacks.append(stage)
                self.documents[stage] = getattr(self.job, source, None)

    def _end(self, stage: str, state: StageState) -> None:
        rec = self.records.setdefault(stage, StageRecord())
        rec.state = state
        rec.ended_at = time.monotonic()

    def settle(self) -> bool:
        """True the first time only: a job ends in exactly one result."""
        with self.lock:
            first, self.settled = not self.settled, True
        return first

    def never_ran(self, pipeline: PipelineSpec, reason: str) -> JobResult:
        """The result of a job cancelled while it waited in the queue: no stage ran."""
        rows = {n: StageRow(state=StageState.PENDING, attempts=0) for n in pipeline.names}
        return closing_result(
            pipeline, self.job.job_id, rows, JobState.CANCELLED, (ErrorCode.CANCELLED, reason, "")
        )

    def died(self, pipeline: PipelineSpec, parallel: bool) -> JobResult:
        """The result of a job whose coordinator died without reporting: ``failed``, as a
        coordinator that crashes reports itself, with the documents already delivered."""
        records = {n: self.records.get(n, StageRecord()) for n in pipeline.names}
        for rec in records.values():
            if rec.state is StageState.RUNNING:
                rec.state = StageState.FAILED
        return JobResult(
            job_id=self.job.job_id,
            status=JobStatus.FAILED,
            documents={n: self.documents.get(n) for n in pipeline.names},
            errors=[
                *self.errors,
                PipelineError(
                    stage="*",
                    code=ErrorCode.CRASHED,
                    message="the job's coordinator died without reporting",
                    hint="a bug in briefd; see the log for the traceback",
                ),
            ],
            fallbacks=self.fallbacks,
            progress=progress(pipeline, records),
            metrics=job_metrics(pipeline, records, self.started, time.monotonic()),
            parallel=parallel,
        )


def no_coordinator() -> pykka.ActorRef[Any]:
    raise RuntimeError("this run has no coordinator factory")
