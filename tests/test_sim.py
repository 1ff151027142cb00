"""Tests for the simulated OpenAI-compatible server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import ValidationError

from briefd.sim.cli import main
from briefd.sim.server import Fault, SimProfile, SimServer

FENCE = re.compile(r"```(\w+)\n(.*?)\n```", re.DOTALL)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    """A started server with zero latency, stopped after the test."""
    with SimServer(SimProfile(scale=0.0)) as server:
        yield server


def chat(
    server: SimServer,
    prompt: str = "Line one\nLine two",
    stage: str | None = "BRIEFING_MD",
    job: str | None = "job-1",
    timeout: float | tuple[float, float] = 5.0,
    stream: bool = False,
    **extra: Any,
) -> requests.Response:
    """POST a chat request the way briefd's client does (stage/job headers)."""
    headers = {"Authorization": "Bearer test-key"}
    if stage is not None:
        headers["X-Briefd-Stage"] = stage
    if job is not None:
        headers["X-Briefd-Job"] = job
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], **extra}
    return requests.post(
        f"{server.base_url}/chat/completions",
        json=body,
        headers=headers,
        timeout=timeout,
        stream=stream,
    )


def content_of(resp: requests.Response) -> str:
    """The assistant content of a 200 chat response."""
    text: str = resp.json()["choices"][0]["message"]["content"]
    return text


