"""Failures stay in their stage: retries, timeouts, bad output, fallbacks and crashes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest

import briefd
from briefd.actors import StageActor
from briefd.actors import coordinator as coordinator_module
from briefd.llm.call import Completion
from briefd.llm.errors import CallCancelled
from briefd.messages import (
    ErrorCode,
    Event,
    JobStatus,
    PipelineError,
    StageRetrying,
    TokenReleased,
)
from briefd.sim.server import Fault, SimServer


def test_503_is_retried_and_400_is_not(sim: SimServer, make_settings: Any, make_job: Any) -> None:
    """A transient 503 costs one more call and succeeds; a 400 fails at once with one call."""
    sim.inject(Fault(stage="BRIEFING_MD", status=503, times=1))
    sim.inject(Fault(stage="PLAYS_MD", status=400, times=None))
    result = briefd.run(make_job(), make_settings())
    calls = sim.stats().by_job_stage["acme-1"]
    assert calls["BRIEFING_MD"] == 2 and result.metrics.attempts["BRIEFING_MD"] == 2
    assert result.documents["BRIEFING_MD"]
    assert calls["PLAYS_MD"] == 1
    assert [e.code for e in result.errors] == [ErrorCode.HTTP_ERROR]
    assert "HTTP 400" in result.errors[0].message


def test_retries_stop_at_max_retries(sim: SimServer, make_settings: Any, make_job: Any) -> None:
    """BRIEFD_MAX_RETRIES=2 means three calls at most; BRIEFD_RETRY_ENABLED=false means one."""
    sim.inject(Fault(stage="BRIEFING_MD", status=502, times=None))
    result = briefd.run(make_job("a"), make_settings(max_retries=2))
    assert sim.stats().by_job_stage["a"]["BRIEFING_MD"] == 3
    assert result.errors[0].code is ErrorCode.SERVER_ERROR
    briefd.run(make_job("b"), make_settings(retry_enabled=False))
    assert sim.stats().by_job_stage["b"]["BRIEFING_MD"] == 1


def test_retry_after_is_honoured_and_the_token_is_free_meanwhile(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """429 with Retry-After 0.4: the retry waits 0.4 s without holding the only token, and
    other calls use it during the wait (cool-down off: the back-off is the stage's own)."""
    sim.inject(Fault(stage="PLAYS_MD", job_id="a", status=429, retry_after="0.4", times=1))
    events: list[Event] = []
    settings = make_settings(max_concurrent=1, rate_limit_cooldown=False)
    with briefd.Pipeline(settings, observers=[events.append]) as pipeline:
        futures = [pipeline.submit(make_job("a")), pipeline.submit(make_job("b"))]
        results = [f.get(timeout=30) for f in futures]
    assert [r.status for r in results] == [JobStatus.SUCCEEDED] * 2
    retry = next(e for e in events if isinstance(e, StageRetrying))
    assert (retry.job_id, retry.stage, retry.wait_s) == ("a", "PLAYS_MD", 0.4)
    reqs = sim.stats().requests
    plays = [r for r in reqs if r.stage == "PLAYS_MD" and r.job_id == "a"]
    assert len(plays) == 2
    assert plays[1].start - plays[0].end >= 0.39  # type: ignore[operator]
    during = [r for r in reqs if plays[0].end <= r.start < plays[1].start]  # type: ignore[operator]
    assert during, "no other call ran while PLAYS_MD waited out its Retry-After"
    released = [e for e in events if isinstance(e, TokenReleased) and e.job_id == "a"]
    assert [e.stage for e in released].count("PLAYS_MD") == 2
    assert not any(e.reclaimed for e in released)
    assert sim.stats().max_in_flight == 1


def test_429_cools_down_every_grant(sim: SimServer, make_settings: Any, make_job: Any) -> None:
    """With the default cool-down, no call at all reaches the server until Retry-After passed."""
    sim.inject(Fault(stage="PLAYS_MD", status=429, retry_after="0.3", times=1))
    result = briefd.run(make_job(), make_settings(max_concurrent=1))
    assert result.status is JobStatus.SUCCEEDED
    reqs = sorted(sim.stats().requests, key=lambda r: r.start)
    first_429 = next(r for r in reqs if r.status == 429)
    later = [r for r in reqs if r.start > first_429.start]
    assert later and min(r.start for r in later) - first_429.end >= 0.29  # type: ignore[operator]


def test_hanging_server_ends_in_a_timeout(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """A server that never answers gives TIMEOUT after BRIEFD_TIMEOUT_MS, not a hang."""
    sim.inject(Fault(stage="BRIEFING_MD", hang=True, times=None))
    started = time.monotonic()
    result = briefd.run(make_job(), make_settings(timeout_ms=300, max_retries=1))
    elapsed = time.monotonic() - started
    err = next(e for e in result.errors if e.stage == "BRIEFING_MD")
    assert err.code is ErrorCode.TIMEOUT
    assert result.metrics.attempts["BRIEFING_MD"] == 2
    assert elapsed < 5, elapsed
    assert result.documents["PLAYS_MD"]


def test_dripping_server_is_cut_at_the_deadline(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """Bytes trickling in (each within the read timeout) cannot hold a call past its deadline."""
    sim.inject(Fault(stage="BRIEFING_MD", drip_s=0.02, times=None))
    result = briefd.run(make_job(), make_settings(timeout_ms=400, retry_enabled=False))
    err = next(e for e in result.errors if e.stage == "BRIEFING_MD")
    assert err.code is ErrorCode.TIMEOUT
    assert 0.35 <= result.metrics.stages_ms["BRIEFING_MD"] / 1000 < 2.0


def test_invalid_json_fails_the_stage_and_reask_repairs_it(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """Broken JSON is INVALID_JSON (not retried); with the re-ask on, one more call fixes it."""
    sim.inject(Fault(stage="ANNEX_JSON", invalid_json=True, times=1))
    result = briefd.run(make_job("a"), make_settings())
    assert [e.code for e in result.errors] == [ErrorCode.INVALID_JSON]
    assert result.documents["ANNEX_JSON"] is None
    assert sim.stats().by_job_stage["a"]["ANNEX_JSON"] == 1

    sim.inject(Fault(stage="ANNEX_JSON", invalid_json=True, times=1))
    fixed = briefd.run(make_job("b"), make_settings(reask_invalid_json=True))
    assert fixed.status is JobStatus.SUCCEEDED
    assert sim.stats().by_job_stage["b"]["ANNEX_JSON"] == 2


def test_truncated_answer_is_an_error(sim: SimServer, make_settings: Any, make_job: Any) -> None:
    """finish_reason == "length" is a TRUNCATED failure, never a document."""
    sim.inject(Fault(stage="PLAYS_MD", truncate=True, times=None))
    result = briefd.run(make_job(), make_settings())
    assert [e.code for e in result.errors] == [ErrorCode.TRUNCATED]
    assert result.documents["PLAYS_MD"] is None


def test_procurement_falls_back_to_the_jobs_metrics(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """PROCUREMENT_JSON failing yields the job's procurement_metrics, marked as a fallback."""
    sim.inject(Fault(stage="PROCUREMENT_JSON", status=500, times=None))
    metrics = {"summary": "from the CRM", "vendors": [{"name": "Initech", "category": "IT"}]}
    result = briefd.run(make_job(procurement_metrics=metrics), make_settings(max_retries=0))
    assert result.documents["PROCUREMENT_JSON"] == metrics
    assert result.fallbacks == ["PROCUREMENT_JSON"]
    assert result.status is JobStatus.PARTIAL
    assert result.documents["ANNEX_JSON"]  # annex still ran after its failed dependency


def test_connection_refused_is_a_connection_error(make_job: Any, make_settings: Any) -> None:
    """Nothing listening: CONNECTION errors, retried, then a failed job (no hang)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The model is named: with none, the start itself is refused (briefd asks /models).
    settings = make_settings(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, model="m")
    result = briefd.run(make_job(procurement_metrics=None), settings)
    assert result.status is JobStatus.FAILED
    assert {e.code for e in result.errors} == {ErrorCode.CONNECTION}


class _CrashingStage(StageActor):
    """A stage whose call raises something no one planned for."""

    def _call(self) -> Completion:
        if self.spec.name == "PLAYS_MD":
            raise RuntimeError("boom")
        return super()._call()


class _VanishingStage(StageActor):
    """A stage actor that dies without a word when its token comes."""

    gone = threading.Event()

    def _call(self) -> Completion:
        if self.spec.name == "PLAYS_MD":
            self.actor_ref.stop(block=False)
            _VanishingStage.gone.set()
            raise pykka.ActorDeadError("gone")  # not a CallError: escapes into on_failure
        return super()._call()


class _QuietlyStopped(StageActor):
    """PLAYS_MD's actor is stopped when its token comes (on_stop runs, nothing is reported)."""

    def _call(self) -> Completion:
        if self.spec.name == "PLAYS_MD":
            self.actor_ref.stop(block=False)
            raise CallCancelled()  # the call is not made; the stop follows in the inbox
        return super()._call()

    def _fail(self, error: PipelineError) -> None:
        if self.spec.name != "PLAYS_MD":
            super()._fail(error)  # PLAYS_MD says nothing: it dies without reporting


def test_a_stage_actor_gone_without_a_word_is_noticed_as_it_leaves(
    sim: SimServer, make_settings: Any, make_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage actor's thread tells its coordinator as it leaves (StageActorStopped): the
    stage is CRASHED at once, with the periodic safety net switched off."""
    monkeypatch.setattr(coordinator_module, "HEALTH_PERIOD_S", 1e6)
    with briefd.Pipeline(make_settings(), stage_actor_cls=_QuietlyStopped) as pipeline:
        result = pipeline.submit(make_job()).get(timeout=30)
        stats = pipeline.limiter_stats()
    assert [(e.stage, e.code) for e in result.errors] == [("PLAYS_MD", ErrorCode.CRASHED)]
    assert "died without reporting" in result.errors[0].message
    assert result.documents["BRIEFING_MD"] and result.documents["ANNEX_JSON"]
    assert stats.in_use == 0


def test_crashing_stage_becomes_a_crashed_error(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """An unexpected exception in a stage is CRASHED for that stage only."""
    with briefd.Pipeline(make_settings(), stage_actor_cls=_CrashingStage) as pipeline:
        result = pipeline.submit(make_job()).get(timeout=30)
    assert [(e.stage, e.code) for e in result.errors] == [("PLAYS_MD", ErrorCode.CRASHED)]
    assert "boom" in result.errors[0].message
    assert result.documents["BRIEFING_MD"] and result.documents["ANNEX_JSON"]
    assert pipeline.limiter_stats is not None


def test_dead_stage_actor_is_noticed(sim: SimServer, make_settings: Any, make_job: Any) -> None:
    """A stage actor that stops without reporting is failed by the coordinator; no hang,
    and the token it held comes back."""
    with briefd.Pipeline(make_settings(), stage_actor_cls=_VanishingStage) as pipeline:
        result = pipeline.submit(make_job()).get(timeout=30)
        stats = pipeline.limiter_stats()
    assert _VanishingStage.gone.is_set()
    plays = next(e for e in result.errors if e.stage == "PLAYS_MD")
    assert plays.code is ErrorCode.CRASHED
    assert result.documents["BRIEFING_MD"]
    assert stats.in_use == 0
