"""The root actor's runs: loading a job, starting its coordinator, watching it, ending it.

Kept apart from :mod:`briefd.actors.root` (admission, claims, the proxy API) as a
mixin of the same actor: every method here runs in the root's thread. A run is
one coordinator of one job; a job that dies is loaded again from the journal
(completed stages are never called again) until its ``restart_budget`` is spent.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pykka
from loguru import logger

from briefd.actors.coordinator import CoordinatorActor
from briefd.actors.rate_limiter import LimiterRef
from briefd.cluster.claims import ClaimKeeper
from briefd.config import ConfigError, PipelineSpec, Settings
from briefd.costs.daily import DailyLedger
from briefd.jobs import validate_job
from briefd.llm.routing import Routing
from briefd.messages import (
    CheckCoordinator,
    CloseJob,
    CoordinatorDone,
    ErrorCode,
    FinishJob,
    JobLoaded,
    JobRestarted,
    JobResult,
    JobState,
    LoadJob,
)
from briefd.ops.autorollback import RollbackWatch
from briefd.ops.events import Observer, publish
from briefd.pipelines.registry import PipelineRegistry

AnyRef = pykka.ActorRef[Any]


@dataclass
class Slot:
    """One admitted job: its current run (``generation``) and coordinator."""

    generation: int
    ref: AnyRef | None = None  # None while the journal loads the job
    cancel: str | None = None  # a cancel that arrived while loading
    parallel: bool = True  # how this run's coordinator was started
    reason: str = "the daemon stopped while it ran"  # why this run is a restart


class RootRuns:
    """The run half of :class:`~briefd.actors.root.RootActor` (its attributes are set there)."""

    actor_ref: AnyRef
    actor_urn: str
    drain_event: threading.Event
    _active: dict[str, Slot]
    _suspended: dict[str, int]
    _journal_ref: AnyRef
    _settings: Settings
    _pipeline: PipelineSpec
    _registry: PipelineRegistry
    _breaker: RollbackWatch | None
    _ledger: DailyLedger
    _claims: ClaimKeeper | None
    _coordinator_cls: type[CoordinatorActor]
    _stage_cls: type[Any]
    _base_url: str
    _routing: Routing | None
    _limiter: LimiterRef
    _observers: Sequence[Observer]
    _restarts: int
    _generations: itertools.count[int]
    _avg_job_s: float

    def _admit(self) -> None:
        raise NotImplementedError

    def _load(self, job_id: str, slot: Slot) -> None:
        self._active[job_id] = slot
        self._journal_ref.tell(
            LoadJob(job_id=job_id, generation=slot.generation, reply_to=self.actor_urn)
        )

    def _loaded(self, msg: JobLoaded) -> None:
        slot = self._active.get(msg.job_id)
        if slot is None or slot.generation != msg.generation:
            return  # a run already replaced or suspended
        if msg.job is None:  # terminal or gone
            self._release(msg.job_id)
            return
        if slot.cancel is not None:
            self._close(msg.job_id, JobState.CANCELLED, ErrorCode.CANCELLED, slot.cancel)
            return
        budget = self._settings.restart_budget
        if msg.runs_died > budget:
            self._close(
                msg.job_id,
                JobState.FAILED,
                ErrorCode.CRASHED,
                f"not resumed: {msg.runs_died} runs of this job died "
                f"(last: {slot.reason}); the restart budget is {budget}",
                "a job that keeps crashing briefd; see the log, raise BRIEFD_RESTART_BUDGET "
                "to try again",
            )
            return
        if msg.runs_died:
            self._restarts += 1
            restarted = JobRestarted(job_id=msg.job_id, runs=msg.runs_died, reason=slot.reason)
            publish(restarted)
            self._journal_ref.tell(restarted)  # into the job's event stream
        if self.drain_event.is_set():
            return  # suspend() puts it back in the queue
        try:  # the pipeline it was accepted with, whatever a reload changed since
            pipeline = self._registry.pinned(msg.pipeline, msg.job.pipeline)
            job = validate_job(msg.job, pipeline, where=f"job {msg.job_id}", routing=self._routing)
        except ConfigError as err:
            self._close(
                msg.job_id,
                JobState.FAILED,
                ErrorCode.CRASHED,
                str(err),
                "the pipeline changed since the job was accepted",
            )
            return
        settings = self._settings
        if self._breaker is not None and settings.parallel:
            slot.parallel = self._breaker.next_job_parallel()
            settings = settings.model_copy(update={"parallel": slot.parallel})
        slot.ref = self._coordinator_cls.start(
            job=job,
            pipeline=pipeline,
            rendered=msg.prompts,  # a prompt is rendered once: a resume sends the same text
            settings=settings,
            base_url=self._base_url,
            routing=self._routing,
            limiter=self._limiter,
            observers=self._observers,
            on_done=self._on_done(msg.job_id, msg.generation),
            stage_actor_cls=self._stage_cls,
            done_stages=msg.done_stages,
            failed_stages=msg.failed_stages,
            crash_is_resumed=True,
            end_logged_by_owner=True,  # the journal actor logs JobCompleted once committed
            admitted_at=msg.submitted_at or None,  # a resumed job keeps its place: oldest first
        )

    def _on_done(self, job_id: str, generation: int) -> Any:
        me = self.actor_ref

        def on_done(result: JobResult) -> None:  # runs in the coordinator's thread
            me.tell(CoordinatorDone(job_id=job_id, generation=generation, result=result))

        return on_done

    def _done(self, msg: CoordinatorDone) -> None:
        self._ledger.add(msg.result)  # every run's calls were paid for
        slot = self._active.get(msg.job_id)
        if slot is None or slot.generation != msg.generation:
            if self._suspended.get(msg.job_id) == msg.generation and not _crashed(msg.result):
                self._journal_ref.tell(FinishJob(result=msg.result))
            return
        if _crashed(msg.result):
            if not self.drain_event.is_set():
                self._restart(msg.job_id, "its coordinator crashed")
            return
        self._journal_ref.tell(FinishJob(result=msg.result))
        total_s = msg.result.metrics.total_ms / 1000
        self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * total_s
        self._release(msg.job_id)

    def _watch(self) -> None:
        if self.drain_event.is_set():
            return
        for job_id, slot in self._active.items():
            if slot.ref is not None and not slot.ref.is_alive():
                # Not yet: a CoordinatorDone told before it died may still be queued
                # behind this Tick. The check is queued after it.
                self.actor_ref.tell(CheckCoordinator(job_id=job_id, generation=slot.generation))

    def _restart(self, job_id: str, reason: str) -> None:
        logger.warning("{} run died ({}): loading it again", job_id, reason)
        old = self._active.get(job_id)
        cancel = old.cancel if old is not None else None
        self._load(job_id, Slot(next(self._generations), cancel=cancel, reason=reason))

    def _close(
        self, job_id: str, state: JobState, code: ErrorCode, message: str, hint: str = ""
    ) -> None:
        self._journal_ref.tell(
            CloseJob(job_id=job_id, status=state, code=code, message=message, hint=hint)
        )
        self._release(job_id)

    def _release(self, job_id: str) -> None:
        self._active.pop(job_id, None)
        if self._claims is not None:
            self._claims.want()  # a slot freed: other jobs may be waiting in the database
        self._admit()


def _crashed(result: JobResult) -> bool:
    """The coordinator itself failed (its ``on_failure``), not one of the stages."""
    return any(e.stage == "*" and e.code is ErrorCode.CRASHED for e in result.errors)
