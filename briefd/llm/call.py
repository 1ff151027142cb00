"""One chat-completion call over HTTP, with a hard deadline.

``requests`` timeouts bound the connect and each read, but a server that
drips one byte a second never trips a read timeout. So the body is read with
``read1`` under a watchdog that shuts the socket down when the call's total
deadline (``BRIEFD_TIMEOUT_MS``) passes, and decoded here too
(:mod:`briefd.llm.encoding`: gzip and deflate, capped after decoding). A streamed
answer (``text/event-stream``) is read by :mod:`briefd.llm.stream` under the same
deadline and cap, plus a first-token and an idle clock.

This is where upstream text enters briefd, so it is made safe here and in
:mod:`briefd.llm.answer`, which reads the answer (:mod:`briefd.llm.text`): the
completion's text is made encodable (lone surrogates become U+FFFD, surrogate
pairs are kept) so nothing downstream can fail to write a document that was
paid for; every message quoting the server is redacted and kept to one line.
The client registers its key as a secret (:mod:`briefd.redaction`) so it is
redacted wherever it turns up.

A malformed ``usage`` (not an object, counts that are not non-negative
integers) counts as zero tokens and the document is kept: the tokens were
spent either way, and a bookkeeping field is no reason to buy the document
again. A 429 that says ``insufficient_quota`` is QUOTA_EXCEEDED, not retried.
An untrusted certificate is TLS_ERROR, not retried; verification stays on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import functools
import json
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import requests
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import BaseHTTPResponse

from briefd.config import Settings
from briefd.config.endpoints import DEFAULT_ENDPOINT, EndpointSpec
from briefd.limits.headers import parse_rate_limits
from briefd.llm.abort import CallAbort, bound
from briefd.llm.answer import Completion as Completion  # re-exported: callers import it here
from briefd.llm.answer import error_detail, parse_completion
from briefd.llm.encoding import BodyDecoder
from briefd.llm.endpoint import endpoint_for
from briefd.llm.endpoint import environment as _environment  # noqa: F401 (tests clear it)
from briefd.llm.errors import (
    BadResponseError,
    CallCancelled,
    CallError,
    StatusError,
    TLSError,
    TransportError,
)
from briefd.llm.kinds import build_request as build_request  # re-exported: callers import it here
from briefd.llm.stream import StreamProgress, is_event_stream, read_stream
from briefd.messages import ErrorCode
from briefd.redaction import register_secret
from briefd.timers import call_later

_MAX_BODY = 16 * 1024 * 1024
_TIMEOUTS = (requests.Timeout, Urllib3Timeout)
"""A connect or read timeout, from urllib3 (the pool) or requests (through a proxy)."""
_TLS_ERRORS = (requests.exceptions.SSLError, Urllib3SSLError)


def parse_retry_after(
    value: str | None, *, maximum: float, now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), clamped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), maximum)


class ChatClient:
    """Calls ``POST {base_url}/chat/completions`` for one stage actor.

    What it needs of the endpoint (headers, proxies, CA bundle, the pool) is
    the process's, shared by every client of that endpoint, key and environment
    (:func:`~briefd.llm.endpoint.endpoint_for`): a client is made per stage, so
    building them per client was building them per call. The connections come
    from the process's pool for the endpoint (:func:`~briefd.llm.abort.shared_adapter`),
    so stages and jobs reuse kept-alive connections instead of connecting (and for
    https, handshaking) per call.
    """

    def __init__(
        self,
        settings: Settings,
        base_url: str,
        abort: CallAbort | None = None,
        *,
        endpoint: EndpointSpec | None = None,
        model: str = "",
        api_key: str | None = None,
    ) -> None:
        """A client of ``base_url`` (or of ``endpoint``, for ``model``: Azure names the
        deployment in the URL). ``api_key`` is the endpoint's key (default ``BRIEFD_API_KEY``)."""
        self._settings = settings
        self._url = chat_url(endpoint, model) if endpoint is not None else chat_url_of(base_url)
        self._shown_url = _without_userinfo(self._url)
        self._abort = abort
        self._spec = endpoint
        key = api_key if api_key is not None else settings.api_key_value()
        if key:
            register_secret(key)
        if endpoint is not None:  # for error hints: the kind, the key's variable, the model
            self.endpoint_kind = endpoint.kind
            self.key_env = endpoint.api_key_env or (
                "BRIEFD_API_KEY" if endpoint.name == DEFAULT_ENDPOINT else ""
            )
        self._model = model
        auth = "api-key" if endpoint is not None and endpoint.kind == "azure" else "Authorization"
        extra = tuple(sorted(endpoint.headers.items())) if endpoint is not None else ()
        self._endpoint = endpoint_for(self._url, settings.max_concurrent, key, auth, extra)

    @property
    def _session(self) -> requests.Session:
        """The endpoint's configuration as a ``requests.Session`` (it never sends)."""
        return self._endpoint.session

    def close(self) -> None:
        """Nothing to free: the endpoint's pool (and its kept-alive connections) stays."""

    def complete(
        self,
        body: dict[str, Any],
        *,
        job_id: str,
        stage: str,
        on_sent: Callable[[], None] | None = None,
        on_progress: Callable[[StreamProgress], None] | None = None,
    ) -> Completion:
        """One call; raises a :class:`~briefd.llm.errors.CallError` subclass on any failure.

        An ``abort`` (the job was cancelled) ends the call at once with CANCELLED.
        ``on_sent()`` is called once the request has been written, if it is. A
        streamed answer (``body["stream"]``, :mod:`briefd.llm.stream`) calls
        ``on_progress`` after each read that brought tokens, in this thread.
        """
        if self._abort is not None and self._abort.aborted:
            raise CallCancelled()
        sent = _Sent(on_sent)
        with bound(self._abort, sent):
            try:
                return self._complete(body, job_id=job_id, stage=stage, sent=sent, on=on_progress)
            except CallError:
                if self._abort is not None and self._abort.aborted:
                    raise CallCancelled() from None
                raise

    def _complete(
        self,
        body: dict[str, Any],
        *,
        job_id: str,
        stage: str,
        sent: _Sent,
        on: Callable[[StreamProgress], None] | None,
    ) -> Completion:
        timeout_s = self._settings.timeout_ms / 1000
        deadline = time.monotonic() + timeout_s
        connect_s = min(self._settings.connect_timeout_ms / 1000, timeout_s)
        try:
            resp = self._send(body, job_id, stage, (connect_s, timeout_s))
        except _TIMEOUTS as err:
            if not isinstance(err, NewConnectionError):  # refused: a connect "timeout" by type
                raise self._timeout(timeout_s) from None
            raise self._unreachable(err) from None
        except _TLS_ERRORS as err:
            raise _tls_error(self._shown_url, err) from None
        except (requests.RequestException, HTTPError, OSError, ValueError) as err:
            raise self._unreachable(err) from None  # ValueError: a bad header value
        if resp.status < 300 and is_event_stream(resp.headers.get("Content-Type")):
            return self._read_stream(resp, sent.at or time.monotonic(), deadline, timeout_s, on)
        try:
            try:
                raw = self._read_body(resp, deadline, timeout_s)
            except BadResponseError:
                if resp.status < 400:
                    raise
                raw = b""  # an error status whose body cannot be read: the status says enough
        finally:
            resp.close()  # a body not read whole closes its connection; a whole one is pooled
            resp.release_conn()
        headers = dict(resp.headers)  # a repeated header's values joined, as requests did
        if resp.status >= 400:
            # Retry-After (and retry-after-ms before it) comes with the other rate headers.
            limits = parse_rate_limits(headers, maximum=self._settings.retry_after_max_s)
            detail, code = error_detail(raw)
            raise StatusError(
                resp.status,
                detail,
                retry_after=limits.retry_after_s,
                upstream_code=code,
                limits=limits,
                **self._hint_context(body),
            )
        limits = parse_rate_limits(headers, maximum=self._settings.retry_after_max_s)
        return dataclasses.replace(parse_completion(raw), limits=limits)

    def _read_stream(
        self,
        resp: BaseHTTPResponse,
        sent_at: float,
        deadline: float,
        timeout_s: float,
        on_progress: Callable[[StreamProgress], None] | None,
    ) -> Completion:
        """A streamed answer, read under the total, first-token and idle clocks."""
        settings = self._settings
        first_token_ms = settings.first_token_timeout_ms or settings.timeout_ms
        try:
            completion = read_stream(
                resp,
                sent_at=sent_at,
                deadline=deadline,
                timeout_s=timeout_s,
                first_token_s=first_token_ms / 1000,
                idle_s=settings.idle_timeout_ms / 1000,
                max_body=_MAX_BODY,
                on_progress=on_progress,
            )
        finally:
            resp.close()  # a stream read to its end is pooled; one cut short closes
            resp.release_conn()
        limits = parse_rate_limits(dict(resp.headers), maximum=settings.retry_after_max_s)
        return dataclasses.replace(completion, limits=limits)

    endpoint_kind: str = ""
    """What the endpoint speaks (openai, azure, compatible), for error hints; '' = unknown,
    or with ``BRIEFD_BASE_URL`` alone, ``BRIEFD_ENDPOINT_KIND``."""
    key_env: str = ""
    """The variable that holds the endpoint's key, for error hints; '' = ``BRIEFD_API_KEY``."""

    def _hint_context(self, body: dict[str, Any]) -> dict[str, Any]:
        """What sharpens an error status's hint (:func:`~briefd.llm.hints.status_hint`)."""
        settings = self._settings
        single = settings.base_url is not None and settings.endpoints is None
        model = body.get("model") or self._model  # Azure names it in the URL, not the body
        messages = body.get("messages")
        chars = sum(
            len(m.get("content") or "")
            for m in (messages if isinstance(messages, list) else [])
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
        return {
            "endpoint_kind": self.endpoint_kind or (settings.endpoint_kind if single else ""),
            "key_env": self.key_env or ("BRIEFD_API_KEY" if single else ""),
            "model": model if isinstance(model, str) else "",
            "prompt_chars": chars or None,
        }

    def _unreachable(self, err: BaseException) -> TransportError:
        return TransportError(
            f"cannot reach the API at {self._shown_url}: {type(err).__name__}",
            code=ErrorCode.CONNECTION,
            hint="is the server up? check BRIEFD_BASE_URL",
        )

    def _send(
        self, body: dict[str, Any], job_id: str, stage: str, timeout: tuple[float, float]
    ) -> BaseHTTPResponse:
        """POST ``body`` through the endpoint's pool (:meth:`~briefd.llm.endpoint.Endpoint.send`).

        ``Session.request`` merged the session's settings, cookies, hooks and the
        environment into every call, and ``HTTPAdapter.send`` looked the pool up and
        wrapped the answer: most of a call's client CPU, for nothing briefd uses.
        Not done: cookies (an API authenticates by header) and redirects (a chat
        endpoint that redirects is misconfigured; its 3xx is a bad answer, not followed).
        """
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        return self._endpoint.send(data, job_id, stage, timeout)

    def _read_body(self, resp: BaseHTTPResponse, deadline: float, timeout_s: float) -> bytes:
        """The body, decoded, within the deadline and the size cap (before and after decoding).

        The watchdog is an entry on the process's one timer thread (:func:`call_later`),
        not a ``threading.Timer``: a thread started per call cost ~0.2 ms of CPU.
        """
        decoder = BodyDecoder(resp.headers.get("Content-Encoding"), _MAX_BODY)
        remaining = deadline - time.monotonic()
        watchdog = call_later(max(remaining, 0.0), functools.partial(_cut, resp))
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                if time.monotonic() >= deadline:
                    raise self._timeout(timeout_s)
                chunk = resp.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > _MAX_BODY:
                    raise BadResponseError(f"response larger than {_MAX_BODY} bytes")
                chunks.append(decoder.feed(chunk))
            chunks.append(decoder.finish())
        except CallError:
            raise
        except Exception as err:  # OSError, and urllib3 protocol errors that are not OSErrors
            if time.monotonic() >= deadline - 0.001:
                raise self._timeout(timeout_s) from None
            raise TransportError(
                f"connection lost while reading the answer: {type(err).__name__}",
                code=ErrorCode.CONNECTION,
                hint="the server closed the connection; retried automatically",
            ) from None
        finally:
            watchdog.cancel()
        if time.monotonic() >= deadline:
            raise self._timeout(timeout_s)
        return b"".join(chunks)

    @staticmethod
    def _timeout(timeout_s: float) -> TransportError:
        return TransportError(
            f"no complete answer within {timeout_s:g}s",
            code=ErrorCode.TIMEOUT,
            hint="raise BRIEFD_TIMEOUT_MS or check the server's load",
        )


class _Sent:
    """``on_sent`` that also notes when the request went out (a stream's first-token clock)."""

    __slots__ = ("_then", "at")

    def __init__(self, then: Callable[[], None] | None) -> None:
        self.at: float | None = None
        self._then = then

    def __call__(self) -> None:
        self.at = time.monotonic()
        if self._then is not None:
            self._then()


def chat_url_of(base_url: str) -> str:
    """``{base_url}/chat/completions``, a query string (Azure's api-version) kept after it."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") + "/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def chat_url(endpoint: EndpointSpec, model: str) -> str:
    """Where ``endpoint`` takes a chat call for ``model``.

    Azure OpenAI: ``{base_url}/openai/deployments/{deployment}/chat/completions?api-version=``.
    """
    if endpoint.kind == "azure":
        query = urlencode({"api-version": endpoint.api_version or ""})
        deployment = quote(model, safe="")
        return f"{endpoint.base_url}/openai/deployments/{deployment}/chat/completions?{query}"
    return chat_url_of(endpoint.base_url)


def _cut(resp: BaseHTTPResponse) -> None:
    """The watchdog: shut the response's socket (once its connection is back in the pool,
    urllib3 refuses, and the read it would have cut is over anyway)."""
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        resp.shutdown()


def _without_userinfo(url: str) -> str:
    """``url`` as it may be shown: without ``user:password@``."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"


def _tls_error(url: str, err: BaseException) -> TLSError:
    """TLS_ERROR with the reason ``ssl`` gave, found down the exception chain."""
    stack: list[object] = [err]
    seen: set[int] = set()
    while stack:
        exc = stack.pop()
        if not isinstance(exc, BaseException) or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = exc.verify_message or "certificate verify failed"
            return TLSError(f"TLS: the certificate of {url} is not trusted: {reason}")
        if isinstance(exc, ssl.SSLError):
            return TLSError(
                f"TLS handshake with {url} failed: {exc.reason or type(exc).__name__}",
                hint="check BRIEFD_BASE_URL's scheme (https to a plain-http server fails so); "
                "for a certificate problem, point REQUESTS_CA_BUNDLE at the server's CA",
            )
        stack += [*exc.args, getattr(exc, "reason", None), exc.__cause__, exc.__context__]
    return TLSError(f"TLS handshake with {url} failed")
