"""A daemon that never loses a job: restarts, crashes, signals, admission and live reload.

Each test runs its own ``briefd serve`` subprocess (or several, one after the
other on the same data dir) against an in-process simulator, whose per-job,
per-stage request counts prove that no completed stage is paid for twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import HTTP, STAGES, Daemon, complete_stages, make_job, wait_for

from briefd.messages import JobState, JobStatus, StageState
from briefd.sim.server import Fault, SimProfile, SimServer


@pytest.fixture
def slow_sim() -> Iterator[SimServer]:
    """Stages of 70-140 ms: long enough to stop a daemon mid-job, short enough to be quick."""
    with SimServer(SimProfile(scale=0.02)) as server:
        yield server


def test_sigterm_with_work_queued_then_restart_completes_every_job(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """SIGTERM: calls in flight finish (one that hangs is abandoned at the grace period), exit
    0; queued jobs wait in the journal. After a restart every job completes, and only the
    abandoned call is ever made twice."""
    slow_sim.inject(Fault(job_id="term-3", stage="PLAYS_MD", hang=True))
    first = Daemon(tmp_path, slow_sim.base_url, max_active_jobs=2, grace_s=1.0)
    daemons.append(first.start())
    ids = [f"term-{i}" for i in range(8)]
    with first.client() as client:
        for i in ids:
            client.submit(make_job(i))
        assert wait_for(lambda: client.status("term-3").stages["PLAYS_MD"] == "running", 15)
        assert client.status("term-7").status is JobState.QUEUED
    first.signal(signal.SIGTERM)
    assert first.wait_exit(15) == 0, first.log()
    done_before = complete_stages(first.data_dir)
    assert ("term-3", "PLAYS_MD") not in done_before
    assert any(e["event"] == "DaemonStopping" for e in first.events("DaemonStopping"))

    first.start()  # the same data dir: the journal has the rest
    with first.client() as client:
        results = {i: client.result(i, timeout=60) for i in ids}
    assert {r.status for r in results.values()} == {JobStatus.SUCCEEDED}
    counts = slow_sim.stats().by_job_stage
    for job_id in ids:
        for stage in STAGES:
            expected = 2 if (job_id, stage) == ("term-3", "PLAYS_MD") else 1
            assert counts[job_id][stage] == expected, (job_id, stage, counts[job_id])


def test_second_signal_stops_at_once_and_the_journal_resumes(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A second SIGINT during a long grace period exits at once; the job resumes after."""
    slow_sim.inject(Fault(job_id="twice-1", stage="BRIEFING_MD", hang=True))
    d = Daemon(tmp_path, slow_sim.base_url, grace_s=60)
    daemons.append(d.start())
    with d.client() as client:
        client.submit(make_job("twice-1"))
        assert wait_for(lambda: client.status("twice-1").stages["BRIEFING_MD"] == "running", 15)
    d.signal(signal.SIGINT)
    assert wait_for(lambda: d.events("DaemonStopping"), 10)
    d.signal(signal.SIGINT)
    assert d.wait_exit(5) == 128 + signal.SIGINT
    d.start()
    with d.client() as client:
        assert client.result("twice-1", timeout=30).status is JobStatus.SUCCEEDED


