"""The event streams of the HTTP API: Server-Sent Events from the journal's event table.

* ``GET /v1/jobs/{id}/events``: one SSE event per event of the job, ``id:`` the
  job's sequence number, ``event:`` the type, ``data:`` the event's JSON (as
  ``event.model_dump_json()`` gives it: the same fields as the event log). The
  stream starts after ``Last-Event-ID`` (or ``?after=N``), replaying from the
  table what the client missed, then follows the job live; it ends after the
  job's ``JobCompleted``. A finished job's stream replays and ends; asked again
  from its last id it answers ``204`` (which tells ``EventSource`` to stop).
* ``GET /v1/events``: every job's events, ``id:`` the table's global order; from
  now on, unless ``Last-Event-ID`` (or ``?after=``) asks for a replay.
* ``POST /v1/jobs/{id}/stream-token``: a short-lived token that opens that
  job's stream as ``?access_token=`` (:mod:`briefd.daemon.stream_token`), for
  ``EventSource``, which cannot send the bearer token.

Streams are fed by one tail per daemon (:class:`~briefd.daemon.event_hub.EventHub`),
woken by the journal's commits and, in a cluster, by ``NOTIFY``. Heartbeats
are comments (``: ping``) every ``heartbeat_s``. The SSE framing, the
heartbeats, the send timeout and noticing a client gone are sse-starlette's.

Tenants (:mod:`briefd.tenants.api`): a path's id names the caller's tenant's job
(another tenant's is 404, as on every job route); ``/v1/events`` shows a key
without ``admin`` its tenant's jobs only (filtered in the tail's fan-out and the
replay, by the key's prefix: no query per event); and a job of the caller's own
tenant shows its bare id in ``data:``'s ``job_id``, as ``GET /v1/jobs/{id}``
shows it. A stream token carries the internal key, tenant and key id of its
issuer (:mod:`briefd.daemon.stream_token`).

Bounded: at most ``max_streams_per_token`` streams per API key at once
(``Principal.key_id``: the token file is one key; a stream token counts
against the key that asked for it; 429 with ``Retry-After`` past it); each
stream has a queue of ``buffer`` rows, and a client too slow to take them, or
whose socket takes nothing for ``send_timeout_s``, is dropped (the connection
aborted); it resumes with ``Last-Event-ID`` and loses nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from loguru import logger
from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse, SendTimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from briefd.daemon.event_hub import EventHub, Subscription
from briefd.daemon.http_conn import TRANSPORT
from briefd.daemon.stream_token import StreamTokens
from briefd.messages import JOB_ID_PATTERN, JobInfo
from briefd.store.events import TERMINAL, EventLog, EventRow
from briefd.tenants import api as tenancy
from briefd.tenants.auth import BUILTIN_KEY_ID
from briefd.tenants.ids import tenant_of

HEARTBEAT_S = 15.0
SEND_TIMEOUT_S = 30.0
"""A send the client's socket has not taken for this long drops the client."""
BUFFER = 256
"""Rows a stream's queue holds for its client (per connection)."""
PAGE = 500
"""Rows a replay reads from the table at once."""
_JOB_EVENTS = re.compile(r"^/v1/jobs/([^/]+)/events$")  # a bare id or (admin's) a full key


class SlowClient(Exception):
    """The client took events slower than they came: its queue overflowed."""


class _Response(EventSourceResponse):
    """An SSE response that drops (aborts) its connection when the client is too slow.

    sse-starlette raises out of the response when a send times out; here that, or a
    queue that overflowed, closes the socket at once, without waiting to flush what
    the client is not reading (``transport.abort``), and is logged at DEBUG.
    """

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (SlowClient, SendTimeoutError) as err:
            logger.debug("event stream to {}: dropped ({!r})", scope.get("client"), err)
            transport = scope.get("state", {}).get(TRANSPORT)
            if transport is not None:
                transport.abort()
        finally:
            self._on_close()


