"""The root actor of ``briefd serve``: admits jobs, runs their coordinators, restarts the dead.

* Admission. At most ``max_active_jobs`` jobs have a coordinator; the others
  wait in a FIFO of job ids. With several tenants a freed place goes to the
  tenant with the fewest running per weight (its oldest job), and a tenant with
  nothing running gets a place past a full window
  (:func:`~briefd.limits.fair.next_to_admit`). A new submission that finds ``max_queued_jobs``
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
* A cluster. With PostgreSQL (several daemons, one queue) the FIFO is the
  database's: the root *claims* jobs when it has room and renews its claims
  (:class:`~briefd.cluster.claims.ClaimKeeper`); a run whose claim another daemon
  took is stopped here (its writes are refused by the fence anyway).
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
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import pykka
from loguru import logger

from briefd.actors.admission import Admission, RootStats
from briefd.actors.coordinator import CoordinatorActor
from briefd.actors.drain import drainable_stage_actor
from briefd.actors.rate_limiter import LimiterRef
from briefd.actors.root_runs import RootRuns, Slot
from briefd.actors.stage import StageActor
from briefd.cluster.claims import ClaimKeeper
from briefd.config import PipelineSpec, Settings
from briefd.costs.daily import DailyLedger
from briefd.limits.fair import next_to_admit
from briefd.llm.routing import Routing
from briefd.messages import (
    CancelJob,
    CheckCancels,
    CheckCoordinator,
    ClaimJobs,
    CoordinatorDone,
    ErrorCode,
    Event,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobLoaded,
    JobSpec,
    JobState,
    StageFailed,
    StageRetrying,
    StageSucceeded,
    SuspendJobs,
    Tick,
)
from briefd.ops.autorollback import RollbackWatch
from briefd.ops.breaker import Breaker
from briefd.ops.events import Observer, publish
from briefd.pipelines.registry import PipelineRegistry
from briefd.store.base import Claim, ClaimLost, Store, StoreUnavailable
from briefd.store.events import staged_events
from briefd.tenants.gate import TenantGate
from briefd.tenants.ids import DEFAULT_TENANT, tenant_of
from briefd.threads import LeanThreadingActor
from briefd.timers import Timers

WATCH_PERIOD_S = 0.5
AnyRef = pykka.ActorRef[Any]


class RootActor(RootRuns, LeanThreadingActor):
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
        claims: ClaimKeeper | None = None,
        routing: Routing | None = None,
        registry: PipelineRegistry | None = None,
        tenants: TenantGate | None = None,
    ) -> None:
        super().__init__()
        # The pipelines jobs may name; a job keeps the version it was accepted with.
        self._registry = registry if registry is not None else PipelineRegistry.single(pipeline)
        self._tenants = tenants  # per-tenant budgets and queue caps (None: none)
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
        self._routing = routing
        self._limiter = limiter
        self._observers = tuple(observers)
        self._coordinator_cls = coordinator_cls
        self.drain_event = threading.Event()
        self._stage_cls = drainable_stage_actor(stage_actor_cls, self.drain_event)
        self._queue: deque[str] = deque()
        self._active: dict[str, Slot] = {}
        self._suspended: dict[str, int] = {}  # job -> generation, after suspend()
        self._generations = itertools.count(1)
        self._restarts = 0
        self._resumed = 0
        self._avg_job_s = 10.0
        self._timers = Timers()
        self._claims = claims  # None: this daemon owns its journal's queue (SQLite)
        self._rescued: dict[str, Slot] = {}  # a dead daemon's jobs claimed, waiting here
        self._renew_failing = False  # logged once per outage

    # -- pykka hooks -----------------------------------------------------------------

    def on_start(self) -> None:
        self._ledger.sync_from(self._journal, now=True)
        if self._tenants is not None:
            self._tenants.sync(now=True)
        if self._claims is None:  # in a cluster, unfinished jobs are claimed like new ones
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
                if self._tenants is not None:
                    self._tenants.sync()
                self._keep_claims()
                self._admit()  # a new UTC day releases jobs held by the daily budget
            case ClaimJobs():
                if self._claims is not None:
                    self._claims.want()
                    self._admit()
            case CheckCancels():
                self._cancel_flagged()
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

    def submit(self, job: JobSpec, deadline: float | None = None) -> Admission:
        """Accept ``job`` (committed to the journal on return), or refuse it at once.

        ``deadline`` (monotonic s): the caller stops waiting then and answers "not stored".
        A submission handled after it (it waited in the inbox behind a database call) is
        refused without a write, and with PostgreSQL the write itself must end by then
        (StoreUnavailable otherwise, nothing committed): a job is never stored after its
        client was told no.
        """
        late = Admission(job.job_id, JobState.QUEUED, False, "unavailable", 5)
        if deadline is not None and time.monotonic() >= deadline:
            return late
        existing = self._journal.get(job.job_id)
        if existing is not None:
            return Admission(job.job_id, existing.status, created=False)
        if self.drain_event.is_set():
            return Admission(job.job_id, JobState.QUEUED, False, "stopping", 5)
        s = self._settings
        if len(self._active) >= s.active_jobs and self._queued() >= s.max_queued_jobs:
            wait = math.ceil(self._avg_job_s / s.active_jobs)
            return Admission(
                job.job_id, JobState.QUEUED, False, "queue_full", min(max(wait, 1), 300)
            )
        if self._tenants is not None and self._tenants.queue_full(job):
            return Admission(job.job_id, JobState.QUEUED, False, "tenant_queue_full", 5)
        if deadline is not None and time.monotonic() >= deadline:
            return late
        pinned = self._registry.pipelines.get(job.pipeline or self._registry.default)
        if self._claims is not None and deadline is not None:  # PostgreSQL: bounded write
            info, created = self._claims.store.add_job(
                job, within_s=deadline - time.monotonic(), pipeline=pinned
            )
        else:
            info, created = self._journal.add_job(job, pipeline=pinned)
        if not created:
            return Admission(job.job_id, info.status, created=False)
        if self._claims is None:
            self._queue.append(job.job_id)
        else:
            self._claims.want()  # and every other daemon hears NOTIFY briefd_jobs
        self._admit()
        state = JobState.RUNNING if job.job_id in self._active else JobState.QUEUED
        accepted = JobAccepted(
            job_id=job.job_id, status=state, queued=len(self._queue), tenant=job.tenant
        )
        publish(accepted)
        self._journal_ref.tell(accepted)  # into the job's event stream
        return Admission(job.job_id, state, created=True)

    def _queued(self) -> int:
        """Jobs waiting: in our FIFO, or (a cluster) in the database's queue."""
        return self._claims.store.queue_depth() if self._claims else len(self._queue)

    def cancel(self, job_id: str, reason: str = "cancelled") -> JobState | None:
        """Cancel a job; returns its state after the request (None: unknown job)."""
        if job_id in self._queue:
            self._queue.remove(job_id)
            self._rescued.pop(job_id, None)
            cancelled = JobCancelled(job_id=job_id, reason=reason, was=JobState.QUEUED)
            publish(cancelled)
            try:
                with staged_events(self._journal, [cancelled]):  # with the job's end
                    closed = self._journal.close_job(
                        job_id, JobState.CANCELLED, ErrorCode.CANCELLED, reason
                    )
                if closed is not None:
                    publish(JobCompleted(job_id=job_id, result=closed))
            except StoreUnavailable:  # the journal actor holds it until the store takes it
                self._close(job_id, JobState.CANCELLED, ErrorCode.CANCELLED, reason)
            except ClaimLost:  # another daemon took it meanwhile: the cancel goes to it
                return self.cancel(job_id, reason)
            return JobState.CANCELLED
        slot = self._active.get(job_id)
        if slot is not None:
            cancelled = JobCancelled(job_id=job_id, reason=reason, was=JobState.RUNNING)
            publish(cancelled)
            self._journal_ref.tell(cancelled)  # into the job's event stream
            if slot.ref is None:
                slot.cancel = reason
            else:
                with contextlib.suppress(pykka.ActorDeadError):
                    slot.ref.tell(CancelJob(job_id=job_id, reason=reason))
            return JobState.RUNNING
        if self._claims is not None:  # queued in the database, or held by another daemon
            cancelled = JobCancelled(job_id=job_id, reason=reason, was=JobState.QUEUED)
            with staged_events(self._claims.store, [cancelled]):  # with the job's end
                state, closed = self._claims.store.cancel_anywhere(job_id, reason)
            if closed is not None:
                publish(cancelled)
                publish(JobCompleted(job_id=job_id, result=closed))
            return state
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
            cluster=self._claims.stats_fields() if self._claims is not None else None,
            tenants=self._tenants.stats() if self._tenants is not None else None,
        )

    def reload(self, settings: Settings, registry: PipelineRegistry | None = None) -> None:
        """New settings (and pipelines) for runs that start from now on (and for admission);
        a job keeps the pipeline version it was accepted with."""
        self._settings = settings
        if registry is not None:
            self._registry = self._registry.successor(registry)
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
        ids = list(self._active) + list(self._rescued)  # rescued: claimed, not yet started
        self._suspended.update({j: s.generation for j, s in self._active.items()})
        self._active.clear()
        self._journal_ref.tell(SuspendJobs(job_ids=ids))
        return ids

    # -- runs ------------------------------------------------------------------------

    def _admit(self) -> None:
        if (event := self._ledger.update(len(self._queue))) is not None:
            publish(event)
        if self._claims is not None and not self.drain_event.is_set():
            self._rescue()
        while not self.drain_event.is_set() and not self._ledger.held and self._queue:
            job_id = self._pop_admissible()
            if job_id is None:  # no room, or every job waiting is held by its tenant's budget
                break
            slot = self._rescued.pop(job_id) if job_id in self._rescued else None
            self._load(job_id, slot or Slot(next(self._generations)))
        if self._claims is not None and not self.drain_event.is_set() and not self._ledger.held:
            self._claim(self._settings.active_jobs - len(self._active))

    def _pop_admissible(self) -> str | None:
        """The next job to run (taken off the queue), or None: no room, or all held.

        One tenant (no tenant but ``default`` configured): the oldest, while the window has
        room. Several: the fair choice of :func:`briefd.limits.fair.next_to_admit` among the
        jobs whose tenant is not held by its budget: the tenant with the fewest running per
        weight, its oldest job; past a full window, a tenant with nothing running."""
        window = self._settings.active_jobs
        gate = self._tenants
        if gate is None or not any(t != DEFAULT_TENANT for t in gate.tenants):
            if len(self._active) >= window:
                return None
            if gate is None or not gate.held:
                return self._queue.popleft()
            for i, job_id in enumerate(self._queue):
                if not gate.is_held(job_id):
                    del self._queue[i]
                    return job_id
            return None
        held = gate.held
        waiting = [(i, t) for i, j in enumerate(self._queue) if (t := tenant_of(j)) not in held]
        k = next_to_admit(
            (t for _, t in waiting),
            Counter(tenant_of(j) for j in self._active),
            len(self._active),
            window,
            {n: t.weight for n, t in gate.tenants.items()},
        )
        if k is None:
            return None
        i = waiting[k][0]
        job_id = self._queue[i]
        del self._queue[i]
        return job_id

    # -- a cluster (PostgreSQL): claims instead of a queue of our own ------------------

    def _claim(self, room: int) -> None:
        assert self._claims is not None
        try:
            gate = self._tenants
            held = gate.held if gate is not None else ()
            weights = None  # one tenant: the claim is oldest first, as before tenants
            if gate is not None and any(t != DEFAULT_TENANT for t in gate.tenants):
                weights = {n: t.weight for n, t in gate.tenants.items()}
            if room > 0:
                claims = self._claims.claim(room, held=held, weights=weights)
            elif weights is not None:  # full: a tenant with nothing claimed still gets in
                claims = self._claims.claim_newcomer(held=held, weights=weights)
            else:
                return
        except StoreUnavailable as err:  # not now: /healthz says why; the next tick tries
            logger.debug("root: cannot claim jobs now: {}", err)
            return
        for c in claims:
            if c.job_id in self._active:
                continue  # its own lapsed claim, taken again: the run here goes on
            self._load(c.job_id, self._slot(c))

    def _rescue(self) -> None:
        """Take a dead daemon's jobs at once; they wait here, claimed, at the queue's head."""
        assert self._claims is not None
        try:
            rescued = self._claims.rescue(self._settings.active_jobs - len(self._queue))
        except StoreUnavailable:
            return
        for c in reversed(rescued):
            if c.job_id not in self._active and c.job_id not in self._queue:
                self._rescued[c.job_id] = self._slot(c)
                self._queue.appendleft(c.job_id)

    def _slot(self, claim: Claim) -> Slot:
        slot = Slot(next(self._generations), cancel=claim.cancel)
        if claim.taken_over:
            slot.reason = f"taken over from {claim.previous_owner}, whose lease lapsed"
        return slot

    def _keep_claims(self) -> None:
        """Renew this daemon's claims when due; stop the runs of those lost, act on cancels."""
        if self._claims is None or not self._claims.renew_due():
            return
        try:
            lost = self._claims.renew()
        except StoreUnavailable as err:  # tried again at the next tick
            if not self._renew_failing:
                logger.warning(
                    "root: cannot renew claims ({}); calls in flight finish, no call starts "
                    "for a job once its claim cannot be proven (lease less a margin)",
                    err,
                )
            self._renew_failing = True
            return
        if self._renew_failing:
            logger.info("root: claims renewed again")
            self._renew_failing = False
        for job_id in lost:
            if self._rescued.pop(job_id, None) is not None:
                self._queue.remove(job_id)
            slot = self._active.pop(job_id, None)
            if slot is None:
                continue
            logger.warning("{}: claim lost to another daemon; its run here stops", job_id)
            if slot.ref is not None:  # stopped, not cancelled: the job is not over
                slot.ref.stop(block=False)
        self._cancel_flagged()

    def _cancel_flagged(self) -> None:
        if self._claims is None:
            return
        try:
            flagged = self._claims.cancels()
        except StoreUnavailable:
            return
        for job_id, reason in flagged:
            if job_id in self._active:
                self.cancel(job_id, reason)

    def _forward_stage_event(self, event: Event) -> None:
        """An observer (run in a coordinator's thread): stage endings come to the breaker."""
        if isinstance(event, StageRetrying | StageSucceeded | StageFailed):
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(event)

    def _stage_ended(self, event: StageRetrying | StageSucceeded | StageFailed) -> None:
        if self._breaker is not None:
            slot = self._active.get(event.job_id)
            self._breaker.hear(event, parallel=slot.parallel if slot is not None else True)