def test_kill_9_mid_stage_then_restart_repeats_no_completed_stage(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """kill -9 while a stage is in flight: after a restart every job completes; the stages
    the journal held are never requested again, the one in flight is requested once more."""
    slow_sim.inject(Fault(job_id="crash-1", stage="PROCUREMENT_JSON", hang=True))
    d = Daemon(tmp_path, slow_sim.base_url, max_concurrent=3)
    daemons.append(d.start())
    ids = [f"crash-{i}" for i in range(4)]
    with d.client() as client:
        for i in ids:
            client.submit(make_job(i))
        assert wait_for(
            lambda: client.status("crash-1").stages["PROCUREMENT_JSON"] is StageState.RUNNING, 15
        )
    d.kill()
    held = complete_stages(d.data_dir)
    assert {("crash-1", "BRIEFING_MD"), ("crash-1", "PLAYS_MD")} <= held
    d.start()
    with d.client() as client:
        results = [client.result(i, timeout=60) for i in ids]
        info = client.status("crash-1")
    assert [r.status for r in results] == [JobStatus.SUCCEEDED] * 4
    assert info.restarts == 1
    counts = slow_sim.stats().by_job_stage
    for job_id in ids:
        for stage in STAGES:
            if (job_id, stage) in held:
                assert counts[job_id][stage] == 1, (job_id, stage, "paid twice")
            else:
                assert counts[job_id][stage] in (1, 2), (job_id, stage)
    assert counts["crash-1"]["PROCUREMENT_JSON"] == 2
    assert d.events("JobRestarted")


def test_a_resume_changes_nothing_a_stage_that_failed_stays_failed(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """PLAYS_MD fails for good (HTTP 400, not retried); kill -9 while PROCUREMENT_JSON is in
    flight; after a restart PLAYS_MD is not called again and the job ends as an uninterrupted
    run would: partial, with the same error for PLAYS_MD and no other."""
    slow_sim.inject(Fault(job_id="exact-1", stage="PLAYS_MD", status=400))
    slow_sim.inject(Fault(job_id="exact-1", stage="PROCUREMENT_JSON", hang=True))
    d = Daemon(tmp_path, slow_sim.base_url)
    daemons.append(d.start())
    with d.client() as client:
        client.submit(make_job("exact-1"))
        assert wait_for(
            lambda: client.status("exact-1").stages["PROCUREMENT_JSON"] is StageState.RUNNING, 15
        )
        assert client.status("exact-1").stages["PLAYS_MD"] is StageState.FAILED
    d.kill()
    d.start()
    with d.client() as client:
        result = client.result("exact-1", timeout=60)
    counts = slow_sim.stats().by_job_stage["exact-1"]
    assert counts["PLAYS_MD"] == 1, "a stage that had failed for good was called again"
    assert counts["BRIEFING_MD"] == 1 and counts["PROCUREMENT_JSON"] == 2
    assert result.status is JobStatus.PARTIAL
    assert [(e.stage, e.code) for e in result.errors] == [("PLAYS_MD", "HTTP_ERROR")]
    assert "HTTP 400" in result.errors[0].message


def test_a_job_that_keeps_killing_the_daemon_fails_after_its_restart_budget(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A job whose run dies every time is resumed ``restart_budget`` times, then failed with
    an error that says so, instead of crashing the daemon forever."""
    slow_sim.inject(Fault(job_id="poison", stage="BRIEFING_MD", hang=True, times=None))
    d = Daemon(tmp_path, slow_sim.base_url, restart_budget=1)
    daemons.append(d)
    running = {s: StageState.PENDING for s in STAGES} | {"BRIEFING_MD": StageState.RUNNING}
    for _ in range(2):
        d.start()
        with d.client() as client:
            if client.jobs(limit=1) == []:
                client.submit(make_job("poison"))
            assert wait_for(
                lambda c=client: (
                    c.status("poison").stages == {**running, "PLAYS_MD": StageState.COMPLETE}
                ),
                15,
            )
        d.kill()
    d.start()
    with d.client() as client:
        result = client.result("poison", timeout=30)
    assert result.status is JobStatus.FAILED
    assert result.documents["PLAYS_MD"], "what was paid for is kept"
    message = " ".join(e.message for e in result.errors)
    assert "2 runs of this job died" in message and "restart budget is 1" in message
    assert slow_sim.stats().by_job_stage["poison"]["BRIEFING_MD"] == 2


def test_full_queue_refuses_at_once_with_429(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """With one active job and one queued, a third submission gets 429 and Retry-After; it is
    not accepted. An already-known job is still answered; once room frees, it is accepted."""
    slow_sim.inject(Fault(job_id="busy", stage="BRIEFING_MD", delay_s=1.0))
    d = Daemon(tmp_path, slow_sim.base_url, max_active_jobs=1, max_queued_jobs=1)
    daemons.append(d.start())
    url, headers = f"{d.url}/v1/jobs", d.headers()
    assert HTTP.post(url, json=make_job("busy"), headers=headers, timeout=5).status_code == 202
    assert HTTP.post(url, json=make_job("next"), headers=headers, timeout=5).status_code == 202
    refused = HTTP.post(url, json=make_job("extra"), headers=headers, timeout=5)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    assert HTTP.get(f"{url}/extra", headers=headers, timeout=5).status_code == 404
    assert HTTP.post(url, json=make_job("next"), headers=headers, timeout=5).status_code == 200
    with d.client() as client:
        assert client.result("next", timeout=30).status is JobStatus.SUCCEEDED
        assert client.submit(make_job("extra")) == "extra"
        assert client.result("extra", timeout=30).status is JobStatus.SUCCEEDED


def test_sighup_changes_the_token_cap_without_dropping_jobs(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """SIGHUP re-reads the config file: the cap goes from 1 to 3 for the running daemon."""
    config = tmp_path / "briefd.toml"
    config.write_text("max_concurrent = 1\n")
    d = Daemon(tmp_path, slow_sim.base_url)
    daemons.append(d.start("--config", str(config)))
    with d.client() as client:
        for i in range(3):
            client.submit(make_job(f"hup-a{i}"))
        assert {client.result(f"hup-a{i}", timeout=30).status for i in range(3)} == {
            JobStatus.SUCCEEDED
        }
        assert slow_sim.stats().max_in_flight == 1
        config.write_text("max_concurrent = 3\n")
        for i in range(3):
            client.submit(make_job(f"hup-b{i}"))  # submitted before the reload, run across it
        d.signal(signal.SIGHUP)
        assert wait_for(lambda: d.events("DaemonReloading"), 10), d.log()
        assert d.events("DaemonReloading")[0]["changed"] == {"max_concurrent": "1 -> 3"}
        for i in range(6):
            client.submit(make_job(f"hup-c{i}"))
        assert slow_sim.wait_for_in_flight(3, timeout=15)
        later = [f"hup-b{i}" for i in range(3)] + [f"hup-c{i}" for i in range(6)]
        assert {client.result(i, timeout=60).status for i in later} == {JobStatus.SUCCEEDED}
    assert slow_sim.stats().max_in_flight == 3


def test_bad_setup_exits_2_with_one_line(
    slow_sim: SimServer, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A non-loopback BRIEFD_LISTEN, or a data dir another daemon holds, is refused: exit 2."""
    d = Daemon(tmp_path, slow_sim.base_url)
    daemons.append(d.start())
    cmd = [sys.executable, "-m", "briefd", "serve"]
    same_dir = subprocess.run(cmd, env=d.env, cwd=tmp_path, capture_output=True, text=True)
    assert same_dir.returncode == 2
    assert "in use by another briefd serve" in same_dir.stderr.splitlines()[-1]
    env = {**d.env, "BRIEFD_LISTEN": "0.0.0.0:8765", "BRIEFD_DATA_DIR": str(tmp_path / "other")}
    remote = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert remote.returncode == 2
    assert "not a loopback address" in remote.stderr.splitlines()[-1]
