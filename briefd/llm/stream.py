"""Reading a streamed chat completion (``stream: true``) into the same :class:`Completion`.

A streamed answer tells briefd three things a whole one cannot: when the first
token came (``ttft_ms``), that a generation has stopped coming (a stall, cut after
seconds rather than at the total deadline), and how far it has come (the stage's
progress). Everything after the call (extraction, validation, retries, fallbacks,
the journal) works on the assembled text exactly as on a whole answer.

Three clocks cut a stream, all kept by one watchdog entry on the process's timer
thread (:class:`StreamClock`, re-armed only when it fires, so a call costs a few
timer entries, not one per chunk) that shuts the socket down:

* the total deadline, ``BRIEFD_TIMEOUT_MS`` from the request: ``TIMEOUT``;
* before the first token, ``BRIEFD_FIRST_TOKEN_TIMEOUT_MS`` (unset: the total): ``STALLED``;
* after it, ``BRIEFD_IDLE_TIMEOUT_MS`` with no event: ``STALLED``. A comment (a
  keep-alive) is not an event: a server that only says it is alive is stalled.

A "token" here is a chunk whose delta has content (or reasoning content: the
model is writing, if not yet the answer). Its text is made safe as a whole answer's
is (:mod:`briefd.llm.answer`): joined first, so a surrogate pair split between two
chunks stays a pair, then made encodable. The body is decoded (gzip) and capped as a
whole answer is. An error sent in the stream (OpenAI's ``data: {"error": ...}``, an
``event: error``, llama.cpp's ``error:`` line) is :class:`StreamError`, retried
unless it says the quota is spent. A stream that ends before a finish reason is a
lost connection (retried); ``finish_reason: length`` is TRUNCATED, as for a whole answer.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic_core import from_json
from urllib3.response import BaseHTTPResponse

from briefd.llm.answer import Completion, _usage, server_ms_of
from briefd.llm.answer import _model as model_name
from briefd.llm.chunked import body_reader
from briefd.llm.encoding import BodyDecoder
from briefd.llm.errors import (
    QUOTA_CODES,
    BadResponseError,
    CallError,
    StreamError,
    TransportError,
    TruncatedError,
)
from briefd.llm.sse import SSEEvent, SSEParser
from briefd.llm.text import encodable, one_line
from briefd.messages import ErrorCode, ServerWork, Usage
from briefd.timers import TimerHandle, call_later
from briefd.worktime import timing_of

END_GRACE_S = 1.0
"""After ``[DONE]``, how long the body's end may take (it comes in the same write, as a rule)."""


