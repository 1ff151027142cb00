"""Streamed calls against the real simulator over loopback: the clocks, a mid-stream error,
a slow stream left alone, and the settings that turn streaming off."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import briefd
from briefd.config import Settings, StageSpec
from briefd.config.endpoints import EndpointSpec
from briefd.llm.call import ChatClient, build_request
from briefd.llm.errors import StreamError, TransportError
from briefd.messages import ErrorCode, JobStatus
from briefd.sim.faults import Fault
from briefd.sim.server import SimProfile, SimServer

SPEC = StageSpec(name="BRIEFING_MD", output="b.md", kind="markdown", max_tokens=400)
PROMPT = "Write the briefing.\n" + "\n".join(f"point {i} about the renewal" for i in range(5))


@pytest.fixture
def strict() -> Iterator[SimServer]:
    with SimServer(SimProfile(scale=0.01), strict=True) as server:
        yield server


def settings_for(server: SimServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": "sk-test",
        "model": "gpt-4o",
        "endpoint_kind": "openai",
        "timeout_ms": 30_000,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


def call(server: SimServer, settings: Settings, **kw: Any) -> Any:
    body = build_request(SPEC, PROMPT, settings)
    return ChatClient(settings, server.base_url).complete(
        body, job_id="j1", stage="BRIEFING_MD", **kw
    )


def test_streamed_answer_is_the_whole_answer_with_ttft_and_usage(strict: SimServer) -> None:
    """Streamed and whole calls give the same text and usage; the stream adds its TTFT and
    reports progress as tokens arrive (the strict simulator checks stream_options)."""
    whole = call(strict, settings_for(strict, stream=False))
    seen: list[int] = []
    streamed = call(strict, settings_for(strict), on_progress=lambda p: seen.append(p.tokens))
    assert streamed.text == whole.text and whole.ttft_ms is None
    assert streamed.usage == whole.usage and streamed.usage.completion_tokens > 10
    assert streamed.model == whole.model == "gpt-4o-2024-08-06"
    assert streamed.ttft_ms is not None and streamed.ttft_ms >= 0
    assert seen and seen == sorted(seen) and seen[-1] == len(streamed.text.split())


def test_stall_after_the_first_token_is_cut_by_the_idle_clock(strict: SimServer) -> None:
    """A stream that goes silent mid-answer is STALLED (retryable) long before the total."""
    strict.inject(Fault(stall_after=3))
    settings = settings_for(strict, idle_timeout_ms=300, timeout_ms=30_000)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        call(strict, settings)
    assert info.value.code is ErrorCode.STALLED and info.value.retryable
    assert "stalled" in info.value.message
    assert time.monotonic() - started < 10  # the total (30 s) would have been far later
    assert strict.wait_until_idle(timeout=10)  # the server saw the client hang up


def test_slow_first_token_is_cut_by_the_first_token_clock(strict: SimServer) -> None:
    strict.inject(Fault(first_token_s=20))
    settings = settings_for(strict, first_token_timeout_ms=300, timeout_ms=30_000)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        call(strict, settings)
    assert info.value.code is ErrorCode.STALLED and "first token" in info.value.message
    assert time.monotonic() - started < 10


def test_the_idle_clock_does_not_wait_for_a_first_token(strict: SimServer) -> None:
    """Before the first token only the first-token clock runs (unset: the total): a slow
    start longer than the idle timeout is not a stall."""
    strict.inject(Fault(first_token_s=0.6))
    completion = call(strict, settings_for(strict, idle_timeout_ms=200))
    assert completion.ttft_ms is not None and completion.ttft_ms >= 500


def test_a_dripping_stream_that_never_stalls_is_not_cut(strict: SimServer) -> None:
    """Chunks every 0.1 s for seconds, idle timeout 0.5 s: slow, never idle, never cut."""
    strict.inject(Fault(drip_s=0.1))
    started = time.monotonic()
    completion = call(strict, settings_for(strict, idle_timeout_ms=500))
    assert time.monotonic() - started > 1.0  # it did last longer than the idle timeout
    assert completion.finish_reason == "stop" and completion.usage.completion_tokens > 10


def test_error_event_mid_stream(strict: SimServer) -> None:
    strict.inject(Fault(error_after=2))
    with pytest.raises(StreamError) as info:
        call(strict, settings_for(strict))
    assert info.value.code is ErrorCode.SERVER_ERROR and info.value.retryable


def test_pipeline_retries_a_stall_and_a_mid_stream_error(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """Through the whole pipeline: a stalled stream and an error event are retried and the
    job succeeds; the stage's attempts say so."""
    sim.inject(Fault(stage="BRIEFING_MD", stall_after=2))
    sim.inject(Fault(stage="PLAYS_MD", error_after=1))
    result = briefd.run(make_job(), make_settings(idle_timeout_ms=300))
    assert result.status is JobStatus.SUCCEEDED, result.errors
    assert result.metrics.attempts["BRIEFING_MD"] == 2
    assert result.metrics.attempts["PLAYS_MD"] == 2


