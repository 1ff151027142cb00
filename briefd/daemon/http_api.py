"""The daemon's HTTP API: Starlette routes served by uvicorn on a loopback socket.

HTTP parsing is left to uvicorn (h11) and routing to Starlette, both well
kept; :mod:`briefd.daemon.http_conn` adds deadlines for slow clients, and this
module the rules of the API, in this order, before any body is read:

* the ``Host`` header must name the listening socket (its address or
  ``localhost``, with the port) or a host of ``BRIEFD_ALLOWED_HOSTS``, else
  421: a web page that got its own name to resolve to 127.0.0.1 (DNS
  rebinding) is refused even before the token stops it; and a request with an
  ``Origin`` header is refused with 403 unless ``BRIEFD_ALLOWED_ORIGINS`` lists
  it (then CORS applies): browsers send it, briefd's clients
  (``briefd.Client``, curl, Prometheus) never do. Both are
  :class:`~briefd.daemon.http_origin.FrontDoor`'s, which also serves the example
  page at ``/ui/`` when ``BRIEFD_UI=true``;
* every endpoint but ``/healthz`` needs ``Authorization: Bearer <token>``,
  compared in constant time;
* a body over ``max_body_bytes`` is refused from its ``Content-Length`` before
  a byte of it is read, and a chunked one as soon as it passes the limit;
* every error is ``{"error": {"code", "message"}}`` (plus ``field`` when one
  field is at fault), never a traceback and never the token.

The work is done by a :class:`Backend` (the daemon); the server runs in its own
thread with its own event loop, and blocking calls go to Starlette's thread
pool. ``GET /v1/jobs/{id}/result?wait=S`` waits on an asyncio future that the
journal resolves (:meth:`ApiServer.notify_finished`), not on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import socket
import threading
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

import pykka
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from briefd.actors.admission import Admission
from briefd.config import ConfigError
from briefd.daemon.http_conn import (
    KEEP_ALIVE_S,
    READ_TIMEOUT_S,
    allowed_hosts,
    deadline_protocol,
)
from briefd.daemon.http_conn import bind_loopback as bind_loopback
from briefd.daemon.http_events import EventStreams
from briefd.daemon.http_origin import FrontDoor, FrontSettings
from briefd.daemon.http_pipelines import pipeline_routes
from briefd.daemon.http_ui import ui_app
from briefd.daemon.prometheus import CONTENT_TYPE_LATEST
from briefd.messages import JOB_ID_PATTERN, JobInfo, JobResult, JobSpec, JobState
from briefd.store.base import StoreUnavailable

MAX_WAIT_S = 60.0
_JOB_ID = re.compile(JOB_ID_PATTERN)
_FIELD = re.compile(r"^job(?: file \S+)?: ([^:;\s]+): ")


class Backend(Protocol):
    """What the API needs from the daemon. Every method may block briefly (a journal read)."""

    def validate(self, data: Any) -> JobSpec: ...
    def submit(self, job: JobSpec) -> Admission: ...
    def cancel(self, job_id: str) -> JobState | None: ...
    def info(self, job_id: str) -> JobInfo | None: ...
    def result(self, job_id: str) -> JobResult | None: ...
    def list_jobs(self, status: JobState | None, limit: int) -> list[JobInfo]: ...
    def metrics_body(self) -> bytes: ...
    def healthy(self) -> bool: ...
    def health(self) -> tuple[str, str]: ...  # (ok|stopping|unhealthy, reason)


def error(http_status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The API's one error shape: ``{"error": {"code", "message", ...extra}}``."""
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if http_status == 401 else None
    if "retry_after" in extra:
        headers = {"Retry-After": str(extra["retry_after"])}
    return JSONResponse({"error": body}, status_code=http_status, headers=headers)


