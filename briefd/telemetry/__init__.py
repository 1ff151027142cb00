"""OpenTelemetry for briefd (the optional extra ``briefd[otel]``): is it wanted, and the
observer that exports jobs as traces and GenAI metrics when it is.

Importing this package imports no OpenTelemetry: :func:`open_telemetry` does, and only
when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``, or the traces or
metrics one). Without the extra installed it says so in one log line, once, and briefd
runs on without telemetry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from loguru import logger

if TYPE_CHECKING:
    from briefd.config import PipelineSpec
    from briefd.llm.routing import Routing
    from briefd.messages import Event

__all__ = ["Telemetry", "open_telemetry", "wanted"]

_warned = False


class Telemetry(Protocol):
    """What the Pipeline and the daemon hold: an observer they flush and shut down."""

    def __call__(self, event: Event) -> None: ...
    def force_flush(self, timeout_s: float = 10.0) -> bool: ...
    def shutdown(self, timeout_s: float | None = None) -> None: ...


def _set(name: str) -> bool:
    return bool(os.environ.get(name, "").strip())


def _off(signal: str) -> bool:
    """``OTEL_TRACES_EXPORTER=none`` (or metrics): that signal is not exported."""
    return os.environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() == "none"


def wanted() -> tuple[bool, bool]:
    """``(traces, metrics)``: which signals the environment asks to export."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False, False
    both = _set("OTEL_EXPORTER_OTLP_ENDPOINT")
    traces = (both or _set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) and not _off("TRACES")
    metrics = (both or _set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")) and not _off("METRICS")
    return traces, metrics


def open_telemetry(
    routing: Routing,
    pipeline: PipelineSpec,
    prompts: Callable[[str], Mapping[str, str] | None] | None = None,
) -> Telemetry | None:
    """The OTLP observer if an endpoint is configured and the extra installed, else None.

    ``prompts(job_id)`` gives a job's prompts for content capture (opt-in); ``routing``
    names each endpoint's provider and server.
    """
    global _warned
    traces, metrics = wanted()
    if not (traces or metrics):
        return None
    try:
        from briefd.telemetry.otel import Endpoint, build
    except ImportError as err:
        if not _warned:
            _warned = True
            logger.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                "({}): no traces or metrics exported (pip install 'briefd[otel]')",
                err.name or err,
            )
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
    if protocol and protocol != "http/protobuf":
        logger.warning("OTEL_EXPORTER_OTLP_PROTOCOL={}: briefd exports http/protobuf", protocol)
    endpoints = {n: Endpoint(e.kind, e.base_url) for n, e in routing.endpoints.items()}
    default = next(iter(routing.endpoints), "")
    if routing.aliases.get(routing.default_alias):
        default = routing.aliases[routing.default_alias][0].endpoint
    return build(
        traces=traces,
        metrics=metrics,
        endpoints=endpoints,
        default_endpoint=default,
        workflow=pipeline.name,
        stage_kinds={s.name: s.kind for s in pipeline.stages},
        prompts=prompts,
    )