def test_stream_off_by_setting_endpoint_or_stage(strict: SimServer) -> None:
    """BRIEFD_STREAM=false, an endpoint's or a stage's stream = false: a whole answer."""
    settings = settings_for(strict)
    assert build_request(SPEC, PROMPT, settings)["stream"] is True
    assert "stream" not in build_request(SPEC, PROMPT, settings_for(strict, stream=False))
    off = EndpointSpec(name="e", kind="openai", base_url=strict.base_url, stream=False)
    assert "stream" not in build_request(SPEC, PROMPT, settings, endpoint=off)
    quiet = SPEC.model_copy(update={"stream": False})
    assert "stream_options" not in build_request(quiet, PROMPT, settings)
    embedded = EndpointSpec(name="e", kind="embedded", base_url=strict.base_url)
    assert "stream" not in build_request(SPEC, PROMPT, settings, endpoint=embedded)


def test_strict_simulator_checks_stream_options_as_the_spec_says(strict: SimServer) -> None:
    """Only include_usage / include_obfuscation, booleans, and only with stream: true."""
    import requests

    url = f"{strict.base_url}/chat/completions"
    auth = {"Authorization": "Bearer sk-test"}
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    bad_key = requests.post(url, json={**base, "stream_options": {"usage": True}}, headers=auth)
    assert bad_key.status_code == 400 and "stream_options.usage" in bad_key.text
    bad_type = requests.post(
        url, json={**base, "stream_options": {"include_usage": "yes"}}, headers=auth
    )
    assert bad_type.status_code == 400
    ok = requests.post(
        url,
        json={**base, "stream_options": {"include_usage": True, "include_obfuscation": False}},
        headers=auth,
    )
    assert ok.status_code == 200 and ok.text.rstrip().endswith("data: [DONE]")


def test_sim_cli_refuses_incoherent_stream_faults(capsys: pytest.CaptureFixture[str]) -> None:
    """One line and exit 2, naming the problem, for stream faults that cannot go together."""
    from briefd.sim.cli import main

    assert main(["--stall-after", "2", "--error-after", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "briefd sim: error: only one of stall_after, error_after may be set"
    assert main(["--stall-after", "-1"]) == 2
    assert "--stall-after" in capsys.readouterr().err


class RawStreamServer:
    """A loopback HTTP server that writes one scripted streamed answer per connection:
    the wire details the simulator does not vary (gzip, no body end after [DONE])."""

    def __init__(self, events: list[bytes], *, gzip: bool = False, end: bool = True) -> None:
        import socket
        import threading

        self._events, self._gzip, self._end = events, gzip, end
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import zlib

        conn, _ = self._sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    h.split(b":")[1]
                    for h in head.split(b"\r\n")
                    if h.lower().startswith(b"content-length")
                )
            )
            while len(body) < length:
                body += conn.recv(65536)
            coding = b"Content-Encoding: gzip\r\n" if self._gzip else b""
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + coding
                + b"Transfer-Encoding: chunked\r\n\r\n"
            )  # fmt: skip
            z = zlib.compressobj(wbits=31) if self._gzip else None
            for event in self._events:
                piece = z.compress(event) + z.flush(zlib.Z_SYNC_FLUSH) if z else event
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            if z is not None:
                rest = z.flush()
                conn.sendall(b"%x\r\n%s\r\n" % (len(rest), rest))
            if self._end:
                conn.sendall(b"0\r\n\r\n")
            self._stop.wait(30)  # hold the connection open, as a server that never ends it

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    import json

    delta = {} if content is None else {"content": content}
    obj = {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_gzip_stream_in_crlf_events_with_comments() -> None:
    """A gzip-encoded stream (flushed per event), CRLF line ends and keep-alive comments:
    decoded as it comes, the same text."""
    events = [b": keep-alive\r\n\r\n", _chunk("Hello").replace(b"\n", b"\r\n"), _chunk(" world"),
              _chunk(None, "stop"), b"data: [DONE]\n\n"]  # fmt: skip
    server = RawStreamServer(events, gzip=True)
    try:
        settings = Settings(base_url=server.base_url, timeout_ms=10_000)
        completion = ChatClient(settings, server.base_url).complete(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            job_id="g",
            stage="S",
        )
    finally:
        server.close()
    assert completion.text == "Hello world" and completion.finish_reason == "stop"


def test_a_stream_left_open_after_done_is_not_held_for_the_idle_timeout() -> None:
    """[DONE] but no end of the body: the answer is kept and the call ends within about a
    second, not at the idle timeout (15 s) or the total (30 s)."""
    server = RawStreamServer([_chunk("Hi"), _chunk(None, "stop"), b"data: [DONE]\n\n"], end=False)
    started = time.monotonic()
    try:
        settings = Settings(base_url=server.base_url, timeout_ms=30_000)
        completion = ChatClient(settings, server.base_url).complete(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            job_id="o",
            stage="S",
        )
    finally:
        server.close()
    assert completion.text == "Hi"
    assert time.monotonic() - started < 10


def test_a_stall_is_like_a_timeout_for_failover_and_the_breaker() -> None:
    """Once an endpoint's retries are spent, a stall moves the stage on, as a timeout does,
    and counts against the endpoint's breaker; an error mid-stream too."""
    from briefd.llm.routing import counts_against, fails_over, fails_over_after_retries

    stalled = TransportError("s", code=ErrorCode.STALLED, hint="h")
    mid = StreamError("mid-answer", None)
    for err in (stalled, mid):
        assert err.retryable and fails_over_after_retries(err) and counts_against(err)
        assert not fails_over(err, 10.0)  # not at once: retried on this endpoint first
