"""The in-process Python API: ``briefd.run`` and ``briefd.Pipeline``.

A :class:`Pipeline` owns one rate limiter and one metrics actor; every job
submitted to it gets its own coordinator, so many jobs share the token cap.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import pykka
from loguru import logger

from briefd.actors import (
    CoordinatorActor,
    MetricsActor,
    MetricsSnapshot,
    RateLimiterActor,
    StageActor,
)
from briefd.actors.rate_limiter import LimiterStats
from briefd.config import ConfigError, PipelineSpec, Settings, load_pipeline
from briefd.jobs import validate_job
from briefd.llm.extract import check_schema
from briefd.local.provider import Provider, open_provider
from briefd.messages import CancelJob, Event, JobResult, JobSpec, StageFellBack, StageSucceeded
from briefd.ops.events import Observer

ASK_TIMEOUT_S = 10.0
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
        self.pipeline = pipeline if pipeline is not None else load_pipeline(self.settings.pipeline)
        for stage in self.pipeline.stages:
            check_schema(stage)
        self._extra_observers = tuple(observers)
        self._stage_cls = stage_actor_cls
        self._provider: Provider | None = None
        self._limiter: pykka.ActorRef[Any] | None = None
        self._metrics: pykka.ActorRef[Any] | None = None
        self._coordinators: dict[str, pykka.ActorRef[Any]] = {}
        self._lock = threading.Lock()

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
        self._limiter = RateLimiterActor.start(
            capacity=self.settings.max_concurrent,
            observers=[self._metrics.tell, *self._extra_observers],
        )
        return self

    def close(self, timeout_s: float = ASK_TIMEOUT_S) -> None:
        """Cancel unfinished jobs, stop the actors and the provider."""
        with self._lock:
            coordinators = list(self._coordinators.values())
            self._coordinators.clear()
        for ref in coordinators:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(CancelJob(job_id="*", reason="pipeline closed"))
        for ref in coordinators:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=timeout_s)
        for shared in (self._limiter, self._metrics):
            if shared is not None:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    shared.stop(block=True, timeout=timeout_s)
        self._limiter = None
        self._metrics = None
        if self._provider is not None:
            self._provider.close()
            self._provider = None

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

        def on_event(event: Event) -> None:
            if streaming and on_document is not None:
                if isinstance(event, StageSucceeded):
                    on_document(event.stage, event.document)
                elif isinstance(event, StageFellBack):
                    pass  # delivered with the result: the fallback value is the job's own

        def on_done(result: JobResult) -> None:
            with self._lock:
                self._coordinators.pop(spec.job_id, None)
            if on_document is not None and not streaming:
                for stage, doc in result.documents.items():
                    if doc is not None:
                        on_document(stage, doc)
            future.set(result)

        with self._lock:
            if spec.job_id in self._coordinators:
                raise ConfigError(f"job {spec.job_id}: already running in this pipeline")
            self._coordinators[spec.job_id] = CoordinatorActor.start(
                job=spec,
                pipeline=self.pipeline,
                settings=self.settings,
                base_url=self._provider.base_url,
                limiter=self._limiter,
                observers=[self._metrics.tell, *self._extra_observers, *observers, on_event],
                on_done=on_done,
                stage_actor_cls=self._stage_cls,
            )
        return future

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a running job; False if it is not running here."""
        with self._lock:
            ref = self._coordinators.get(job_id)
        if ref is None:
            return False
        try:
            ref.tell(CancelJob(job_id=job_id, reason=reason))
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
        """Tokens in use, waiting requests and totals."""
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
    job: JobSpec | dict[str, Any],
    settings: Settings | None = None,
    *,
    on_document: DocumentCallback | None = None,
) -> JobResult:
    """Run one job to the end and return its result (blocking)."""
    with Pipeline(settings) as pipeline:
        future = pipeline.submit(job, on_document=on_document)
        try:
            return future.get(timeout=pipeline.job_timeout_s())
        except pykka.Timeout:
            logger.error("job did not finish within {:.0f}s", pipeline.job_timeout_s())
            raise
