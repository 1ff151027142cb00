"""The coordinator: one per job. Spawns a stage actor per stage and drives the DAG.

A stage starts the moment all of its dependencies have ended, so there is no
barrier between groups: a stage never waits for an unrelated slow stage. A
failed dependency does not cancel its dependents (as in the seed, procurement
still runs when plays fails). With ``parallel = false`` (the rollback) one
stage runs at a time in the pipeline's topological order.

The coordinator never blocks: stage actors report by ``tell``, a stage actor
that died without reporting says so as its thread leaves it
(``StageActorStopped``, from :meth:`briefd.threads.PooledThreadingActor.on_exit`),
a slow periodic ``Tick`` is the safety net for one that could not, and the
result leaves through ``on_done`` and the observers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka
from loguru import logger

from briefd import deadlines, worktime
from briefd.actors.rate_limiter import LimiterRef
from briefd.actors.stage import StageActor
from briefd.config import PipelineSpec, Settings
from briefd.costs import PriceTable, load_prices, stage_cost
from briefd.costs.budget import job_budget, refuse_stage
from briefd.jobs import schema_sources, stage_contract
from briefd.limits.order import downstream_graph
from briefd.llm.abort import CallAbort
from briefd.llm.routing import Routing
from briefd.messages import (
    CancelJob,
    ErrorCode,
    Event,
    JobCompleted,
    JobResult,
    JobSpec,
    JobStarted,
    JobStatus,
    LatencyMeasured,
    PipelineError,
    ProgressChanged,
    StageActorStopped,
    StageFailed,
    StageFailedOver,
    StageFellBack,
    StageHedged,
    StageProgress,
    StageRetrying,
    StageStarted,
    StageState,
    StageSucceeded,
    StartStage,
    Tick,
)
from briefd.ops.events import Observer, publish
from briefd.pipelines.inputs import Planned, StageInputs
from briefd.progress import StageRecord, job_metrics, job_status, progress
from briefd.threads import PooledThreadingActor
from briefd.timers import Timers

HEALTH_PERIOD_S = 5.0
"""The safety net's period: a dead stage actor normally says so (``StageActorStopped``).
Every coordinator ticking twice a second cost 6 % of briefd's CPU at 100 jobs, K=2."""
_TERMINAL = (StageState.COMPLETE, StageState.FAILED)

AnyRef = pykka.ActorRef[Any]


