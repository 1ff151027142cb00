"""One chat-completion call over HTTP, with a hard deadline.

``requests`` timeouts bound the connect and each read, but a server that
drips one byte a second never trips a read timeout. So the body is read with
``read1`` under a watchdog that shuts the socket down when the call's total
deadline (``BRIEFD_TIMEOUT_MS``) passes.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from briefd.config import Settings, StageSpec
from briefd.llm.abort import AbortableAdapter, CallAbort, bound
from briefd.llm.errors import (
    BadResponseError,
    CallCancelled,
    CallError,
    StatusError,
    TransportError,
    TruncatedError,
)
from briefd.messages import ErrorCode, Usage

_MAX_BODY = 16 * 1024 * 1024
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Completion:
    """What the model said, why it stopped, and what it cost."""

    text: str
    finish_reason: str | None
    usage: Usage = field(default_factory=Usage)


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

    One client per stage actor: a Session is not shared between threads.
    """

    def __init__(self, settings: Settings, base_url: str, abort: CallAbort | None = None) -> None:
        self._settings = settings
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._abort = abort
        self._session = requests.Session()
        adapter = AbortableAdapter()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = "briefd"
        key = settings.api_key_value()
        if key:
            self._session.headers["Authorization"] = f"Bearer {key}"

    def close(self) -> None:
        self._session.close()

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
        except requests.RequestException as err:
            raise TransportError(
                f"cannot reach the API at {self._url}: {type(err).__name__}",
                code=ErrorCode.CONNECTION,
                hint="is the server up? check BRIEFD_BASE_URL",
            ) from None
        with resp:
            raw = self._read_body(resp, deadline, timeout_s)
        if resp.status_code >= 400:
            retry_after = parse_retry_after(
                resp.headers.get("Retry-After"), maximum=self._settings.retry_after_max_s
            )
            raise StatusError(resp.status_code, _error_detail(raw), retry_after=retry_after)
        return _parse_completion(raw)

    def _read_body(self, resp: requests.Response, deadline: float, timeout_s: float) -> bytes:
        remaining = deadline - time.monotonic()
        watchdog = threading.Timer(max(remaining, 0.0), resp.raw.shutdown)
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
                chunks.append(chunk)
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


def _error_detail(raw: bytes) -> str:
    """The server's own error message, if it gave one, cut short."""
    try:
        data = json.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:_DETAIL_CHARS]
        if isinstance(err, str):
            return err[:_DETAIL_CHARS]
    except ValueError:
        pass
    return raw.decode("utf-8", "replace").strip()[:_DETAIL_CHARS]


def _parse_completion(raw: bytes) -> Completion:
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        text = choice["message"]["content"]
        finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError):
        raise BadResponseError("the answer is not a chat completion") from None
    if not isinstance(text, str):
        raise BadResponseError("the answer has no text content")
    usage_raw = data.get("usage") or {}
    usage = Usage(
        prompt_tokens=int(usage_raw.get("prompt_tokens") or 0),
        completion_tokens=int(usage_raw.get("completion_tokens") or 0),
    )
    if finish == "length":
        raise TruncatedError(
            f"the model stopped at its token limit after {usage.completion_tokens} tokens"
        )
    return Completion(text=text, finish_reason=finish, usage=usage)