def is_event_stream(content_type: str | None) -> bool:
    """Whether a response's ``Content-Type`` says Server-Sent Events."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "text/event-stream"


class StreamProgress:
    """What a stream has brought so far; handed to ``on_progress`` after each read.

    ``tokens`` counts content chunks (a chunk is about a token on every server that
    streams), or the usage's completion tokens where a server reports them as it goes.
    """

    __slots__ = ("_parts", "tokens")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.tokens = 0

    def tail(self, chars: int = 200) -> str:
        """The last ``chars`` characters written so far (cheap: only the last parts)."""
        out: list[str] = []
        size = 0
        for part in reversed(self._parts):
            out.append(part)
            size += len(part)
            if size >= chars:
                break
        return "".join(reversed(out))[-chars:]


class StreamClock:
    """The stream's watchdog: cuts the socket when the next due clock passes; says why.

    It is armed for the earliest the due time can be (before the first token: no later
    than an idle timeout from now, what a first token now would make it). Events only
    move the due time later (``last_at``), so a read just notes the time
    (:meth:`event`) and the watchdog, when it wakes early, sleeps again until the due
    time as it is then: a call costs one timer entry, as a whole answer's watchdog
    does, not one per token (re-arming woke the timer thread, a few context switches
    a call). ``[DONE]`` with the body's end still to come is the one change that brings
    it forward (:meth:`answered`).
    """

    def __init__(
        self,
        resp: BaseHTTPResponse,
        *,
        sent_at: float,
        deadline: float,
        first_token_s: float,
        idle_s: float,
    ) -> None:
        self._resp = resp
        self._sent_at = sent_at
        self._deadline = deadline
        self._first_token_s = first_token_s
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._handle: TimerHandle | None = None
        self._done = False
        self._ending = False
        self.first_at: float | None = None
        self.last_at = sent_at
        self.reason: str | None = None  # "deadline", "first token" or "idle" once cut

    def _due(self) -> tuple[float, str]:
        if self._ending:
            due, reason = self.last_at + END_GRACE_S, "idle"
        elif self.first_at is None:
            due, reason = self._sent_at + self._first_token_s, "first token"
        else:
            due, reason = self.last_at + self._idle_s, "idle"
        return (due, reason) if due < self._deadline else (self._deadline, "deadline")

    def start(self) -> None:
        self._arm(time.monotonic())

    def _arm(self, now: float) -> None:
        """(Under the lock, or before any other thread sees the clock) sleep until the
        earliest the due time can be: the events to come move it no earlier, so they
        need not re-arm it (one timer entry a call, as a whole answer's watchdog)."""
        due, _ = self._due()
        if self.first_at is None and not self._ending:
            due = min(due, now + self._idle_s)  # a first token now would make it this
        self._handle = call_later(max(due - now, 0.0), self._fire)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            due, reason = self._due()
            now = time.monotonic()
            if now < due:  # an event came since: sleep until the clock it moved
                self._arm(now)
                return
            self.reason = reason
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            self._resp.shutdown()

    def event(self, now: float, *, token: bool) -> None:
        """An event came (``token``: the first token too). Cheap, as it runs a read: the
        due time moves later, which the watchdog sees when it wakes (:meth:`_arm`)."""
        self.last_at = now
        if token:
            self.first_at = now

    def answered(self, now: float) -> None:
        """``[DONE]`` came but the body's end did not in the same read: it is due at once;
        a server that keeps the stream open after it is cut within :data:`END_GRACE_S`,
        answer kept. The one change that brings the due time forward: re-armed."""
        with self._lock:
            self.last_at = now
            self._ending = True
            if not self._done:
                if self._handle is not None:
                    self._handle.cancel()
                self._arm(now)

    def stop(self) -> None:
        with self._lock:
            self._done = True
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def error(self, timeout_s: float) -> CallError:
        """The error of a stream this clock cut (``reason`` is set)."""
        if self.reason == "deadline":
            return TransportError(
                f"no complete answer within {timeout_s:g}s",
                code=ErrorCode.TIMEOUT,
                hint="raise BRIEFD_TIMEOUT_MS or check the server's load",
            )
        if self.reason == "first token":
            return TransportError(
                f"no first token within {self._first_token_s:g}s",
                code=ErrorCode.STALLED,
                hint="the server is slow to start answering; raise BRIEFD_FIRST_TOKEN_TIMEOUT_MS "
                "or check its load (retried automatically)",
            )
        return TransportError(
            f"the stream stalled: nothing for {self._idle_s:g}s after "
            f"{'its first token' if self.first_at is not None else 'the request'}",
            code=ErrorCode.STALLED,
            hint="the server stopped mid-answer; retried automatically (BRIEFD_IDLE_TIMEOUT_MS)",
        )


class _Assembly:
    """The chunks of one stream, put together."""

    def __init__(self, progress: StreamProgress) -> None:
        self.progress = progress
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.server_ms: int | None = None
        self.work: ServerWork | None = None
        self.done = False
        self.wrote = False  # a content (or reasoning) token came

    def add(self, data: str, event: str) -> None:
        if data == "[DONE]":
            self.done = True
            return
        try:
            obj: Any = json.loads(data)
        except (ValueError, RecursionError):
            if event == "error":
                raise StreamError(one_line(data.strip(), 300), None) from None
            raise BadResponseError("a streamed chunk is not JSON") from None
        self.add_object(obj, event)

    def add_object(self, obj: Any, event: str = "message") -> None:
        """One chunk, parsed. The common one (a delta's content) goes the shortest way."""
        if type(obj) is not dict:
            raise BadResponseError("a streamed chunk is not a JSON object")
        if event == "error" or "error" in obj:
            raise _stream_error(obj)
        if self.model is None and isinstance(obj.get("model"), str):
            self.model = model_name(obj["model"])
        usage = obj.get("usage")
        if usage is not None and type(usage) is dict:
            self.usage = _usage(usage)
        if "timings" in obj:
            self.server_ms = server_ms_of(obj) or self.server_ms
            self.work = timing_of(obj) or self.work
        choices = obj.get("choices")
        if not choices or type(choices) is not list:
            return  # the usage chunk (empty choices), or a server's own notice
        choice = choices[0]
        if type(choice) is not dict:
            raise BadResponseError("a streamed chunk's choice is not an object")
        delta = choice.get("delta")
        if type(delta) is dict:
            content = delta.get("content")
            if content and type(content) is str:
                self.progress._parts.append(content)
                self.progress.tokens += 1
                self.wrote = True
            elif not self.wrote:
                reasoning = delta.get("reasoning_content")
                self.wrote = bool(reasoning) and type(reasoning) is str
        finish = choice.get("finish_reason")
        if finish is not None and type(finish) is str:
            self.finish = finish

    def completion(self, ttft_ms: int | None) -> Completion:
        if self.finish is None and not self.done:
            raise TransportError(
                "connection lost while reading the answer: the stream ended before its end",
                code=ErrorCode.CONNECTION,
                hint="the server closed the connection; retried automatically",
            )
        usage = self.usage or Usage(completion_tokens=self.progress.tokens)
        if self.finish == "length":
            raise TruncatedError(
                f"the model stopped at its token limit after {usage.completion_tokens} tokens"
            )
        if self.finish is None and not self.progress._parts:
            raise BadResponseError("the stream ended without an answer")
        return Completion(
            text=encodable("".join(self.progress._parts)),
            finish_reason=encodable(self.finish) if self.finish is not None else None,
            usage=usage,
            model=self.model,
            ttft_ms=ttft_ms,
            server_ms=self.server_ms,
            work=self.work,
        )


def _stream_error(obj: dict[str, Any]) -> StreamError:
    err = obj.get("error", obj)
    if isinstance(err, dict):
        codes = [c for c in (err.get("code"), err.get("type")) if isinstance(c, str)]
        code = next((c for c in codes if c in QUOTA_CODES), codes[0] if codes else None)
        message = err.get("message")
        detail = message if isinstance(message, str) else json.dumps(err)[:300]
        return StreamError(one_line(detail.strip(), 300), code)
    return StreamError(one_line(str(err).strip(), 300), None)


def read_stream(
    resp: BaseHTTPResponse,
    *,
    sent_at: float,
    deadline: float,
    timeout_s: float,
    first_token_s: float,
    idle_s: float,
    max_body: int,
    on_progress: Callable[[StreamProgress], None] | None = None,
) -> Completion:
    """Read ``resp``'s event stream to its end under the three clocks; the assembled answer."""
    decoder = BodyDecoder(resp.headers.get("Content-Encoding"), max_body)
    parser = SSEParser()
    progress = StreamProgress()
    assembly = _Assembly(progress)
    clock = StreamClock(
        resp, sent_at=sent_at, deadline=deadline, first_token_s=first_token_s, idle_s=idle_s
    )
    body = body_reader(resp)
    clock.start()
    size = 0
    try:
        while not body.ended:
            try:
                chunk = body.read()
            except Exception:  # OSError, broken framing, urllib3's errors: cut, or lost
                if assembly.done:
                    break  # the answer is whole; only the body's end was missing
                if clock.reason is not None:
                    raise clock.error(timeout_s) from None
                raise _lost() from None
            if not chunk:
                break
            if assembly.done:
                continue  # past [DONE]: read to the body's end, so the connection is reused
            size += len(chunk)
            if size > max_body:
                raise BadResponseError(f"response larger than {max_body} bytes")
            answered = _take(decoder.feed(chunk), parser, assembly, clock, on_progress)
            if answered and not body.ended:  # [DONE], but not yet the body's end
                clock.answered(time.monotonic())
        if not assembly.done:
            _take(decoder.finish(), parser, assembly, clock, on_progress)
    finally:
        clock.stop()  # before the connection goes back: the watchdog must not cut it there
        body.release()
    if clock.reason is not None and not assembly.done:
        raise clock.error(timeout_s)
    first = clock.first_at
    ttft_ms = round((first - sent_at) * 1000) if first is not None else None
    return assembly.completion(ttft_ms)


def _take(
    data: bytes,
    parser: SSEParser,
    assembly: _Assembly,
    clock: StreamClock,
    on_progress: Callable[[StreamProgress], None] | None,
) -> bool:
    """Add a read's events to the answer; note the time on the clock; tell the progress.
    True when they brought ``[DONE]``.

    A read of whole ``data: {...}`` events (nearly every read) is parsed as one JSON
    array, with no event objects in between (:meth:`~briefd.llm.sse.SSEParser.json_messages`),
    by pydantic-core's parser (a third of ``json.loads``'s time on a chunk: its Python
    around the C scanner costs more than the scanning). What it refuses (bytes that are
    not UTF-8, a lone surrogate escape, which a pair split between two chunks is) goes
    the long way, through ``json.loads``, exactly as before.
    """
    wrote = assembly.wrote
    batch: Any = None
    messages = parser.json_messages(data)
    if messages is not None:
        try:
            batch = from_json(messages[0])
        except ValueError:  # not UTF-8, a lone surrogate, not JSON: the long way
            batch = None
        if type(batch) is not list or len(batch) != messages[1]:
            batch = None
    if batch is None:
        events = parser.feed(data)
        if not events:
            return False
        batch = _batch(events)
        if batch is None:
            for event in events:
                assembly.add(event.data, event.event)
    if batch is not None:
        for obj in batch:
            assembly.add_object(obj)
    clock.event(time.monotonic(), token=assembly.wrote and not wrote)
    if on_progress is not None and assembly.progress.tokens:
        on_progress(assembly.progress)
    return assembly.done


def _batch(events: list[SSEEvent]) -> list[Any] | None:
    """Several events' JSON objects in one parse (a call each costs more than the parsing),
    or None where they are not all plain JSON-object messages."""
    if len(events) < 2 or not all(e.event == "message" and e.data[:1] == "{" for e in events):
        return None
    try:
        batch: Any = json.loads("[" + ",".join(e.data for e in events) + "]")
    except (ValueError, RecursionError):
        return None
    return batch if type(batch) is list and len(batch) == len(events) else None


def _lost() -> TransportError:
    return TransportError(
        "connection lost while reading the answer",
        code=ErrorCode.CONNECTION,
        hint="the server closed the connection; retried automatically",
    )
