"""Cancelling a job: stages not started never start; in-flight calls are abandoned quietly."""

from __future__ import annotations

import time
from typing import Any

from actor_helpers import eventually

import briefd
from briefd.messages import ErrorCode, JobStatus
from briefd.sim.server import Fault, SimServer


def test_cancel_mid_flight(
    sim: SimServer, make_settings: Any, make_job: Any, log_lines: list[str]
) -> None:
    """Cancel while the roots are in flight: status cancelled, the dependents were never
    requested, the late answers are dropped without an error in the log."""
    sim.inject(Fault(stage="BRIEFING_MD", delay_s=0.3))
    sim.inject(Fault(stage="PLAYS_MD", delay_s=0.3))
    with briefd.Pipeline(make_settings()) as pipeline:
        future = pipeline.submit(make_job())
        assert sim.wait_for_in_flight(2, timeout=5)
        assert pipeline.cancel("acme-1", reason="operator asked")
        result = future.get(timeout=10)
        assert sim.wait_until_idle(timeout=5)
        assert not pipeline.cancel("acme-1")  # gone once ended
        assert eventually(lambda: pipeline.limiter_stats().in_use == 0), "tokens not returned"
    assert result.status is JobStatus.CANCELLED
    assert {e.code for e in result.errors} == {ErrorCode.CANCELLED}
    assert {e.stage for e in result.errors} == set(result.documents)
    assert set(sim.stats().by_stage) == {"BRIEFING_MD", "PLAYS_MD"}
    assert not [line for line in log_lines if line.startswith(("ERROR", "CRITICAL"))]


def test_cancel_cuts_a_hung_call_and_frees_its_token_at_once(
    sim: SimServer, make_settings: Any, make_job: Any
) -> None:
    """A call hanging on a server that never answers is cut when its job is cancelled: the
    token comes back and the server sees the client go, long before BRIEFD_TIMEOUT_MS."""
    sim.inject(Fault(stage="BRIEFING_MD", job_id="stuck", hang=True, times=None))
    sim.inject(Fault(stage="PLAYS_MD", job_id="stuck", hang=True, times=None))
    settings = make_settings(timeout_ms=60_000, max_concurrent=2)
    with briefd.Pipeline(settings) as pipeline:
        future = pipeline.submit(make_job("stuck"))
        assert sim.wait_for_in_flight(2, timeout=5)
        started = time.monotonic()
        assert pipeline.cancel("stuck")
        result = future.get(timeout=10)
        assert eventually(lambda: pipeline.limiter_stats().in_use == 0, timeout=5)
        assert sim.wait_until_idle(timeout=5)
        freed_after = time.monotonic() - started
        # The freed tokens serve the next job straight away.
        assert pipeline.submit(make_job("next")).get(timeout=10).status is JobStatus.SUCCEEDED
    assert result.status is JobStatus.CANCELLED
    assert freed_after < 5, freed_after
    assert sim.stats().by_job_stage["stuck"] == {"BRIEFING_MD": 1, "PLAYS_MD": 1}