def test_completion_shape_and_determinism(sim: SimServer) -> None:
    """A normal answer is a standard chat.completion and the same prompt gives the same text."""
    first, second = chat(sim), chat(sim)
    assert first.status_code == second.status_code == 200
    body = first.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "m" and body["id"] and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert content_of(first) == content_of(second)
    usage = body["usage"]
    assert usage["prompt_tokens"] == 4
    assert usage["completion_tokens"] == len(content_of(first).split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    text = content_of(first)
    assert not text.startswith("```"), "markdown answers carry a sentence outside the fence"
    kind, inner = FENCE.findall(text)[0]
    assert kind == "markdown" and inner.startswith("# Briefing") and "- Line two" in inner
    assert content_of(chat(sim, prompt="other")) != text


def test_json_stage_returns_parseable_fenced_json(sim: SimServer) -> None:
    """A *_JSON stage (or response_format json) answers with a parseable ```json block."""
    resp = chat(sim, stage="PROCUREMENT_JSON", prompt="buy pens\nbuy paper")
    kind, inner = FENCE.findall(content_of(resp))[0]
    obj = json.loads(inner)
    assert kind == "json" and obj["stage"] == "PROCUREMENT_JSON"
    assert [item["text"] for item in obj["items"]] == ["buy pens", "buy paper"]
    forced = chat(sim, stage="PLAYS_MD", response_format={"type": "json_object"})
    assert json.loads(FENCE.findall(content_of(forced))[0][1])["stage"] == "PLAYS_MD"


def test_latency_profile_is_applied() -> None:
    """Per-stage latency, the default latency and a fault delay are all waited out."""
    latencies = {"SLOW_MD": 10.0, "HUGE_MD": 1000.0}
    profile = SimProfile(latency_s=latencies, default_latency_s=5.0, scale=0.02)
    with SimServer(profile) as server:
        server.inject(Fault(stage="DELAYED_MD", delay_s=0.1))
        for stage, expected in (("SLOW_MD", 0.2), ("OTHER_MD", 0.1), ("DELAYED_MD", 0.2)):
            started = time.monotonic()
            assert chat(server, stage=stage).status_code == 200
            assert time.monotonic() - started >= expected - 0.01, stage
        server.set_scale(0.0)
        started = time.monotonic()
        assert chat(server, stage="HUGE_MD").status_code == 200
        assert time.monotonic() - started < 5.0, "set_scale(0) skips the 20 s latency"


def test_concurrent_requests_are_counted_exactly() -> None:
    """Two overlapping requests show in_flight 2 and max_in_flight == 2, then drain to 0."""
    with (
        SimServer(SimProfile(latency_s={"SLOW_MD": 0.8})) as server,
        ThreadPoolExecutor(2) as pool,
    ):
        futures = [pool.submit(chat, server, stage="SLOW_MD", job=f"j{i}") for i in range(2)]
        assert server.wait_for_in_flight(2, timeout=5.0)
        assert all(f.result(timeout=5.0).status_code == 200 for f in futures)
        assert server.wait_until_idle(timeout=5.0)
        stats = server.stats()
    assert stats.max_in_flight == 2 and stats.in_flight == 0
    assert stats.total_requests == stats.completed == 2


def test_status_fault_once_then_success_with_retry_after(sim: SimServer) -> None:
    """A 429 fault with times=1 sends Retry-After and an OpenAI error body, then clears."""
    sim.inject(Fault(stage="PLAYS_MD", status=429, retry_after="2"))
    limited = chat(sim, stage="PLAYS_MD")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    error = limited.json()["error"]
    assert set(error) == {"message", "type", "code"} and error["code"] == "rate_limit_exceeded"
    assert chat(sim, stage="PLAYS_MD").status_code == 200


def test_faults_match_in_insertion_order_by_stage_and_job(sim: SimServer) -> None:
    """The first unexhausted matching fault applies; stage/job filters are respected."""
    sim.inject(Fault(job_id="A", status=500))
    sim.inject(Fault(stage="PLAYS_MD", status=503, times=2))
    codes = [
        chat(sim, stage="BRIEFING_MD", job="B").status_code,
        chat(sim, stage="PLAYS_MD", job="B").status_code,
        chat(sim, stage="PLAYS_MD", job="A").status_code,
        chat(sim, stage="PLAYS_MD", job="A").status_code,
        chat(sim, stage="PLAYS_MD", job="A").status_code,
    ]
    assert codes == [200, 503, 500, 503, 200]


def test_invalid_json_and_truncate_faults(sim: SimServer) -> None:
    """invalid_json breaks the fenced JSON; truncate cuts the text with finish_reason length."""
    sim.inject(Fault(stage="ANNEX_JSON", invalid_json=True))
    sim.inject(Fault(stage="BRIEFING_MD", truncate=True))
    kind, inner = FENCE.findall(content_of(chat(sim, stage="ANNEX_JSON")))[0]
    assert kind == "json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(inner)
    truncated = chat(sim, stage="BRIEFING_MD")
    assert truncated.json()["choices"][0]["finish_reason"] == "length"
    assert len(content_of(truncated)) < len(content_of(chat(sim, stage="BRIEFING_MD")))


def test_hang_times_out_client_and_stop_is_prompt() -> None:
    """A hang outlives a 0.3 s read timeout, is released by client exit and by stop()."""
    server = SimServer(SimProfile(scale=0.0)).start()
    try:
        server.inject(Fault(hang=True, times=2))
        with pytest.raises(requests.ReadTimeout):
            chat(server, timeout=(2.0, 0.3))
        assert server.wait_until_idle(timeout=2.0), "client going away ends the hang"
        with ThreadPoolExecutor(1) as pool:
            pending: Future[requests.Response] = pool.submit(chat, server, timeout=30.0)
            assert server.wait_for_in_flight(1, timeout=5.0)
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 2.0
            with pytest.raises(requests.ConnectionError):
                pending.result(timeout=5.0)
    finally:
        server.stop()
    assert server.stats().in_flight == 0
    assert [r.status for r in server.stats().requests] == [None, None]


def test_drip_sends_headers_then_bytes_slowly(
    sim: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Drip answers headers at once, then trickles bytes; a client hanging up is harmless."""
    sim.inject(Fault(drip_s=0.05))
    resp = chat(sim, timeout=5.0, stream=True)
    assert resp.status_code == 200 and int(resp.headers["Content-Length"]) > 100
    started = time.monotonic()
    first = resp.raw.read(3)
    assert first == b'{"i' and time.monotonic() - started >= 0.1
    resp.close()
    assert sim.wait_until_idle(timeout=5.0)
    assert chat(sim).status_code == 200
    assert sim.wait_until_idle(timeout=5.0)
    stats = sim.stats()
    assert stats.completed == 1 and stats.requests[0].status == 200
    assert capsys.readouterr().err == "", "no access log and no traceback on stderr"


def test_drop_closes_without_response(sim: SimServer) -> None:
    """A drop fault closes the connection with no HTTP response at all."""
    sim.inject(Fault(drop=True))
    with pytest.raises(requests.ConnectionError):
        chat(sim)
    assert sim.wait_until_idle(timeout=5.0)
    assert sim.stats().requests[0].status is None


def test_bad_bodies_get_400_and_keep_alive_works(sim: SimServer) -> None:
    """Non-JSON or message-less bodies are 400s; a Session reuses its connection throughout."""
    url = f"{sim.base_url}/chat/completions"
    with requests.Session() as session:
        not_json = session.post(url, data=b"{nope", timeout=5)
        no_messages = session.post(url, json={"model": "m"}, timeout=5)
        good = session.post(url, json={"messages": [{"role": "user", "content": "hi"}]}, timeout=5)
        models = session.get(f"{sim.base_url}/models", timeout=5)
    assert not_json.status_code == no_messages.status_code == 400
    assert no_messages.json()["error"]["type"] == "invalid_request_error"
    assert good.status_code == 200 and good.json()["model"] == "briefd-sim"
    listed = models.json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["briefd-sim"]
    assert listed["data"][0]["object"] == "model" and listed["data"][0]["owned_by"]


def test_stats_record_stage_job_and_authorization(sim: SimServer) -> None:
    """Stats count per stage and per job, keep the last Authorization and default headers."""
    chat(sim, stage="PLAYS_MD", job="a")
    chat(sim, stage="PLAYS_MD", job="b")
    chat(sim, stage=None, job=None)
    assert sim.wait_until_idle(timeout=5.0)
    stats = sim.stats()
    assert stats.by_stage == {"PLAYS_MD": 2, "UNKNOWN": 1}
    assert stats.by_job_stage == {"a": {"PLAYS_MD": 1}, "b": {"PLAYS_MD": 1}, "-": {"UNKNOWN": 1}}
    assert stats.last_authorization == "Bearer test-key"
    assert stats.max_in_flight == 1 and stats.completed == 3
    assert all(r.end is not None and r.end >= r.start and r.status == 200 for r in stats.requests)


def test_admin_endpoints_over_http(sim: SimServer) -> None:
    """Faults, scale and reset can be driven over HTTP, and stats read back as JSON."""
    admin = sim.base_url.removesuffix("/v1") + "/_sim"
    fault = {"stage": "PLAYS_MD", "status": 503}
    assert requests.post(f"{admin}/faults", json=fault, timeout=5).status_code == 204
    assert requests.post(f"{admin}/faults", json={"bogus": 1}, timeout=5).status_code == 400
    assert chat(sim, stage="PLAYS_MD").status_code == 503
    assert requests.post(f"{admin}/scale", json={"scale": 0.5}, timeout=5).status_code == 204
    assert sim.profile.scale == 0.5
    assert requests.post(f"{admin}/scale", json={"scale": -1}, timeout=5).status_code == 400
    assert sim.wait_until_idle(timeout=5.0)
    stats = requests.get(f"{admin}/stats", timeout=5).json()
    assert stats["total_requests"] == 1 and stats["by_stage"] == {"PLAYS_MD": 1}
    assert stats["requests"][0]["status"] == 503
    sim.inject(Fault(status=500))
    assert requests.post(f"{admin}/reset", timeout=5).status_code == 204
    assert requests.get(f"{admin}/stats", timeout=5).json()["total_requests"] == 0
    sim.set_scale(0.0)
    assert chat(sim).status_code == 200, "reset cleared the faults"


def test_reset_keeps_in_flight_truthful() -> None:
    """reset() zeroes counters but a request still in flight keeps in_flight honest."""
    with SimServer(SimProfile(scale=0.0)) as server, ThreadPoolExecutor(1) as pool:
        server.inject(Fault(hang=True))
        pending = pool.submit(chat, server, timeout=(2.0, 0.5))
        assert server.wait_for_in_flight(1, timeout=5.0)
        server.reset()
        stats = server.stats()
        assert stats.in_flight == 1 and stats.total_requests == 0 and stats.max_in_flight == 1
        with pytest.raises(requests.ReadTimeout):
            pending.result(timeout=5.0)
        assert server.wait_until_idle(timeout=5.0)
        assert server.stats().completed == 0


def test_fault_model_rejects_nonsense() -> None:
    """Faults are frozen, forbid unknown fields and contradictory modes."""
    with pytest.raises(ValidationError):
        Fault(hang=True, status=500)
    with pytest.raises(ValidationError):
        Fault(retry_after="1")
    with pytest.raises(ValidationError):
        Fault.model_validate({"stauts": 500})
    with pytest.raises(ValidationError):
        setattr(Fault(status=500), "status", 502)  # noqa: B010 - typed assignment would not check
    assert Fault(drip_s=0.1, truncate=True).truncate


def test_main_rejects_bad_input_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad faults files and bad args exit 2 with one stderr line naming the problem."""
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"status": 503}, {"status": "soon"}]), encoding="utf-8")
    cases = [
        (["--faults", str(broken)], "broken.json"),
        (["--faults", str(wrong)], "faults[1].status"),
        (["--faults", str(tmp_path / "missing.json")], "missing.json"),
        (["--port", "nope"], "--port"),
        (["--scale", "-1"], "--scale"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
