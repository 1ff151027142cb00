"""One job's events, folded into what its trace needs: stages, their attempts, their times.

The trace is written when the job ends (``JobCompleted``), not span by span as events
arrive: only then are a stage's cost and the job's pipeline known, and building every span
from the events' own timestamps (explicit start and end times) gives the same tree whatever
order the coordinators' threads publish in. A job that never ends in this process (a
daemon killed mid-run) exports nothing; its next run, resumed, starts a fresh record.

Pure bookkeeping, no OpenTelemetry import: the fold is tested without the extra.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from briefd.messages import (
    Event,
    JobCompleted,
    JobStarted,
    PipelineError,
    StageFailed,
    StageFailedOver,
    StageFellBack,
    StageRetrying,
    StageStarted,
    StageSucceeded,
)

MAX_OPEN_JOBS = 10_000
"""Jobs recorded at once; past it the oldest record is dropped (its job ended elsewhere)."""


@dataclass
class Attempt:
    """One call: from its ``StageStarted`` to the event that ended it."""

    number: int
    endpoint: str
    model: str
    start: float
    queued_ms: int = 0
    end: float | None = None
    error: PipelineError | None = None
    ttft_ms: int | None = None
    call_ms: int | None = None  # the call itself, where the events say it

    def close(
        self,
        ts: float,
        *,
        error: PipelineError | None = None,
        ttft_ms: int | None = None,
        call_ms: int | None = None,
    ) -> None:
        if self.end is not None:
            return
        self.error, self.ttft_ms = error, ttft_ms
        if call_ms is not None and call_ms >= 0 and self.start + call_ms / 1000 <= ts + 0.001:
            self.call_ms = call_ms
            # within a millisecond of the event (two clocks: monotonic and wall), clamped
            # to it: a call's span never ends after the stage's that holds it
            self.end = max(self.start, min(self.start + call_ms / 1000, ts))
        else:
            self.end = max(ts, self.start)


@dataclass
class StageRecord:
    name: str
    attempts: list[Attempt] = field(default_factory=list)
    outcome: StageSucceeded | StageFailed | None = None
    fell_back: str | None = None

    def open_attempt(self) -> Attempt | None:
        last = self.attempts[-1] if self.attempts else None
        return last if last is not None and last.end is None else None

    def last_call_ms(self, total_ms: int) -> int | None:
        """The last attempt's call time: the stage's total less the earlier ones, when all
        of those are known (0 until the per-attempt clocks are measured: unknown)."""
        if total_ms <= 0:
            return None
        earlier = [a.call_ms for a in self.attempts[:-1]]
        if any(ms is None for ms in earlier):
            return None
        rest = total_ms - sum(ms for ms in earlier if ms is not None)
        return rest if rest >= 0 else None


@dataclass
class JobRecord:
    job_id: str
    start: float
    stages: dict[str, StageRecord] = field(default_factory=dict)
    prompts: Mapping[str, str] | None = None

    def stage(self, name: str) -> StageRecord:
        rec = self.stages.get(name)
        if rec is None:
            rec = self.stages[name] = StageRecord(name)
        return rec


class Recorder:
    """Folds the events of many jobs at once (called from every coordinator's thread)."""

    def __init__(self, max_open: int = MAX_OPEN_JOBS) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()
        self._max_open = max_open

    def open_jobs(self) -> int:
        with self._lock:
            return len(self._jobs)

    def add(
        self, event: Event, prompts: Mapping[str, str] | None = None
    ) -> tuple[JobRecord, JobCompleted] | None:
        """Fold ``event`` in; a finished job's record (and its end) when ``event`` ends one."""
        with self._lock:
            match event:
                case JobStarted(job_id=job_id, ts=ts):
                    self._jobs.pop(job_id, None)  # a resumed run starts afresh
                    self._jobs[job_id] = JobRecord(job_id, ts, prompts=prompts)
                    while len(self._jobs) > self._max_open:
                        del self._jobs[next(iter(self._jobs))]
                case JobCompleted(job_id=job_id):
                    job = self._jobs.pop(job_id, None)
                    return (job, event) if job is not None else None
                case _:
                    self._stage_event(event)
        return None

    def _stage_event(self, event: Event) -> None:
        job = self._jobs.get(getattr(event, "job_id", ""))
        if job is None:
            return
        match event:
            case StageStarted(stage=stage, attempt=n, endpoint=endpoint, model=model, ts=ts):
                rec = job.stage(stage)
                if (left := rec.open_attempt()) is not None:  # never ended: ends here
                    left.close(ts)
                rec.attempts.append(Attempt(n, endpoint, model, ts, event.queued_ms))
            case StageRetrying(stage=stage, ts=ts):
                if (open_ := job.stage(stage).open_attempt()) is not None:
                    open_.close(
                        ts, error=event.reason, ttft_ms=event.ttft_ms, call_ms=event.call_ms or None
                    )
            case StageFailedOver(stage=stage, ts=ts, skipped=False):
                if (open_ := job.stage(stage).open_attempt()) is not None:
                    open_.close(ts, error=event.reason)
            case StageSucceeded(stage=stage, ts=ts) | StageFailed(stage=stage, ts=ts):
                rec = job.stage(stage)
                if (open_ := rec.open_attempt()) is not None:
                    error = event.error if isinstance(event, StageFailed) else None
                    last_ms = rec.last_call_ms(event.call_ms)
                    open_.close(ts, error=error, ttft_ms=event.ttft_ms, call_ms=last_ms)
                rec.outcome = event
            case StageFellBack(stage=stage, source=source):
                job.stage(stage).fell_back = source
