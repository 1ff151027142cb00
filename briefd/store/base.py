"""The journal's interface, and what every backend shares: the run handed back, percent, closing.

A service that acknowledged a job must finish it, even across a crash, and
must not pay the API twice for a document it already has. Every backend keeps
the same four promises:

* :meth:`Store.add_job` commits before a submission is acknowledged;
* each stage's document is committed the moment the stage completes, and a
  resumed run (:meth:`Store.start_run`) gets it back instead of calling again;
* the terminal state is committed once (:meth:`Store.finish`); later writes
  for that job change nothing, so every job ends in exactly one terminal state;
* output files in ``<data_dir>/jobs/<job_id>/`` are derived from the rows
  (:mod:`briefd.output`); the rows are the truth. A job whose files cannot be
  written still ends, with an ``OUTPUT_ERROR`` naming the path.

A write the store cannot make (disk full, I/O error) raises
:class:`StoreUnavailable`: nothing was committed, and the same call may be made
again later. :meth:`Store.write_problem` says, for ``/healthz``, what cannot be
written right now.

On PostgreSQL several daemons share the jobs (:class:`ClaimStore`): a daemon
runs a job it claimed, and a write of a run whose claim another daemon has
since taken over raises :class:`ClaimLost`: dropped, never made again.

SQLite (:mod:`briefd.store.sqlite`) is the embedded default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from briefd.config import PipelineSpec
from briefd.messages import (
    ErrorCode,
    JobInfo,
    JobMetrics,
    JobResult,
    JobSpec,
    JobState,
    JobStatus,
    PipelineError,
    Progress,
    StageState,
)


class StoreUnavailable(Exception):
    """The store cannot write now (disk full, I/O error); nothing was committed: try again."""


class ClaimLost(Exception):
    """A write for a job this daemon no longer holds, refused by its claim's fencing token.

    Another daemon took the job over (this one's lease lapsed while it was paused
    or cut off) or it ended elsewhere: the write would overwrite a newer run's, so
    it is dropped, never retried. ``job_ids`` names the jobs refused.
    """

    def __init__(self, job_ids: list[str]) -> None:
        self.job_ids = list(job_ids)
        super().__init__(f"job {', '.join(self.job_ids)}: claim lost to another daemon")


if TYPE_CHECKING:
    from briefd.messages import Event
    from briefd.store.files import JobFiles
    from briefd.webhooks.outbox import TxOutbox


@dataclass(frozen=True)
class Run:
    """What :meth:`Store.start_run` hands the root: the job and what is already paid for."""

    job: JobSpec | None
    done_stages: dict[str, Any] = field(default_factory=dict)
    failed_stages: dict[str, PipelineError] = field(default_factory=dict)
    runs_died: int = 0
    submitted_at: float = 0.0
    """Epoch seconds of the job's submission: a resumed job keeps its place (oldest first)."""
    pipeline: str = ""
    """The snapshot of the pipeline the job was accepted with ('' if none was kept)."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Stage -> its templated prompt as rendered (:mod:`briefd.store.pinned`): sent again."""


@dataclass(frozen=True)
class Claim:
    """One job a daemon claimed (:meth:`ClaimStore.claim`): its to run until the lease lapses.

    ``fence`` is the claim's fencing token: every write of the run carries it, and
    the database refuses one whose token a newer claim replaced (:class:`ClaimLost`).
    """

    job_id: str
    fence: int
    submitted_at: float
    """Epoch seconds of the job's submission, for oldest-first admission."""
    taken_over: bool = False
    """The job was running under another daemon's claim that lapsed: that run died."""
    previous_owner: str | None = None
    """Whose lapsed claim this one replaced (None: the job was free)."""
    cancel: str | None = None
    """The reason of a cancel asked while another daemon held it: end the job, do not run it."""


@dataclass(frozen=True)
class StageRow:
    """One stage as a backend stored it, for closing a job without a coordinator."""

    state: StageState
    attempts: int
    document: Any = None


