"""``briefd console`` over the real event logs of a real cluster: the token line tells the
cluster's truth.

Two ``briefd serve`` daemons share K=2 on one PostgreSQL database (``tests/cluster/chaos.py``
starts them, each with its own simulated server and its own ``BRIEFD_LOG_FILE``). Every
job's first two calls hang, so the cluster's two tokens are held and the other stages wait;
then every job is cancelled. Issue 18 saw, for such a cluster, ``tokens 2/4 (peak 3)`` (each
daemon's K summed, for a cluster whose K is 2) and a stale "2 stages waiting" after every job
had ended. The console must say K once, the calls in flight across the daemons, never a peak
above K, and no stage waiting once the jobs are over.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from cluster.chaos import cluster, poll
from log_helpers import daemon_started, write_log
from pg import PgServer
from rich.console import Console

from briefd.messages import (
    Event,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobMetrics,
    JobResult,
    JobStarted,
    JobState,
    JobStatus,
    Progress,
    TokenGranted,
)
from briefd.ops.console import render
from briefd.ops.sources import LogSet
from briefd.ops.view import OpsView
from briefd.sim.server import Fault

K = 2
T0 = 1_700_000_000.0
JOBS = [f"t-{n}" for n in range(4)]


def _screen(view: OpsView) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(render(view.snapshot(), source="logs"))
    return out.getvalue()


def test_the_token_line_is_the_clusters_and_waiting_clears_when_jobs_end(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    settings = {"max_concurrent": K, "lease_s": 3.0, "poll_s": 0.5, "max_active_jobs": 2}
    with cluster(pg_server, pg_url, tmp_path, ("a", "b"), **settings) as c:
        for m in c.members:
            for stage in ("BRIEFING_MD", "PLAYS_MD"):
                m.sim.inject(Fault(stage=stage, hang=True, times=None))
        c.submit(JOBS)
        poll(lambda: sum(m.sim.stats().in_flight for m in c.members) == K, 30, "K calls hung")
        logs = LogSet([str(m.daemon.tmp / "events.log") for m in c.members])
        view = OpsView()

        def in_use_shown() -> bool:
            view.apply_merged(logs.poll())
            return bool(view.snapshot().tokens["in_use"] == K)

        poll(in_use_shown, 10, "the console showing the hung calls")
        during = view.snapshot().tokens
        client = c.members[0].daemon.client()
        for job_id in JOBS:
            client.cancel(job_id)
        assert c.all_ended(JOBS, 30), c.states()
        poll(
            lambda: sum(len(m.daemon.events("JobCompleted")) for m in c.members) == len(JOBS),
            15,
            "every JobCompleted logged",
        )
        view.apply_merged(logs.poll())
        logs.close()
    after = view.snapshot().tokens
    screen = _screen(view)

    assert during["capacity"] == K, during  # the cluster's K, not 2 daemons x K
    assert during["in_use"] == K, during  # the two hung calls, across the daemons
    assert during["peak"] <= K, during
    assert after["capacity"] == K and after["peak"] <= K, after
    assert not after.get("waiting"), f"stages still shown waiting after every job ended: {after}"
    line = next(ln for ln in screen.splitlines() if ln.startswith("tokens "))
    assert re.match(rf"tokens \d/{K} for the cluster of 2 \(peak [0-{K}]\)", line), line
    assert "waiting for a token" not in line or ", 0 stages waiting" in line, line


def _queued_behind_a_token(job_id: str, ts: float, waiting: int) -> list[tuple[float, Event]]:
    """A four-stage job whose first stage holds the only token, the limiter saying that
    ``waiting`` stages queue behind it."""
    stages = ["BRIEFING_MD", "PLAYS_MD", "PROCUREMENT_JSON", "ANNEX_JSON"]
    return [
        (ts, JobAccepted(job_id=job_id, status=JobState.RUNNING, queued=0)),
        (ts + 0.1, JobStarted(job_id=job_id, stages=stages, parallel=True, max_concurrent=1)),
        (
            ts + 0.2,
            TokenGranted(
                job_id=job_id, stage=stages[0], lease_id=1, in_use=1, capacity=1, waiting=waiting
            ),
        ),
    ]


def _cancelled(job_id: str, ts: float) -> list[tuple[float, Event]]:
    """A cancel: the waiting requests are withdrawn (no token event says so), the job ends."""
    result = JobResult(
        job_id=job_id,
        status=JobStatus.CANCELLED,
        documents={},
        errors=[],
        fallbacks=[],
        progress=Progress(stages={}, percent=0.0),
        metrics=JobMetrics(
            stages_ms={},
            parallel_group_ms=0,
            sequential_group_ms=0,
            total_ms=100,
            speedup_ratio=0.0,
            usage={},
            attempts={},
        ),
    )
    return [
        (ts, JobCancelled(job_id=job_id, reason="cancelled", was=JobState.RUNNING)),
        (ts + 0.1, JobCompleted(job_id=job_id, result=result)),
    ]


def test_stages_waiting_clear_when_their_jobs_end_without_another_token_event(
    tmp_path: Path,
) -> None:
    """The limiter's last word was "3 waiting"; the job was cancelled, its requests withdrawn
    without a token event: the console shows none waiting, in one log as in a cluster's."""
    one = tmp_path / "one" / "events.log"
    write_log(
        one,
        (T0, daemon_started(8761, max_concurrent=1, daemon_id=None)),
        *_queued_behind_a_token("j", T0 + 1, waiting=3),
    )
    logs = LogSet([str(one)])
    view = OpsView()
    view.apply_merged(logs.poll())
    assert view.snapshot().tokens["waiting"] == 3  # believed while the job can still wait
    write_log(one, *_cancelled("j", T0 + 2))
    view.apply_merged(logs.poll())
    logs.close()
    assert view.snapshot().tokens["waiting"] == 0

    a, b = tmp_path / "a" / "events.log", tmp_path / "b" / "events.log"
    write_log(
        a,
        (T0, daemon_started(8762, max_concurrent=1, daemon_id="h:1:a")),
        *_queued_behind_a_token("x", T0 + 1, waiting=2),
    )
    write_log(
        b,
        (T0, daemon_started(8763, max_concurrent=1, daemon_id="h:2:b")),
        *_queued_behind_a_token("y", T0 + 1.5, waiting=1),
    )
    logs = LogSet([str(a), str(b)])
    view = OpsView()
    view.apply_merged(logs.poll())
    assert view.snapshot().tokens["waiting"] == 3
    write_log(a, *_cancelled("x", T0 + 3))
    view.apply_merged(logs.poll())
    assert view.snapshot().tokens["waiting"] == 1  # b's job still waits
    write_log(b, *_cancelled("y", T0 + 4))
    view.apply_merged(logs.poll())
    logs.close()
    snap = view.snapshot()
    assert snap.tokens["waiting"] == 0 and snap.tokens["capacity"] == 1, snap.tokens
    assert "waiting for a token" not in _screen(view) or "0 stages waiting" in _screen(view)
