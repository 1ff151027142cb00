"""The operations view over records made by the real serialiser from real message models."""

from __future__ import annotations

import io

from rich.console import Console

from briefd.messages import (
    DaemonStarted,
    DaemonStopping,
    ErrorCode,
    Event,
    JobAccepted,
    JobCancelled,
    JobStarted,
    JobState,
    PipelineError,
    Progress,
    ProgressChanged,
    RateLimitCooldown,
    StageFailed,
    StageFellBack,
    StageRetrying,
    StageStarted,
    StageState,
    StageSucceeded,
    TokenGranted,
    TokenReleased,
)
from briefd.ops.console import render
from briefd.ops.eventlog import Record, dumps_line, event_payload, level_for, line_of, parse_line
from briefd.ops.rollback import Thresholds
from briefd.ops.view import OpsView

T0 = 1_800_000_000.0


def rec(event: Event, ts: float = T0) -> Record:
    """``event`` as the log writes it and the console reads it back."""
    event = event.model_copy(update={"ts": ts})
    record = parse_line(dumps_line(line_of(event_payload(event), level_for(event.type), "")))
    assert record is not None
    return record


def error(code: ErrorCode, message: str = "it broke") -> PipelineError:
    """A PipelineError on PLAYS_MD."""
    return PipelineError(stage="PLAYS_MD", code=code, message=message, hint="try again")


def daemon_started() -> DaemonStarted:
    """A DaemonStarted as briefd serve publishes it."""
    return DaemonStarted(
        url="http://127.0.0.1:8765",
        pid=42,
        version="0.1.0",
        resumed=0,
        max_active_jobs=4,
        max_queued_jobs=10,
        max_concurrent=2,
    )


def test_daemon_jobs_queue_cancel_and_restart() -> None:
    """Accepted jobs queue; a queued cancel ends them; a daemon restart interrupts the rest."""
    view = OpsView()
    view.apply(rec(daemon_started()))
    for job_id in ("a", "b"):
        view.apply(rec(JobAccepted(job_id=job_id, status=JobState.QUEUED, queued=1)))
    view.apply(rec(JobStarted(job_id="a", stages=["S1"], parallel=True, max_concurrent=2)))
    snap = view.snapshot()
    assert (
        snap.daemon is not None and snap.daemon["state"] == "running" and snap.daemon["pid"] == 42
    )
    assert snap.queued == 1 and [j.state for j in snap.active] == ["running", "queued"]

    view.apply(rec(JobCancelled(job_id="b", reason="user", was=JobState.QUEUED)))
    view.apply(rec(TokenGranted(job_id="a", stage="S1", lease_id=1, in_use=1, capacity=2)))
    assert view.snapshot().jobs_by_status == {"cancelled": 1}

    view.apply(rec(daemon_started(), T0 + 5))
    snap = view.snapshot()
    assert snap.active == [] and snap.recent[0].state == "interrupted"
    assert snap.tokens["in_use"] == 0 and snap.stages_running == 0
    assert snap.jobs_by_status == {"cancelled": 1}, "an interrupted job is not a status"
    stopping = DaemonStopping(signal="SIGTERM", grace_s=30.0, active=0, queued=0)
    view.apply(rec(stopping, T0 + 6))
    assert view.snapshot().daemon == {
        "state": "stopping",
        "since": T0 + 6,
        "signal": "SIGTERM",
        "grace_s": 30.0,
        "active": 0,
        "queued": 0,
    }


def test_stage_indicators_keep_the_finer_states() -> None:
    """Waiting to retry and fallen back survive the coarser ProgressChanged that follows."""
    view = OpsView()
    stages = ["S1", "S2"]
    view.apply(rec(JobStarted(job_id="j", stages=stages, parallel=True, max_concurrent=2)))
    view.apply(rec(StageStarted(job_id="j", stage="S1", attempt=1)))
    view.apply(rec(StageStarted(job_id="j", stage="S2", attempt=1)))
    view.apply(
        rec(
            StageRetrying(
                job_id="j", stage="S1", attempt=1, wait_s=1, reason=error(ErrorCode.TIMEOUT)
            )
        )
    )
    view.apply(rec(StageFailed(job_id="j", stage="S2", error=error(ErrorCode.INVALID_JSON))))
    view.apply(rec(StageFellBack(job_id="j", stage="S2", source="procurement_metrics")))
    progress = Progress(stages={"S1": StageState.RUNNING, "S2": StageState.FAILED}, percent=25.0)
    view.apply(rec(ProgressChanged(job_id="j", stage="S2", progress=progress)))
    (job,) = view.snapshot().active
    assert job.stages == {"S1": "retrying", "S2": "fellback"} and job.percent == 25.0
    totals = view.snapshot().totals
    assert (totals["timeouts"], totals["quality_failures"], totals["fallbacks"]) == (1, 1, 1)