class Store(Protocol):
    """The durable record of the daemon's jobs. Implementations are thread-safe."""

    def add_job(
        self, job: JobSpec, *, pipeline: PipelineSpec | None = None
    ) -> tuple[JobInfo, bool]: ...
    def unfinished(self) -> list[str]: ...
    def stage_prompt(self, job_id: str, stage: str, prompt: str) -> None: ...
    def start_run(self, job_id: str) -> Run: ...
    def suspend(self, job_ids: list[str]) -> None: ...
    def stage_started(
        self, job_id: str, stage: str, attempt: int, *, event: Event | None = None
    ) -> None: ...
    def stage_succeeded(
        self, job_id: str, stage: str, document: Any, attempts: int, *, event: Event | None = None
    ) -> None: ...
    def stage_failed(
        self,
        job_id: str,
        stage: str,
        error: PipelineError,
        attempts: int,
        *,
        event: Event | None = None,
    ) -> None: ...
    def finish(self, result: JobResult) -> bool: ...
    def close_job(
        self, job_id: str, state: JobState, code: ErrorCode, message: str, hint: str = ""
    ) -> JobResult | None: ...
    def get(self, job_id: str) -> JobInfo | None: ...
    def result(self, job_id: str) -> JobResult | None: ...
    def list_jobs(self, state: JobState | None = None, limit: int = 100) -> list[JobInfo]: ...
    def counts(self) -> dict[str, int]: ...
    def spent_since(self, since: float) -> float: ...
    def write_problem(self) -> str | None: ...
    def close(self) -> None: ...


class ClaimStore(Store, Protocol):
    """A store several daemons share (PostgreSQL): jobs are claimed under a renewed lease.

    A daemon runs only the jobs it claimed; the writes of a job it holds carry the
    claim's fencing token and raise :class:`ClaimLost` once another claim replaced it.
    """

    def claim(
        self,
        owner: str,
        limit: int,
        lease_s: float,
        *,
        lapsed_only: bool = False,
        held: list[str] | None = None,
        weights: Mapping[str, float] | None = None,
        newcomers: bool = False,
    ) -> list[Claim]: ...
    def renew(self, owner: str, lease_s: float) -> list[str]: ...
    def held(self) -> dict[str, int]: ...
    def cancel_anywhere(
        self, job_id: str, reason: str
    ) -> tuple[JobState | None, JobResult | None]: ...
    def cancels(self, owner: str) -> list[tuple[str, str]]: ...
    def release_predecessors(self, owner: str, node: str) -> int: ...
    def queue_depth(self) -> int: ...
    def add_job(
        self,
        job: JobSpec,
        *,
        within_s: float | None = None,
        pipeline: PipelineSpec | None = None,
    ) -> tuple[JobInfo, bool]: ...
    def claim_valid(self, job_id: str) -> bool: ...
    def claims_problem(self) -> str | None: ...


class StageWrites:
    """The three stage writes, the same on every backend over its own ``_set_stage``.

    A stage ends once: a document is committed before its file is written, and
    neither a complete nor a failed stage is written again (a resumed run does
    not call it). A file that cannot be written is only recorded here; the job's
    end writes every file again and reports what still fails (``OUTPUT_ERROR``).
    """

    files: JobFiles
    outbox: TxOutbox | None = None
    """Webhook deliveries, written in the transaction of the event they report (``event``
    below, and the terminal ``JobCompleted``); None: no webhooks."""

    def _set_stage(
        self,
        job_id: str,
        stage: str,
        state: StageState,
        attempts: int,
        document: Any,
        error: PipelineError | None,
        event: Event | None = None,
    ) -> bool:
        """Write one stage unless it has ended or its job is not live; whether it was."""
        raise NotImplementedError

    def stage_started(
        self, job_id: str, stage: str, attempt: int, *, event: Event | None = None
    ) -> None:
        """A call is in flight (for status only: a running stage is called again on resume)."""
        self._set_stage(job_id, stage, StageState.RUNNING, attempt, None, None, event)

    def stage_succeeded(
        self, job_id: str, stage: str, document: Any, attempts: int, *, event: Event | None = None
    ) -> None:
        """Commit the document (never called again), then write its output file."""
        if self._set_stage(job_id, stage, StageState.COMPLETE, attempts, document, None, event):
            self.files.write_document(job_id, stage, document)

    def stage_failed(
        self,
        job_id: str,
        stage: str,
        error: PipelineError,
        attempts: int,
        *,
        event: Event | None = None,
    ) -> None:
        """The stage gave up after its retries: final, a resumed run does not call it again."""
        self._set_stage(job_id, stage, StageState.FAILED, attempts, None, error, event)


