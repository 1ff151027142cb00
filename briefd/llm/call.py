"""One chat-completion call over HTTP, with a hard deadline.

``requests`` timeouts bound the connect and each read, but a server that
drips one byte a second never trips a read timeout. So the body is read with
``read1`` under a watchdog that shuts the socket down when the call's total
deadline (``BRIEFD_TIMEOUT_MS``) passes, and decoded here too
(:mod:`briefd.llm.encoding`: gzip and deflate, capped after decoding).

This is where upstream text enters briefd, so it is made safe here
(:mod:`briefd.llm.text`): the completion's text is made encodable (lone
surrogates become U+FFFD, surrogate pairs are kept) so nothing downstream
can fail to write a document that was paid for; every message quoting the
server is redacted and kept to one line. The client registers its key as a
secret (:mod:`briefd.redaction`) so it is redacted wherever it turns up.

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
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from briefd.config import Settings, StageSpec
from briefd.limits.headers import parse_rate_limits
from briefd.llm.abort import CallAbort, bound, shared_adapter
from briefd.llm.encoding import ACCEPT_ENCODING, BodyDecoder
from briefd.llm.errors import (
    QUOTA_CODES,
    BadResponseError,
    CallCancelled,
    CallError,
    StatusError,
    TLSError,
    TransportError,
    TruncatedError,
)
from briefd.llm.text import encodable, one_line
from briefd.messages import ErrorCode, Usage
from briefd.messages.token import RateLimits
from briefd.redaction import register_secret

_MAX_BODY = 16 * 1024 * 1024
_DETAIL_CHARS = 300
_MAX_TOKENS_COUNT = 2**53  # larger "token counts" are nonsense, and not exact as JSON numbers


@dataclass(frozen=True)
class Completion:
    """What the model said, why it stopped, and what it cost."""

    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)
    limits: RateLimits | None = None  # the server's rate-limit headers, for the limiter


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
        headers = {"X-Briefd-Job": job_id, "X-Briefd-Stage": stage}
        try:
            resp = self._session.post(
                self._url, json=body, headers=headers, stream=True, timeout=(connect_s, timeout_s)
            )
        except requests.Timeout:
            raise self._timeout(timeout_s) from None
        except requests.exceptions.SSLError as err:
            raise _tls_error(self._shown_url, err) from None
        except requests.RequestException as err:
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
            detail, code = _error_detail(raw)
            raise StatusError(
                resp.status_code,
                detail,
                retry_after=limits.retry_after_s,
                upstream_code=code,
                limits=limits,
            )
        limits = parse_rate_limits(resp.headers, maximum=self._settings.retry_after_max_s)
        return dataclasses.replace(_parse_completion(raw), limits=limits)

    def _read_body(self, resp: requests.Response, deadline: float, timeout_s: float) -> bytes:
        """The body, decoded, within the deadline and the size cap (before and after decoding)."""
        decoder = BodyDecoder(resp.headers.get("Content-Encoding"), _MAX_BODY)
        remaining = deadline - time.monotonic()
        watchdog = threading.Timer(max(remaining, 0.0), _cut, (resp,))
        watchdog.daemon = True
        watchdog.start()
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


def _loads(raw: bytes) -> Any:
    """JSON from the wire; bytes that are not UTF-8 are replaced rather than refused."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        return json.loads(raw.decode("utf-8", "replace"))


def _error_detail(raw: bytes) -> tuple[str, str | None]:
    """The server's own error message (redacted, one line, cut short), and its error code.

    The code is OpenAI's ``error.code`` or ``error.type``, preferring one that says the
    quota is exhausted.
    """
    try:
        data = _loads(raw)
    except (ValueError, RecursionError):
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        codes = [c for c in (err.get("code"), err.get("type")) if isinstance(c, str)]
        code = next((c for c in codes if c in QUOTA_CODES), codes[0] if codes else None)
        message = err.get("message")
        if isinstance(message, str):
            return one_line(message.strip(), _DETAIL_CHARS), code
        return one_line(raw.decode("utf-8", "replace").strip(), _DETAIL_CHARS), code
    if isinstance(err, str):
        return one_line(err.strip(), _DETAIL_CHARS), None
    return one_line(raw.decode("utf-8", "replace").strip(), _DETAIL_CHARS), None


def _token_count(value: Any) -> int:
    """A usage count, or 0 when it is not a non-negative integer (floats like 12.0 pass)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= _MAX_TOKENS_COUNT else 0


def _usage(value: Any) -> Usage:
    """What the call cost, as far as the server said; malformed parts count zero."""
    if not isinstance(value, dict):
        return Usage()
    return Usage(
        prompt_tokens=_token_count(value.get("prompt_tokens")),
        completion_tokens=_token_count(value.get("completion_tokens")),
    )


def _parse_completion(raw: bytes) -> Completion:
    try:
        data = _loads(raw)
        choice = data["choices"][0]
        text = choice["message"]["content"]
        finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        raise BadResponseError("the answer is not a chat completion") from None
    if not isinstance(text, str):
        raise BadResponseError("the answer has no text content")
    usage = _usage(data.get("usage"))
    if finish == "length":
        raise TruncatedError(
            f"the model stopped at its token limit after {usage.completion_tokens} tokens"
        )
    finish_reason = encodable(finish) if isinstance(finish, str) else None
    return Completion(text=encodable(text), finish_reason=finish_reason, usage=usage)


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