class EventStreams:
    """The stream routes, their per-token counts, and the tail they share."""

    def __init__(
        self,
        log: EventLog,
        info: Callable[[str], JobInfo | None],
        tokens: StreamTokens,
        *,
        poll_s: float | None = None,
        max_streams_per_token: int = 32,
        heartbeat_s: float = HEARTBEAT_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
        buffer: int = BUFFER,
        key_live: Callable[[str], bool] | None = None,
    ) -> None:
        self.log = log
        self._key_live = key_live  # is an API key (by id) still live? (blocking: a read)
        self.hub = EventHub(log, poll_s=poll_s, buffer=buffer)
        self._info = info
        self.tokens = tokens
        self.max_streams = max_streams_per_token
        self.heartbeat_s = heartbeat_s
        self.send_timeout_s = send_timeout_s
        self._open: Counter[str] = Counter()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.hub.start(loop)

    def stop(self) -> None:
        self.hub.stop()

    @staticmethod
    def public(scope: Scope) -> bool:
        """Requests the bearer check lets through: a job's stream with ``access_token=``
        (the endpoint checks that token itself)."""
        return bool(
            scope.get("method") == "GET"
            and _JOB_EVENTS.match(scope.get("path", ""))
            and b"access_token=" in scope.get("query_string", b"")
        )

    def routes(self) -> list[Route]:
        return [
            Route("/v1/events", self.all_events, methods=["GET"]),
            Route("/v1/jobs/{job_id}/events", self.job_events, methods=["GET"]),
            Route("/v1/jobs/{job_id}/stream-token", self.stream_token, methods=["POST"]),
        ]

    # -- the endpoints -----------------------------------------------------------------

    async def stream_token(self, request: Request) -> Response:
        given = str(request.path_params["job_id"])
        job_id = _job_id(request)
        if await run_in_threadpool(self._info, job_id) is None:
            return _error(404, "not_found", f"job {given}: no such job")
        who = tenancy.principal_of(request.scope)
        token, expires = self.tokens.issue(job_id, tenant=who.tenant, key_id=who.key_id)
        return JSONResponse(
            {
                "token": token,
                "expires_at": expires,
                "expires_in_s": int(self.tokens.ttl_s),
                "url": f"/v1/jobs/{given}/events?access_token={token}",
            }
        )

    async def job_events(self, request: Request) -> Response:
        given = str(request.path_params["job_id"])
        if self.public(request.scope):  # a stream token: its issuer's tenant and key
            grant = self.tokens.grant(request.query_params.get("access_token", ""))
            if isinstance(grant, str):
                return _error(401, "unauthorized", f"access_token: {grant}", field="access_token")
            job_id = tenancy.token_job(grant.tenant, given)
            if job_id != grant.job:
                why = "access_token: a stream token for another job"
                return _error(401, "unauthorized", why, field="access_token")
            if not await self._live(grant.key_id):
                why = "access_token: the key that asked for it is revoked"
                return _error(401, "unauthorized", why, field="access_token")
            key, viewer = grant.key_id, grant.tenant
        else:
            job_id = _job_id(request)
            who = tenancy.principal_of(request.scope)
            key, viewer = who.key_id, who.tenant
        after = _after(request)
        if isinstance(after, Response):
            return after
        after = after or 0  # a job's stream starts at its first event
        info = await run_in_threadpool(self._info, job_id)
        if info is None:
            return _error(404, "not_found", f"job {given}: no such job")
        finished = info.status.terminal
        if finished:
            rest = await run_in_threadpool(self.log.read, job_id, after, 1)
            if not rest:  # nothing after the client's last id: EventSource stops on 204
                return Response(status_code=204)
        return self._open_stream(key, job_id, after, finished, viewer)

    async def _live(self, key_id: str) -> bool:
        """Whether the key that asked for a stream token is live: one read per stream opened
        (not per event), so a revoked key's tokens die with it (the token file's: always)."""
        if key_id == BUILTIN_KEY_ID or self._key_live is None:
            return True
        return await run_in_threadpool(self._key_live, key_id)

    async def all_events(self, request: Request) -> Response:
        after = _after(request)
        if isinstance(after, Response):
            return after
        if after is None:  # from now on (every job's past would be the whole table)
            after = await run_in_threadpool(self.log.last_id)
        who = tenancy.principal_of(request.scope)
        only = tenancy.stream_tenant(request.scope)
        return self._open_stream(who.key_id, None, after, False, who.tenant, only)

    # -- streaming ---------------------------------------------------------------------

    def _open_stream(
        self,
        key: str,
        job_id: str | None,
        after: int,
        finished: bool,
        viewer: str,
        only: str | None = None,
    ) -> Response:
        """A stream for key ``key`` (its count), shown to a caller of tenant ``viewer``;
        ``only``: every job's stream restricted to that tenant's jobs."""
        if self._open[key] >= self.max_streams:
            msg = (
                f"{self._open[key]} event streams are open with this key "
                "(max_streams_per_token); close one or try again later"
            )
            return _error(429, "too_many_streams", msg, retry_after=5)
        self._open[key] += 1
        sub = self.hub.subscribe(job_id, only)

        def close() -> None:
            self.hub.unsubscribe(sub)
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]

        return _Response(
            self._events(sub, job_id, after, finished, viewer, only),
            ping=self.heartbeat_s,
            send_timeout=self.send_timeout_s,
            headers={"Cache-Control": "no-store"},
            on_close=close,
        )

    async def _events(
        self,
        sub: Subscription,
        job_id: str | None,
        after: int,
        finished: bool,
        viewer: str,
        only: str | None,
    ) -> AsyncIterator[ServerSentEvent]:
        """Replay from the table after ``after``, then follow the tail; the job's stream
        ends after its ``JobCompleted`` (or, for a job finished before, after the replay).
        ``only``: a tenant's every-job stream skips other tenants' rows (the replay here,
        the live rows in the hub); ids show as ``viewer``'s (:func:`tenancy.shown_event`)."""
        cursor = after  # the job's seq (every job's: the global id) last read
        while True:  # replay, again if live rows overflowed meanwhile
            rows = await run_in_threadpool(self.log.read, job_id, cursor, PAGE)
            for row in rows:
                cursor = _position(row, job_id)
                if only is not None and tenant_of(row.job_id) != only:
                    continue
                yield _sse(row, job_id, viewer)
                if job_id is not None and row.type == TERMINAL:
                    return
            if len(rows) == PAGE:
                continue
            if not sub.overflowed:
                break
            sub.reset()
        if finished:
            return
        while True:  # live: the tail's rows, those the replay sent skipped
            live = await sub.next()
            if sub.closed:
                return
            if sub.overflowed:
                raise SlowClient(f"more than {sub.buffer} events waiting")
            if live is None or _position(live, job_id) <= cursor:  # None: woken, no row
                continue
            yield _sse(live, job_id, viewer)
            cursor = _position(live, job_id)
            if job_id is not None and live.type == TERMINAL:
                return


