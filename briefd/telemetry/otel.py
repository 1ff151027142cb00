"""briefd's events as OpenTelemetry traces and GenAI metrics, exported over OTLP/HTTP.

One trace per job::

    invoke_workflow {pipeline}          gen_ai.operation.name=invoke_workflow, briefd.job_id
    ├── stage BRIEFING_MD               briefd.stage, briefd.cost_usd, queue/call/backoff ms
    │   ├── chat gpt-4o                 attempt 1: error.type=SERVER_ERROR
    │   └── chat gpt-4o                 attempt 2: gen_ai.usage.*, gen_ai.response.model
    └── stage PLAYS_MD ...

built when the job ends from the events' timestamps (:mod:`briefd.telemetry.record`), and
the GenAI client metrics of each call and the workflow's duration (names and the
``OTEL_SEMCONV_STABILITY_OPT_IN`` modes: :mod:`briefd.telemetry.genai`).

The observer runs on the publishing coordinator's thread, so it only folds the event into
a record (microseconds); a job's end is handed to one worker thread, which builds its
spans and measurements (about 0.6 ms of the SDK's work for a four-stage job, measured by
``bench/bench_otel.py``). The SDK's ``BatchSpanProcessor`` and
``PeriodicExportingMetricReader`` export on their own threads; nothing here waits on the
network except :meth:`OtelObserver.shutdown`.

Message content (the job's prompt, the stage's document) is exported only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``, and then redacted.

Hand-written on top of the SDK rather than ``opentelemetry-util-genai``: its handler
times an invocation with its own clock from start to stop, around a live call, while
briefd reports calls as events after the fact, with their own times.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from queue import SimpleQueue
from typing import Any

from loguru import logger
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

import briefd
from briefd.messages import Event, JobCompleted, JobStatus, StageSucceeded
from briefd.redaction import redact
from briefd.telemetry import genai as g
from briefd.telemetry.instruments import Instruments
from briefd.telemetry.record import Attempt, JobRecord, Recorder, StageRecord

PromptLookup = Callable[[str], Mapping[str, str] | None]
_FOLDED = frozenset(
    {"JobStarted", "JobCompleted", "StageStarted", "StageRetrying", "StageFailedOver"}
    | {"StageSucceeded", "StageFailed", "StageFellBack"}
)
_INSTRUMENTATION = "briefd"
SHUTDOWN_S = 5.0
"""How long closing waits for the collector to take the last export: an unreachable one
would otherwise hold ``Pipeline.close`` (and ``briefd run``'s exit) through the exporters'
retries, 10 s per signal."""


class Endpoint:
    """What a call's span says of its endpoint: the provider and the server."""

    __slots__ = ("provider", "server")

    def __init__(self, kind: str, base_url: str) -> None:
        self.provider = g.provider_name(kind, base_url)
        self.server = g.server_of(base_url)


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _error_type(error: Any) -> str:
    return str(getattr(getattr(error, "code", None), "value", None) or "_OTHER")


class OtelObserver:
    """An observer (``publish``'s callable) that exports jobs as traces and GenAI metrics.

    ``endpoints``: endpoint name -> :class:`Endpoint` ('' is ``default_endpoint``'s);
    ``stage_kinds``: stage -> ``markdown``/``json`` (``gen_ai.output.type``);
    ``prompts(job_id)``: the job's prompts, read only when content capture is on.
    """

    def __init__(
        self,
        *,
        endpoints: Mapping[str, Endpoint],
        default_endpoint: str,
        workflow: str,
        stage_kinds: Mapping[str, str],
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        conventions: g.Conventions,
        prompts: PromptLookup | None = None,
        exporters: Sequence[Any] = (),
    ) -> None:
        self._endpoints = dict(endpoints)
        self._default = default_endpoint
        self._workflow = workflow
        self._kinds = dict(stage_kinds)
        self._tp, self._mp = tracer_provider, meter_provider
        self._exporters = tuple(exporters)  # shut down early to cut a hung last export short
        self.conventions = conventions
        self._prompts = prompts if conventions.capture_content else None
        self._tracer = (
            tracer_provider.get_tracer(_INSTRUMENTATION, briefd.__version__)
            if tracer_provider is not None
            else None
        )
        self._metrics = (
            Instruments(meter_provider.get_meter(_INSTRUMENTATION, briefd.__version__), conventions)
            if meter_provider is not None
            else None
        )
        self.recorder = Recorder()
        self._closed = False
        self._queue: SimpleQueue[Any] = SimpleQueue()  # ended jobs, drain marks, None: stop
        self._worker = threading.Thread(target=self._work, name="briefd-otel", daemon=True)
        self._worker.start()

    # -- the observer ----------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if event.type not in _FOLDED or self._closed:
            return
        prompts = None
        if event.type == "JobStarted" and self._prompts is not None:
            prompts = self._prompts(getattr(event, "job_id", ""))
        done = self.recorder.add(event, prompts)
        if done is not None:
            self._queue.put(done)  # built on the worker: the coordinator goes on at once

    def _work(self) -> None:
        """The worker: each ended job's spans and measurements, in the order jobs ended."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._export(*item)
            except Exception as err:  # one job's telemetry, never the worker
                logger.opt(exception=err).error("OpenTelemetry: {} not exported", item[0].job_id)

    def _drain(self, timeout_s: float) -> bool:
        """Wait until the worker has built every job that ended before this call."""
        if not self._worker.is_alive():
            return True
        reached = threading.Event()
        self._queue.put(reached)
        return reached.wait(timeout_s)

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export what has ended by now: the worker's jobs, the spans, a metrics collection."""
        ok = self._drain(timeout_s)
        ms = int(timeout_s * 1000)
        ok = (self._tp.force_flush(ms) if self._tp is not None else True) and ok
        return (self._mp.force_flush(ms) if self._mp is not None else True) and ok

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Flush and stop the exporters, waiting at most ``timeout_s`` (default
        :data:`SHUTDOWN_S`) for the collector; what it has not taken by then is dropped,
        said in one line. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tp, mp = self._tp, self._mp
        self._tp = self._mp = None

        def stop() -> None:
            self._drain(SHUTDOWN_S)  # the worker builds what it has (the spans' ends) first
            self._queue.put(None)
            if tp is not None:
                tp.shutdown()
            if mp is not None:
                mp.shutdown()

        wait = SHUTDOWN_S if timeout_s is None else timeout_s
        closing = threading.Thread(target=stop, name="briefd-otel-shutdown", daemon=True)
        closing.start()
        closing.join(wait)
        if closing.is_alive():
            for exporter in self._exporters:  # ends their retries: the thread finishes
                exporter.shutdown()
            closing.join(1.0)
            logger.warning(
                "OpenTelemetry: the collector did not take the last export within {:g}s; "
                "what was left is dropped",
                wait,
            )

    # -- one job ---------------------------------------------------------------------------

    def _export(self, job: JobRecord, done: JobCompleted) -> None:
        result = done.result
        name = result.pipeline.partition("@")[0] or self._workflow
        failed = result.status in (JobStatus.FAILED, JobStatus.CANCELLED)
        error = None
        if failed:
            error = _error_type(result.errors[0]) if result.errors else str(result.status)
        if self._metrics is not None:
            attrs = {g.OPERATION: g.INVOKE_WORKFLOW, g.WORKFLOW_NAME: name}
            if error is not None:
                attrs[g.ERROR_TYPE] = error
            self._metrics.workflow.record(max(done.ts - job.start, 0.0), attrs)
        root = None
        if self._tracer is not None:
            root = self._tracer.start_span(
                f"{g.INVOKE_WORKFLOW} {name}",
                context=otel_context.Context(),  # a trace of its own, whatever is current
                kind=SpanKind.INTERNAL,
                start_time=_ns(job.start),
                attributes={
                    g.OPERATION: g.INVOKE_WORKFLOW,
                    g.WORKFLOW_NAME: name,
                    "briefd.job_id": job.job_id,
                    "briefd.status": str(result.status),
                    "briefd.pipeline": result.pipeline,
                    "briefd.parallel": result.parallel,
                    "briefd.cost_usd": result.total_cost_usd,
                    "briefd.fallbacks": list(result.fallbacks),
                },
            )
            if error is not None:
                root.set_attribute(g.ERROR_TYPE, error)
                root.set_status(Status(StatusCode.ERROR, str(result.status)))
        for stage in job.stages.values():
            self._stage(job, stage, done, root)
        if root is not None:
            root.end(end_time=_ns(max(done.ts, job.start)))

    def _stage(self, job: JobRecord, rec: StageRecord, done: JobCompleted, root: Any) -> None:
        outcome = rec.outcome
        cost = done.result.cost_usd.get(rec.name)
        parent = None
        end = outcome.ts if outcome is not None else done.ts
        if root is not None:
            elapsed = outcome.elapsed_ms / 1000 if outcome is not None else 0.0
            first = rec.attempts[0].start if rec.attempts else end
            start = max(job.start, min(end - elapsed if elapsed > 0 else first, first))
            attrs: dict[str, Any] = {"briefd.job_id": job.job_id, "briefd.stage": rec.name}
            attrs["briefd.attempts"] = len(rec.attempts)
            if cost is not None:
                attrs["briefd.cost_usd"] = cost
            if outcome is not None:
                attrs["briefd.queued_ms"] = outcome.queued_ms
                attrs["briefd.call_ms"] = outcome.call_ms
                attrs["briefd.backoff_ms"] = outcome.backoff_ms
            if isinstance(outcome, StageSucceeded) and outcome.served_by:
                attrs["briefd.served_by"] = outcome.served_by
            if rec.fell_back is not None:
                attrs["briefd.fell_back_to"] = rec.fell_back
            parent = self._tracer.start_span(  # type: ignore[union-attr]
                f"stage {rec.name}",
                context=trace.set_span_in_context(root),
                kind=SpanKind.INTERNAL,
                start_time=_ns(start),
                attributes=attrs,
            )
            if outcome is not None and not isinstance(outcome, StageSucceeded):
                parent.set_attribute(g.ERROR_TYPE, _error_type(outcome.error))
                parent.set_status(Status(StatusCode.ERROR, redact(outcome.error.message)))
        for i, attempt in enumerate(rec.attempts):
            last = i == len(rec.attempts) - 1
            if attempt.end is None:  # no event ended it: it ends with its stage
                attempt.close(end)
            self._attempt(job, rec, attempt, last, cost, parent)
        if parent is not None:
            parent.end(end_time=_ns(max(end, start)))

    def _attempt(
        self,
        job: JobRecord,
        rec: StageRecord,
        a: Attempt,
        last: bool,
        cost: float | None,
        parent: Any,
    ) -> None:
        ep = self._endpoints.get(a.endpoint or self._default) or self._endpoints.get(self._default)
        outcome = rec.outcome
        # briefd counts tokens per stage: the last call carries the stage's, so sums are right
        usage = outcome.usage if (last and outcome is not None) else None
        if usage is not None and usage.prompt_tokens == 0 and usage.completion_tokens == 0:
            usage = None
        served = outcome.served_by if (last and isinstance(outcome, StageSucceeded)) else ""
        response_model = served.partition(":")[2]
        end = a.end if a.end is not None else a.start  # closed by _stage
        metric: dict[str, Any] = {g.OPERATION: g.CHAT, g.PROVIDER: ep.provider if ep else "openai"}
        if a.model:
            metric[g.REQUEST_MODEL] = a.model
        if ep is not None and ep.server is not None:
            metric[g.SERVER_ADDRESS], metric[g.SERVER_PORT] = ep.server
        if response_model:
            metric[g.RESPONSE_MODEL] = response_model
        if a.error is not None:
            metric[g.ERROR_TYPE] = _error_type(a.error)
        if self._metrics is not None:
            for hist in self._metrics.durations:
                hist.record(max(end - a.start, 0.0), metric)
            if a.ttft_ms is not None:
                for hist in self._metrics.ttfcs:
                    hist.record(a.ttft_ms / 1000, metric)
            self._metrics.usage(metric, usage)
        if parent is None:
            return
        attrs = dict(metric)
        attrs.update({"briefd.job_id": job.job_id, "briefd.stage": rec.name})
        attrs.update({"briefd.attempt": a.number, "briefd.queued_ms": a.queued_ms})
        if a.endpoint:
            attrs["briefd.endpoint"] = a.endpoint
        if rec.name in self._kinds:
            attrs["gen_ai.output.type"] = "json" if self._kinds[rec.name] == "json" else "text"
        if a.ttft_ms is not None:
            attrs[g.REQUEST_STREAM] = True
            attrs[g.RESPONSE_TTFC] = a.ttft_ms / 1000
        if usage is not None:
            attrs[g.INPUT_TOKENS] = usage.prompt_tokens
            attrs[g.OUTPUT_TOKENS] = usage.completion_tokens
            attrs[g.CACHE_READ_TOKENS] = usage.cached_tokens
            if usage.reasoning_tokens:
                attrs[g.REASONING_TOKENS] = usage.reasoning_tokens
        if last and cost is not None:
            attrs["briefd.cost_usd"] = cost
        self._content(attrs, job, rec, served != "")
        span = self._tracer.start_span(  # type: ignore[union-attr]
            f"{g.CHAT} {a.model}" if a.model else g.CHAT,
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            start_time=_ns(a.start),
            attributes=attrs,
        )
        if a.error is not None:
            span.set_status(Status(StatusCode.ERROR, redact(a.error.message)))
        span.end(end_time=_ns(max(end, a.start)))

    def _content(self, attrs: dict[str, Any], job: JobRecord, rec: StageRecord, ok: bool) -> None:
        """The prompt and, on the call that produced it, the document: opt-in, redacted."""
        if not self.conventions.capture_content:
            return
        prompt = (job.prompts or {}).get(rec.name)
        if prompt is not None:
            parts = [{"type": "text", "content": redact(prompt)}]
            attrs[g.INPUT_MESSAGES] = json.dumps([{"role": "user", "parts": parts}])
        if ok and isinstance(rec.outcome, StageSucceeded):
            doc = rec.outcome.document
            text = doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False)
            out = {"role": "assistant", "parts": [{"type": "text", "content": redact(text)}]}
            attrs[g.OUTPUT_MESSAGES] = json.dumps([{**out, "finish_reason": "stop"}])