class CoordinatorActor(PooledThreadingActor):
    """Runs one job to a ``JobCompleted``."""

    def __init__(
        self,
        *,
        job: JobSpec,
        pipeline: PipelineSpec,
        settings: Settings,
        base_url: str,
        limiter: LimiterRef,
        observers: Sequence[Observer] = (),
        on_done: Callable[[JobResult], None] | None = None,
        stage_actor_cls: type[StageActor] = StageActor,
        done_stages: dict[str, Any] | None = None,
        failed_stages: dict[str, PipelineError] | None = None,
        prices: PriceTable | None = None,
        crash_is_resumed: bool = False,
        end_logged_by_owner: bool = False,
        admitted_at: float | None = None,
        routing: Routing | None = None,
        rendered: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.job = job
        # Each stage's prompt: the job's or the pipeline's, rendered from upstream documents
        # at the stage's start (a resumed run gets those already rendered back).
        self._inputs = StageInputs(job, pipeline, rendered)
        # When the job was submitted (Unix time), not when this run started: the limiter
        # serves older jobs first, so a job resumed after a restart keeps its place.
        self._admitted_at = time.time() if admitted_at is None else admitted_at
        # The job's deadline counts from that submission too (a resumed job keeps it).
        self._deadline_at = deadlines.deadline_at(job, settings, self._admitted_at)
        # The cost ledger: prices read once (a bad BRIEFD_PRICES fails the start, named).
        self._prices = prices if prices is not None else load_prices(settings.prices)
        # Where each stage's calls go (the routes of its model alias), and which
        # endpoint:model answered: the cost is the served model's, the embedded one's 0.
        self._routing = routing if routing is not None else Routing.for_url(settings, base_url)
        self._models = {s.name: self._stage_model(s.name, s.model) for s in pipeline.stages}
        self._served: dict[str, str] = {}
        self._streamed: dict[str, float] = {}  # running stages' StageProgress fractions
        self._percent_told = 0.0
        self._budget = job_budget(job, settings)
        self._pipeline = pipeline
        self._settings = settings
        self._base_url = base_url
        self._limiter = limiter
        self._observers = tuple(observers)
        self._on_done = on_done
        # The daemon resumes a run whose coordinator crashed (JobRestarted), so that run's
        # end is not the job's: no JobCompleted, or the log would hold two for one job.
        self._crash_is_resumed = crash_is_resumed
        # The daemon logs JobCompleted once the journal has committed the end (a crash in
        # between would otherwise leave a logged end the next run logs again).
        self._end_logged_by_owner = end_logged_by_owner
        self._stage_cls = stage_actor_cls
        self._records = {name: StageRecord() for name in pipeline.names}
        self._documents: dict[str, Any] = dict.fromkeys(pipeline.names)
        self._errors: list[PipelineError] = []
        self._fallbacks: list[str] = []
        self._stages: dict[str, AnyRef] = {}
        self._aborts = {name: CallAbort() for name in pipeline.names}
        self._told: set[str] = set()
        self._seen_dead: set[str] = set()
        self._timers = Timers()
        self._started = time.monotonic()
        self._finished = False
        # Stages whose outcome a journal already holds (daemon resume) are final: a
        # document is not bought twice, and a stage that failed after its retries is
        # not called again (a crash must change neither the bill nor the outcome).
        for name, document in (done_stages or {}).items():
            if name in self._records:
                self._records[name].state = StageState.COMPLETE
                self._documents[name] = document
                self._told.add(name)
        for name, error in (failed_stages or {}).items():
            if name in self._records and name not in self._told:
                self._records[name].state = StageState.FAILED
                self._errors.append(error)
                if self._inputs.falls_back(name, error):  # as the run that failed it did
                    self._fallback(name)
                self._told.add(name)

    # -- pykka hooks ---------------------------------------------------------

    def on_start(self) -> None:
        # An exception out of on_start kills the actor without on_failure or on_stop:
        # the job would never end. Catch it here and end the job as a crashed run.
        try:
            self._begin()
        except Exception as err:
            logger.opt(exception=err).error("{} coordinator failed to start", self.job.job_id)
            self._crash(f"coordinator failed to start: {type(err).__name__}: {err}")

    def _begin(self) -> None:
        self._publish(
            JobStarted(
                job_id=self.job.job_id,
                stages=list(self._pipeline.names),
                parallel=self._settings.parallel,
                max_concurrent=self._settings.max_concurrent,
            )
        )
        self._timers.every(self.actor_ref, HEALTH_PERIOD_S, Tick())
        # One stage actor per document type, spawned up front so that starting a
        # stage later is a single tell, not a thread start on the critical path.
        for name in self._pipeline.names:
            if name not in self._told:
                try:
                    self._stages[name] = self._spawn(name)
                except Exception as err:  # that stage cannot run; the others can
                    logger.opt(exception=err).error("{} {}: no stage actor", self.job.job_id, name)
                    self._told.add(name)
                    self._crashed_stage(name, f"stage actor did not start: {err!r}")
        self._advance()

    def on_stop(self) -> None:
        self._cleanup()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        name = exception_type.__name__ if exception_type else "?"
        self._crash(f"coordinator crashed: {name}")
        self._cleanup()  # pykka calls on_failure instead of on_stop

    def _cleanup(self) -> None:
        self._timers.close()
        for ref in self._stages.values():
            ref.stop(block=False)

    def _crash(self, message: str) -> None:
        """End the job as a crashed run (stage ``*``): the daemon resumes it, Pipeline fails it."""
        if self._finished:
            return
        self._errors.append(
            PipelineError(
                stage="*",
                code=ErrorCode.CRASHED,
                message=message,
                hint="a bug in briefd; see the log for the traceback",
            )
        )
        self._finish(JobStatus.FAILED)

    def on_receive(self, message: Any) -> Any:
        match message:
            case StageStarted(stage=stage, attempt=attempt) if self._active(stage):
                rec = self._records[stage]
                rec.attempts = attempt
                self._publish(message)
                if rec.state is not StageState.RUNNING:
                    rec.state = StageState.RUNNING
                    self._progress(stage)
            case StageRetrying(stage=stage) if self._active(stage):
                self._streamed.pop(stage, None)  # the next attempt streams from nothing
                self._publish(message)
            case StageHedged(stage=stage) if self._active(stage):
                self._publish(message)
            case StageProgress(stage=stage) if self._active(stage):
                self._streamed[stage] = message.fraction
                self._publish(message)
                if progress(self._pipeline, self._records, self._streamed).percent >= (
                    self._percent_told + 1.0  # a point or more: not one per chunk report
                ):
                    self._progress(stage)
            case StageFailedOver(stage=stage) if self._active(stage):
                self._served.pop(stage, None)
                self._publish(message)
            case StageSucceeded(stage=stage) if self._active(stage):
                if message.served_by:
                    self._served[stage] = message.served_by
                self._end(stage, StageState.COMPLETE, message.attempts, message)
                self._documents[stage] = message.document
                self._publish(message)
                self._progress(stage)
                self._advance()
            case StageFailed(stage=stage) if self._active(stage):
                self._stage_failed(message)
                self._advance()
            case StageActorStopped(stage=stage):
                if stage in self._told and self._active(stage):
                    self._crashed_stage(stage, "stage actor died without reporting")
                    self._advance()
            case CancelJob(reason=reason):
                self._cancel(reason)
            case Tick():
                self._check_health()
            case StageStarted() | StageRetrying() | StageSucceeded() | StageFailed():
                pass  # a late report from a stage already ended (cancelled or crashed)
            case StageFailedOver() | StageProgress() | StageHedged():
                pass  # a late report from a stage already ended (cancelled or crashed)
            case _:
                logger.warning("{} coordinator: unexpected {!r}", self.job.job_id, message)
        return None

    # -- the DAG -------------------------------------------------------------

    def _active(self, stage: str) -> bool:
        rec = self._records.get(stage)
        return not self._finished and rec is not None and rec.state not in _TERMINAL

    def _advance(self) -> None:
        if self._finished:
            return
        if all(r.state in _TERMINAL for r in self._records.values()):
            status = job_status(self._documents, [e.stage for e in self._errors], self._fallbacks)
            self._finish(status)
            return
        in_flight = [n for n in self._told if self._records[n].state not in _TERMINAL]
        for name in self._pipeline.order:
            if name in self._told:
                continue
            deps = self._pipeline.by_name[name].depends_on
            if not all(self._records[d].state in _TERMINAL for d in deps):
                continue
            if not self._settings.parallel and in_flight:
                return
            planned = self._plan(name)
            if planned is None:  # ended without a call: its upstream failed
                self._advance()
                return
            refused = self._past_deadline(name) or self._over_budget(name)
            if refused is not None:  # never called: no token, no HTTP
                self._told.add(name)
                self._stage_failed(refused)
                self._advance()  # its dependents may start now, or the job is over
                return
            self._start_stage(name)
            in_flight.append(name)

    def _stage_model(self, name: str, declared: str | None) -> str | None:
        """The model alias a stage calls: the job's ``models``, else the pipeline's, else
        the default (``BRIEFD_MODEL``)."""
        chosen: str | None = self.job.models.get(name) if self.job.models else None
        return chosen or declared

    def _priced_as(self, name: str) -> tuple[str, bool]:
        """The model a stage's usage is priced at (the served one once known, else its
        first route's) and whether that endpoint is the embedded model (free)."""
        served = self._served.get(name)
        if served:
            endpoint, _, model = served.partition(":")
        else:
            route = self._routing.routes(self._models[name])[0]
            endpoint, model = route.endpoint, route.model
        spec = self._routing.endpoints.get(endpoint)
        return model, spec is not None and spec.kind == "embedded"

    def _costs(self) -> dict[str, float]:
        """Per stage, what its reported usage cost so far."""
        costs = {}
        for name, rec in self._records.items():
            model, local = self._priced_as(name)
            costs[name] = stage_cost(rec.usage, model, self._prices, local=local)
        return costs

    def _over_budget(self, name: str) -> StageFailed | None:
        """A ``BUDGET_EXCEEDED`` failure if ``name``'s worst case would pass the job's budget."""
        if self._budget.unlimited:
            return None
        spec = self._pipeline.by_name[name]
        model, local = self._priced_as(name)
        error = refuse_stage(
            self._budget,
            stage=name,
            prompt_chars=len(self._inputs.prompt(name)) + len(spec.system or ""),
            max_tokens=spec.max_tokens,
            price=None if local else self._prices.price(model),
            spent_usd=sum(self._costs().values()),
            spent_tokens=sum(
                r.usage.prompt_tokens + r.usage.completion_tokens for r in self._records.values()
            ),
        )
        if error is None:
            return None
        return StageFailed(job_id=self.job.job_id, stage=name, error=error)

    def _past_deadline(self, name: str) -> StageFailed | None:
        """A ``DEADLINE_EXCEEDED`` failure if the job's deadline passed before ``name`` started."""
        if not deadlines.passed(self._deadline_at):
            return None
        assert self._deadline_at is not None
        error = deadlines.deadline_error(
            name, at=self._deadline_at, admitted_at=self._admitted_at, what="it had not started"
        )
        return StageFailed(job_id=self.job.job_id, stage=name, error=error)

    def _start_stage(self, name: str) -> None:
        self._told.add(name)
        self._records[name].started_at = time.monotonic()
        try:
            prompt = self._inputs.rendered.get(name)
            self._stages[name].tell(StartStage(job_id=self.job.job_id, stage=name, prompt=prompt))
        except pykka.ActorDeadError:  # it died before its turn (say, in its on_start)
            self._crashed_stage(name, "stage actor died before it started")

    def _spawn(self, name: str) -> AnyRef:
        return self._stage_cls.start(
            job_id=self.job.job_id,
            spec=stage_contract(self._pipeline.by_name[name], self.job)[0],
            prompt=self._inputs.raw(name),
            settings=self._settings,
            base_url=self._base_url,
            limiter=self._limiter,
            coordinator=self.actor_ref,
            routing=self._routing,
            model=self._models[name],
            priority=self._pipeline.remaining_path[name],
            abort=self._aborts[name],
            admitted_at=self._admitted_at,
            job_priority=self.job.priority,
            downstream=downstream_graph(
                {s.name: s.depends_on for s in self._pipeline.stages}, name
            ),
            deadline_at=self._deadline_at,
            tenant=self.job.tenant,
        )

    def _end(
        self, stage: str, state: StageState, attempts: int, event: StageSucceeded | StageFailed
    ) -> None:
        rec = self._records[stage]
        rec.state = state
        rec.ended_at = time.monotonic()
        rec.attempts = max(rec.attempts, attempts)
        rec.usage = event.usage
        rec.queued_ms, rec.call_ms = event.queued_ms, event.call_ms
        rec.ttft_ms, rec.server_ms = event.ttft_ms, event.server_ms
        rec.server_work = event.server_work

    def _plan(self, name: str) -> Planned | None:
        """Render ``name``'s prompt (journaled), or end it per on_upstream_failure (None)."""
        planned = self._inputs.plan(name, self._documents, self._records)
        if planned.failed is not None:
            self._told.add(name)
            self._stage_failed(planned.failed, fallback=planned.fallback)
            return None
        if planned.rendered is not None:
            self._publish(planned.rendered)
        return planned

    def _stage_failed(self, failed: StageFailed, *, fallback: bool = True) -> None:
        stage = failed.stage
        self._end(stage, StageState.FAILED, failed.attempts, failed)
        self._errors.append(failed.error)
        self._publish(failed)
        source = self._fallback(stage) if fallback else None
        if source is not None:
            self._publish(StageFellBack(job_id=self.job.job_id, stage=stage, source=source))
        self._progress(stage)

    def _fallback(self, stage: str) -> str | None:
        """Fill a failed stage's document from the job's fallback field; the field's name."""
        spec = self._pipeline.by_name[stage]
        fallback = getattr(self.job, spec.fallback, None) if spec.fallback else None
        if not spec.fallback or fallback is None:
            return None
        self._documents[stage] = fallback
        self._fallbacks.append(stage)
        return spec.fallback

    def _check_health(self) -> None:
        # A stage seen dead is failed at the next Tick, not this one: what it told us
        # before it died (its own StageFailed, say) may be queued behind this Tick.
        dead = {
            name
            for name, ref in self._stages.items()
            if name in self._told and self._active(name) and not ref.is_alive()
        }
        for name in sorted(dead & self._seen_dead):
            if self._active(name):
                self._crashed_stage(name, "stage actor died without reporting")
        self._seen_dead = dead
        self._advance()

    def _crashed_stage(self, name: str, message: str) -> None:
        self._stage_failed(
            StageFailed(
                job_id=self.job.job_id,
                stage=name,
                error=PipelineError(
                    stage=name,
                    code=ErrorCode.CRASHED,
                    message=message,
                    hint="a bug in briefd; see the log for the traceback",
                ),
            )
        )

    def _cancel(self, reason: str) -> None:
        if self._finished:
            return
        for name, rec in self._records.items():
            if rec.state in _TERMINAL:
                continue
            self._aborts[name].abort()  # cut its call short: the token comes back now
            rec.state = StageState.FAILED
            if rec.started_at is not None:
                rec.ended_at = time.monotonic()
            self._errors.append(
                PipelineError(stage=name, code=ErrorCode.CANCELLED, message=reason, hint="")
            )
        self._finish(JobStatus.CANCELLED)

    def _finish(self, status: JobStatus) -> None:
        self._finished = True
        metrics = job_metrics(
            self._pipeline, self._records, self._started, time.monotonic(), worktime.BOOK.rates
        )
        costs = self._costs()
        result = JobResult(
            job_id=self.job.job_id,
            status=status,
            documents=self._documents,
            errors=self._errors,
            fallbacks=self._fallbacks,
            progress=progress(self._pipeline, self._records, self._streamed),
            metrics=metrics,
            parallel=self._settings.parallel,
            checked_against=schema_sources(self._pipeline, self.job),
            model=self._settings.model,
            cost_usd=costs,
            total_cost_usd=round(sum(costs.values()), 6),
            served_by=dict(self._served),
            pipeline=self._pipeline.ref,
        )
        self._publish(LatencyMeasured(job_id=self.job.job_id, metrics=metrics))
        crashed = any(e.stage == "*" and e.code is ErrorCode.CRASHED for e in self._errors)
        if not (crashed and self._crash_is_resumed):
            done = JobCompleted(job_id=self.job.job_id, result=result)
            if self._end_logged_by_owner:
                for observe in self._observers:
                    observe(done)
            else:
                self._publish(done)
        if self._on_done is not None:
            try:
                self._on_done(result)
            except Exception as err:
                logger.error("{} on_done failed: {}", self.job.job_id, repr(err))
        self.actor_ref.stop(block=False)

    # -- helpers -------------------------------------------------------------

    def _progress(self, stage: str) -> None:
        now = progress(self._pipeline, self._records, self._streamed)
        self._percent_told = now.percent
        self._publish(ProgressChanged(job_id=self.job.job_id, stage=stage, progress=now))

    def _publish(self, event: Event) -> None:
        publish(event, self._observers)
