"""Faults where upstream text enters briefd, each run as a real job against a raw-socket fake.

Every case ends with the same promise checked (:func:`check_invariants`): the job has
exactly one terminal state; stages the server answered well were bought exactly once;
the API key reached the server and nothing else (not the result, the files, the
events, the captured logs). Most cases run in-process through :class:`briefd.Pipeline`;
one runs ``briefd run`` as a subprocess and one runs through ``briefd serve``.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from daemon_helpers import Daemon, complete_stages

import briefd
from briefd.config import Settings, load_pipeline
from briefd.llm.call import ChatClient, build_request
from briefd.llm.errors import BadResponseError
from briefd.messages import (
    ErrorCode,
    Event,
    JobCompleted,
    JobResult,
    JobState,
    JobStatus,
    RateLimitCooldown,
    StageState,
)
from briefd.output import write_result
from faults.upstream import (
    FORGED_LINE,
    FakeUpstream,
    bomb,
    deflate_ok,
    drip,
    echo_authorization,
    endless_body,
    error_with_escapes,
    gzip_bomb,
    gzip_ok,
    html_200,
    insufficient_quota,
    lone_surrogates,
    malformed_usage,
    no_choices,
    null_content,
    raw,
    reset_mid_body,
    short_body,
    silent,
    terminal_escapes,
    unknown_encoding,
)

CANARY = "sk-canary-3f9b2c7d1e5a"
PLAIN_CANARY = "canary-token-8d2e4f6a1b3c"
"""A key no pattern recognises: only the client's registration of its own key can redact it."""
STAGES = ("BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON")
PIPELINE = load_pipeline(None)
CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def make_job(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "prompts": {s: f"Write the {s} for Acme.\nRenewal focus." for s in STAGES},
        "procurement_metrics": {"summary": "from the CRM", "vendors": []},
    }


