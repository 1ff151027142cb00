"""One chat-completion call over HTTP, with a hard deadline.

``requests`` timeouts bound the connect and each read, but a server that
drips one byte a second never trips a read timeout. So the body is read with
``read1`` under a watchdog that shuts the socket down when the call's total
deadline (``BRIEFD_TIMEOUT_MS``) passes, and decoded here too
(:mod:`briefd.llm.encoding`: gzip and deflate, capped after decoding).

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
import os
import ssl
import time
from typing import Any

import requests
from requests.structures import CaseInsensitiveDict

from briefd.config import Settings, StageSpec
from briefd.limits.headers import parse_rate_limits
from briefd.llm.abort import CallAbort, bound, shared_adapter
from briefd.llm.answer import Completion as Completion  # re-exported: callers import it here
from briefd.llm.answer import error_detail, parse_completion
from briefd.llm.encoding import ACCEPT_ENCODING, BodyDecoder
from briefd.llm.errors import (
    BadResponseError,
    CallCancelled,
    CallError,
    StatusError,
    TLSError,
    TransportError,
)
from briefd.messages import ErrorCode
from briefd.redaction import register_secret
from briefd.timers import call_later

_MAX_BODY = 16 * 1024 * 1024


def build_request(
    stage: StageSpec,
    prompt: str,
    settings: Settings,
    extra_messages: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The chat-completions body for one stage.

    JSON stages ask for JSON the way the server understands: ``json_schema``
    (OpenAI, vLLM, Ollama) or ``json_object`` with an inline ``schema``
    (llama.cpp's server, which refuses ``json_schema``).
    """
    model = settings.model
    messages: list[dict[str, str]] = []
    if stage.system:
        messages.append({"role": "system", "content": stage.system})
    messages.append({"role": "user", "content": prompt})
    messages.extend(extra_messages or [])
    body: dict[str, Any] = {**stage.params, "messages": messages}
    if model:
        body["model"] = model
    if stage.max_tokens is not None:
        body["max_tokens"] = stage.max_tokens
    if stage.temperature is not None:
        body["temperature"] = stage.temperature
    style = stage.response_format or settings.response_format or "json_schema"
    if stage.kind == "json" and style != "none":
        if style == "json_schema" and stage.schema_ is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": stage.name.lower(), "schema": stage.schema_},
            }
        elif stage.schema_ is not None:
            body["response_format"] = {"type": "json_object", "schema": stage.schema_}
        else:
            body["response_format"] = {"type": "json_object"}
    return body


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
    """Calls ``POST {base_url}/chat/completions`` on one ``requests.Session``.

    One client per stage actor: a Session (its cookies, its headers) is not
    shared between threads. Its connections are: the Session is mounted on the
    process's pool for the endpoint (:func:`~briefd.llm.abort.shared_adapter`,
    thread-safe below the Session), so stages and jobs reuse kept-alive
    connections instead of connecting (and for https, handshaking) per call.
    """

    def __init__(self, settings: Settings, base_url: str, abort: CallAbort | None = None) -> None:
        self._settings = settings
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._shown_url = _without_userinfo(self._url)
        self._abort = abort
        self._session = requests.Session()
        adapter = shared_adapter(self._url, settings.max_concurrent)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = "briefd"
        self._session.headers["Accept-Encoding"] = ACCEPT_ENCODING
        key = settings.api_key_value()
        if key:
            register_secret(key)
            self._session.headers["Authorization"] = f"Bearer {key}"
        # The environment (proxies, NO_PROXY, REQUESTS_CA_BUNDLE) is not re-read on every
        # call, as requests does with trust_env on (profiled at 11-45 % of the client's CPU
        # per call): it is resolved once per endpoint and set of variables (_environment).
        # ~/.netrc is not consulted: the Authorization header is set above.
        proxies, verify = _environment(self._url, _env_key())
        self._session.trust_env = False
        self._session.proxies.update(proxies)
        self._session.verify = verify
        # The call itself goes straight to the pool's adapter (see _send): the Session
        # holds the configuration, its per-call merging is skipped.
        self._adapter = adapter
        self._verify: bool | str = verify
        self._headers = {k: v for k, v in self._session.headers.items() if isinstance(v, str)}
        self._headers["Content-Type"] = "application/json"

    def close(self) -> None:
        """Forget the session; the shared pool (and its kept-alive connections) stays.

        ``Session.close`` would close the adapters it is mounted on, i.e. every
        other stage's connections, so it is not called.
        """
        self._session.adapters.clear()

    def complete(self, body: dict[str, Any], *, job_id: str, stage: str) -> Completion:
        """One call; raises a :class:`~briefd.llm.errors.CallError` subclass on any failure.

        An ``abort`` (the job was cancelled) ends the call at once with CANCELLED.
        """
        if self._abort is not None and self._abort.aborted:
            raise CallCancelled()
        with bound(self._abort):
            try:
                return self._complete(body, job_id=job_id, stage=stage)
            except CallError:
                if self._abort is not None and self._abort.aborted:
                    raise CallCancelled() from None
                raise

    def _complete(self, body: dict[str, Any], *, job_id: str, stage: str) -> Completion:
        timeout_s = self._settings.timeout_ms / 1000
        deadline = time.monotonic() + timeout_s
        connect_s = min(self._settings.connect_timeout_ms / 1000, timeout_s)
        try:
            resp = self._send(body, job_id, stage, (connect_s, timeout_s))
        except requests.Timeout:
            raise self._timeout(timeout_s) from None
        except requests.exceptions.SSLError as err:
            raise _tls_error(self._shown_url, err) from None
        except (requests.RequestException, ValueError) as err:  # ValueError: a bad header value
            raise TransportError(
                f"cannot reach the API at {self._shown_url}: {type(err).__name__}",
                code=ErrorCode.CONNECTION,
                hint="is the server up? check BRIEFD_BASE_URL",
            ) from None
        with resp:
            try:
                raw = self._read_body(resp, deadline, timeout_s)
            except BadResponseError:
                if resp.status_code < 400:
                    raise
                raw = b""  # an error status whose body cannot be read: the status says enough
        if resp.status_code >= 400:
            # Retry-After (and retry-after-ms before it) comes with the other rate headers.
            limits = parse_rate_limits(resp.headers, maximum=self._settings.retry_after_max_s)
            detail, code = error_detail(raw)
            raise StatusError(
                resp.status_code,
                detail,
                retry_after=limits.retry_after_s,
                upstream_code=code,
                limits=limits,
            )
        limits = parse_rate_limits(resp.headers, maximum=self._settings.retry_after_max_s)
        return dataclasses.replace(parse_completion(raw), limits=limits)

    def _send(
        self, body: dict[str, Any], job_id: str, stage: str, timeout: tuple[float, float]
    ) -> requests.Response:
        """POST ``body`` through the pool's adapter, as ``Session.post`` would but leaner.

        ``Session.request`` merges the session's settings, cookies, hooks and the
        environment into every call: about half of a call's client CPU in the
        profile (100 jobs, K=16), for nothing briefd uses. The request is prepared
        here (the URL was checked once, the body is JSON) and sent by the adapter,
        so proxies, TLS verification, timeouts and requests' exceptions are as before.
        Not done: cookies (an API authenticates by header) and redirects (a chat
        endpoint that redirects is misconfigured; its 3xx is a bad answer, not followed).
        """
        data = json.dumps(body, allow_nan=False).encode("utf-8")
        prep = requests.PreparedRequest()
        prep.method = "POST"
        prep.url = self._url
        prep.headers = CaseInsensitiveDict(self._headers)
        prep.headers["Content-Length"] = str(len(data))
        prep.headers["X-Briefd-Job"] = job_id
        prep.headers["X-Briefd-Stage"] = stage
        prep.body = data
        return self._adapter.send(
            prep,
            stream=True,
            timeout=timeout,
            verify=self._verify,
            proxies=self._session.proxies,
        )

    def _read_body(self, resp: requests.Response, deadline: float, timeout_s: float) -> bytes:
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
                chunk = resp.raw.read1(65536)
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


