"""The in-process Python API: ``briefd.run`` and ``briefd.Pipeline``.

A :class:`Pipeline` owns one rate limiter and one metrics actor; every job
submitted to it gets its own coordinator, so many jobs share the token cap.

pykka has no supervision, so the pipeline watches its actors from a thread of
its own (every :data:`WATCH_PERIOD_S`): a dead rate limiter is restarted with
its leases (:class:`~briefd.actors.rate_limiter.LimiterSupervisor`), and a
coordinator that died without reporting (an exception in its ``on_start``, an
actor system stopped by a ``SystemExit``) ends its job ``failed``, with the
documents its stages had already delivered. Every submitted job's future
resolves exactly once.

Admission is the daemon's: at most ``max_active_jobs`` jobs have a coordinator
(about five threads each); the rest wait as data (the spec and its future) in a
FIFO and start as running jobs end. Without it, 1,000 submitted jobs made 6,000
threads that only waited for the two tokens, and ``close()`` took 37 s.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pykka
from loguru import logger

from briefd.actors import CoordinatorActor, MetricsActor, MetricsSnapshot, StageActor
from briefd.actors.limiter_supervisor import LimiterSupervisor
from briefd.actors.metrics import metrics_observer
from briefd.actors.rate_limiter import LimiterStats
from briefd.config import ConfigError, PipelineSpec, Settings
from briefd.costs import load_prices
from briefd.dispatch import DispatchStats, EventDispatcher
from briefd.events import EventCallback
from briefd.jobs import load_job_file, validate_job
from briefd.limits.fair import next_to_admit
from briefd.llm.extract import check_schema
from briefd.local.provider import Provider, open_provider
from briefd.messages import (
    CancelJob,
    Event,
    JobCompleted,
    JobResult,
    JobSpec,
    StageFellBack,
    StageSucceeded,
)
from briefd.ops.events import Observer, publish
from briefd.pipelines.registry import PipelineRegistry
from briefd.runs import JobRun
from briefd.telemetry import Telemetry, open_telemetry

ASK_TIMEOUT_S = 10.0
WATCH_PERIOD_S = 0.25
DocumentCallback = Callable[[str, Any], None]


class Pipeline:
    """Runs jobs on a shared actor system until closed. Use it as a context manager.

    >>> with Pipeline(Settings(base_url="http://127.0.0.1:8000/v1")) as p:   # doctest: +SKIP
    ...     result = p.submit(job).get(timeout=120)
    """

    def __init__(
        self,
        settings: Settings | None = None,
        pipeline: PipelineSpec | None = None,
        observers: Sequence[Observer] = (),
        *,
        stage_actor_cls: type[StageActor] = StageActor,
    ) -> None:
        self.settings = settings if settings is not None else Settings.load()
        # The pipelines a job may name (its "pipeline"): the one given, else the built-in,
        # BRIEFD_PIPELINE and the folder BRIEFD_PIPELINES. ``pipeline`` is the default.
        self.registry = (
            PipelineRegistry.single(pipeline)
            if pipeline is not None
            else PipelineRegistry.load(self.settings)
        )
        self.pipeline = self.registry.default_spec
        for stage in self.registry.stages:
            check_schema(stage)
        load_prices(self.settings.prices)  # a bad BRIEFD_PRICES is bad input now, not a crash
        self._extra_observers = tuple(observers)
        self._stage_cls = stage_actor_cls
        self._provider: Provider | None = None
        self._limiter: LimiterSupervisor | None = None
        self._metrics: pykka.ActorRef[Any] | None = None
        self._runs: dict[str, JobRun] = {}  # every job not yet settled: queued and running
        self._active: dict[str, JobRun] = {}  # the ones with a coordinator
        self._queue: deque[JobRun] = deque()  # FIFO; a run settled while queued is skipped
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None
        self.telemetry: Telemetry | None = None  # OpenTelemetry, when OTEL_* asks for it
        self._dispatch = EventDispatcher()  # on_event callbacks: their own thread

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> Pipeline:
        """Start the provider (the local model when no base URL is set) and the shared actors."""
        if self._limiter is not None:
            return self
        self._provider = open_provider(self.settings, self.registry.stages)
        self.settings = self.settings.model_copy(
            update={
                "model": self._provider.model,
                "response_format": self._provider.response_format,
            }
        )
        self._metrics = MetricsActor.start()
        self.telemetry = open_telemetry(self._provider.routing, self.pipeline, self._prompts)
        breaker_observers = [metrics_observer(self._metrics), *self._extra_observers]
        self._provider.routing.breakers.on_change = lambda e: publish(e, breaker_observers)
        self._limiter = LimiterSupervisor(
            capacity=self.settings.max_concurrent,
            observers=[metrics_observer(self._metrics), *self._extra_observers],
            adaptive=self.settings.adaptive,
            rpm=self.settings.rpm,
            tpm=self.settings.tpm,
            endpoints=self._provider.routing.limits(),
        )
        self._closing.clear()
        self._dispatch = EventDispatcher()
        self._watcher = threading.Thread(target=self._watch, name="briefd-watch", daemon=True)
        self._watcher.start()
        return self

    def close(self, timeout_s: float = ASK_TIMEOUT_S) -> None:
        """Cancel unfinished jobs (queued ones never start), stop the actors and the provider."""
        with self._lock:  # under the lock: no submit or admission slips in after this
            self._closing.set()
            queued = [run for run in self._queue if run.settle()]  # the ones not cancelled
            self._queue.clear()
            runs = list(self._active.values())
        if self._watcher is not None:
            self._watcher.join(timeout_s)
            self._watcher = None
        for run in queued:
            self._never_ran(run, "pipeline closed")
        for run in runs:
            if run.ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    run.ref.tell(CancelJob(job_id="*", reason="pipeline closed"))
        deadline = time.monotonic() + timeout_s
        for run in runs:  # they wind down together: the whole wait is the slowest one's
            if run.ref is not None:
                left = max(deadline - time.monotonic(), 0.0)
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    run.ref.stop(block=True, timeout=left)
        for run in runs:  # a coordinator that was already dead: its future still resolves
            self._died(run)
        if self._limiter is not None:
            self._limiter.stop(timeout_s)
        if self._metrics is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self._metrics.stop(block=True, timeout=timeout_s)
        self._limiter = None
        self._metrics = None
        if self.telemetry is not None:  # after every job's end: their traces go out now
            self.telemetry.shutdown()
            self.telemetry = None
        if self._provider is not None:
            self._provider.close()
            self._provider = None
        self._dispatch.close(timeout_s)  # every job has ended: its callbacks get the rest

    def _prompts(self, job_id: str) -> dict[str, str] | None:
        run = self._runs.get(job_id)
        return run.job.prompts if run is not None else None

    def _watch(self) -> None:
        """The supervision pykka lacks: restart the limiter, end jobs whose coordinator died."""
        while not self._closing.wait(WATCH_PERIOD_S):
            try:
                if self._limiter is not None:
                    self._limiter.check()
                with self._lock:
                    runs = list(self._active.values())
                for run in runs:
                    if run.ref is None or run.ref.is_alive():
                        continue
                    if run.seen_dead:  # dead for a whole period: its on_done is not coming
                        self._died(run)
                    run.seen_dead = True
            except Exception as err:  # the watch must outlive whatever it watches
                logger.opt(exception=err).error("pipeline watch: {!r}", err)

    def _died(self, run: JobRun) -> None:
        if run.settled or not run.settle():
            return
        logger.error("{}: its coordinator died without reporting; the job failed", run.job.job_id)
        result = run.died(run.pipeline or self.pipeline, self.settings.parallel)
        publish(JobCompleted(job_id=result.job_id, result=result), run.observers)
        run.deliver(result)

    def _never_ran(self, run: JobRun, reason: str) -> None:
        """End a queued job, already settled by the caller, as cancelled: no call was made."""
        result = run.never_ran(run.pipeline or self.pipeline, reason)
        publish(JobCompleted(job_id=result.job_id, result=result), run.observers)
        run.deliver(result)

    def _admit(self) -> None:
        """Start queued jobs, oldest first, while the active window has room (and a tenant's
        first job past it: :func:`briefd.limits.fair.next_to_admit`)."""
        failed: list[tuple[JobRun, Exception]] = []
        with self._lock:
            while self._queue and not self._closing.is_set():
                busy = Counter(r.job.tenant for r in self._active.values())
                i = next_to_admit(  # the oldest; past a full window, a tenant's first job
                    (r.job.tenant for r in self._queue),
                    busy,
                    len(self._active),
                    self.settings.active_jobs,
                )
                if i is None:
                    break
                run = self._queue[i]
                del self._queue[i]
                if run.settled:  # cancelled while it waited
                    continue
                run.admitted = True
                run.started = time.monotonic()
                self._active[run.job.job_id] = run
                try:
                    run.ref = run.start()
                except Exception as err:  # no thread to be had, say: the job fails, not submit
                    failed.append((run, err))
        for lost, why in failed:
            logger.opt(exception=why).error("{}: its coordinator did not start", lost.job.job_id)
            self._died(lost)

    # -- jobs ----------------------------------------------------------------

    def submit(
        self,
        job: JobSpec | dict[str, Any],
        *,
        on_event: EventCallback | None = None,
        on_document: DocumentCallback | None = None,
        observers: Sequence[Observer] = (),
    ) -> pykka.Future[JobResult]:
        """Queue a job and return at once; the future resolves to its :class:`JobResult`.

        The job starts when fewer than ``max_active_jobs`` jobs of this pipeline run. It
        runs the pipeline it names (``"pipeline"``: one of :attr:`registry`), else the default.

        ``on_event(event)`` gets each of the job's events (:mod:`briefd.events`), in
        order, on this pipeline's dispatcher thread ``briefd-events``, never an actor's:
        a slow or raising callback cannot stall or break the job (a slow one loses
        merged progress or dropped events, never :class:`~briefd.events.JobCompleted`;
        see :mod:`briefd.dispatch`). Its last events may arrive just after the future
        resolves; :meth:`close` waits for them.

        ``on_document(stage, document)`` is called as each stage's document is
        ready when ``buffer_results`` is false (else once per stage at the end), and
        ``observers`` with every event: both on the actors' threads (a stage's, the
        coordinator's), in the middle of their work, so they must be quick and
        must not block; their exceptions are logged, not raised.
        Raises :class:`ConfigError` for bad job input.
        """
        if self._limiter is None or self._provider is None or self._metrics is None:
            raise RuntimeError("Pipeline is not started: use it as a context manager")
        pipeline = self.registry.for_job(job)
        spec = validate_job(job, pipeline, routing=self._provider.routing)
        future: pykka.Future[JobResult] = pykka.ThreadingFuture()
        streaming = on_document is not None and not self.settings.buffer_results
        run = JobRun(job=spec, pipeline=pipeline)

        def keep(event: Event) -> None:
            run.observe(event)
            if streaming and on_document is not None:
                if isinstance(event, StageSucceeded):
                    on_document(event.stage, event.document)
                elif isinstance(event, StageFellBack):
                    pass  # delivered with the result: the fallback value is the job's own

        def deliver(result: JobResult) -> None:
            with self._lock:
                if self._runs.get(spec.job_id) is run:
                    del self._runs[spec.job_id]
                if self._active.get(spec.job_id) is run:
                    del self._active[spec.job_id]
            self._admit()  # the window has room again: the next queued job starts
            if on_document is not None and not streaming:
                for stage, doc in result.documents.items():
                    if doc is not None:
                        on_document(stage, doc)
            future.set(result)

        def on_done(result: JobResult) -> None:
            if run.settle():  # else the watch ended it first
                deliver(result)

        run.deliver = deliver
        traced = (self.telemetry,) if self.telemetry is not None else ()
        run.observers = (
            metrics_observer(self._metrics),
            *traced,
            *self._extra_observers,
            *observers,
        )
        if on_event is not None:
            run.observers = (*run.observers, self._dispatch.observer(on_event))
        base_url, limiter = self._provider.base_url, self._limiter
        routing = self._provider.routing
        run.start = lambda: CoordinatorActor.start(
            job=spec,
            pipeline=pipeline,
            settings=self.settings,
            base_url=base_url,
            routing=routing,
            limiter=limiter,
            observers=[*run.observers, keep],
            on_done=on_done,
            stage_actor_cls=self._stage_cls,
            admitted_at=run.submitted_at,  # oldest submitted first, however long it queued
        )
        with self._lock:
            if self._closing.is_set():
                raise RuntimeError("Pipeline is closing: no new jobs")
            if spec.job_id in self._runs:
                raise ConfigError(f"job {spec.job_id}: already running in this pipeline")
            self._runs[spec.job_id] = run
            self._queue.append(run)
        self._admit()
        return future

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a queued or running job; False if it is neither here.

        A queued job never starts: its future resolves ``cancelled`` now.
        """
        with self._lock:  # settled under the lock, so that _admit cannot start it meanwhile
            run = self._runs.get(job_id)
            if run is None:
                return False
            queued = not run.admitted and run.settle()
        if queued:
            self._never_ran(run, reason)
            return True
        if run.ref is None:
            return False
        try:
            run.ref.tell(CancelJob(job_id=job_id, reason=reason))
        except pykka.ActorDeadError:
            return False
        return True

    def metrics(self, timeout_s: float = ASK_TIMEOUT_S) -> MetricsSnapshot:
        """Aggregates over every job so far."""
        if self._metrics is None:
            raise RuntimeError("Pipeline is not started")
        snap: MetricsSnapshot = self._metrics.proxy().snapshot().get(timeout=timeout_s)
        return snap

    def event_stats(self) -> DispatchStats:
        """The ``on_event`` dispatcher's figures: delivered, waiting, merged, dropped, failed."""
        return self._dispatch.stats()

    def limiter_stats(self, timeout_s: float = ASK_TIMEOUT_S) -> LimiterStats:
        """Tokens in use, waiting requests and totals (pykka.Timeout after ``timeout_s``)."""
        if self._limiter is None:
            raise RuntimeError("Pipeline is not started")
        stats: LimiterStats = self._limiter.proxy().stats().get(timeout=timeout_s)
        return stats

    def job_timeout_s(self) -> float:
        """An upper bound on one job's duration, from the settings (for blocking waits)."""
        s = self.settings
        per_call = s.timeout_ms / 1000 + s.connect_timeout_ms / 1000
        attempts = (s.max_retries + 1) if s.retry_enabled else 1
        per_stage = attempts * per_call + attempts * max(s.backoff_max_s, s.retry_after_max_s)
        stages = max(len(p.stages) for p in self.registry.pipelines.values())
        return per_stage * stages + 30.0