def build(
    *,
    traces: bool,
    metrics: bool,
    endpoints: Mapping[str, Endpoint],
    default_endpoint: str,
    workflow: str,
    stage_kinds: Mapping[str, str],
    prompts: PromptLookup | None,
) -> OtelObserver:
    """The SDK's providers with OTLP/HTTP exporters (configured by the ``OTEL_*`` variables
    the SDK reads: endpoints, headers, timeouts, export interval), and the observer."""
    attrs: dict[str, Any] = {"service.version": briefd.__version__}
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attrs["service.name"] = "briefd"
    resource = Resource.create(attrs)
    tp = mp = None
    exporters: list[Any] = []
    if traces:
        tp = TracerProvider(resource=resource)
        exporters.append(OTLPSpanExporter())
        tp.add_span_processor(BatchSpanProcessor(exporters[-1]))
    if metrics:
        exporters.append(OTLPMetricExporter())
        reader = PeriodicExportingMetricReader(exporters[-1])
        mp = MeterProvider(resource=resource, metric_readers=[reader])
    return OtelObserver(
        endpoints=endpoints,
        default_endpoint=default_endpoint,
        workflow=workflow,
        stage_kinds=stage_kinds,
        tracer_provider=tp,
        meter_provider=mp,
        conventions=g.Conventions.from_env(),
        prompts=prompts,
        exporters=exporters,
    )
