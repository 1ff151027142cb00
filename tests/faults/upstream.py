"""A raw-socket fake upstream: an OpenAI-compatible endpoint that misbehaves on cue.

The faults that matter where upstream text enters briefd live below what an HTTP
library lets a server do: a body shorter than its ``Content-Length``, a reset in the
middle of a body, a drip, a gzip bomb, bytes that are not UTF-8. So this server
speaks HTTP/1.1 by hand on a loopback socket, one thread per connection, and closes
every connection after one exchange.

Use it as a context manager::

    from faults.upstream import FakeUpstream, silent, status

    with FakeUpstream() as up:                        # default: a normal completion
        up.on("PLAYS_MD", silent())                   # every PLAYS_MD request hangs
        up.on("BRIEFING_MD", status(503), times=1)    # the first BRIEFING_MD gets a 503
        settings = Settings(base_url=up.base_url, api_key="sk-canary-...")
        ...
        up.count("job-1", "PLAYS_MD")                 # requests received for (job, stage)
        up.authorizations()                           # every Authorization header received

Rules (:meth:`FakeUpstream.on`) are tried in the order they were added: the first
whose stage (``"*"`` for any) and job (None for any) match the request's
``X-Briefd-Stage`` / ``X-Briefd-Job`` headers, and that has uses left, answers.
Otherwise :func:`ok` does. A behaviour is any ``Callable[[Exchange], None]``: the
factories in :mod:`faults.behaviours` (all re-exported here) cover the usual faults,
and :func:`respond` / :func:`completion` help write new ones.

Bounded: at most ``max_connections`` handler threads at once (more are refused);
every behaviour that waits wakes when its client goes away, on :meth:`close`, or
after ``max_wait_s``; :meth:`close` shuts every open connection and joins the threads.
Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from types import TracebackType

from briefd.sim.content import error_body
from faults.behaviours import (
    CHAT_PATH,
    ESCAPES,
    FORGED_LINE,
    QUOTA_MESSAGE,
    RAW_SURROGATE,
    SURROGATE_TEXT,
    TERMINAL_TEXT,
    Behaviour,
    Exchange,
    Request,
    answer,
    bomb,
    completion,
    deflate_ok,
    drip,
    echo_authorization,
    endless_body,
    error_with_escapes,
    gzip_bomb,
    gzip_ok,
    head,
    html_200,
    insufficient_quota,
    lone_surrogates,
    malformed_usage,
    no_choices,
    null_content,
    ok,
    raw,
    reset_mid_body,
    respond,
    short_body,
    silent,
    status,
    terminal_escapes,
    unknown_encoding,
)

MODELS_PATH = "/v1/models"

__all__ = [
    "CHAT_PATH",
    "ESCAPES",
    "FORGED_LINE",
    "QUOTA_MESSAGE",
    "RAW_SURROGATE",
    "SURROGATE_TEXT",
    "TERMINAL_TEXT",
    "Behaviour",
    "Exchange",
    "FakeUpstream",
    "Request",
    "answer",
    "bomb",
    "completion",
    "deflate_ok",
    "drip",
    "echo_authorization",
    "endless_body",
    "error_with_escapes",
    "gzip_bomb",
    "gzip_ok",
    "head",
    "html_200",
    "insufficient_quota",
    "lone_surrogates",
    "malformed_usage",
    "no_choices",
    "null_content",
    "ok",
    "raw",
    "reset_mid_body",
    "respond",
    "short_body",
    "silent",
    "status",
    "terminal_escapes",
    "unknown_encoding",
]

_HEAD_LIMIT = 65_536
_BODY_LIMIT = 8 * 1024 * 1024
_POLL_S = 0.05


@dataclass
class _Rule:
    stage: str
    job: str | None
    behaviour: Behaviour
    left: int | None


@dataclass
class _Counters:
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    tls_failures: int = 0


# -- the server ---------------------------------------------------------------------


class FakeUpstream:
    """The fake server: bind on construction, serve until :meth:`close`."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 64,
        max_wait_s: float = 30.0,
        io_timeout_s: float = 10.0,
    ) -> None:
        self._tls = tls
        self._max_connections = max_connections
        self._max_wait_s = max_wait_s
        self._io_timeout_s = io_timeout_s
        self._rules: list[_Rule] = []
        self._counters = _Counters()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="fake-upstream", daemon=True)
        self._acceptor.start()

    @property
    def base_url(self) -> str:
        """What ``BRIEFD_BASE_URL`` should be (``https`` when serving TLS)."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    def on(
        self, stage: str, behaviour: Behaviour, *, job: str | None = None, times: int | None = None
    ) -> FakeUpstream:
        """Answer requests for ``stage`` (``"*"``: any) with ``behaviour``, ``times`` times."""
        with self._lock:
            self._rules.append(_Rule(stage, job, behaviour, times))
        return self

    def count(self, job: str, stage: str) -> int:
        """Requests received for (job, stage)."""
        return self.counts().get((job, stage), 0)

    def counts(self) -> dict[tuple[str, str], int]:
        """Requests received per (job, stage)."""
        out: dict[tuple[str, str], int] = {}
        for req in self.requests():
            out[(req.job, req.stage)] = out.get((req.job, req.stage), 0) + 1
        return out

    def requests(self) -> list[Request]:
        """Every request received, in order."""
        with self._lock:
            return list(self._counters.requests)

    def authorizations(self) -> list[str | None]:
        """The Authorization header of every request, in order."""
        return [r.authorization for r in self.requests()]

    @property
    def connections(self) -> int:
        """TCP connections accepted (a TLS handshake that failed counts too)."""
        with self._lock:
            return self._counters.connections

    @property
    def tls_failures(self) -> int:
        """TLS handshakes that failed (the client refused our certificate, say)."""
        with self._lock:
            return self._counters.tls_failures

    def close(self) -> None:
        """Stop accepting, cut every open connection, join every thread."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks, threads = list(self._open), list(self._threads)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        for t in threads:
            t.join(5)

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], _POLL_S)
                if not readable:
                    continue
                conn, _ = self._listener.accept()
            except (OSError, ValueError):
                return
            with self._lock:
                self._counters.connections += 1
                full = len(self._threads) >= self._max_connections
            if full:
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._threads.add(thread)
                self._open.add(conn)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        sock = conn
        try:
            conn.settimeout(self._io_timeout_s)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    with self._lock:
                        self._counters.tls_failures += 1
                    return
            request = _read_request(sock)
            if request is None:
                return
            if request.method == "GET" and request.path == MODELS_PATH:
                # What a real upstream answers a client that names no model (briefd asks it
                # once at start); not a chat call, so not counted among the requests.
                ex = Exchange(request, sock, self._stop, self._max_wait_s)
                respond(ex, 200, {"object": "list", "data": [{"id": "upstream-model"}]})
                return
            with self._lock:
                self._counters.requests.append(request)
                behaviour = self._pick(request)
            ex = Exchange(request, sock, self._stop, self._max_wait_s)
            if request.method != "POST" or request.path != CHAT_PATH:
                respond(ex, 404, error_body(404, f"no route {request.path}"))
            else:
                behaviour(ex)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._open.discard(conn)
                self._threads.discard(threading.current_thread())

    def _pick(self, request: Request) -> Behaviour:
        for rule in self._rules:
            if rule.stage not in ("*", request.stage) or rule.job not in (None, request.job):
                continue
            if rule.left is None:
                return rule.behaviour
            if rule.left > 0:
                rule.left -= 1
                return rule.behaviour
        return ok()


def _read_request(sock: socket.socket) -> Request | None:
    """One request (head and Content-Length body), or None if the client sent none."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > _HEAD_LIMIT:
            return None
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    lines = head_bytes.decode("latin-1").split("\r\n")
    method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length", "0") or 0), _BODY_LIMIT)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return Request(method, path, headers, body[:length])
