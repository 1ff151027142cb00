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
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pykka
from loguru import logger

from briefd.actors import CoordinatorActor, MetricsActor, MetricsSnapshot, StageActor
from briefd.actors.rate_limiter import LimiterStats, LimiterSupervisor
from briefd.config import ConfigError, PipelineSpec, Settings, load_pipeline
from briefd.jobs import load_job_file, validate_job
from briefd.llm.extract import check_schema
from briefd.local.provider import Provider, open_provider
from briefd.messages import (
    CancelJob,
    ErrorCode,
    Event,
    JobCompleted,
    JobResult,
    JobSpec,
    JobStatus,
    PipelineError,
    StageFailed,
    StageFellBack,
    StageStarted,
    StageState,
    StageSucceeded,
)
from briefd.ops.events import Observer, publish
from briefd.progress import StageRecord, job_metrics, progress

ASK_TIMEOUT_S = 10.0
WATCH_PERIOD_S = 0.25
DocumentCallback = Callable[[str, Any], None]


@dataclass
class _Run:
    """One submitted job as the pipeline sees it: enough to end it if its coordinator dies."""

    job: JobSpec
    ref: pykka.ActorRef[Any] | None = None
    started: float = field(default_factory=time.monotonic)
    records: dict[str, StageRecord] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)
    errors: list[PipelineError] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    observers: tuple[Observer, ...] = ()
    deliver: Callable[[JobResult], None] = lambda result: None  # once settled
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
        self.pipeline = pipeline if pipeline is not None else load_pipeline(self.settings.pipeline)
        for stage in self.pipeline.stages:
            check_schema(stage)
        self._extra_observers = tuple(observers)
        self._stage_cls = stage_actor_cls
        self._provider: Provider | None = None
        self._limiter: LimiterSupervisor | None = None
        self._metrics: pykka.ActorRef[Any] | None = None
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._watcher: threading.Thread | None = None

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
        self._provider = open_provider(self.settings)
        self.settings = self.settings.model_copy(
            update={
                "model": self._provider.model,
                "response_format": self._provider.response_format,
            }
        )
        self._metrics = MetricsActor.start()
        self._limiter = LimiterSupervisor(
            capacity=self.settings.max_concurrent,
            observers=[self._metrics.tell, *self._extra_observers],
        )
        self._closing.clear()
        self._watcher = threading.Thread(target=self._watch, name="briefd-watch", daemon=True)
        self._watcher.start()
        return self

    def close(self, timeout_s: float = ASK_TIMEOUT_S) -> None:
        """Cancel unfinished jobs, stop the actors and the provider."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(timeout_s)
            self._watcher = None
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    run.ref.tell(CancelJob(job_id="*", reason="pipeline closed"))
        for run in runs:
            if run.ref is not None:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    run.ref.stop(block=True, timeout=timeout_s)
        for run in runs:  # a coordinator that was already dead: its future still resolves
            self._died(run)
        if self._limiter is not None:
            self._limiter.stop(timeout_s)
        if self._metrics is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self._metrics.stop(block=True, timeout=timeout_s)
        self._limiter = None
        self._metrics = None
        if self._provider is not None:
            self._provider.close()
            self._provider = None

    def _watch(self) -> None:
        """The supervision pykka lacks: restart the limiter, end jobs whose coordinator died."""
        while not self._closing.wait(WATCH_PERIOD_S):
            try:
                if self._limiter is not None:
                    self._limiter.check()
                with self._lock:
                    runs = list(self._runs.values())
                for run in runs:
                    if run.ref is None or run.ref.is_alive():
                        continue
                    if run.seen_dead:  # dead for a whole period: its on_done is not coming
                        self._died(run)
                    run.seen_dead = True
            except Exception as err:  # the watch must outlive whatever it watches
                logger.opt(exception=err).error("pipeline watch: {!r}", err)

    def _died(self, run: _Run) -> None:
        if run.settled or not run.settle():
            return
        logger.error("{}: its coordinator died without reporting; the job failed", run.job.job_id)
        result = run.died(self.pipeline, self.settings.parallel)
        publish(JobCompleted(job_id=result.job_id, result=result), run.observers)
        run.deliver(result)

    # -- jobs ----------------------------------------------------------------

    def submit(
        self,
        job: JobSpec | dict[str, Any],
        *,
        on_document: DocumentCallback | None = None,
        observers: Sequence[Observer] = (),
    ) -> pykka.Future[JobResult]:
        """Start a job; the future resolves to its :class:`JobResult`.

        ``on_document(stage, document)`` is called as each stage's document is
        ready when ``buffer_results`` is false (else once per stage at the end).
        Raises :class:`ConfigError` for bad job input.
        """
        if self._limiter is None or self._provider is None or self._metrics is None:
            raise RuntimeError("Pipeline is not started: use it as a context manager")
        spec = validate_job(job, self.pipeline)
        future: pykka.Future[JobResult] = pykka.ThreadingFuture()
        streaming = on_document is not None and not self.settings.buffer_results
        run = _Run(job=spec)

        def on_event(event: Event) -> None:
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
            if on_document is not None and not streaming:
                for stage, doc in result.documents.items():
                    if doc is not None:
                        on_document(stage, doc)
            future.set(result)

        def on_done(result: JobResult) -> None:
            if run.settle():  # else the watch ended it first
                deliver(result)

        run.deliver = deliver
        run.observers = (self._metrics.tell, *self._extra_observers, *observers)
        with self._lock:
            if spec.job_id in self._runs:
                raise ConfigError(f"job {spec.job_id}: already running in this pipeline")
            self._runs[spec.job_id] = run
            run.ref = CoordinatorActor.start(
                job=spec,
                pipeline=self.pipeline,
                settings=self.settings,
                base_url=self._provider.base_url,
                limiter=self._limiter,
                observers=[*run.observers, on_event],
                on_done=on_done,
                stage_actor_cls=self._stage_cls,
            )
        return future

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a running job; False if it is not running here."""
        with self._lock:
            run = self._runs.get(job_id)
        if run is None or run.ref is None:
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
        return per_stage * len(self.pipeline.stages) + 30.0


def run(
    job: JobSpec | dict[str, Any] | str | Path,
    settings: Settings | None = None,
    *,
    on_document: DocumentCallback | None = None,
) -> JobResult:
    """Run one job to the end and return its result (blocking).

    ``job`` is a :class:`JobSpec`, its dict, or a job JSON file's path, as
    :meth:`briefd.Client.submit` takes. Bad input raises :class:`ConfigError`
    naming the field or the file, before the provider or any actor starts.
    """
    pipeline = Pipeline(settings)  # reads the pipeline; nothing starts before ``with``
    if isinstance(job, str | Path):
        spec = load_job_file(job, pipeline.pipeline)
    else:
        spec = validate_job(job, pipeline.pipeline)
    with pipeline:
        future = pipeline.submit(spec, on_document=on_document)
        try:
            return future.get(timeout=pipeline.job_timeout_s())
        except pykka.Timeout:
            logger.error("job did not finish within {:.0f}s", pipeline.job_timeout_s())
            raise
