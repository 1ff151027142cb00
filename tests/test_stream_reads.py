"""A streamed call's per-read work: the one-parse path for whole ``data: {...}`` reads gives
what the line-by-line parser gives, and a call arms the watchdog once, not per token."""

from __future__ import annotations

import json
from typing import Any

import pytest

import briefd.llm.stream as stream
from briefd.config import Settings, load_pipeline
from briefd.llm.call import ChatClient, build_request
from briefd.llm.sse import SSEParser
from briefd.sim.server import SimServer


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


class _Clock:
    first_at: float | None = None
    last_at = 0.0

    def event(self, now: float, *, token: bool) -> None:
        self.last_at = now
        if token:
            self.first_at = now


def _assemble(reads: list[bytes]) -> stream._Assembly:
    parser, assembly, clock = SSEParser(), stream._Assembly(stream.StreamProgress()), _Clock()
    for data in reads:
        stream._take(data, parser, assembly, clock, None)  # type: ignore[arg-type]
    return assembly


@pytest.mark.parametrize(
    "read",
    [
        _event(_delta("a")),
        _event(_delta("a")) + _event(_delta("b")) + _event({"choices": []}),
    ],
)
def test_whole_object_events_are_taken_in_one_parse(read: bytes) -> None:
    """A read of whole ``data: {...}`` events: one JSON array of them, the same as feed's."""
    fast = SSEParser().json_messages(read)
    assert fast is not None
    array, count = fast
    assert json.loads(array) == [json.loads(e.data) for e in SSEParser().feed(read)]
    assert count == len(json.loads(array))


@pytest.mark.parametrize(
    "read",
    [
        _event(_delta("a")).replace(b"\n", b"\r\n"),  # CRLF line ends
        b": keep-alive\n\n" + _event(_delta("a")),  # a comment
        b"event: error\n" + _event({"error": {"message": "x"}}),  # a named event
        _event(_delta("a"))[:-1],  # an event not yet ended
        b"data: [DONE]\n\n",  # not an object
        b'data: {"a":\ndata: 1}\n\n',  # one event on two data lines
        b"\xef\xbb\xbf" + _event(_delta("a")),  # a BOM
    ],
)
def test_anything_else_goes_the_line_by_line_way(read: bytes) -> None:
    """The one-parse path declines what the WHATWG algorithm reads differently."""
    assert SSEParser().json_messages(read) is None


def test_a_surrogate_pair_split_between_chunks_stays_a_pair() -> None:
    """pydantic-core refuses a lone surrogate escape: those reads go through json.loads, so
    the pair is joined in the text as before."""
    end = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    reads = [b'data: {"choices":[{"delta":{"content":"\\ud83d"}}]}\n\n',
             b'data: {"choices":[{"delta":{"content":"\\ude00!"}}]}\n\n', end]  # fmt: skip
    assert _assemble(reads).completion(None).text == "\U0001f600!"


def test_invalid_utf8_is_replaced_not_refused() -> None:
    """Bytes that are not UTF-8 in a chunk: replaced (U+FFFD), the answer kept."""
    reads = [b'data: {"choices":[{"delta":{"content":"a\xffb"},"finish_reason":"stop"}]}\n\n',
             b"data: [DONE]\n\n"]  # fmt: skip
    assert _assemble(reads).completion(None).text == "a\ufffdb"


def test_a_streamed_call_arms_its_watchdog_once(sim: SimServer, monkeypatch: Any) -> None:
    """Tokens do not re-arm the watchdog (each re-arm woke the timer thread): one timer
    entry a call, whatever the number of chunks, as a whole answer's."""
    armed: list[float] = []
    real = stream.call_later

    def counting(delay_s: float, fn: Any) -> Any:
        armed.append(delay_s)
        return real(delay_s, fn)

    monkeypatch.setattr(stream, "call_later", counting)
    settings = Settings(base_url=sim.base_url, stream=True, timeout_ms=10_000)
    spec = load_pipeline(None).by_name["BRIEFING_MD"]
    client = ChatClient(settings, sim.base_url)
    done = client.complete(build_request(spec, "Write it.", settings), job_id="w", stage="S")
    assert done.usage.completion_tokens > 5 and done.ttft_ms is not None
    assert len(armed) == 1