def run(
    job: JobSpec | dict[str, Any] | str | Path,
    settings: Settings | None = None,
    *,
    on_event: EventCallback | None = None,
    on_document: DocumentCallback | None = None,
) -> JobResult:
    """Run one job to the end and return its result (blocking).

    ``job`` is a :class:`JobSpec`, its dict, or a job JSON file's path, as
    :meth:`briefd.Client.submit` takes; it runs the pipeline it names (``"pipeline"``:
    ``briefing-pack``, BRIEFD_PIPELINE's or one of BRIEFD_PIPELINES), else the default.
    Bad input raises :class:`ConfigError` naming the field or the file, before the
    provider or any actor starts.

    ``on_event(event)`` gets each of the job's events (:mod:`briefd.events`) on the
    pipeline's dispatcher thread ``briefd-events`` (not the caller's, not an
    actor's); ``run`` returns after the callback has had the last one
    (:class:`~briefd.events.JobCompleted`). A slow or raising callback cannot stall
    or break the job: see :meth:`Pipeline.submit`.
    """
    pipeline = Pipeline(settings)  # reads the pipelines; nothing starts before ``with``
    if isinstance(job, str | Path):
        spec = load_job_file(job, pipeline.registry)
    else:
        spec = validate_job(job, pipeline.registry.for_job(job))
    with pipeline:
        future = pipeline.submit(spec, on_event=on_event, on_document=on_document)
        try:
            return future.get(timeout=pipeline.job_timeout_s())
        except pykka.Timeout:
            logger.error("job did not finish within {:.0f}s", pipeline.job_timeout_s())
            raise
