"""A real OTLP/HTTP receiver on loopback for the OpenTelemetry tests.

It accepts ``POST /v1/traces`` and ``POST /v1/metrics`` as a collector does and decodes
each body with the official protobuf classes (``opentelemetry-proto``), so a test sees
exactly what went over the wire. Tests wait on it with a deadline (:meth:`wait`), never
with a sleep.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def value_of(v: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as Python."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs_of(v.kvlist_value.values)
    return getattr(v, kind) if kind else None


def attrs_of(kvs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class Span:
    """A received span, flattened: ids as hex, times in ns, attributes as a dict."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]


@dataclass(frozen=True)
class Point:
    """One received metric data point: its metric's name and unit, attributes, value."""

    metric: str
    unit: str
    attrs: dict[str, Any]
    value: float  # a sum's value, or a histogram's sum
    count: int  # a histogram's count (1 for a sum)


class OtlpReceiver:
    """``with OtlpReceiver() as r: ... r.url``: a collector's OTLP/HTTP endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    reply = ExportTraceServiceResponse().SerializeToString()
                    receiver._add(self.path, ExportTraceServiceRequest.FromString(body))
                elif self.path == "/v1/metrics":
                    reply = ExportMetricsServiceResponse().SerializeToString()
                    receiver._add(self.path, ExportMetricsServiceRequest.FromString(body))
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _add(self, path: str, request: Any) -> None:
        with self._lock:
            self.paths.append(path)
            (self.traces if path == "/v1/traces" else self.metrics).append(request)
            self._lock.notify_all()

    def wait(self, condition: Callable[[OtlpReceiver], bool], timeout_s: float = 30.0) -> bool:
        """Wait until ``condition(self)`` holds (True) or the deadline passes (False)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    # -- decoded views -------------------------------------------------------------------

    def spans(self) -> list[Span]:
        with self._lock:
            requests = list(self.traces)
        out = []
        for req in requests:
            for rs in req.resource_spans:
                resource = attrs_of(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            Span(
                                name=s.name,
                                trace_id=s.trace_id.hex(),
                                span_id=s.span_id.hex(),
                                parent_id=s.parent_span_id.hex(),
                                kind=s.kind,
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                                attrs=attrs_of(s.attributes),
                                status_code=s.status.code,
                                resource=resource,
                            )
                        )
        return out

    def points(self) -> list[Point]:
        """Each series' latest point (exports are cumulative: the last one is the total)."""
        with self._lock:
            requests = list(self.metrics)
        latest: dict[tuple[str, str], Point] = {}
        for p in _points(requests):
            latest[(p.metric, repr(sorted(p.attrs.items())))] = p
        return list(latest.values())

    def metric_names(self) -> set[str]:
        return {p.metric for p in self.points()}


def _points(requests: list[ExportMetricsServiceRequest]) -> Iterator[Point]:
    for req in requests:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    if kind == "histogram":
                        for hp in m.histogram.data_points:
                            yield Point(m.name, m.unit, attrs_of(hp.attributes), hp.sum, hp.count)
                    elif kind == "sum":
                        for sp in m.sum.data_points:
                            is_int = sp.WhichOneof("value") == "as_int"
                            value = sp.as_int if is_int else sp.as_double
                            yield Point(m.name, m.unit, attrs_of(sp.attributes), value, 1)