class _Guard:
    """ASGI middleware: the bearer token, the body size, before any endpoint (Host and
    Origin are checked before it, by :class:`~briefd.daemon.http_origin.FrontDoor`)."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        max_body: int,
        public: Callable[[Scope], bool] = lambda scope: False,
    ) -> None:
        self.app = app
        self.public = public  # requests that authenticate themselves (a stream token)
        self.token = token.encode()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if scope["path"] != "/healthz" and not self.public(scope):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token
            ):
                what = "missing" if not given else "wrong"
                msg = f"Authorization: bearer token {what}"
                await error(401, "unauthorized", msg, field="Authorization")(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status, code = (400, "bad_length") if not length.isdigit() else (413, "too_large")
            msg = f"body: {length} bytes is over the limit of {self.max_body} (max_body_bytes)"
            field = "body" if status == 413 else "Content-Length"
            await error(status, code, msg if status == 413 else "bad Content-Length", field=field)(
                scope, receive, send
            )
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise HTTPException(413, f"body: over the limit of {self.max_body} bytes")
            return message

        await self.app(scope, limited, send)


class _Waiters:
    """Futures for ``?wait=`` requests, resolved from any thread when a job ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}

    def notify(self, job_id: str) -> None:
        with self._lock:
            futures = self._waiting.pop(job_id, set())
        for f in futures:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                f.get_loop().call_soon_threadsafe(_resolve, f)

    def notify_all(self) -> None:
        with self._lock:
            ids = list(self._waiting)
        for job_id in ids:
            self.notify(job_id)

    async def wait(self, job_id: str, timeout: float, done: Callable[[], Awaitable[bool]]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(future)
        try:
            if not await done():  # registered first: a job ending now still wakes us
                await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                waiting = self._waiting.get(job_id)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiting[job_id]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def build_app(
    backend: Backend,
    *,
    token: str,
    max_body_bytes: int,
    waiters: _Waiters,
    hosts: Collection[str],
    origins: Collection[str] = (),
    ui: bool = False,
    streams: EventStreams | None = None,
) -> ASGIApp:
    """The Starlette application (also usable in-process with any ASGI test client).

    ``hosts``: the ``Host`` values accepted (:func:`~briefd.daemon.http_conn.allowed_hosts`
    and ``BRIEFD_ALLOWED_HOSTS``); ``origins``: the CORS origins allowed; ``ui``: serve
    the example page at ``/ui/`` (:mod:`briefd.daemon.http_origin`).
    """

    async def healthz(request: Request) -> Response:
        # In the event loop, not the thread pool (which reads blocked on a lost database may
        # fill): health() answers from memory, so /healthz answers at once, whatever blocks.
        status, reason = backend.health()
        body: dict[str, Any] = {"status": status, **({"reason": reason} if reason else {})}
        details = getattr(backend, "health_details", None)  # budget and mode (the daemon's)
        if details is not None and status == "ok":
            body.update(await run_in_threadpool(details))
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    async def submit(request: Request) -> Response:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except ValueError as err:
            return error(400, "invalid_json", f"body: invalid JSON: {err}", field="body")
        try:
            job = await run_in_threadpool(backend.validate, data)
        except ConfigError as err:
            m = _FIELD.match(str(err))
            return error(400, "invalid_job", str(err), **({"field": m.group(1)} if m else {}))
        adm = await run_in_threadpool(backend.submit, job)
        if adm.refused == "queue_full":
            msg = "the queue is full (max_queued_jobs); try again later"
            return error(429, "queue_full", msg, retry_after=adm.retry_after_s)
        if adm.refused == "unavailable":
            msg = "the database is not answering; the job was not stored: try again"
            return error(503, "unavailable", msg, retry_after=adm.retry_after_s)
        if adm.refused is not None:
            msg = "the daemon is stopping; try again when it is back"
            return error(503, "stopping", msg, retry_after=adm.retry_after_s)
        body = {"job_id": adm.job_id, "status": adm.state.value, "created": adm.created}
        return JSONResponse(body, status_code=202 if adm.created else 200)

    async def list_jobs(request: Request) -> Response:
        raw_status = request.query_params.get("status")
        raw_limit = request.query_params.get("limit", "100")
        try:
            status = JobState(raw_status) if raw_status else None
        except ValueError:
            choices = ", ".join(s.value for s in JobState)
            return error(400, "bad_query", f"status: one of {choices}", field="status")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
            return error(400, "bad_query", "limit: an integer in 1..1000", field="limit")
        jobs = await run_in_threadpool(backend.list_jobs, status, int(raw_limit))
        return JSONResponse({"jobs": [j.model_dump(mode="json") for j in jobs]})

    async def status(request: Request) -> Response:
        job_id = _job_id(request)
        info = await run_in_threadpool(backend.info, job_id)
        if info is None:
            return _not_found(job_id)
        return JSONResponse(info.model_dump(mode="json"))

    async def result(request: Request) -> Response:
        job_id = _job_id(request)
        try:
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_WAIT_S:
            return error(400, "bad_query", f"wait: seconds in 0..{MAX_WAIT_S:g}", field="wait")
        found = await run_in_threadpool(backend.result, job_id)
        if found is None and wait > 0:

            async def done() -> bool:
                info = await run_in_threadpool(backend.info, job_id)
                return info is None or info.status.terminal

            await waiters.wait(job_id, wait, done)
            found = await run_in_threadpool(backend.result, job_id)
        if found is not None:
            return JSONResponse(found.model_dump(mode="json"))
        info = await run_in_threadpool(backend.info, job_id)
        if info is None:
            return _not_found(job_id)
        msg = f"job {job_id} is {info.status.value} ({info.progress:g}%)"
        return error(409, "not_finished", msg, status=info.status.value)

    async def cancel(request: Request) -> Response:
        job_id = _job_id(request)
        state = await run_in_threadpool(backend.cancel, job_id)
        if state is None:
            return _not_found(job_id)
        return JSONResponse({"job_id": job_id, "status": state.value})

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(backend.metrics_body)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        detail = f"no route for {request.url.path}" if exc.detail == "Not Found" else exc.detail
        extra = {"field": "body"} if exc.status_code == 413 else {}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), detail, **extra)

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        # The journal (a lost database) or an actor (blocked on it) did not answer in time:
        # a clear 503, not an internal error. The message names no secret (URLs redacted).
        if isinstance(exc, StoreUnavailable):
            msg = f"the database is not answering ({exc}); try again"
        else:
            msg = "the daemon is busy waiting for its database; try again"
        return error(503, "unavailable", msg, retry_after=5)

    async def on_crash(request: Request, exc: Exception) -> Response:
        return error(500, "internal", f"internal error ({type(exc).__name__}); see the log")

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *pipeline_routes(backend),  # GET /v1/pipelines
            Route("/v1/jobs", submit, methods=["POST"]),
            Route("/v1/jobs", list_jobs, methods=["GET"]),
            Route("/v1/jobs/{job_id}", status, methods=["GET"]),
            Route("/v1/jobs/{job_id}", cancel, methods=["DELETE"]),
            Route("/v1/jobs/{job_id}/result", result, methods=["GET"]),
            *(streams.routes() if streams is not None else ()),
        ],
        exception_handlers={
            HTTPException: on_http_error,
            StoreUnavailable: on_unavailable,
            pykka.Timeout: on_unavailable,
            Exception: on_crash,
        },
    )
    public = streams.public if streams is not None else (lambda scope: False)
    guarded = _Guard(app, token, max_body_bytes, public)
    return FrontDoor(guarded, hosts=hosts, origins=origins, pages=ui_app() if ui else None)