def _position(row: EventRow, job_id: str | None) -> int:
    """Where ``row`` is in its stream: the job's seq, or (every job's stream) the global id."""
    return row.seq if job_id is not None else row.id


def _sse(row: EventRow, job_id: str | None, viewer: str) -> ServerSentEvent:
    return ServerSentEvent(
        data=tenancy.shown_event(viewer, row.job_id, row.data),
        event=row.type,
        id=str(row.seq if job_id is not None else row.id),
    )


def _after(request: Request) -> int | Response | None:
    """Where the stream starts: after ``Last-Event-ID``, else ``?after=`` (None: neither)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        field = "Last-Event-ID" if "last-event-id" in request.headers else "after"
        return _error(400, "bad_query", f"{field}: an event id (an integer >= 0)", field=field)
    return int(raw.strip())


def _job_id(request: Request) -> str:
    """The internal key the path's id names for this caller (its tenant's job; 404 for any
    other), as every job route reads it (:func:`briefd.tenants.api.job_key`)."""
    given = str(request.path_params["job_id"])
    key = tenancy.job_key(request.scope, given)
    if key is None:
        raise HTTPException(404, f"job {given[:80]!r}: not a job id ({JOB_ID_PATTERN})")
    return key


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    from briefd.daemon.http_api import error

    return error(status, code, message, **extra)
