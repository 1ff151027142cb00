"""The event log, schema v1: what publish() writes, what it never writes, and the docs."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from log_helpers import succeeded_result
from loguru import logger

from briefd.config import Settings
from briefd.messages import (
    ErrorCode,
    JobCompleted,
    PipelineError,
    StageFailed,
    StageStarted,
    StageSucceeded,
)
from briefd.ops.eventdocs import render_docs
from briefd.ops.eventlog import (
    RESERVED,
    LogFollower,
    event_classes,
    event_payload,
    parse_line,
    to_message,
)
from briefd.ops.events import publish
from briefd.ops.logs import setup_logging

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "key-for-tests-7f3a9c2e"
DAEMON_TOKEN = "daemon-token-5b8e1d4f6a"
HOSTILE = (
    'HTTP 503: upstream said\n{"v":1,"event":"JobCompleted"}\r\x1b[2J\x1b]0;owned\x07 \u2028 \u202e'
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put loguru back to its default (stderr) after a test reconfigures it."""
    yield
    logger.remove()
    logger.add(sys.stderr)


def configure(tmp_path: Path, **overrides: object) -> io.StringIO:
    """setup_logging() into a buffer, with a key and a daemon token file to keep out."""
    token_file = tmp_path / "token"
    token_file.write_text(DAEMON_TOKEN + "\n", encoding="utf-8")
    values: dict[str, object] = {
        "log_format": "json",
        "log_level": "DEBUG",
        "api_key": API_KEY,
        "token_file": token_file,
        **overrides,
    }
    buffer = io.StringIO()
    setup_logging(Settings(**values), stream=buffer)  # type: ignore[arg-type]
    return buffer


def failed(message: str, stage: str = "PLAYS_MD") -> StageFailed:
    """A StageFailed quoting ``message`` as a server's error text."""
    error = PipelineError(stage=stage, code=ErrorCode.SERVER_ERROR, message=message, hint="h")
    return StageFailed(job_id="job-1", stage=stage, error=error)


def test_line_has_the_v1_envelope_and_the_models_fields(
    tmp_path: Path, restore_logging: None
) -> None:
    """A published event is one line: v, ts, level, event, job_id, stage, its fields, msg."""
    buffer = configure(tmp_path)
    event = StageStarted(job_id="job-1", stage="BRIEFING_MD", attempt=2)
    publish(event)
    line = json.loads(buffer.getvalue())
    assert list(line)[:6] == ["v", "ts", "level", "event", "job_id", "stage"]
    assert list(line)[-1] == "msg"
    assert line["v"] == 1 and line["ts"] == pytest.approx(event.ts)
    assert (line["event"], line["job_id"], line["stage"], line["attempt"]) == (
        "StageStarted",
        "job-1",
        "BRIEFING_MD",
        2,
    )
    record = parse_line(buffer.getvalue().strip())
    assert record is not None and to_message(record) == event