def _job_id(request: Request) -> str:
    job_id = str(request.path_params["job_id"])
    if not _JOB_ID.match(job_id):
        raise HTTPException(404, f"job {job_id[:80]!r}: not a job id ({JOB_ID_PATTERN})")
    return job_id


def _not_found(job_id: str) -> JSONResponse:
    return error(404, "not_found", f"job {job_id}: no such job")


class ApiServer:
    """uvicorn on an already bound socket, in a thread of its own.

    ``read_timeout_s`` bounds how long a client may take to send a request (head and
    body) and ``keep_alive_s`` how long an idle connection stays open
    (:func:`~briefd.daemon.http_conn.deadline_protocol`); ``front`` the allowed hosts,
    origins and the example page (:class:`~briefd.daemon.http_origin.FrontSettings`).
    """

    def __init__(
        self,
        backend: Backend,
        sock: socket.socket,
        *,
        token: str,
        max_body: int,
        read_timeout_s: float = READ_TIMEOUT_S,
        keep_alive_s: float = KEEP_ALIVE_S,
        front: FrontSettings | None = None,
        streams: EventStreams | None = None,
    ) -> None:
        front = front if front is not None else FrontSettings()
        self._sock = sock
        self._waiters = _Waiters()
        own = allowed_hosts(sock)
        self._streams = streams  # the event streams (None: a journal without events)
        app = build_app(
            backend,
            token=token,
            max_body_bytes=max_body,
            waiters=self._waiters,
            hosts=own | front.hosts,
            origins=front.origins_for(own),
            ui=front.ui,
            streams=streams,
        )
        config = uvicorn.Config(
            app,
            http=deadline_protocol(read_timeout_s, keep_alive_s),
            ws="none",
            loop="asyncio",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="briefd-http", daemon=True)
        self._failed: BaseException | None = None

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def _run(self) -> None:
        async def serve() -> None:
            if self._streams is not None:  # their tail delivers into this loop
                self._streams.start(asyncio.get_running_loop())
            await self._server.serve(sockets=[self._sock])

        try:
            asyncio.run(serve())
        except BaseException as err:  # reported by start()
            self._failed = err

    def start(self, timeout_s: float = 10.0) -> None:
        """Serve; returns once uvicorn accepts connections (raises if it could not start)."""
        self._thread.start()
        ready = threading.Event()
        deadline = timeout_s
        while not self._server.started and self._thread.is_alive() and deadline > 0:
            ready.wait(0.02)
            deadline -= 0.02
        if not self._server.started:
            raise RuntimeError(f"HTTP server did not start: {self._failed!r}")

    def notify_finished(self, job_id: str) -> None:
        """Wake ``?wait=`` requests for ``job_id`` (called by the journal, any thread)."""
        self._waiters.notify(job_id)

    def events_committed(self) -> None:
        """Events were committed elsewhere (another daemon's ``NOTIFY``): wake the streams."""
        if self._streams is not None:
            self._streams.hub.wake()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, answer waiting requests, close."""
        self._waiters.notify_all()
        if self._streams is not None:
            self._streams.stop()
        self._server.should_exit = True
        self._thread.join(timeout_s)
