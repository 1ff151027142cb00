"""OpenTelemetry (briefd[otel]): jobs as traces and GenAI metrics, received by a real
OTLP/HTTP collector on loopback (:mod:`otlp_receiver`, decoding with opentelemetry-proto).

One trace per job: ``invoke_workflow`` > ``stage`` > ``chat {model}`` per call attempt,
with the GenAI attribute names and briefd's own; the metric names follow
``OTEL_SEMCONV_STABILITY_OPT_IN``; message content goes out only on opt-in, redacted.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon
from daemon_helpers import make_job as daemon_job
from otlp_receiver import OtlpReceiver, Span

import briefd
import briefd.telemetry
from briefd.config import Settings
from briefd.messages import (
    ErrorCode,
    JobCompleted,
    JobMetrics,
    JobResult,
    JobStarted,
    JobStatus,
    PipelineError,
    Progress,
    StageFailed,
    StageFailedOver,
    StageRetrying,
    StageStarted,
    StageState,
    StageSucceeded,
    Usage,
)
from briefd.sim.faults import Fault
from briefd.sim.server import SimProfile, SimServer

STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
CLIENT, INTERNAL, ERROR = 3, 1, 2  # OTLP span kinds and status code
OLD = {"gen_ai.client.operation.duration", "gen_ai.client.token.usage"}
NEW = {
    "gen_ai.client.inference.duration",
    "gen_ai.client.inference.usage.input_tokens",
    "gen_ai.client.inference.usage.output_tokens",
    "gen_ai.client.inference.usage.cache_read.input_tokens",
    "gen_ai.client.inference.operation.input_tokens",
}
OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_SEMCONV_STABILITY_OPT_IN",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_SERVICE_NAME",
)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> pytest.MonkeyPatch:
    """This process exports to the receiver (and no OTEL_* of the machine's leaks in)."""
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    return monkeypatch


def _run_pipeline(
    settings: Settings, job: dict[str, Any], receiver: OtlpReceiver
) -> tuple[briefd.JobResult, list[Span]]:
    """Run ``job`` in a Pipeline, flush its telemetry, and wait for the whole trace."""
    with briefd.Pipeline(settings) as p:
        result = p.submit(job).get(timeout=60)
        assert p.telemetry is not None
        assert p.telemetry.force_flush(10)
    assert receiver.wait(lambda r: any(s.name.startswith("invoke_workflow") for s in r.spans()))
    return result, receiver.spans()


def _tree(spans: list[Span]) -> tuple[Span, dict[str, Span], dict[str, list[Span]]]:
    """The root, the stage spans by stage, the attempt spans by stage (in order)."""
    roots = [s for s in spans if not s.parent_id]
    assert len(roots) == 1, [s.name for s in roots]
    root = roots[0]
    stages = {s.attrs["briefd.stage"]: s for s in spans if s.parent_id == root.span_id}
    attempts: dict[str, list[Span]] = {}
    for name, stage in stages.items():
        kids = [s for s in spans if s.parent_id == stage.span_id]
        attempts[name] = sorted(kids, key=lambda s: s.attrs["briefd.attempt"])
    return root, stages, attempts


def test_the_example_job_is_one_trace_of_stages_and_calls(
    receiver: OtlpReceiver, repo: Path, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """`briefd run examples/northwind-briefing.json` with OTEL_EXPORTER_OTLP_ENDPOINT: one
    trace, invoke_workflow > 4 stages > one `chat gpt-4o` call each, the GenAI attributes
    with the served model, tokens and cost of result.json, the old metric names by
    default, and no message content."""
    with SimServer(SimProfile(scale=0.0), strict=True, api_key="sk-strict-1") as sim:
        env = child_env(
            BRIEFD_BASE_URL=sim.base_url,
            BRIEFD_MODEL="gpt-4o",
            BRIEFD_API_KEY="sk-strict-1",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        )
        for name in OTEL_VARS[1:]:
            env.pop(name, None)
        out = tmp_path / "out"
        job = str(repo / "examples/northwind-briefing.json")
        done = subprocess.run(
            briefd_cmd("run", job, "--out", str(out)),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    # The process flushed on its way out: everything is there already, or about to be.
    assert receiver.wait(lambda r: len(r.spans()) >= 9 and bool(r.metrics))
    spans = receiver.spans()
    assert len({s.trace_id for s in spans}) == 1
    root, stages, attempts = _tree(spans)
    assert len(spans) == 1 + 4 + 4
    assert root.name == "invoke_workflow briefing-pack"
    assert root.kind == INTERNAL and root.status_code != ERROR
    assert root.attrs["gen_ai.operation.name"] == "invoke_workflow"
    assert root.attrs["gen_ai.workflow.name"] == "briefing-pack"
    assert root.attrs["briefd.job_id"] == "northwind-q3-renewal"
    assert root.attrs["briefd.status"] == "succeeded"
    assert root.attrs["briefd.cost_usd"] == pytest.approx(result["total_cost_usd"])
    assert root.resource["service.name"] == "briefd"
    assert set(stages) == set(STAGES)
    for name in STAGES:
        stage, (call,) = stages[name], attempts[name]
        assert stage.name == f"stage {name}"
        assert stage.attrs["briefd.cost_usd"] == pytest.approx(result["cost_usd"][name])
        assert call.name == "chat gpt-4o" and call.kind == CLIENT
        a = call.attrs
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == "gpt-4o"
        assert a["gen_ai.response.model"] == "gpt-4o-2024-08-06"
        assert a["server.address"] == "127.0.0.1" and a["server.port"] > 0
        usage = result["metrics"]["usage"][name]
        assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
        assert a["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
        assert a["gen_ai.usage.cache_read.input_tokens"] == usage["cached_tokens"]
        assert a["briefd.job_id"] == "northwind-q3-renewal"
        assert (a["briefd.stage"], a["briefd.attempt"]) == (name, 1)
        assert a["briefd.cost_usd"] == pytest.approx(result["cost_usd"][name])
        assert "error.type" not in a
        assert not any(k in a for k in ("gen_ai.input.messages", "gen_ai.output.messages"))
        # Each span sits inside its parent's time.
        assert root.start_ns <= stage.start_ns <= call.start_ns
        assert call.end_ns <= stage.end_ns <= root.end_ns
    # The dependents started after what they read had ended.
    assert stages["PROCUREMENT_JSON"].start_ns >= stages["BRIEFING_MD"].end_ns - 1_000_000
    names = receiver.metric_names()
    assert {*OLD, "gen_ai.invoke_workflow.duration"} <= names
    assert not names & NEW
    points = receiver.points()
    calls = [p for p in points if p.metric == "gen_ai.client.operation.duration"]
    assert sum(p.count for p in calls) == 4
    assert {p.attrs["gen_ai.response.model"] for p in calls} == {"gpt-4o-2024-08-06"}
    inputs = [
        p
        for p in points
        if p.metric == "gen_ai.client.token.usage" and p.attrs["gen_ai.token.type"] == "input"
    ]
    total_in = sum(u["prompt_tokens"] for u in result["metrics"]["usage"].values())
    assert sum(p.value for p in inputs) == total_in
    (workflow,) = [p for p in points if p.metric == "gen_ai.invoke_workflow.duration"]
    assert workflow.count == 1 and workflow.attrs["gen_ai.workflow.name"] == "briefing-pack"


def test_a_retried_call_and_a_failed_stage_carry_error_type(
    otel_env: pytest.MonkeyPatch, receiver: OtlpReceiver, make_job: Any
) -> None:
    """PLAYS_MD's first call gets a 500 and its retry succeeds: two `chat` spans, the first
    with error.type SERVER_ERROR and an error status. ANNEX_JSON always gets a 400: its stage
    and its call carry error.type HTTP_ERROR, the job is partial; the duration metric counts
    the failed calls under their error.type."""
    faults = [
        Fault(stage="PLAYS_MD", status=500, times=1),
        Fault(stage="ANNEX_JSON", status=400, times=None),
    ]
    with SimServer(SimProfile(scale=0.0, faults=faults)) as sim:
        settings = Settings(base_url=sim.base_url, backoff_initial_s=0.01, backoff_max_s=0.02)
        result, spans = _run_pipeline(settings, make_job("faulty-1"), receiver)
    assert result.status == "partial"
    root, stages, attempts = _tree(spans)
    assert root.attrs["briefd.status"] == "partial" and root.status_code != ERROR
    first, second = attempts["PLAYS_MD"]
    assert first.attrs["error.type"] == "SERVER_ERROR" and first.status_code == ERROR
    assert "gen_ai.usage.input_tokens" not in first.attrs  # the stage's tokens: on the last
    assert "error.type" not in second.attrs and second.status_code != ERROR
    assert second.attrs["gen_ai.usage.input_tokens"] > 0
    assert first.end_ns <= second.start_ns
    assert stages["PLAYS_MD"].status_code != ERROR
    annex = stages["ANNEX_JSON"]
    assert annex.attrs["error.type"] == "HTTP_ERROR" and annex.status_code == ERROR
    assert [a.attrs["error.type"] for a in attempts["ANNEX_JSON"]] == ["HTTP_ERROR"]
    assert receiver.wait(lambda r: "gen_ai.client.operation.duration" in r.metric_names())
    failed = [
        p
        for p in receiver.points()
        if p.metric == "gen_ai.client.operation.duration" and "error.type" in p.attrs
    ]
    assert sorted(p.attrs["error.type"] for p in failed) == ["HTTP_ERROR", "SERVER_ERROR"]


@pytest.mark.parametrize(
    ("opt_in", "old", "new"),
    [
        (None, True, False),
        ("gen_ai_latest_experimental", False, True),
        ("http,gen_ai_latest_experimental/dup", True, True),
    ],
)
def test_metric_names_follow_the_semconv_opt_in(
    otel_env: pytest.MonkeyPatch,
    receiver: OtlpReceiver,
    make_job: Any,
    opt_in: str | None,
    old: bool,
    new: bool,
) -> None:
    """Unset: the old GenAI metric names only; gen_ai_latest_experimental: the new ones
    only (inference duration, usage counters with cache reads); /dup: both. The workflow
    duration is in all three. The new counters add up to the job's tokens."""
    if opt_in is not None:
        otel_env.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
    with SimServer(SimProfile(scale=0.0), strict=True, cached_fraction=0.5) as sim:
        settings = Settings(base_url=sim.base_url, model="gpt-4o-mini")
        result, _ = _run_pipeline(settings, make_job(f"conv-{old}-{new}"), receiver)
    assert result.status == "succeeded"
    assert receiver.wait(lambda r: "gen_ai.invoke_workflow.duration" in r.metric_names())
    names = receiver.metric_names()
    assert names.issuperset(OLD) if old else not names & OLD
    assert names.issuperset(NEW) if new else not names & NEW
    if new:
        points = receiver.points()

        def total(metric: str) -> float:
            return sum(p.value for p in points if p.metric == metric)

        usage = result.metrics.usage.values()
        assert total(NEW_INPUT) == sum(u.prompt_tokens for u in usage)
        cached = sum(u.cached_tokens for u in usage)
        assert cached > 0 and total(NEW_CACHE) == cached
        modalities = {p.attrs["gen_ai.token.modality"] for p in points if p.metric == NEW_INPUT}
        assert modalities == {"text"}


NEW_INPUT = "gen_ai.client.inference.usage.input_tokens"
NEW_CACHE = "gen_ai.client.inference.usage.cache_read.input_tokens"


def test_message_content_only_on_opt_in_and_redacted(
    otel_env: pytest.MonkeyPatch, receiver: OtlpReceiver, make_job: Any, sim: SimServer
) -> None:
    """With OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true each call carries its
    prompt, the call that succeeded its document; a key inside the prompt is redacted."""
    otel_env.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    job = make_job("content-1")
    job["prompts"]["BRIEFING_MD"] = "Brief Acme. Our key is sk-abcdefghijklmnop123, do not leak."
    result, spans = _run_pipeline(Settings(base_url=sim.base_url), job, receiver)
    assert result.status == "succeeded"
    _, _, attempts = _tree(spans)
    for name in STAGES:
        (call,) = attempts[name]
        (message,) = json.loads(call.attrs["gen_ai.input.messages"])
        content = message["parts"][0]["content"]
        assert message["role"] == "user"
        if name == "BRIEFING_MD":
            assert "sk-abcdefghijklmnop123" not in content and "[REDACTED]" in content
        else:
            assert content == job["prompts"][name]
        (answer,) = json.loads(call.attrs["gen_ai.output.messages"])
        document = result.documents[name]
        text = document if isinstance(document, str) else json.loads(answer["parts"][0]["content"])
        assert text == document
    assert "sk-abcdefghijklmnop123" not in json.dumps([s.attrs for s in spans])


def test_without_the_extra_one_line_and_the_job_still_runs(
    otel_env: pytest.MonkeyPatch,
    receiver: OtlpReceiver,
    make_job: Any,
    sim: SimServer,
    log_lines: list[str],
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set but OpenTelemetry not importable: one warning line
    naming the extra, no telemetry, the job succeeds, nothing reaches the collector."""
    for name in [m for m in sys.modules if m.startswith(("opentelemetry", "briefd.telemetry."))]:
        otel_env.delitem(sys.modules, name)
    otel_env.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry: ImportError
    otel_env.setattr(briefd.telemetry, "_warned", False)
    with briefd.Pipeline(Settings(base_url=sim.base_url)) as p:
        assert p.telemetry is None
        assert p.submit(make_job("plain-1")).get(timeout=60).status == "succeeded"
    with briefd.Pipeline(Settings(base_url=sim.base_url)) as p:  # said once, not per start
        assert p.telemetry is None
    warned = [line for line in log_lines if "briefd[otel]" in line]
    assert len(warned) == 1 and warned[0].startswith("WARNING")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in warned[0]
    assert receiver.paths == []


def test_unset_endpoint_or_disabled_sdk_means_no_telemetry(
    otel_env: pytest.MonkeyPatch,
) -> None:
    """Only the endpoint variables turn it on; OTEL_SDK_DISABLED and OTEL_*_EXPORTER=none
    turn signals off."""
    assert briefd.telemetry.wanted() == (True, True)
    otel_env.setenv("OTEL_METRICS_EXPORTER", "none")
    assert briefd.telemetry.wanted() == (True, False)
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert briefd.telemetry.wanted() == (False, False)
    otel_env.delenv("OTEL_SDK_DISABLED")
    otel_env.delenv("OTEL_METRICS_EXPORTER")
    otel_env.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert briefd.telemetry.wanted() == (False, False)
    otel_env.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://127.0.0.1:9/v1/metrics")
    assert briefd.telemetry.wanted() == (False, True)


def test_import_briefd_loads_no_opentelemetry_and_stays_quiet(child_env: Any) -> None:
    """`import briefd` with an OTLP endpoint set imports no opentelemetry module and
    prints nothing: the extra is loaded when a Pipeline or the daemon starts."""
    code = (
        "import sys, briefd, briefd.api, briefd.daemon.main\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and done.stderr == ""


def test_the_daemon_exports_each_job_and_flushes_on_sigterm(
    receiver: OtlpReceiver, sim: SimServer, tmp_path: Path
) -> None:
    """`briefd serve` with OTEL_EXPORTER_OTLP_ENDPOINT: two jobs through the HTTP API are two
    traces of 4 stages each; SIGTERM exits 0 and their spans reach the collector."""
    d = Daemon(tmp_path, sim.base_url, max_concurrent=2, grace_s=2)
    for name in OTEL_VARS:
        d.env.pop(name, None)
    d.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    d.start()
    try:
        with d.client() as client:
            ids = [client.submit(daemon_job(f"otel-d{i}")) for i in range(2)]
            results = [client.result(i, timeout=60) for i in ids]
    finally:
        d.signal(signal.SIGTERM)
        code = d.wait_exit(30)
    assert code == 0, d.log()
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    assert receiver.wait(lambda r: len(r.spans()) >= 2 * 9)
    spans = receiver.spans()
    roots = {s.attrs["briefd.job_id"]: s for s in spans if not s.parent_id}
    assert set(roots) == set(ids)
    for root in roots.values():
        trace = [s for s in spans if s.trace_id == root.trace_id]
        assert sorted(s.name for s in trace if s.parent_id == root.span_id) == sorted(
            f"stage {n}" for n in STAGES
        )
        assert sum(s.name.startswith("chat") for s in trace) == 4


def test_streamed_clocks_become_time_to_first_chunk_and_call_times(
    otel_env: pytest.MonkeyPatch, receiver: OtlpReceiver, sim: SimServer
) -> None:
    """A streamed call's ttft_ms is its span's gen_ai.response.time_to_first_chunk and a
    time_to_first_chunk measurement; call_ms, where the events give it, ends the call's span
    (the failed attempt's from StageRetrying, the last one's the stage's total less it)."""
    otel_env.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental/dup")
    with briefd.Pipeline(Settings(base_url=sim.base_url)) as p:
        telemetry = p.telemetry
        assert telemetry is not None
        t0, job, M = 1_800_000_000.0, "streamed-1", "briefd-sim"
        usage = Usage(prompt_tokens=40, completion_tokens=200)
        error = PipelineError(stage="BRIEFING_MD", code=ErrorCode.STALLED, message="idle 15 s")
        for event in (
            JobStarted(job_id=job, stages=["BRIEFING_MD"], parallel=True, max_concurrent=2, ts=t0),
            StageStarted(
                job_id=job, stage="BRIEFING_MD", attempt=1, model=M, queued_ms=250, ts=t0 + 0.25
            ),
            StageRetrying(
                job_id=job,
                stage="BRIEFING_MD",
                attempt=1,
                wait_s=0.5,
                reason=error,
                call_ms=1000,
                ttft_ms=300,
                ts=t0 + 1.3,
            ),
            StageStarted(job_id=job, stage="BRIEFING_MD", attempt=2, model=M, ts=t0 + 1.8),
            StageSucceeded(
                job_id=job,
                stage="BRIEFING_MD",
                document="# Briefing",
                elapsed_ms=3200,
                attempts=2,
                usage=usage,
                served_by="default:briefd-sim",
                call_ms=2200,
                ttft_ms=150,
                ts=t0 + 3.2,  # the document parsed 0.2 s after the call's last byte
            ),
            JobCompleted(job_id=job, result=_result(job, usage), ts=t0 + 3.3),
        ):
            telemetry(event)
        assert telemetry.force_flush(10)
    assert receiver.wait(lambda r: len(r.spans()) == 4 and NEW_TTFC in r.metric_names())
    _, stages, attempts = _tree(receiver.spans())
    first, second = attempts["BRIEFING_MD"]
    assert first.name == second.name == "chat briefd-sim"
    assert first.attrs["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.3)
    assert first.attrs["gen_ai.request.stream"] is True
    assert first.attrs["error.type"] == "STALLED"
    assert first.attrs["briefd.queued_ms"] == 250
    assert (first.end_ns - first.start_ns) == pytest.approx(1e9, abs=1e6)  # its call_ms
    assert (second.end_ns - second.start_ns) == pytest.approx(1.2e9, abs=1e6)  # 2200 - 1000
    assert second.attrs["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.15)
    assert second.attrs["gen_ai.response.model"] == "briefd-sim"
    stage = stages["BRIEFING_MD"]
    assert stage.start_ns == pytest.approx(t0 * 1e9, abs=1e6)  # its end less elapsed_ms
    assert stage.attrs["briefd.call_ms"] == 2200
    for metric in (NEW_TTFC, "gen_ai.client.operation.time_to_first_chunk"):
        ttfc = [pt for pt in receiver.points() if pt.metric == metric]
        assert sum(pt.count for pt in ttfc) == 2
        assert sum(pt.value for pt in ttfc) == pytest.approx(0.45)


NEW_TTFC = "gen_ai.client.inference.time_to_first_chunk"


def _result(job_id: str, usage: Usage) -> JobResult:
    return JobResult(
        job_id=job_id,
        status=JobStatus.SUCCEEDED,
        documents={"BRIEFING_MD": "# Briefing"},
        errors=[],
        fallbacks=[],
        progress=Progress(stages={"BRIEFING_MD": StageState.COMPLETE}, percent=100.0),
        metrics=JobMetrics(
            stages_ms={"BRIEFING_MD": 3000},
            parallel_group_ms=3000,
            sequential_group_ms=0,
            total_ms=3100,
            speedup_ratio=1.0,
            usage={"BRIEFING_MD": usage},
            attempts={"BRIEFING_MD": 2},
        ),
        cost_usd={"BRIEFING_MD": 0.001},
        total_cost_usd=0.001,
    )


def test_a_collector_that_never_answers_does_not_hold_close(
    otel_env: pytest.MonkeyPatch, make_job: Any, sim: SimServer, log_lines: list[str]
) -> None:
    """The collector accepts connections and never answers: closing the Pipeline waits at
    most the shutdown bound, then says in one line that the rest is dropped."""
    import briefd.telemetry.otel as otel

    otel_env.setattr(otel, "SHUTDOWN_S", 0.5)
    with socket.socket() as silent:  # listens, never accepts: requests hang until timeout
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        otel_env.setenv(
            "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}"
        )
        with briefd.Pipeline(Settings(base_url=sim.base_url)) as p:
            assert p.submit(make_job("silent-1")).get(timeout=60).status == "succeeded"
    dropped = [line for line in log_lines if "did not take the last export" in line]
    assert len(dropped) == 1 and dropped[0].startswith("WARNING")


def test_the_record_of_a_job_follows_failovers_and_forgets_the_oldest() -> None:
    """The fold behind each trace: a failover ends the attempt it left (a skipped one made no
    call), a stage refused before any call has no attempt, an end without a start is no
    trace, and at most max_open jobs are held (the oldest is let go)."""
    from briefd.telemetry.record import Recorder

    rec = Recorder(max_open=2)
    gone = PipelineError(stage="PLAYS_MD", code=ErrorCode.CONNECTION, message="refused")
    up = PipelineError(stage="ANNEX_JSON", code=ErrorCode.UPSTREAM_FAILED, message="no input")
    for event in (
        JobStarted(job_id="a", stages=list(STAGES), parallel=True, max_concurrent=2, ts=10.0),
        StageStarted(job_id="a", stage="PLAYS_MD", attempt=1, endpoint="x", model="m", ts=11.0),
        StageFailedOver(
            job_id="a", stage="PLAYS_MD", from_route="x:m", to_route="y:m", reason=gone, ts=11.5
        ),
        StageFailedOver(
            job_id="a",
            stage="PLAYS_MD",
            from_route="y:m",
            to_route="z:m",
            reason=gone,
            skipped=True,
            ts=11.6,
        ),
        StageStarted(job_id="a", stage="PLAYS_MD", attempt=1, endpoint="z", model="m", ts=11.7),
        StageFailed(job_id="a", stage="ANNEX_JSON", error=up, ts=12.0),
    ):
        assert rec.add(event) is None
    assert rec.add(JobCompleted(job_id="nobody", result=_result("nobody", Usage()))) is None
    done = rec.add(JobCompleted(job_id="a", result=_result("a", Usage()), ts=13.0))
    assert done is not None
    job, _ = done
    first, second = job.stages["PLAYS_MD"].attempts
    assert (first.endpoint, first.end, first.error) == ("x", 11.5, gone)
    assert (second.endpoint, second.end) == ("z", None)  # still open when the job ended
    assert job.stages["ANNEX_JSON"].attempts == []
    for name in ("b", "c", "d"):
        rec.add(JobStarted(job_id=name, stages=[], parallel=True, max_concurrent=2))
    assert rec.open_jobs() == 2
    assert rec.add(JobCompleted(job_id="b", result=_result("b", Usage()))) is None


def test_provider_names_follow_the_endpoint_kind_and_host() -> None:
    """Azure endpoints are azure.ai.openai, well-known hosts their provider, every other
    OpenAI-compatible server the openai flavour it speaks; the server is host and port."""
    from briefd.telemetry.genai import provider_name, server_of

    assert provider_name("openai", "https://api.openai.com/v1") == "openai"
    assert provider_name("azure", "https://eu.example.net/openai") == "azure.ai.openai"
    assert provider_name("compatible", "https://acme.openai.azure.com") == "azure.ai.openai"
    assert provider_name("compatible", "https://api.groq.com/openai/v1") == "groq"
    assert provider_name("compatible", "https://api.deepseek.com") == "deepseek"
    assert provider_name("compatible", "http://127.0.0.1:8000/v1") == "openai"
    assert provider_name("embedded", "http://127.0.0.1:41234/v1") == "openai"
    assert server_of("https://api.openai.com/v1") == ("api.openai.com", 443)
    assert server_of("http://localhost:11434/v1") == ("localhost", 11434)
    assert server_of("not a url") is None