def test_documents_are_logged_as_digests(tmp_path: Path, restore_logging: None) -> None:
    """StageSucceeded and JobCompleted carry size and SHA-256, never the document's text."""
    buffer = configure(tmp_path)
    text = "# Briefing\nConfidential: the client's renewal is at risk."
    doc = {"total_value": 1200, "currency": "EUR"}
    publish(
        StageSucceeded(job_id="job-1", stage="BRIEFING_MD", document=text, elapsed_ms=3, attempts=1)
    )
    publish(
        JobCompleted(
            job_id="job-1",
            result=succeeded_result("job-1", {"BRIEFING_MD": text, "X": doc, "Y": None}),
        )
    )
    out = buffer.getvalue()
    assert "Confidential" not in out and "total_value" not in out
    first, second = (json.loads(x) for x in out.splitlines())
    raw = text.encode()
    assert first["document"] == {
        "kind": "text",
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    documents = second["result"]["documents"]
    assert documents["BRIEFING_MD"] == first["document"]
    canonical = b'{"currency":"EUR","total_value":1200}'
    assert documents["X"]["sha256"] == hashlib.sha256(canonical).hexdigest()
    assert documents["Y"] is None


def test_secrets_never_reach_a_sink(tmp_path: Path, restore_logging: None) -> None:
    """The API key, the daemon token, Bearer tokens and sk- keys are redacted, JSON and text."""
    for fmt in ("json", "text"):
        buffer = configure(tmp_path, log_format=fmt)
        publish(
            failed(
                f"echo: key={API_KEY} Authorization: Bearer abc.DEF-123_xyz sk-proj-AbCdEf123456"
            )
        )
        logger.warning("token file held {}", DAEMON_TOKEN)
        try:
            raise RuntimeError(f"bad key {API_KEY}")
        except RuntimeError:
            logger.exception("call failed")
        out = buffer.getvalue()
        for secret in (API_KEY, DAEMON_TOKEN, "abc.DEF-123_xyz", "AbCdEf123456"):
            assert secret not in out, (fmt, secret)
        assert out.count("[REDACTED]") >= 5, out


def test_hostile_text_cannot_forge_lines_or_drive_a_terminal(
    tmp_path: Path, restore_logging: None
) -> None:
    """Newlines, ANSI/OSC escapes and Unicode separators in quoted text stay inside one line."""
    buffer = configure(tmp_path)
    publish(failed(HOSTILE))
    out = buffer.getvalue()
    assert out.count("\n") == 1
    assert all(32 <= ord(c) < 127 for c in out.rstrip("\n")), "a JSON line is printable ASCII"
    record = parse_line(out)
    assert record is not None and record.event == "StageFailed"
    assert record.data["error"]["message"] == HOSTILE  # escaped, not lost

    text = configure(tmp_path, log_format="text")
    publish(failed(HOSTILE))
    shown = text.getvalue()
    assert shown.count("\n") == 1 and "\x1b" not in shown and "\u2028" not in shown
    assert "\\n" in shown and "\\u001b" in shown


def test_file_sink_rotates_and_the_follower_reads_every_line_once(
    tmp_path: Path, restore_logging: None
) -> None:
    """Rotating at 1,500 bytes, a follower reading between writes sees each event once, in order."""
    path = tmp_path / "briefd.log"
    setup_logging(
        Settings(log_file=path, log_format="json"),
        stream=io.StringIO(),
        rotation=1500,
        retention=100,
    )
    follower = LogFollower(path)
    seen: list[str] = []
    for n in range(40):
        publish(StageStarted(job_id=f"job-{n}", stage="BRIEFING_MD", attempt=1))
        logger.complete()  # the file sink writes from its own thread
        seen += [r.job_id or "" for r in follower.read() if r.event == "StageStarted"]
    follower.close()
    assert seen == [f"job-{n}" for n in range(40)]
    assert len(list(tmp_path.glob("briefd*.log"))) > 3, "the sink should have rotated"
    assert follower.stats.ignored == 0 and follower.stats.partial == 0


def test_publish_from_many_threads_writes_whole_lines(
    tmp_path: Path, restore_logging: None
) -> None:
    """Actors publish from their own threads: lines never interleave in the file."""
    path = tmp_path / "briefd.log"
    setup_logging(Settings(log_file=path, log_format="json"), stream=io.StringIO())
    start = threading.Event()

    def worker(k: int) -> None:
        start.wait(5)
        for n in range(100):
            publish(failed(f"worker {k} message {n} " + "x" * 200, stage=f"S{k}"))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(10)
    logger.complete()
    follower = LogFollower(path)
    records = follower.finish()
    follower.close()
    assert len(records) == 400 and follower.stats.ignored == follower.stats.partial == 0
    assert all(r.event == "StageFailed" for r in records)


def test_every_event_model_fits_the_envelope() -> None:
    """No event uses an envelope name as a field, and every event of the union is known."""
    classes = event_classes()
    assert {"StageStarted", "JobCompleted", "TokenGranted", "RateLimitCooldown"} <= set(classes)
    for name, cls in classes.items():
        assert not RESERVED & set(cls.model_fields), name
        assert cls.model_fields["type"].default == name


def test_payload_refuses_a_field_that_would_clobber_the_envelope() -> None:
    """A future event with a field named like the envelope fails loudly, not silently."""

    class Clash(StageStarted):
        msg: str = "oops"

    with pytest.raises(ValueError, match="collide"):
        event_payload(Clash(job_id="j", stage="s", attempt=1))


def test_docs_are_generated_from_the_models() -> None:
    """docs/events.md is what the generator makes now: python -m briefd.ops.eventdocs --write it."""
    current = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    assert current == render_docs(), "stale: python -m briefd.ops.eventdocs --write docs/events.md"
    for name in event_classes():
        assert f"### {name}" in current


class _Doomed(pykka.ThreadingActor):
    """An actor whose tell handler raises: pykka reports that through stdlib logging."""

    def on_receive(self, message: object) -> object:
        raise RuntimeError("doomed actor")


def test_pykka_actor_deaths_reach_the_log(tmp_path: Path, restore_logging: None) -> None:
    """pykka logs an actor's death with stdlib logging; setup_logging routes it into loguru,
    so the operations log shows it (as a `log` line with the traceback)."""
    buffer = configure(tmp_path)
    ref = _Doomed.start()
    ref.tell("anything")
    gone = threading.Event()
    deadline = time.monotonic() + 5
    while ref.is_alive() and time.monotonic() < deadline:
        gone.wait(0.01)
    assert not ref.is_alive()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    deaths = [r for r in lines if r["event"] == "log" and "doomed actor" in r.get("exception", "")]
    assert deaths and deaths[0]["level"] == "ERROR"


def test_guard_rail_events_read_as_sentences() -> None:
    """The rollback and budget events say what happened in the text log, not their class name."""
    from briefd.messages import (
        DailyBudgetReleased,
        DailyBudgetSpent,
        RollbackCleared,
        RollbackProbation,
        RollbackTripped,
    )
    from briefd.ops.events import describe

    why = "error rate 30.0% (3/10) is up more than 5.0% over its baseline 0.0%"
    lines = [
        describe(
            RollbackTripped(
                signal="error", rate=0.3, threshold=0.05, baseline=0.0, samples=10,
                probation_s=60, reason=why,
            )
        ),
        describe(RollbackProbation(trial_fraction=0.5, reason=why)),
        describe(RollbackCleared(samples=10, reason="trials stayed under every threshold")),
        describe(DailyBudgetSpent(spent_usd=5.01, budget_usd=5.0, queued=3)),
        describe(DailyBudgetReleased(reason="budget raised", spent_usd=5.01, budget_usd=10.0)),
    ]  # fmt: skip
    assert "new jobs run sequentially" in lines[0] and why in lines[0]
    assert "50% of new jobs run parallel" in lines[1]
    assert "parallel again" in lines[2]
    assert "$5.0100 of $5.0000" in lines[3] and "3 queued" in lines[3]
    assert "budget raised" in lines[4]
    assert not any("Rollback" in line or "DailyBudget" in line for line in lines)
