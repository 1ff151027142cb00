"""The root actor of ``briefd serve``: admits jobs, runs their coordinators, restarts the dead.

* Admission. At most ``max_active_jobs`` jobs have a coordinator; the others
  wait in a FIFO of job ids. A new submission that finds ``max_queued_jobs``
  already waiting is refused at once (the HTTP layer answers 429): pykka
  inboxes are unbounded, so the bound is kept here, and a job is never
  accepted and then dropped. Jobs resumed from the journal always get a place.
* Durability. :meth:`RootActor.submit` commits the job to the journal before it
  returns, so the acknowledgement that follows is a promise kept across crashes.
* Watching. pykka has no supervision: a coordinator reports its result through
  ``on_done`` (``CoordinatorDone``), and a periodic ``Tick`` notices one that
  died without reporting. Either way a dead run is loaded again from the
  journal (completed stages are not called again) until the job has used its
  ``restart_budget``; then it fails with an error that says so, instead of
  crashing the daemon in a loop.
* Shutdown. :meth:`drain` stops admissions and, through the stage actor class
  made here (:func:`drainable_stage_actor`), stops stages from starting calls;
  calls already in flight finish. :meth:`suspend` then hands the unfinished
  runs back to the journal's queue for the next start.

Outside callers (HTTP threads, the daemon's main thread) use the proxy methods
with a timeout; actors talk to the root by ``tell``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pykka
from loguru import logger

from briefd.actors.admission import Admission, RootStats
from briefd.actors.coordinator import CoordinatorActor
from briefd.actors.drain import drainable_stage_actor
from briefd.actors.rate_limiter import LimiterRef
from briefd.actors.stage import StageActor
from briefd.config import ConfigError, PipelineSpec, Settings
from briefd.costs.daily import DailyLedger
from briefd.jobs import validate_job
from briefd.messages import (
    CancelJob,
    CheckCoordinator,
    CloseJob,
    CoordinatorDone,
    ErrorCode,
    Event,
    FinishJob,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobLoaded,
    JobRestarted,
    JobResult,
    JobSpec,
    JobState,
    LoadJob,
    StageFailed,
    StageRetrying,
    StageSucceeded,
    SuspendJobs,
    Tick,
)
from briefd.ops.autorollback import RollbackWatch
from briefd.ops.breaker import Breaker
from briefd.ops.events import Observer, publish
from briefd.store.base import Store, StoreUnavailable
from briefd.timers import Timers

WATCH_PERIOD_S = 0.5
AnyRef = pykka.ActorRef[Any]


@dataclass
class _Slot:
    """One admitted job: its current run (``generation``) and coordinator."""

    generation: int
    ref: AnyRef | None = None  # None while the journal loads the job
    cancel: str | None = None  # a cancel that arrived while loading
    parallel: bool = True  # how this run's coordinator was started
    reason: str = "the daemon stopped while it ran"  # why this run is a restart


class RootActor(pykka.ThreadingActor):
    """One per daemon: the only actor that starts or stops coordinators."""

    def __init__(
        self,
        *,
        journal: Store,
        journal_ref: AnyRef,
        pipeline: PipelineSpec,
        settings: Settings,
        base_url: str,
        limiter: LimiterRef,
        observers: Sequence[Observer] = (),
        coordinator_cls: type[CoordinatorActor] = CoordinatorActor,
        stage_actor_cls: type[StageActor] = StageActor,
        breaker: Breaker | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        # Guard rails: the day's spend (holds admission), the automatic rollback (how
        # new jobs run). The breaker hears stage events through one more observer.
        self._ledger = DailyLedger(settings.daily_budget_usd, wall_clock)
        self._breaker = RollbackWatch(breaker) if breaker is not None else None
        if breaker is not None:
            observers = (*observers, self._forward_stage_event)
        self._journal = journal
        self._journal_ref = journal_ref
        self._pipeline = pipeline
        self._settings = settings
        self._base_url = base_url
        self._limiter = limiter
        self._observers = tuple(observers)
        self._coordinator_cls = coordinator_cls
        self.drain_event = threading.Event()
        self._stage_cls = drainable_stage_actor(stage_actor_cls, self.drain_event)
        self._queue: deque[str] = deque()
        self._active: dict[str, _Slot] = {}
        self._suspended: dict[str, int] = {}  # job -> generation, after suspend()
        self._generations = itertools.count(1)
        self._restarts = 0
        self._resumed = 0
        self._avg_job_s = 10.0
        self._timers = Timers()

    # -- pykka hooks -----------------------------------------------------------------

    def on_start(self) -> None:
        self._ledger.sync_from(self._journal, now=True)
        resumed = self._journal.unfinished()
        self._resumed = len(resumed)
        self._queue.extend(resumed)
        self._timers.every(self.actor_ref, WATCH_PERIOD_S, Tick())
        self._admit()

    def on_stop(self) -> None:
        self._timers.close()

    def on_receive(self, message: Any) -> Any:
        match message:
            case JobLoaded():
                self._loaded(message)
            case CoordinatorDone():
                self._done(message)
            case Tick():
                self._watch()
                if self._breaker is not None:
                    self._breaker.poll()
                self._ledger.sync_from(self._journal)  # what a restart or other daemons spent
                self._admit()  # a new UTC day releases jobs held by the daily budget
            case StageRetrying() | StageSucceeded() | StageFailed():
                self._stage_ended(message)
            case CheckCoordinator(job_id=job_id, generation=gen):
                slot = self._active.get(job_id)
                if (
                    slot is not None
                    and slot.generation == gen
                    and slot.ref is not None
                    and not slot.ref.is_alive()
                    and not self.drain_event.is_set()
                ):
                    self._restart(job_id, "its coordinator died without reporting")
            case _:
                logger.warning("root: unexpected {!r}", type(message).__name__)
        return None

    # -- the proxy API (outside callers, always with a timeout) ----------------------

    def submit(self, job: JobSpec) -> Admission:
        """Accept ``job`` (committed to the journal on return), or refuse it at once."""
        existing = self._journal.get(job.job_id)
        if existing is not None:
            return Admission(job.job_id, existing.status, created=False)
        if self.drain_event.is_set():
            return Admission(job.job_id, JobState.QUEUED, False, "stopping", 5)
        s = self._settings
        if len(self._active) >= s.active_jobs and len(self._queue) >= s.max_queued_jobs:
            wait = math.ceil(self._avg_job_s / s.active_jobs)
            return Admission(
                job.job_id, JobState.QUEUED, False, "queue_full", min(max(wait, 1), 300)
            )
        info, created = self._journal.add_job(job)
        if not created:
            return Admission(job.job_id, info.status, created=False)
        self._queue.append(job.job_id)
        self._admit()
        state = JobState.RUNNING if job.job_id in self._active else JobState.QUEUED
        publish(JobAccepted(job_id=job.job_id, status=state, queued=len(self._queue)))
        return Admission(job.job_id, state, created=True)

    def cancel(self, job_id: str, reason: str = "cancelled") -> JobState | None:
        """Cancel a job; returns its state after the request (None: unknown job)."""
        if job_id in self._queue:
            self._queue.remove(job_id)
            publish(JobCancelled(job_id=job_id, reason=reason, was=JobState.QUEUED))
            try:
                closed = self._journal.close_job(
                    job_id, JobState.CANCELLED, ErrorCode.CANCELLED, reason
                )
                if closed is not None:
                    publish(JobCompleted(job_id=job_id, result=closed))
            except StoreUnavailable:  # the journal actor holds it until the store takes it
                self._close(job_id, JobState.CANCELLED, ErrorCode.CANCELLED, reason)
            return JobState.CANCELLED
        slot = self._active.get(job_id)
        if slot is not None:
            publish(JobCancelled(job_id=job_id, reason=reason, was=JobState.RUNNING))
            if slot.ref is None:
                slot.cancel = reason
            else:
                with contextlib.suppress(pykka.ActorDeadError):
                    slot.ref.tell(CancelJob(job_id=job_id, reason=reason))
            return JobState.RUNNING
        info = self._journal.get(job_id)
        return info.status if info is not None else None

    def stats(self) -> RootStats:
        """Current admission figures."""
        return RootStats(
            active=len(self._active),
            queued=len(self._queue),
            draining=self.drain_event.is_set(),
            restarts=self._restarts,
            resumed=self._resumed,
            max_active_jobs=self._settings.active_jobs,
            max_queued_jobs=self._settings.max_queued_jobs,
            **self._ledger.stats_fields(),
            **(self._breaker.stats_fields() if self._breaker else {}),
        )

    def reload(self, settings: Settings) -> None:
        """New settings for runs that start from now on (and for admission)."""
        self._settings = settings
        self._ledger.budget_usd = settings.daily_budget_usd
        self._admit()

    def drain(self) -> None:
        """Shutdown, step 1: admit nothing more; stages start no new call."""
        self.drain_event.set()

    def suspend(self) -> list[str]:
        """Shutdown, step 2: the unfinished runs go back to the journal's queue.

        A run that still completes afterwards (its coordinator had the last
        stage result in its inbox) is recorded all the same.
        """
        ids = list(self._active)
        self._suspended.update({j: s.generation for j, s in self._active.items()})
        self._active.clear()
        self._journal_ref.tell(SuspendJobs(job_ids=ids))
        return ids

    # -- runs ------------------------------------------------------------------------

    def _admit(self) -> None:
        if (event := self._ledger.update(len(self._queue))) is not None:
            publish(event)
        while (
            not self.drain_event.is_set()
            and not self._ledger.held
            and self._queue
            and len(self._active) < self._settings.active_jobs
        ):
            self._load(self._queue.popleft(), _Slot(next(self._generations)))

    def _load(self, job_id: str, slot: _Slot) -> None:
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
            publish(JobRestarted(job_id=msg.job_id, runs=msg.runs_died, reason=slot.reason))
        if self.drain_event.is_set():
            return  # suspend() puts it back in the queue
        try:
            job = validate_job(msg.job, self._pipeline, where=f"job {msg.job_id}")
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
            pipeline=self._pipeline,
            settings=settings,
            base_url=self._base_url,
            limiter=self._limiter,
            observers=self._observers,
            on_done=self._on_done(msg.job_id, msg.generation),
            stage_actor_cls=self._stage_cls,
            done_stages=msg.done_stages,
            failed_stages=msg.failed_stages,
            crash_is_resumed=True,
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
        self._load(job_id, _Slot(next(self._generations), cancel=cancel, reason=reason))

    def _close(
        self, job_id: str, state: JobState, code: ErrorCode, message: str, hint: str = ""
    ) -> None:
        self._journal_ref.tell(
            CloseJob(job_id=job_id, status=state, code=code, message=message, hint=hint)
        )
        self._release(job_id)

    def _release(self, job_id: str) -> None:
        self._active.pop(job_id, None)
        self._admit()

    def _forward_stage_event(self, event: Event) -> None:
        """An observer (run in a coordinator's thread): stage endings come to the breaker."""
        if isinstance(event, StageRetrying | StageSucceeded | StageFailed):
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(event)

    def _stage_ended(self, event: StageRetrying | StageSucceeded | StageFailed) -> None:
        if self._breaker is not None:
            slot = self._active.get(event.job_id)
            self._breaker.hear(event, parallel=slot.parallel if slot is not None else True)


def _crashed(result: JobResult) -> bool:
    """The coordinator itself failed (its ``on_failure``), not one of the stages."""
    return any(e.stage == "*" and e.code is ErrorCode.CRASHED for e in result.errors)