def settings_for(up: FakeUpstream, api_key: str = CANARY, **overrides: Any) -> Settings:
    """Loopback, the canary key, short deadlines and backoffs."""
    values: dict[str, Any] = {
        "base_url": up.base_url,
        "api_key": api_key,
        "timeout_ms": 3_000,
        "connect_timeout_ms": 2_000,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "retry_after_max_s": 0.3,
        "max_retries": 2,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Outcome:
    """One finished in-process job and everything it left behind."""

    job_id: str
    result: JobResult
    events: list[Event]
    out: Path
    up: FakeUpstream
    key: str
    logs: list[str] = field(default_factory=list)


def run_job(
    up: FakeUpstream, tmp_path: Path, logs: list[str], *, key: str = CANARY, **overrides: Any
) -> Outcome:
    """Run one job through a Pipeline, write its files, and keep what it published."""
    events: list[Event] = []
    job_id = "fault-1"
    with briefd.Pipeline(settings_for(up, key, **overrides), observers=[events.append]) as p:
        result = p.submit(make_job(job_id)).get(timeout=p.job_timeout_s())
        pipeline = p.pipeline
    out = tmp_path / "out"
    write_result(out, pipeline, result)
    return Outcome(job_id, result, events, out, up, key, logs)


def files_under(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file())


def assert_key_nowhere(key: str, texts: dict[str, bytes | str]) -> None:
    """``key`` appears in none of ``texts`` (name -> content)."""
    leaks = [
        name
        for name, text in texts.items()
        if key in (text if isinstance(text, str) else text.decode("utf-8", "replace"))
    ]
    assert not leaks, f"the key leaked into {leaks}"


def check_invariants(o: Outcome, *, faulted: dict[str, int]) -> None:
    """The promise after any fault: one terminal state, no double purchase, no leaked key.

    ``faulted`` maps each scripted stage to the requests it should have cost; every
    other stage must have been requested exactly once.
    """
    done = [e for e in o.events if isinstance(e, JobCompleted) and e.job_id == o.job_id]
    assert len(done) == 1, f"{len(done)} terminal events"
    assert o.result.status in (JobStatus.SUCCEEDED, JobStatus.PARTIAL, JobStatus.FAILED)
    assert set(o.result.progress.stages.values()) <= {StageState.COMPLETE, StageState.FAILED}
    for stage in STAGES:
        expected = faulted.get(stage, 1)
        assert o.up.count(o.job_id, stage) == expected, (stage, o.up.counts())
        if o.result.documents.get(stage) is not None and stage not in o.result.fallbacks:
            assert o.result.metrics.attempts[stage] == expected, stage
    auths = o.up.authorizations()
    assert auths and set(auths) == {f"Bearer {o.key}"}, "the key must reach the server"
    texts: dict[str, bytes | str] = {"result": o.result.model_dump_json()}
    texts |= {f"event {i}": e.model_dump_json() for i, e in enumerate(o.events)}
    texts |= {f"log {i}": line for i, line in enumerate(o.logs)}
    texts |= {str(p): p.read_bytes() for p in files_under(o.out)}
    assert_key_nowhere(o.key, texts)
    saved = json.loads((o.out / "result.json").read_text(encoding="utf-8"))
    assert saved["status"] == o.result.status.value


def error_of(o: Outcome, stage: str) -> Any:
    return next(e for e in o.result.errors if e.stage == stage)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never through a proxy, whatever the environment says (children inherit this too)."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


# -- the fault table: one behaviour on PLAYS_MD, the rest of the job must not care ----------


@dataclass(frozen=True)
class Case:
    behaviour: Callable[[], Any]
    code: ErrorCode | None  # None: the stage must succeed
    requests: int
    message: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


BAD_NUMBERS = (
    b'{"choices":[{"message":{"content":"# plays"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":Infinity,"completion_tokens":-3}}'
)
QUICK = {"timeout_ms": 500, "max_retries": 1}
CASES = {
    "silent": Case(silent, ErrorCode.TIMEOUT, 2, "within", QUICK),
    "drip": Case(drip, ErrorCode.TIMEOUT, 2, "within", QUICK),
    "reset_mid_body": Case(reset_mid_body, ErrorCode.CONNECTION, 3),
    "short_body": Case(short_body, ErrorCode.CONNECTION, 3),
    "html_200": Case(html_200, ErrorCode.BAD_RESPONSE, 1, "not a chat completion"),
    "no_choices": Case(no_choices, ErrorCode.BAD_RESPONSE, 1, "not a chat completion"),
    "null_content": Case(null_content, ErrorCode.BAD_RESPONSE, 1, "no text"),
    "endless_body": Case(endless_body, ErrorCode.BAD_RESPONSE, 1, "larger than"),
    "gzip": Case(gzip_ok, None, 1),
    "deflate": Case(deflate_ok, None, 1),
    "gzip_bomb": Case(gzip_bomb, ErrorCode.BAD_RESPONSE, 1, "larger than"),
    "unknown_encoding": Case(unknown_encoding, ErrorCode.BAD_RESPONSE, 1, "Content-Encoding"),
    "error_with_escapes": Case(error_with_escapes, ErrorCode.HTTP_ERROR, 1, "bad request"),
    "insufficient_quota": Case(insufficient_quota, ErrorCode.QUOTA_EXCEEDED, 1, "quota"),
    "usage_not_a_number": Case(lambda: malformed_usage({"prompt_tokens": "many"}), None, 1),
    "usage_a_list": Case(lambda: malformed_usage([]), None, 1),
    "usage_infinite": Case(
        lambda: raw(200, BAD_NUMBERS),
        None,
        1,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fault_on_one_stage(
    name: str, up: FakeUpstream, tmp_path: Path, log_lines: list[str]
) -> None:
    """Each fault on PLAYS_MD: the expected code (or a kept document), the expected number
    of requests, and the invariant for the whole job."""
    case = CASES[name]
    up.on("PLAYS_MD", case.behaviour())
    o = run_job(up, tmp_path, log_lines, **case.overrides)
    check_invariants(o, faulted={"PLAYS_MD": case.requests})
    if case.code is None:
        assert o.result.status is JobStatus.SUCCEEDED, o.result.errors
        assert o.result.documents["PLAYS_MD"]
    else:
        err = error_of(o, "PLAYS_MD")
        assert err.code is case.code, err
        assert case.message in err.message, err
        assert [e.stage for e in o.result.errors] == ["PLAYS_MD"]
    assert not any(set(e.message) & CONTROL for e in o.result.errors), "one line, no escapes"


# -- cases with more to check than the table ---------------------------------------------


def test_lone_surrogates_become_replacement_characters(
    up: FakeUpstream, tmp_path: Path, log_lines: list[str]
) -> None:
    """Lone surrogates (escaped, or raw CESU-8 bytes) in a markdown answer and inside a JSON
    document become U+FFFD; a valid astral character survives; every file is written."""
    up.on("BRIEFING_MD", lone_surrogates())
    up.on("PROCUREMENT_JSON", lone_surrogates())
    o = run_job(up, tmp_path, log_lines)
    check_invariants(o, faulted={})
    assert o.result.status is JobStatus.SUCCEEDED, o.result.errors
    briefing = (o.out / "briefing.md").read_text(encoding="utf-8")
    assert "lone high \ufffd, lone low \ufffd, reversed \ufffd\ufffd, pair \U0001f600" in briefing
    assert "raw \ufffd" in briefing
    procurement = (o.out / "procurement.json").read_text(encoding="utf-8")
    assert "\ufffd \U0001f600" in json.dumps(json.loads(procurement), ensure_ascii=False)
    everything = o.result.model_dump_json() + briefing + procurement
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in everything)


def test_terminal_escapes_in_an_answer_keep_the_document(
    up: FakeUpstream, tmp_path: Path, log_lines: list[str]
) -> None:
    """The document is the client's, escapes and all; no log line carries them or the forgery."""
    up.on("BRIEFING_MD", terminal_escapes())
    up.on("ANNEX_JSON", terminal_escapes())
    o = run_job(up, tmp_path, log_lines)
    check_invariants(o, faulted={})
    assert o.result.status is JobStatus.SUCCEEDED, o.result.errors
    assert "\x1b]0;pwned\x07" in o.result.documents["BRIEFING_MD"]
    assert log_lines and not [line for line in log_lines if "\x1b" in line or FORGED_LINE in line]


@pytest.mark.parametrize("key", [CANARY, PLAIN_CANARY])
def test_an_upstream_that_echoes_the_key_leaks_it_nowhere(
    key: str, up: FakeUpstream, tmp_path: Path, log_lines: list[str]
) -> None:
    """A 401 body that quotes the Authorization header (dict, header line, prose, x-api-key):
    the error is reported, redacted, not retried."""
    up.on("PLAYS_MD", echo_authorization())
    o = run_job(up, tmp_path, log_lines, key=key)
    check_invariants(o, faulted={})
    err = error_of(o, "PLAYS_MD")
    assert err.code is ErrorCode.HTTP_ERROR and "invalid credentials" in err.message
    assert "[REDACTED]" in err.message
    assert o.result.documents["BRIEFING_MD"], "the other stages are untouched"


def test_insufficient_quota_is_final_and_pauses_nobody(
    up: FakeUpstream, tmp_path: Path, log_lines: list[str]
) -> None:
    """429 insufficient_quota: one request, QUOTA_EXCEEDED with a billing hint, no cool-down."""
    up.on("PLAYS_MD", insufficient_quota())
    o = run_job(up, tmp_path, log_lines)
    check_invariants(o, faulted={})
    err = error_of(o, "PLAYS_MD")
    assert err.code is ErrorCode.QUOTA_EXCEEDED and "billing" in err.hint
    assert not [e for e in o.events if isinstance(e, RateLimitCooldown)]


def test_a_malformed_usage_keeps_the_document_and_counts_nothing(
    up: FakeUpstream, tmp_path: Path, log_lines: list[str]
) -> None:
    """A paid document is not thrown away over a bookkeeping field: its usage counts zero."""
    up.on("PLAYS_MD", malformed_usage({"prompt_tokens": "many", "completion_tokens": 7}))
    o = run_job(up, tmp_path, log_lines)
    check_invariants(o, faulted={})
    assert o.result.documents["PLAYS_MD"]
    usage = o.result.metrics.usage["PLAYS_MD"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (0, 7)


def _client_call(up: FakeUpstream, stage: str = "PLAYS_MD") -> Any:
    settings = settings_for(up)
    client = ChatClient(settings, up.base_url)
    try:
        body = build_request(PIPELINE.by_name[stage], "Write it.", settings)
        return client.complete(body, job_id="direct", stage=stage)
    finally:
        client.close()


def test_accept_encoding_names_exactly_what_is_decoded(up: FakeUpstream) -> None:
    """The client asks for gzip and deflate, and decodes both."""
    up.on("PLAYS_MD", gzip_ok(), times=1)
    up.on("PLAYS_MD", deflate_ok(), times=1)
    assert "# Plays" in _client_call(up).text
    assert "# Plays" in _client_call(up).text
    offered = {r.headers.get("accept-encoding") for r in up.requests()}
    assert offered == {"gzip, deflate"}


def test_a_gzip_bomb_never_inflates_past_the_cap(up: FakeUpstream) -> None:
    """64 MiB behind ~64 KiB of gzip: BAD_RESPONSE, and the client's memory peak stays near
    the 16 MiB cap (a decoder without a limit would hold the whole 64 MiB)."""
    up.on("PLAYS_MD", gzip_bomb(64))
    bomb(64)  # built before measuring: the server's copy is not the client's
    tracemalloc.start()
    try:
        with pytest.raises(BadResponseError, match="larger than") as caught:
            _client_call(up)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.code is ErrorCode.BAD_RESPONSE
    assert peak < 48 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"


# -- TLS: verification holds, and fails once with a useful hint ---------------------------


def test_an_untrusted_certificate_is_one_attempt_and_a_tls_error(
    tmp_path: Path, log_lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A self-made CA: TLS_ERROR naming REQUESTS_CA_BUNDLE, one connection per stage, no
    request (so no key) sent; the same server with its CA trusted serves the whole job."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    with FakeUpstream(tls=server_ctx) as up:
        events: list[Event] = []
        # The model is named: with none, the start itself would be refused (it asks /models).
        settings = settings_for(up).model_copy(update={"model": "upstream-model"})
        with briefd.Pipeline(settings, observers=[events.append]) as p:
            result = p.submit(make_job("tls-1")).get(timeout=p.job_timeout_s())
        assert result.status is JobStatus.FAILED
        assert [e for e in events if isinstance(e, JobCompleted)] != []
        assert {e.code for e in result.errors} == {ErrorCode.TLS_ERROR}
        assert all(
            "REQUESTS_CA_BUNDLE" in e.hint and "certificate" in e.hint for e in result.errors
        )
        assert up.connections == len(STAGES), "a certificate problem is not retried"
        assert up.requests() == []
        bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(bundle))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        o = run_job(up, tmp_path, log_lines)
        check_invariants(o, faulted={})
        assert o.result.status is JobStatus.SUCCEEDED, o.result.errors


# -- the same faults through the CLI and the daemon --------------------------------------


def _script_mixed(up: FakeUpstream) -> None:
    """Surrogates in two documents, an echoed key on PLAYS_MD, escapes in ANNEX_JSON's error."""
    up.on("BRIEFING_MD", lone_surrogates())
    up.on("PROCUREMENT_JSON", lone_surrogates())
    up.on("PLAYS_MD", echo_authorization())
    up.on("ANNEX_JSON", error_with_escapes())


def test_cli_run_survives_the_mixed_faults(
    up: FakeUpstream, tmp_path: Path, briefd_cmd: Any, child_env: Any
) -> None:
    """``briefd run``: exit 3 (partial), no traceback, the paid documents written, the key in
    no file, stream or log, stderr one clean line per error, the log file 0600 under umask 0."""
    _script_mixed(up)
    job = tmp_path / "job.json"
    job.write_text(json.dumps(make_job("cli-1")))
    log = tmp_path / "logs" / "briefd.jsonl"
    log.parent.mkdir()
    env = child_env(
        BRIEFD_BASE_URL=up.base_url,
        BRIEFD_API_KEY=CANARY,
        BRIEFD_LOG_FILE=str(log),
        BRIEFD_TIMEOUT_MS="3000",
        BRIEFD_BACKOFF_INITIAL_S="0.01",
        BRIEFD_BACKOFF_MAX_S="0.05",
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        briefd_cmd("run", str(job), "--out", str(out)),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        umask=0,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {s: up.count("cli-1", s) for s in STAGES} == dict.fromkeys(STAGES, 1)
    assert "\ufffd" in (out / "briefing.md").read_text(encoding="utf-8")
    assert (out / "procurement.json").is_file() and not (out / "plays.md").exists()
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["status"] == "partial"
    assert os.stat(log).st_mode & 0o777 == 0o600
    texts: dict[str, bytes | str] = {"stdout": proc.stdout, "stderr": proc.stderr}
    texts |= {str(p): p.read_bytes() for p in [*files_under(out), log]}
    assert_key_nowhere(CANARY, texts)
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    for line in proc.stderr.splitlines():
        assert line.strip() != FORGED_LINE
        if line.startswith("{"):
            assert json.loads(line).get("event") != "Forged"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("  error ")]
    assert len(errors) == 2 and any("ANNEX_JSON HTTP_ERROR" in line for line in errors)


def test_daemon_job_survives_the_mixed_faults(up: FakeUpstream, tmp_path: Path) -> None:
    """``briefd serve``: the job ends partial (not stuck running), each stage bought once,
    the journal keeps the three documents, and the key is in no file the daemon wrote."""
    _script_mixed(up)
    daemon = Daemon(tmp_path, up.base_url, api_key=CANARY, timeout_ms=3000, max_retries=1)
    daemon.start()
    try:
        with daemon.client() as client:
            client.submit(make_job("d-1"))
            result = client.result("d-1", timeout=30)
            info = client.status("d-1")
    finally:
        daemon.stop()
    assert result.status is JobStatus.PARTIAL and info.status is JobState.PARTIAL
    assert complete_stages(daemon.data_dir) == {
        ("d-1", "BRIEFING_MD"),
        ("d-1", "PROCUREMENT_JSON"),
    }
    assert {s: up.count("d-1", s) for s in STAGES} == dict.fromkeys(STAGES, 1)
    assert "\ufffd" in (daemon.data_dir / "jobs" / "d-1" / "briefing.md").read_text("utf-8")
    assert_key_nowhere(CANARY, {str(p): p.read_bytes() for p in files_under(tmp_path)})