def _cut(resp: requests.Response) -> None:
    """The watchdog: shut the response's socket (once its connection is back in the pool,
    urllib3 refuses, and the read it would have cut is over anyway)."""
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        resp.raw.shutdown()


def _without_userinfo(url: str) -> str:
    """``url`` as it may be shown: without ``user:password@``."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"


def _tls_error(url: str, err: requests.exceptions.SSLError) -> TLSError:
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


_ENV_VARS = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
)  # fmt: skip
"""What requests reads from the environment for a call (besides ~/.netrc, unused here)."""


def _env_key() -> tuple[str | None, ...]:
    """The variables that decide proxies and the CA bundle, as they are now (a cache key)."""
    return tuple(os.environ.get(name) for name in _ENV_VARS)


@functools.lru_cache(maxsize=64)
def _environment(url: str, key: tuple[str | None, ...]) -> tuple[dict[str, str], bool | str]:
    """Proxies and ``verify`` for ``url`` as requests would read them from the environment.

    Cached by the variables' values (``key``), so a changed variable is seen by the
    next client and an unchanged environment is read once, not on every call.
    """
    del key  # only the cache's: requests reads the environment itself
    env = requests.Session().merge_environment_settings(url, {}, None, None, None)
    verify = env["verify"]
    return dict(env["proxies"]), True if verify is None else verify