def test_token_holders_are_the_stages_in_flight() -> None:
    """Stages in flight (and their peak) follow token grants and releases."""
    view = OpsView()
    for n, stage in enumerate(("A", "B")):
        view.apply(rec(TokenGranted(job_id="j", stage=stage, lease_id=n, in_use=n + 1, capacity=2)))
    view.apply(rec(TokenReleased(job_id="j", stage="A", lease_id=0, in_use=1, capacity=2)))
    snap = view.snapshot()
    assert (snap.stages_running, snap.peak_stages_running) == (1, 2)
    assert snap.tokens == {
        "in_use": 1,
        "capacity": 2,
        "peak": 2,
        "waiting": 0,
        "cooldowns": 0,
        "cooling_down_s": 0.0,
    }
    until = T0 + 5
    view.apply(rec(RateLimitCooldown(job_id="j", stage="A", retry_after_s=5, until=until)))
    assert view.snapshot(now=T0 + 1).tokens["cooling_down_s"] == 4.0


def test_signals_cover_the_window_and_need_enough_samples() -> None:
    """Old failures leave the window; one failure in one stage is not yet a signal."""
    view = OpsView(Thresholds(min_samples=1), window_s=60)
    view.apply(rec(StageFailed(job_id="j", stage="A", error=error(ErrorCode.SERVER_ERROR)), T0))
    (err, _, _) = view.snapshot().signals
    assert (err.rate, err.crossed) == (1.0, True)
    for n in range(4):
        view.apply(
            rec(
                StageSucceeded(job_id="j", stage=f"S{n}", document="d", elapsed_ms=1, attempts=1),
                T0 + 100,
            )
        )
    (err, _, _) = view.snapshot().signals
    assert (err.numerator, err.denominator, err.crossed) == (0, 4, False)

    strict = OpsView()  # min_samples=10
    strict.apply(rec(StageFailed(job_id="j", stage="A", error=error(ErrorCode.SERVER_ERROR))))
    assert strict.snapshot().signals[0].rate == 1.0 and not strict.snapshot().warnings


def test_cancelled_stages_are_not_errors() -> None:
    """A CANCELLED stage is neither finished nor failed for the error rate."""
    view = OpsView(Thresholds(min_samples=1))
    view.apply(rec(StageFailed(job_id="j", stage="A", error=error(ErrorCode.CANCELLED))))
    assert view.snapshot().signals[0].denominator == 0


def test_malformed_records_are_counted_not_fatal() -> None:
    """A known event with fields of the wrong shape is skipped and counted."""
    view = OpsView()
    bad = parse_line(
        '{"v":1,"ts":1,"event":"ProgressChanged","job_id":"j","progress":{"stages":[1]}}'
    )
    assert bad is not None
    view.apply(bad)
    view.apply(rec(StageStarted(job_id="j", stage="A", attempt=1)))
    assert view.snapshot().totals == {"malformed_records": 1, "stage_attempts": 1}


def test_rendering_shows_log_text_literally() -> None:
    """Error text from the log cannot inject rich markup or terminal escapes into the screen."""
    view = OpsView()
    hostile = "[bold red]fake[/] \x1b[2J\x1b]0;title\x07 done"
    view.apply(
        rec(StageFailed(job_id="j", stage="A", error=error(ErrorCode.SERVER_ERROR, hostile)))
    )
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True).print(render(view.snapshot(), source="x"))
    screen = out.getvalue()
    assert "[bold red]fake[/]" in screen
    assert "\x1b[2J" not in screen and "\x07" not in screen and "\\u001b[2J" in screen


def test_the_token_line_shows_an_adapted_window() -> None:
    """When the limiter's window W is below the ceiling (a server pushed back), the console's
    token line says so; at the ceiling it stays as it was."""
    view = OpsView()
    view.apply(
        rec(TokenGranted(job_id="j", stage="A", lease_id=1, in_use=1, capacity=16, window=16))
    )
    out = io.StringIO()
    Console(file=out, width=160).print(render(view.snapshot(), source="log", title="t"))
    assert "tokens 1/16 (peak 1)" in out.getvalue()
    view.apply(
        rec(TokenReleased(job_id="j", stage="A", lease_id=1, in_use=0, capacity=16, window=5))
    )
    out = io.StringIO()
    Console(file=out, width=160).print(render(view.snapshot(), source="log", title="t"))
    assert "tokens 0/16, window 5 (peak 1)" in out.getvalue()


def test_the_warning_points_at_the_automatic_rollback_when_it_is_on() -> None:
    """A crossed signal suggests BRIEFD_PARALLEL=false, unless the daemon's automatic
    rollback (seen in the log) is already acting on it."""
    from briefd.messages import ErrorCode, PipelineError, RollbackTripped, StageFailed

    view = OpsView(Thresholds(min_samples=1))
    view.apply(rec(StageStarted(job_id="j", stage="A", attempt=1)))
    error = PipelineError(stage="A", code=ErrorCode.SERVER_ERROR, message="HTTP 500")
    view.apply(rec(StageFailed(job_id="j", stage="A", error=error, elapsed_ms=5, attempts=1)))

    def screen() -> str:
        out = io.StringIO()
        Console(file=out, width=160).print(render(view.snapshot(), source="log", title="t"))
        return out.getvalue()

    assert "consider the rollback: BRIEFD_PARALLEL=false" in screen()
    tripped = RollbackTripped(
        signal="error", rate=1.0, threshold=0.05, baseline=0.0, samples=1, probation_s=60,
        reason="error rate 100% (1/1) is up more than 5.0% over its baseline 0.0%",
    )  # fmt: skip
    view.apply(rec(tripped))
    text = screen()
    assert "automatic rollback acts on these" in text and "BRIEFD_PARALLEL=false" not in text
