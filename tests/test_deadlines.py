"""A job's deadline: past it nothing new is spent; a call on the wire is kept; 429s are bounded.

Against the simulator with slow stages and deadlines shorter than the job. The
timings only order things (a deadline well before a slow answer ends); no test
asserts how fast anything was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from actor_helpers import coordinate

import briefd
from briefd.actors.drain import drainable_stage_actor
from briefd.actors.stage import StageActor
from briefd.api import Pipeline
from briefd.config import ConfigError, Settings, load_pipeline
from briefd.deadlines import deadline_at
from briefd.messages import (
    ErrorCode,
    Event,
    JobResult,
    JobSpec,
    StageFailed,
    StageRetrying,
    StageSucceeded,
    TokenGranted,
)
from briefd.sim.faults import Fault, SimProfile
from briefd.sim.server import SimServer

ROOTS = ("BRIEFING_MD", "PLAYS_MD")
LATER = ("PROCUREMENT_JSON", "ANNEX_JSON")


@pytest.fixture
def slow_sim() -> Iterator[SimServer]:
    """Every stage answers after 2.5 s."""
    latency = {s: 2.5 for s in (*ROOTS, *LATER)}
    with SimServer(SimProfile(latency_s=latency, scale=1.0)) as server:
        yield server


@pytest.fixture
def fast_sim() -> Iterator[SimServer]:
    """Every stage answers after 0.05 s (faults add their own delays)."""
    latency = {s: 0.05 for s in (*ROOTS, *LATER)}
    with SimServer(SimProfile(latency_s=latency, scale=1.0)) as server:
        yield server


def _settings(sim: SimServer, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": sim.base_url,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_ms": 10_000,
    }
    values.update(kw)
    return Settings(**values)


def _run(
    settings: Settings, job: dict[str, Any], **pipeline_kw: Any
) -> tuple[JobResult, list[Event]]:
    events: list[Event] = []
    lock = threading.Lock()

    def observe(event: Event) -> None:
        with lock:
            events.append(event)

    with Pipeline(settings, observers=[observe], **pipeline_kw) as pipeline:
        result = pipeline.submit(job).get(timeout=60)
    with lock:
        return result, list(events)


def _errors(result: JobResult) -> dict[str, Any]:
    return {e.stage: e for e in result.errors}


def test_past_the_deadline_a_stage_waiting_for_a_token_ends_and_the_call_in_flight_is_kept(
    slow_sim: SimServer, make_job: Any
) -> None:
    """One token, slow stages, a 1 s deadline: the root stage on the wire finishes and its
    document is kept; the other root, waiting for the token, ends DEADLINE_EXCEEDED at the
    deadline (before that call ends) and withdraws its request (one grant in all); the
    stages not started end so too, and the fallback applies."""
    settings = _settings(slow_sim, max_concurrent=1)
    result, events = _run(settings, make_job("late", deadline_s=1.0))

    assert slow_sim.stats().total_requests == 1
    kept = [s for s in ROOTS if result.documents[s] is not None]
    assert len(kept) == 1, result.errors
    (waited,) = set(ROOTS) - set(kept)
    errors = _errors(result)
    assert set(errors) == {waited, *LATER}
    assert all(e.code is ErrorCode.DEADLINE_EXCEEDED for e in errors.values())
    assert "waiting for an execution token" in errors[waited].message
    assert "1s after its submission" in errors[waited].message
    assert "the job has run" in errors[waited].message
    assert "deadline_s" in errors[waited].hint and "BRIEFD_JOB_DEADLINE_S" in errors[waited].hint
    assert all("had not started" in errors[s].message for s in LATER)
    assert result.status == "partial"
    assert result.fallbacks == ["PROCUREMENT_JSON"]
    assert result.documents["PROCUREMENT_JSON"] == make_job()["procurement_metrics"]
    # The request was withdrawn: the limiter never granted the token to the ended stage.
    grants = [e for e in events if isinstance(e, TokenGranted) and e.job_id == "late"]
    assert [g.stage for g in grants] == kept
    # It ended at the deadline, not when the call in flight ended.
    order = [
        e.stage for e in events if isinstance(e, StageFailed | StageSucceeded) and e.stage in ROOTS
    ]
    assert order == [waited, kept[0]]


def test_the_daemons_drainable_stages_keep_the_deadline(slow_sim: SimServer, make_job: Any) -> None:
    """The daemon's stage class (no calls started while draining) still hears its deadline's
    timer before any drain: the stage waiting for the token ends DEADLINE_EXCEEDED."""
    cls = drainable_stage_actor(StageActor, threading.Event())
    settings = _settings(slow_sim, max_concurrent=1)
    result, _events = _run(settings, make_job("daemon", deadline_s=1.0), stage_actor_cls=cls)
    assert slow_sim.stats().total_requests == 1
    waiting = [e for e in result.errors if "waiting for an execution token" in e.message]
    assert len(waiting) == 1 and waiting[0].code is ErrorCode.DEADLINE_EXCEEDED


def test_a_call_that_fails_after_the_deadline_is_not_retried(
    fast_sim: SimServer, make_job: Any
) -> None:
    """BRIEFING_MD's call is on the wire when the deadline passes and then fails with a 500:
    no retry (one call), DEADLINE_EXCEEDED quoting the failure; PLAYS_MD, done before the
    deadline, keeps its document."""
    fast_sim.inject(Fault(stage="BRIEFING_MD", status=500, delay_s=2.0, times=None))
    settings = _settings(fast_sim, max_retries=3)
    result, events = _run(settings, make_job("on-the-wire", deadline_s=1.0))

    assert fast_sim.stats().by_stage == {"BRIEFING_MD": 1, "PLAYS_MD": 1}
    errors = _errors(result)
    assert errors["BRIEFING_MD"].code is ErrorCode.DEADLINE_EXCEEDED
    assert "HTTP 500" in errors["BRIEFING_MD"].message
    assert result.documents["PLAYS_MD"] is not None
    assert all(errors[s].code is ErrorCode.DEADLINE_EXCEEDED for s in LATER)
    assert not [e for e in events if isinstance(e, StageRetrying)]


def test_no_reask_past_the_deadline(fast_sim: SimServer, make_job: Any) -> None:
    """With BRIEFD_REASK_INVALID_JSON, an invalid answer that arrives past the deadline is not
    asked again: the stage keeps its own error (INVALID_JSON), after one call."""
    fast_sim.inject(Fault(stage="PROCUREMENT_JSON", invalid_json=True, delay_s=2.0, times=None))
    settings = _settings(fast_sim, reask_invalid_json=True)
    result, events = _run(settings, make_job("reask", deadline_s=1.0))

    assert fast_sim.stats().by_stage["PROCUREMENT_JSON"] == 1
    errors = _errors(result)
    assert errors["PROCUREMENT_JSON"].code is ErrorCode.INVALID_JSON
    assert errors["ANNEX_JSON"].code is ErrorCode.DEADLINE_EXCEEDED
    assert not [e for e in events if isinstance(e, StageRetrying)]


def test_a_retry_that_would_start_after_the_deadline_is_not_waited_for(
    fast_sim: SimServer, make_job: Any
) -> None:
    """A 503 asking for 1 s, a 2 s deadline: the first retry fits (2 calls), the second
    would start past the deadline, so the stage ends at once, saying so."""
    fast_sim.inject(Fault(stage="BRIEFING_MD", status=503, retry_after="1", times=None))
    settings = _settings(fast_sim, max_retries=5)
    result, events = _run(settings, make_job("backoff", deadline_s=2.0))

    assert fast_sim.stats().by_stage["BRIEFING_MD"] == 2
    error = _errors(result)["BRIEFING_MD"]
    assert error.code is ErrorCode.DEADLINE_EXCEEDED
    assert "would start after it" in error.message and "HTTP 503" in error.message
    retries = [e for e in events if isinstance(e, StageRetrying) and e.stage == "BRIEFING_MD"]
    assert len(retries) == 1


def test_a_server_that_429s_forever_gives_up_after_the_setting(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """BRIEFD_MAX_RATE_LIMITED=2: three calls answered 429, then RATE_LIMITED."""
    sim.inject(Fault(stage="BRIEFING_MD", status=429, retry_after="0", times=None))
    result = briefd.run(make_job("busy"), make_settings(max_rate_limited=2, max_retries=0))
    assert sim.stats().by_stage["BRIEFING_MD"] == 3
    assert _errors(result)["BRIEFING_MD"].code is ErrorCode.RATE_LIMITED


def _job(job_id: str, **extra: Any) -> JobSpec:
    pipeline = load_pipeline()
    return JobSpec(
        job_id=job_id,
        prompts={s.name: "Write it." for s in pipeline.stages},
        procurement_metrics={"summary": "x", "vendors": []},
        **extra,
    )


def test_a_resumed_job_keeps_its_deadline_from_its_submission() -> None:
    """Submitted an hour ago with BRIEFD_JOB_DEADLINE_S=60: resumed now, no stage asks for a
    token; each ends DEADLINE_EXCEEDED saying how long the job has run."""
    settings = Settings(base_url="http://127.0.0.1:9/v1", job_deadline_s=60)
    done, requests = coordinate(_job("old"), settings, time.time() - 3600)
    result = done.get(timeout=10)
    assert requests.empty()
    errors = _errors(result)
    assert set(errors) == {*ROOTS, *LATER}
    assert all(e.code is ErrorCode.DEADLINE_EXCEEDED for e in errors.values())
    assert "60s after its submission" in errors["BRIEFING_MD"].message
    assert "the job has run 36" in errors["BRIEFING_MD"].message  # 3600.x s
    assert result.fallbacks == ["PROCUREMENT_JSON"]


def test_the_jobs_deadline_s_wins_over_the_setting() -> None:
    """deadline_s=7200 on a job submitted an hour ago: not passed, whatever the default says."""
    settings = Settings(base_url="http://127.0.0.1:9/v1", job_deadline_s=60)
    _done, requests = coordinate(_job("patient", deadline_s=7200), settings, time.time() - 3600)
    roots = {requests.get(timeout=10).stage for _ in ROOTS}
    assert roots == set(ROOTS)


def test_deadline_at_counts_from_the_submission() -> None:
    settings = Settings(base_url="http://127.0.0.1:9/v1")
    assert deadline_at(_job("none"), settings, 1000.0) is None
    assert deadline_at(_job("own", deadline_s=30), settings, 1000.0) == 1030.0
    with_default = settings.model_copy(update={"job_deadline_s": 5.0})
    assert deadline_at(_job("default"), with_default, 1000.0) == 1005.0


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"deadline_s": 0}, "deadline_s"),
        ({"deadline_s": -3}, "deadline_s"),
        ({"deadline_s": "soon"}, "deadline_s"),
        ({"models": {"NOPE_MD": "fast"}}, "models.NOPE_MD: no such stage"),
        ({"models": {"ANNEX_JSON": ""}}, "models.ANNEX_JSON"),
        ({"models": {"ANNEX_JSON": "   "}}, "models.ANNEX_JSON: empty model name"),
        ({"models": {"ANNEX_JSON": 3}}, "models.ANNEX_JSON"),
        ({"models": ["fast"]}, "models"),
    ],
)
def test_bad_deadline_or_models_are_refused_naming_the_field(
    make_job: Any, extra: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        briefd.jobs.validate_job(make_job("bad", **extra), load_pipeline())
    assert f"job: {named}" in str(caught.value), str(caught.value)


def test_deadline_and_models_are_kept_on_the_job(make_job: Any) -> None:
    job = briefd.jobs.validate_job(
        make_job("ok", deadline_s=90, models={"ANNEX_JSON": "fast"}), load_pipeline()
    )
    assert job.deadline_s == 90.0 and job.models == {"ANNEX_JSON": "fast"}