def resumed_run(
    spec_json: str,
    ended: list[tuple[str, str, str | None, str | None]],
    died: int,
    submitted_at: float = 0.0,
) -> Run:
    """A run to resume, from the job's spec and its ended stages' ``(stage, state, document,
    error)`` rows (JSON text): documents are never bought again, failures never called again."""
    complete = StageState.COMPLETE.value
    return Run(
        job=JobSpec.model_validate_json(spec_json),
        done_stages={s: json.loads(doc or "null") for s, st, doc, _ in ended if st == complete},
        failed_stages={
            s: PipelineError.model_validate_json(err)
            for s, st, _, err in ended
            if st != complete and err is not None
        },
        runs_died=died,
        submitted_at=submitted_at,
    )


def job_info(
    pipeline: PipelineSpec,
    job: dict[str, Any],
    stages: list[tuple[str, str, str | None]],
) -> JobInfo:
    """A job's status from its row (``job_id``, ``state``, ``result`` JSON, times,
    ``restarts``) and its stages' ``(stage, state, error JSON)`` in pipeline order: the
    result's errors once terminal, else the errors of the stages that failed."""
    states = {s: StageState(st) for s, st, _ in stages}
    if job["result"] is not None:
        errors = JobResult.model_validate_json(job["result"]).errors
    else:
        failed = StageState.FAILED.value
        errors = [PipelineError.model_validate_json(e) for _, st, e in stages if st == failed and e]
    return JobInfo(
        job_id=job["job_id"],
        status=JobState(job["state"]),
        stages=states,
        progress=stage_percent(pipeline, states),
        submitted_at=job["submitted_at"],
        started_at=job["started_at"],
        finished_at=job["finished_at"],
        restarts=int(job["restarts"]),
        errors=errors,
    )


def stage_percent(pipeline: PipelineSpec, states: dict[str, StageState]) -> float:
    """The job's weighted percent from its stages' states (a running stage counts half)."""
    by_name = pipeline.by_name
    weights = {s: (by_name[s].weight if s in by_name else 1.0) for s in states}
    total = sum(weights.values()) or 1.0
    done = sum(
        w * (1.0 if states[s] is StageState.COMPLETE else 0.5)
        for s, w in weights.items()
        if states[s] in (StageState.COMPLETE, StageState.RUNNING)
    )
    return round(100.0 * done / total, 1)


def closing_result(
    pipeline: PipelineSpec,
    job_id: str,
    stages: dict[str, StageRow],
    state: JobState,
    error: tuple[ErrorCode, str, str],
) -> JobResult:
    """The result of a job ended from outside its run (cancelled in the queue, budget spent).

    Completed stages keep their documents; every other stage fails with ``error``.
    """
    code, message, hint = error
    complete = StageState.COMPLETE
    errors = [
        PipelineError(stage=s, code=code, message=message, hint=hint)
        for s, r in stages.items()
        if r.state is not complete
    ] or [PipelineError(stage="*", code=code, message=message, hint=hint)]
    final = {s: complete if r.state is complete else StageState.FAILED for s, r in stages.items()}
    return JobResult(
        job_id=job_id,
        status=JobStatus(state.value),
        documents={s: r.document for s, r in stages.items()},
        errors=errors,
        fallbacks=[],
        progress=Progress(stages=final, percent=stage_percent(pipeline, final)),
        metrics=JobMetrics(
            stages_ms=dict.fromkeys(stages, 0),
            parallel_group_ms=0,
            sequential_group_ms=0,
            total_ms=0,
            speedup_ratio=0.0,
            usage={},
            attempts={s: r.attempts for s, r in stages.items()},
        ),
    )
