"""Simulated OpenAI-compatible chat-completions server for demos, tests and benchmarks.

briefd's pipelines are judged by how they behave against a slow, flaky upstream (rate
limits, hangs, truncated or malformed output), which a real API cannot reproduce on
demand. This server answers ``POST /v1/chat/completions`` deterministically after a
per-stage latency, injects :class:`Fault`s matched on briefd's ``X-Briefd-Stage`` /
``X-Briefd-Job`` headers, and counts requests exactly so tests can verify client-side
concurrency caps. Stdlib HTTP only, so it runs anywhere the package installs.

Lenient by default (answers anything chat-shaped, as llama.cpp or vLLM do); with
``strict=True`` it holds clients to OpenAI's real contract (:mod:`briefd.sim.gateway`,
:mod:`briefd.sim.contract`): unknown arguments refused, ``model`` required and served
under its dated name, Structured Outputs rules, keys, Azure deployment routes, and
``x-ratelimit-*`` headers from real token buckets (:mod:`briefd.sim.ratelimit`).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from briefd.sim import errors
from briefd.sim.catalog import Catalog
from briefd.sim.content import (
    MODEL_ID,
    completion_body,
    error_body,
    parse_chat,
    render_content,
)
from briefd.sim.errors import ApiError
from briefd.sim.faults import (
    Fault,
    LiveRequest,
    ProfileError,
    RequestRecord,
    SimLedger,
    SimProfile,
    SimStats,
    load_profile,
)
from briefd.sim.gateway import Gateway, Route, chat_route, estimate_tokens
from briefd.sim.httpd import SimHTTPServer
from briefd.sim.llama import LlamaMode, Slot, batch_tokens
from briefd.sim.ratelimit import SimRateLimits, rate_limited_message
from briefd.sim.streaming import StreamWriter

__all__ = [
    "MODEL_ID",
    "Fault",
    "ProfileError",
    "RequestRecord",
    "SimProfile",
    "SimServer",
    "SimStats",
    "load_profile",
    "render_content",
]

_POLL_S = 0.05  # how often a hang checks whether its client went away


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client's
    # delayed ACK adds ~40 ms to every answer after the first.
    disable_nagle_algorithm = True
    server: SimHTTPServer
    _status: int | None = None
    _rec: LiveRequest | None = None
    _extra: dict[str, str] | None = None  # rate-limit and request-id headers of this answer
    _slot: Slot | None = None  # this request's hold on the server (serializing: its one slot)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log: it would drown test and demo output."""

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length is not None and not length.isdigit()):
            self.close_connection = True  # cannot find the end of this body; do not reuse
            self._send_json(400, error_body(400, "a Content-Length body is required"))
            return None
        return self.rfile.read(int(length)) if length else b""

    def _send_head(self, status: int, length: int, headers: dict[str, str] | None = None) -> None:
        self._status = status
        self.send_response(status)
        merged = {"Content-Type": "application/json", **(self._extra or {}), **(headers or {})}
        for key, value in merged.items():
            if status != 204 or key != "Content-Type":
                self.send_header(key, value)
        if status != 204:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send_stream_head(self) -> None:
        """A 200 whose body is Server-Sent Events in HTTP/1.1 chunks (no length known)."""
        self._status = 200
        self.send_response(200)
        headers = {
            **(self._extra or {}),
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "Transfer-Encoding": "chunked",
        }
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.flush()

    def _write_now(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode("utf-8")
        self._send_head(status, len(data), headers)
        self.wfile.write(data)

    def _abandon(self) -> None:
        """Close without answering (drop, hang release, stop mid-wait)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _peer_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_GET(self) -> None:
        self._extra = None  # one handler serves a keep-alive connection's every request
        path = self.path.split("?", 1)[0]
        if path == "/v1/models":
            error = self.server.gateway.check_access(Route(azure=False), self.headers)
            if error is not None:
                self._send_json(error.status, error.body())
            else:
                self._send_json(200, self.server.gateway.catalog.listing())
        elif path == "/_sim/stats":
            self._send_json(200, self.server.ledger.snapshot().model_dump(mode="json"))
        else:
            self._send_json(404, error_body(404, f"no route for GET {path}"))

    def do_POST(self) -> None:
        self._extra = None
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        if raw is None:
            return
        route = chat_route(self.path)
        if route is not None:
            self._chat(raw, route)
        elif path == "/_sim/faults":
            try:
                self.server.ledger.inject(Fault.model_validate_json(raw or b"null"))
            except ValidationError as exc:
                self._send_json(400, error_body(400, f"bad fault: {exc.errors()[0]['msg']}"))
                return
            self._send_head(204, 0)
        elif path == "/_sim/reset":
            self.server.ledger.reset()
            self._send_head(204, 0)
        elif path == "/_sim/scale":
            try:
                body = json.loads(raw or b"null")
                self.server.ledger.set_scale(float(body["scale"]))
            except (ValueError, TypeError, KeyError):
                self._send_json(400, error_body(400, 'body must be {"scale": <number >= 0>}'))
                return
            self._send_head(204, 0)
        else:
            self._send_json(404, error_body(404, f"no route for POST {path}"))

    def _chat(self, raw: bytes, route: Route) -> None:
        """Count the request around its whole answer, so in_flight includes hangs and drips."""
        ledger = self.server.ledger
        stage = self.headers.get("X-Briefd-Stage") or "UNKNOWN"
        job_id = self.headers.get("X-Briefd-Job") or "-"
        self._rec = ledger.begin(stage, job_id, self.headers.get("Authorization"))
        self._status = None
        self._extra = {"x-request-id": f"req_sim{next(self.server.request_ids)}"}
        completed = False
        try:
            completed = self._serve_chat(raw, route, stage, job_id)
        except OSError:  # client went away mid-answer (BrokenPipe, ConnectionReset, ...)
            self.close_connection = True
        finally:
            self._settle(self._status, completed)
            if self._slot is not None:
                self._slot.release()
                self._slot = None

    def _settle(self, status: int | None, completed: bool) -> None:
        """Record the request's end once, *before* its last bytes go out.

        Otherwise a client could read its whole answer and send its next request
        while the ledger still counts the first as in flight: a client that keeps
        to a cap of N would be seen with N+1.
        """
        if self._rec is not None:
            rec, self._rec = self._rec, None
            self.server.ledger.finish(rec, status, completed)

    def _refuse(self, error: ApiError, headers: dict[str, str] | None = None) -> bool:
        self._settle(error.status, False)
        self._send_json(error.status, error.body(), headers)
        return False

    def _admit(self, gateway: Gateway, body: Any, model: str) -> bool:
        """Take from the rate-limit buckets; False once a 429 has been sent."""
        limits = gateway.limits
        if limits is None:
            return True
        cost = estimate_tokens(body)
        verdict = limits.admit(cost)
        if gateway.sends_rate_headers:
            self._extra = {**(self._extra or {}), **verdict.headers}
        if verdict.allowed:
            return True
        requested = 1 if verdict.exhausted == "requests" else cost
        message = rate_limited_message(model, verdict, requested)
        error = ApiError(429, message, type=verdict.exhausted, code="rate_limit_exceeded")
        return self._refuse(error, verdict.headers)

    def _serve_chat(self, raw: bytes, route: Route, stage: str, job_id: str) -> bool:
        """Answer one chat request; True when a 200 body was written in full."""
        ledger, stop, gateway = self.server.ledger, self.server.stop_event, self.server.gateway
        if gateway.sends_rate_headers and gateway.limits is not None:
            self._extra = {**(self._extra or {}), **gateway.limits.peek()}
        error = gateway.check_access(route, self.headers)
        if error is not None:
            return self._refuse(error)
        served: str | None = None
        if gateway.strict:
            try:
                body = json.loads(raw)
            except ValueError:
                return self._refuse(errors.NOT_JSON)
            served, error = gateway.check_body(route, body)
            if error is not None:
                return self._refuse(error)
        else:
            body, problem = parse_chat(raw)
            if problem is not None:
                self._settle(400, False)
                self._send_json(400, error_body(400, problem))
                return False
            if route.deployment is not None:
                served = gateway.catalog.resolve(gateway.catalog.deployments[route.deployment])
        if not self._admit(gateway, body, served or str(body.get("model") or MODEL_ID)):
            return False
        fault = ledger.take_fault(stage, job_id)
        streamed = body.get("stream") is True
        if fault is not None and not streamed:
            fault = _whole_answer_fault(fault)
        if fault is not None and fault.hang:
            while not stop.wait(_POLL_S) and not self._peer_gone():
                pass
            self._abandon()
            return False
        self._slot = self.server.llama.take(stop)  # serializing: wait for the one slot
        if self._slot is None:
            self._abandon()
            return False
        delay = fault.delay_s if fault is not None else 0.0
        generation = ledger.profile.latency_for(stage)
        generates = 0.0
        if (fault is None or (fault.status is None and not fault.drop)) and not streamed:
            generates = generation  # errors and drops skip generation time; a stream spreads it
        if stop.wait(delay) or not self.server.llama.generate(generates, stop):
            self._abandon()
            return False
        if fault is not None and fault.drop:
            self._abandon()
            return False
        if fault is not None and fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            message = f"simulated {fault.status} for stage {stage} (job {job_id})"
            self._settle(fault.status, False)
            self._send_json(fault.status, error_body(fault.status, message), headers)
            return False
        answer = completion_body(
            stage,
            body,
            fault,
            next(self.server.request_ids),
            served_model=served,
            strict=gateway.strict,
        )
        scale = ledger.profile.scale
        if self._slot.reports and scale > 0:  # llama.cpp's constant pace: tokens follow time
            usage = answer["usage"]
            usage["completion_tokens"] = batch_tokens(generation / scale, usage["prompt_tokens"])
        if self._slot.reports:  # llama.cpp's own measure of the work, queue excluded
            answer["timings"] = self._slot.timings(answer["usage"])
        answer["usage"] = gateway.usage(body, answer["model"], answer["usage"]["completion_tokens"])
        if streamed:
            writer = StreamWriter(answer, body.get("stream_options"), fault, generation, stop)
            self._send_stream_head()
            return writer.run(self._write_now, lambda ok: self._settle(200, ok), self._peer_gone)
        data = json.dumps(answer).encode("utf-8")
        if fault is None or fault.drip_s is None:
            self._settle(200, True)
            self._send_head(200, len(data))
            self.wfile.write(data)
            return True
        self._send_head(200, len(data))
        self.wfile.flush()
        for i in range(len(data)):
            if stop.wait(fault.drip_s):
                self._abandon()
                return False
            if i == len(data) - 1:
                self._settle(200, True)
            self.wfile.write(data[i : i + 1])
        return True


def _whole_answer_fault(fault: Fault) -> Fault:
    """A stream's fault as a whole answer meets it: a stall hangs, an error event is a 500,
    a slow first token delays the answer."""
    update: dict[str, Any] = {}
    if fault.stall_after is not None:
        update["hang"] = True
    elif fault.error_after is not None:
        update["status"] = 500
    if fault.first_token_s is not None:
        update["delay_s"] = fault.delay_s + fault.first_token_s
    return fault.model_copy(update=update) if update else fault


class SimServer:
    """In-process simulated API: bind on construction, serve on :meth:`start`.

    Binding in ``__init__`` makes ``port``/``base_url`` valid before ``start`` even with
    ``port=0`` (an ephemeral port), which is what parallel tests need.
    """

    def __init__(
        self,
        profile: SimProfile | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        strict: bool = False,
        models: Sequence[str] | Mapping[str, str] | None = None,
        deployments: Mapping[str, str] | None = None,
        api_key: str | None = None,
        cached_fraction: float | None = None,
        rps: float | None = None,
        burst: int | None = None,
        tpm: int | None = None,
        serialize: bool = False,
        timings: bool | None = None,
        batching: bool = False,
    ) -> None:
        """``strict`` holds clients to OpenAI's contract; the rest apply in either mode.

        ``models``: names served (dated by :data:`briefd.sim.catalog.DATED_NAMES`) or a
        name → dated-name map; default gpt-4o, gpt-4o-mini, gpt-4.1-mini, o4-mini when
        strict, ``briefd-sim`` when lenient. ``deployments``: Azure deployment → model
        (default: each model is a deployment of its own name). ``api_key``: required as
        ``Authorization: Bearer`` (Azure: ``api-key``). ``cached_fraction``: that share of
        every prompt is reported cached (default: OpenAI's prefix rule). ``rps``/``burst``
        and ``tpm``: enforced token buckets answering 429. ``serialize``: one request works
        at a time, as llama-cpp-python's server; ``timings``: answers carry llama.cpp's
        ``timings`` (default: with ``serialize`` or ``batching``); ``batching``: requests
        share one processor, n at once each at 1/n speed, as llama.cpp's server with
        slots on a CPU-bound machine (:mod:`briefd.sim.llama`).
        """
        if cached_fraction is not None and not 0.0 <= cached_fraction <= 1.0:
            raise ValueError(f"cached_fraction must be in [0, 1], got {cached_fraction}")
        served = models if models is not None else (None if strict else (MODEL_ID,))
        limited = strict or rps is not None or tpm is not None
        gateway = Gateway(
            strict=strict,
            catalog=Catalog.build(served, deployments),
            api_key=api_key,
            cached_fraction=cached_fraction,
            limits=SimRateLimits(rps, burst, tpm) if limited else None,
        )
        self._ledger = SimLedger(profile or SimProfile())
        self._stop = threading.Event()
        if serialize and batching:
            raise ValueError("serialize and batching are two different servers: choose one")
        llama = LlamaMode(
            serialize=serialize,
            timings=(serialize or batching) if timings is None else timings,
            batching=batching,
        )
        self._httpd = SimHTTPServer(
            (host, port), self._ledger, self._stop, gateway, _Handler, llama
        )
        self.strict = strict
        self.host = host
        self.port: int = int(self._httpd.socket.getsockname()[1])
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._stopped = False

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (ends in ``/v1``) to hand to a client."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        """Azure-style resource endpoint: ``{this}/openai/deployments/{name}/...``."""
        return self.base_url.removesuffix("/v1")

    @property
    def profile(self) -> SimProfile:
        """The active profile (latencies, scale, and the faults it was started with)."""
        return self._ledger.profile

    def start(self) -> SimServer:
        """Serve in a daemon thread so a forgotten server never blocks interpreter exit."""
        with self._lifecycle:
            if self._stopped or self._thread is not None:
                raise RuntimeError("SimServer can only be started once")
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": _POLL_S},
                name=f"briefd-sim:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Release waiting/hanging/dripping requests, stop accepting, close every socket."""
        with self._lifecycle:
            if self._stopped:
                return
            self._stopped = True
            self._stop.set()
            if self._thread is not None:
                self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=2.0)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def inject(self, fault: Fault) -> None:
        """Arm a fault after those already armed (first match in insertion order wins)."""
        self._ledger.inject(fault)

    def reset(self) -> None:
        """Clear all faults (including the profile's) and all counters except ``in_flight``."""
        self._ledger.reset()

    def stats(self) -> SimStats:
        """A consistent snapshot of the counters."""
        return self._ledger.snapshot()

    def wait_for_in_flight(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` chat requests are in flight; False on timeout."""
        return self._ledger.wait_for(lambda: self._ledger.in_flight >= n, timeout)

    def wait_until_idle(self, timeout: float) -> bool:
        """Block until no chat request is in flight, i.e. every counter is final."""
        return self._ledger.wait_for(lambda: self._ledger.in_flight == 0, timeout)

    def set_scale(self, scale: float) -> None:
        """Change the latency multiplier for requests that start afterwards."""
        self._ledger.set_scale(scale)
