"""The SSE parser and the stream's assembly, byte by byte: the edge cases real servers send."""

from __future__ import annotations

import json
from typing import Any

import pytest

from briefd.llm.errors import BadResponseError, StreamError, TransportError, TruncatedError
from briefd.llm.sse import SSEEvent, SSEParser
from briefd.llm.stream import StreamProgress, _Assembly, is_event_stream
from briefd.messages import ErrorCode


def feed_all(parts: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for part in parts:
        events += parser.feed(part)
    return events


def every_split(raw: bytes) -> list[list[SSEEvent]]:
    """The events of ``raw`` cut into two reads at every possible point, and byte by byte."""
    results = [feed_all([raw[:i], raw[i:]]) for i in range(len(raw) + 1)]
    results.append(feed_all([raw[i : i + 1] for i in range(len(raw))]))
    return results


STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": 1}\n\n'
    b"event: notice\ndata: line one\ndata: line two\n\n"
    b"data:no-space\n\n"
    b"id: 7\nretry: 100\n\n"  # no data: nothing dispatched
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("line one\nline two", "notice"),
    SSEEvent("no-space"),
    SSEEvent("[DONE]"),
]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_events_are_the_same_at_any_split_and_any_line_ending(newline: bytes) -> None:
    """LF, CRLF and CR streams give the same events however the bytes are cut into reads
    (a CRLF split between two reads is one line end, not two)."""
    raw = STREAM.replace(b"\n", newline)
    for events in every_split(raw):
        assert events == EXPECTED


def test_comments_bom_and_unknown_fields_are_skipped() -> None:
    """A leading BOM, ``:`` comments and unknown fields produce nothing; the event goes on."""
    raw = b"\xef\xbb\xbfdata: x\n:comment\nfoo: bar\ndata: y\n\n"
    assert feed_all([raw]) == [SSEEvent("x\ny")]


def test_a_partial_event_at_the_end_is_not_dispatched() -> None:
    """The WHATWG rule: an event is dispatched by its blank line, not by the stream's end."""
    assert feed_all([b'data: {"cut": ']) == []


def test_bad_utf8_is_replaced_not_fatal() -> None:
    """One byte that is not UTF-8 becomes U+FFFD; the stream goes on."""
    assert feed_all([b"data: caf\xe9\n\ndata: ok\n\n"]) == [SSEEvent("caf\ufffd"), SSEEvent("ok")]


def test_llama_cpp_error_line_is_an_error_event() -> None:
    """llama.cpp's server writes ``error: {...}``; it is kept as an ``error`` event."""
    events = feed_all([b'error: {"code": 500, "message": "boom"}\n\n'])
    assert events == [SSEEvent('{"code": 500, "message": "boom"}', "error")]


def test_event_stream_content_types() -> None:
    assert is_event_stream("text/event-stream; charset=utf-8")
    assert is_event_stream("Text/Event-Stream")
    assert not is_event_stream("application/json")
    assert not is_event_stream(None)


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps({"model": "gpt-4o-2024-08-06", "choices": [choice], **extra})


def assemble(*datas: str, event: str = "message") -> _Assembly:
    assembly = _Assembly(StreamProgress())
    for data in datas:
        assembly.add(data, event)
    return assembly


def test_assembly_joins_content_and_takes_the_usage_chunk() -> None:
    """Content deltas join into the text; the empty-choices chunk brings the usage."""
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    done = assemble(
        chunk(""),
        chunk("Hello"),
        chunk(", wor"),
        chunk("ld"),
        chunk(None, "stop"),
        json.dumps({"choices": [], "usage": usage, "model": "gpt-4o-2024-08-06"}),
        "[DONE]",
    )
    completion = done.completion(ttft_ms=12)
    assert completion.text == "Hello, world"
    assert completion.finish_reason == "stop"
    assert completion.usage.prompt_tokens == 9 and completion.usage.completion_tokens == 3
    assert completion.model == "gpt-4o-2024-08-06" and completion.ttft_ms == 12
    assert done.progress.tokens == 3 and done.progress.tail(4) == "orld"


def test_assembly_without_usage_counts_chunks_and_reads_llama_cpp_timings() -> None:
    """No usage chunk: completion tokens are the content chunks; ``timings`` is server_ms."""
    timings = {"prompt_ms": 10.5, "predicted_ms": 30.0}
    completion = assemble(chunk("a"), chunk("b"), chunk(None, "stop", timings=timings)).completion(
        None
    )
    assert completion.usage.completion_tokens == 2
    assert completion.server_ms == 40


def test_surrogate_pair_split_across_chunks_is_kept() -> None:
    """Half a pair per chunk: joined first, so the emoji survives; a lone half is replaced."""
    high = '{"choices":[{"delta":{"content":"\\ud83d"}}]}'
    low = '{"choices":[{"delta":{"content":"\\ude00"},"finish_reason":"stop"}]}'
    pair = assemble(high, low)
    assert pair.completion(None).text == "\U0001f600"
    lone = assemble('{"choices":[{"delta":{"content":"x\\ud83d"},"finish_reason":"stop"}]}')
    assert lone.completion(None).text == "x\ufffd"


def test_length_is_truncated() -> None:
    with pytest.raises(TruncatedError):
        assemble(chunk("a"), chunk(None, "length"), "[DONE]").completion(None)


def test_a_stream_that_ends_early_is_a_lost_connection() -> None:
    """No finish reason and no [DONE]: the connection was lost (retried)."""
    with pytest.raises(TransportError) as info:
        assemble(chunk("a")).completion(None)
    assert info.value.code is ErrorCode.CONNECTION and info.value.retryable


def test_error_object_mid_stream_is_a_retryable_stream_error() -> None:
    """OpenAI's ``data: {"error": ...}`` mid-answer: SERVER_ERROR, retried, message kept."""
    with pytest.raises(StreamError) as info:
        assemble(
            chunk("a"), json.dumps({"error": {"message": "overloaded", "type": "server_error"}})
        )
    assert info.value.code is ErrorCode.SERVER_ERROR and info.value.retryable
    assert "overloaded" in info.value.message


def test_quota_error_mid_stream_is_not_retried() -> None:
    with pytest.raises(StreamError) as info:
        assemble(json.dumps({"error": {"message": "no", "code": "insufficient_quota"}}))
    assert info.value.code is ErrorCode.QUOTA_EXCEEDED and not info.value.retryable


def test_error_event_with_text_data() -> None:
    """An ``event: error`` whose data is not JSON is still the server's error."""
    with pytest.raises(StreamError):
        assemble("upstream died", event="error")


def test_garbage_chunk_is_a_bad_response() -> None:
    with pytest.raises(BadResponseError):
        assemble("not json")
